"""A device as the session rules see it: registry facts and the state of its exchange."""

from dataclasses import dataclass
from datetime import datetime

from ledger.offline import OfflineWrite
from ledger.tally import EMPTY_TALLY, Tally


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
    # Registry keys, carried into every journal record so the warehouse can group by them as
    # they were when the document arrived (a device may later move to another trade point).
    organization_id: int = 0
    trade_point_id: int = 0


@dataclass(frozen=True, slots=True)
class ShiftReport:
    """A closed shift as stored in shift_reports: both Z reports, never one without the other."""

    shift_number: int
    closed_at: datetime | None  # device-local close time
    is_offline: bool
    protocol_version: int
    device_z: bytes | None  # the device's ZXReport as it sent it; None: it sent none
    ofd_z: bytes  # the OFD's ZXReport, as answered
    differences: tuple[str, ...]  # device against OFD, field by field; empty: they agree


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
    # The OFD's tally of the current (or last closed) shift, and its stored bytes: encoded once
    # when it changes, so a request that leaves it alone writes the same bytes back.
    tally: Tally = EMPTY_TALLY
    tally_blob: bytes | None = None
    # A shift this change closes: written to shift_reports in the same transaction.
    shift_report: ShiftReport | None = None
    # Set by the control API only (a change bumps `version`); the session rules refuse on them.
    blocked: bool = False
    block_message: str = ""
    subscription_active: bool = True
    # Device-local start of its open offline window (ledger/offline.py); None: none open.
    offline_since: datetime | None = None
    # What this change does to the offline record: written in the same transaction.
    offline_write: OfflineWrite | None = None
