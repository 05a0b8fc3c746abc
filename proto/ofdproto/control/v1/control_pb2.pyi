from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeviceStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEVICE_STATUS_UNSPECIFIED: _ClassVar[DeviceStatus]
    DEVICE_STATUS_AWAITING_REGISTRATION: _ClassVar[DeviceStatus]
    DEVICE_STATUS_REGISTERED: _ClassVar[DeviceStatus]
    DEVICE_STATUS_AWAITING_DEREGISTRATION: _ClassVar[DeviceStatus]
    DEVICE_STATUS_DEREGISTERED: _ClassVar[DeviceStatus]

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_OPERATOR: _ClassVar[Role]
    ROLE_ORGANIZATION: _ClassVar[Role]
    ROLE_SERVICE_CENTRE: _ClassVar[Role]
DEVICE_STATUS_UNSPECIFIED: DeviceStatus
DEVICE_STATUS_AWAITING_REGISTRATION: DeviceStatus
DEVICE_STATUS_REGISTERED: DeviceStatus
DEVICE_STATUS_AWAITING_DEREGISTRATION: DeviceStatus
DEVICE_STATUS_DEREGISTERED: DeviceStatus
ROLE_UNSPECIFIED: Role
ROLE_OPERATOR: Role
ROLE_ORGANIZATION: Role
ROLE_SERVICE_CENTRE: Role

class Organization(_message.Message):
    __slots__ = ("id", "iin", "title", "address", "address_kz", "oked", "head")
    ID_FIELD_NUMBER: _ClassVar[int]
    IIN_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_KZ_FIELD_NUMBER: _ClassVar[int]
    OKED_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    id: int
    iin: str
    title: str
    address: str
    address_kz: str
    oked: str
    head: str
    def __init__(self, id: _Optional[int] = ..., iin: _Optional[str] = ..., title: _Optional[str] = ..., address: _Optional[str] = ..., address_kz: _Optional[str] = ..., oked: _Optional[str] = ..., head: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("system_id", "kgd_registration_number", "serial_number", "model", "year", "trade_point_id", "status", "blocked", "block_message", "subscription_active")
    SYSTEM_ID_FIELD_NUMBER: _ClassVar[int]
    KGD_REGISTRATION_NUMBER_FIELD_NUMBER: _ClassVar[int]
    SERIAL_NUMBER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    YEAR_FIELD_NUMBER: _ClassVar[int]
    TRADE_POINT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    BLOCK_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    system_id: int
    kgd_registration_number: str
    serial_number: str
    model: str
    year: int
    trade_point_id: int
    status: DeviceStatus
    blocked: bool
    block_message: str
    subscription_active: bool
    def __init__(self, system_id: _Optional[int] = ..., kgd_registration_number: _Optional[str] = ..., serial_number: _Optional[str] = ..., model: _Optional[str] = ..., year: _Optional[int] = ..., trade_point_id: _Optional[int] = ..., status: _Optional[_Union[DeviceStatus, str]] = ..., blocked: _Optional[bool] = ..., block_message: _Optional[str] = ..., subscription_active: _Optional[bool] = ...) -> None: ...

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
    __slots__ = ("device", "token", "has_last_request", "last_request_number", "last_command", "shift_number", "shift_open", "last_document_shift", "last_document_number", "documents_accepted", "last_contact_us", "protocol_version", "shift_opened_at", "offline_since", "offline_until", "software", "kgd_application_kind", "kgd_application_status", "kgd_application_reason", "kgd_application_error")
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
    SHIFT_OPENED_AT_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_SINCE_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_UNTIL_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_FIELD_NUMBER: _ClassVar[int]
    KGD_APPLICATION_KIND_FIELD_NUMBER: _ClassVar[int]
    KGD_APPLICATION_STATUS_FIELD_NUMBER: _ClassVar[int]
    KGD_APPLICATION_REASON_FIELD_NUMBER: _ClassVar[int]
    KGD_APPLICATION_ERROR_FIELD_NUMBER: _ClassVar[int]
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
    shift_opened_at: str
    offline_since: str
    offline_until: str
    software: str
    kgd_application_kind: str
    kgd_application_status: str
    kgd_application_reason: str
    kgd_application_error: str
    def __init__(self, device: _Optional[_Union[Device, _Mapping]] = ..., token: _Optional[int] = ..., has_last_request: _Optional[bool] = ..., last_request_number: _Optional[int] = ..., last_command: _Optional[int] = ..., shift_number: _Optional[int] = ..., shift_open: _Optional[bool] = ..., last_document_shift: _Optional[int] = ..., last_document_number: _Optional[int] = ..., documents_accepted: _Optional[int] = ..., last_contact_us: _Optional[int] = ..., protocol_version: _Optional[int] = ..., shift_opened_at: _Optional[str] = ..., offline_since: _Optional[str] = ..., offline_until: _Optional[str] = ..., software: _Optional[str] = ..., kgd_application_kind: _Optional[str] = ..., kgd_application_status: _Optional[str] = ..., kgd_application_reason: _Optional[str] = ..., kgd_application_error: _Optional[str] = ...) -> None: ...

class Reregistration(_message.Message):
    __slots__ = ("system_id", "trade_point_id")
    SYSTEM_ID_FIELD_NUMBER: _ClassVar[int]
    TRADE_POINT_ID_FIELD_NUMBER: _ClassVar[int]
    system_id: int
    trade_point_id: int
    def __init__(self, system_id: _Optional[int] = ..., trade_point_id: _Optional[int] = ...) -> None: ...

class BlockRequest(_message.Message):
    __slots__ = ("system_id", "message")
    SYSTEM_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    system_id: int
    message: str
    def __init__(self, system_id: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class SubscriptionRequest(_message.Message):
    __slots__ = ("system_id", "active")
    SYSTEM_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    system_id: int
    active: bool
    def __init__(self, system_id: _Optional[int] = ..., active: _Optional[bool] = ...) -> None: ...

class DeviceFilter(_message.Message):
    __slots__ = ("organization_id", "trade_point_id", "status", "after", "limit")
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    TRADE_POINT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    organization_id: int
    trade_point_id: int
    status: DeviceStatus
    after: int
    limit: int
    def __init__(self, organization_id: _Optional[int] = ..., trade_point_id: _Optional[int] = ..., status: _Optional[_Union[DeviceStatus, str]] = ..., after: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class DeviceList(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    def __init__(self, devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ...) -> None: ...

class OrganizationFilter(_message.Message):
    __slots__ = ("iin", "after", "limit")
    IIN_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    iin: str
    after: int
    limit: int
    def __init__(self, iin: _Optional[str] = ..., after: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class OrganizationList(_message.Message):
    __slots__ = ("organizations",)
    ORGANIZATIONS_FIELD_NUMBER: _ClassVar[int]
    organizations: _containers.RepeatedCompositeFieldContainer[Organization]
    def __init__(self, organizations: _Optional[_Iterable[_Union[Organization, _Mapping]]] = ...) -> None: ...

class TradePointFilter(_message.Message):
    __slots__ = ("organization_id", "after", "limit")
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    organization_id: int
    after: int
    limit: int
    def __init__(self, organization_id: _Optional[int] = ..., after: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class TradePointList(_message.Message):
    __slots__ = ("trade_points",)
    TRADE_POINTS_FIELD_NUMBER: _ClassVar[int]
    trade_points: _containers.RepeatedCompositeFieldContainer[TradePoint]
    def __init__(self, trade_points: _Optional[_Iterable[_Union[TradePoint, _Mapping]]] = ...) -> None: ...

class AuditQuery(_message.Message):
    __slots__ = ("system_id", "limit")
    SYSTEM_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    system_id: int
    limit: int
    def __init__(self, system_id: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("at_us", "actor", "action", "system_id", "detail_json")
    AT_US_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_ID_FIELD_NUMBER: _ClassVar[int]
    DETAIL_JSON_FIELD_NUMBER: _ClassVar[int]
    at_us: int
    actor: str
    action: str
    system_id: int
    detail_json: str
    def __init__(self, at_us: _Optional[int] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., system_id: _Optional[int] = ..., detail_json: _Optional[str] = ...) -> None: ...

class AuditLog(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ...) -> None: ...

class ApiKeySpec(_message.Message):
    __slots__ = ("name", "role", "organization_id", "system_ids", "modules", "trade_point_ids")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_IDS_FIELD_NUMBER: _ClassVar[int]
    MODULES_FIELD_NUMBER: _ClassVar[int]
    TRADE_POINT_IDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: Role
    organization_id: int
    system_ids: _containers.RepeatedScalarFieldContainer[int]
    modules: _containers.RepeatedScalarFieldContainer[str]
    trade_point_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., organization_id: _Optional[int] = ..., system_ids: _Optional[_Iterable[int]] = ..., modules: _Optional[_Iterable[str]] = ..., trade_point_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ApiKeyCreated(_message.Message):
    __slots__ = ("id", "key")
    ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    id: int
    key: str
    def __init__(self, id: _Optional[int] = ..., key: _Optional[str] = ...) -> None: ...

class ApiKeyRef(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class ApiKeyInfo(_message.Message):
    __slots__ = ("id", "name", "role", "organization_id", "system_ids", "modules", "trade_point_ids", "created_at_us", "revoked_at_us")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_IDS_FIELD_NUMBER: _ClassVar[int]
    MODULES_FIELD_NUMBER: _ClassVar[int]
    TRADE_POINT_IDS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_US_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_US_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    role: Role
    organization_id: int
    system_ids: _containers.RepeatedScalarFieldContainer[int]
    modules: _containers.RepeatedScalarFieldContainer[str]
    trade_point_ids: _containers.RepeatedScalarFieldContainer[int]
    created_at_us: int
    revoked_at_us: int
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., organization_id: _Optional[int] = ..., system_ids: _Optional[_Iterable[int]] = ..., modules: _Optional[_Iterable[str]] = ..., trade_point_ids: _Optional[_Iterable[int]] = ..., created_at_us: _Optional[int] = ..., revoked_at_us: _Optional[int] = ...) -> None: ...

class ApiKeyList(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[ApiKeyInfo]
    def __init__(self, keys: _Optional[_Iterable[_Union[ApiKeyInfo, _Mapping]]] = ...) -> None: ...

class Caller(_message.Message):
    __slots__ = ("name", "role", "organization_id", "trade_point_ids")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    TRADE_POINT_IDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: Role
    organization_id: int
    trade_point_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., organization_id: _Optional[int] = ..., trade_point_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
