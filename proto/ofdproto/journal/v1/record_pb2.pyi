from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class JournalRecord(_message.Message):
    __slots__ = ("envelope_version", "device_id", "protocol_version", "received_at_us", "gateway_id", "command", "request_number", "document_id", "fiscal_sign", "request_frame", "response_frame", "is_offline", "organization_id", "trade_point_id")
    ENVELOPE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_US_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    REQUEST_NUMBER_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    FISCAL_SIGN_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FRAME_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FRAME_FIELD_NUMBER: _ClassVar[int]
    IS_OFFLINE_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    TRADE_POINT_ID_FIELD_NUMBER: _ClassVar[int]
    envelope_version: int
    device_id: int
    protocol_version: int
    received_at_us: int
    gateway_id: str
    command: int
    request_number: int
    document_id: str
    fiscal_sign: str
    request_frame: bytes
    response_frame: bytes
    is_offline: bool
    organization_id: int
    trade_point_id: int
    def __init__(self, envelope_version: _Optional[int] = ..., device_id: _Optional[int] = ..., protocol_version: _Optional[int] = ..., received_at_us: _Optional[int] = ..., gateway_id: _Optional[str] = ..., command: _Optional[int] = ..., request_number: _Optional[int] = ..., document_id: _Optional[str] = ..., fiscal_sign: _Optional[str] = ..., request_frame: _Optional[bytes] = ..., response_frame: _Optional[bytes] = ..., is_offline: _Optional[bool] = ..., organization_id: _Optional[int] = ..., trade_point_id: _Optional[int] = ...) -> None: ...
