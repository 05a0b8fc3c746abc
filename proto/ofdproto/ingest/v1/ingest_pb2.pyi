from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Frame(_message.Message):
    __slots__ = ("body", "token", "request_number")
    BODY_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    REQUEST_NUMBER_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    token: int
    request_number: int
    def __init__(self, body: _Optional[bytes] = ..., token: _Optional[int] = ..., request_number: _Optional[int] = ...) -> None: ...
