"""A device as the session rules see it: registry facts and the state of its exchange."""

from dataclasses import dataclass
from datetime import datetime

REGISTERED = "registered"


@dataclass(frozen=True, slots=True)
class RegInfo:
    """Registration facts reported to the device in SYSTEM and INFO answers."""

    kgd_registration_number: str
    serial_number: str
    model: str
    org_title: str
    org_address: str
    org_address_kz: str
    org_iin: str
    org_oked: str
    point_title: str
    point_address: str
    point_address_kz: str
    latitude: int
    longitude: int


@dataclass(frozen=True, slots=True)
class DeviceState:
    """One row of device_state with its registry facts; `version` orders every change."""

    system_id: int
    status: str
    reg: RegInfo
    version: int
    token: int | None
    last_request_number: int | None
    last_request_token: int | None
    last_command: int | None
    last_response: bytes | None
    shift_number: int
    shift_open: bool
    last_document_shift: int
    last_document_number: int
    documents_accepted: int
    protocol_version: int | None
    last_contact: datetime | None
