from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeviceStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEVICE_STATUS_UNSPECIFIED: _ClassVar[DeviceStatus]
    DEVICE_STATUS_AWAITING_REGISTRATION: _ClassVar[DeviceStatus]
    DEVICE_STATUS_REGISTERED: _ClassVar[DeviceStatus]
    DEVICE_STATUS_AWAITING_DEREGISTRATION: _ClassVar[DeviceStatus]
    DEVICE_STATUS_DEREGISTERED: _ClassVar[DeviceStatus]
DEVICE_STATUS_UNSPECIFIED: DeviceStatus
DEVICE_STATUS_AWAITING_REGISTRATION: DeviceStatus
DEVICE_STATUS_REGISTERED: DeviceStatus
DEVICE_STATUS_AWAITING_DEREGISTRATION: DeviceStatus
DEVICE_STATUS_DEREGISTERED: DeviceStatus

class Organization(_message.Message):
    __slots__ = ("id", "iin", "title", "address", "address_kz", "oked")
    ID_FIELD_NUMBER: _ClassVar[int]
    IIN_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_KZ_FIELD_NUMBER: _ClassVar[int]
    OKED_FIELD_NUMBER: _ClassVar[int]
    id: int
    iin: str
    title: str
    address: str
    address_kz: str
    oked: str
    def __init__(self, id: _Optional[int] = ..., iin: _Optional[str] = ..., title: _Optional[str] = ..., address: _Optional[str] = ..., address_kz: _Optional[str] = ..., oked: _Optional[str] = ...) -> None: ...

class TradePoint(_message.Message):
    __slots__ = ("id", "organization_id", "title", "address", "address_kz", "latitude", "longitude")
    ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_KZ_FIELD_NUMBER: _ClassVar[int]
    LATITUDE_FIELD_NUMBER: _ClassVar[int]
    LONGITUDE_FIELD_NUMBER: _ClassVar[int]
    id: int
    organization_id: int
    title: str
    address: str
    address_kz: str
    latitude: int
    longitude: int
    def __init__(self, id: _Optional[int] = ..., organization_id: _Optional[int] = ..., title: _Optional[str] = ..., address: _Optional[str] = ..., address_kz: _Optional[str] = ..., latitude: _Optional[int] = ..., longitude: _Optional[int] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ("system_id", "kgd_registration_number", "serial_number", "model", "year", "trade_point_id", "status")
    SYSTEM_ID_FIELD_NUMBER: _ClassVar[int]
    KGD_REGISTRATION_NUMBER_FIELD_NUMBER: _ClassVar[int]
    SERIAL_NUMBER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    YEAR_FIELD_NUMBER: _ClassVar[int]
    TRADE_POINT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    system_id: int
    kgd_registration_number: str
    serial_number: str
    model: str
    year: int
    trade_point_id: int
    status: DeviceStatus
    def __init__(self, system_id: _Optional[int] = ..., kgd_registration_number: _Optional[str] = ..., serial_number: _Optional[str] = ..., model: _Optional[str] = ..., year: _Optional[int] = ..., trade_point_id: _Optional[int] = ..., status: _Optional[_Union[DeviceStatus, str]] = ...) -> None: ...

class DeviceRef(_message.Message):
    __slots__ = ("system_id",)
    SYSTEM_ID_FIELD_NUMBER: _ClassVar[int]
    system_id: int
    def __init__(self, system_id: _Optional[int] = ...) -> None: ...

class TokenIssued(_message.Message):
    __slots__ = ("system_id", "token")
    SYSTEM_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    system_id: int
    token: int
    def __init__(self, system_id: _Optional[int] = ..., token: _Optional[int] = ...) -> None: ...

class DeviceState(_message.Message):
    __slots__ = ("device", "token", "has_last_request", "last_request_number", "last_command", "shift_number", "shift_open", "last_document_shift", "last_document_number", "documents_accepted", "last_contact_us", "protocol_version")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    HAS_LAST_REQUEST_FIELD_NUMBER: _ClassVar[int]
    LAST_REQUEST_NUMBER_FIELD_NUMBER: _ClassVar[int]
    LAST_COMMAND_FIELD_NUMBER: _ClassVar[int]
    SHIFT_NUMBER_FIELD_NUMBER: _ClassVar[int]
    SHIFT_OPEN_FIELD_NUMBER: _ClassVar[int]
    LAST_DOCUMENT_SHIFT_FIELD_NUMBER: _ClassVar[int]
    LAST_DOCUMENT_NUMBER_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    LAST_CONTACT_US_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    device: Device
    token: int
    has_last_request: bool
    last_request_number: int
    last_command: int
    shift_number: int
    shift_open: bool
    last_document_shift: int
    last_document_number: int
    documents_accepted: int
    last_contact_us: int
    protocol_version: int
    def __init__(self, device: _Optional[_Union[Device, _Mapping]] = ..., token: _Optional[int] = ..., has_last_request: _Optional[bool] = ..., last_request_number: _Optional[int] = ..., last_command: _Optional[int] = ..., shift_number: _Optional[int] = ..., shift_open: _Optional[bool] = ..., last_document_shift: _Optional[int] = ..., last_document_number: _Optional[int] = ..., documents_accepted: _Optional[int] = ..., last_contact_us: _Optional[int] = ..., protocol_version: _Optional[int] = ...) -> None: ...
