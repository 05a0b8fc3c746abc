"""What the control commands print: the API's answers as plain data, then a table, CSV or JSON.

Plain data has one type per field, whatever protobuf's JSON mapping would do: ids are numbers
(MessageToDict makes int64 strings), enums are their short names (`registered`, not
`DEVICE_STATUS_REGISTERED`), a device's last command is its name, times are ISO 8601 in UTC
(`at_us` becomes `at`; a device's own times, its wall clock, carry +05:00), the audit's JSON
detail is an object, and what is not there (no token shown, never contacted) is null. Every
field is present, at its default when unset.
"""

import contextlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from ingest.tables import iso_from_us, render, render_record
from ledger.wire import Command

MICRO = 1_000_000
TIME_SUFFIX = "_us"
NULL_WHEN_EMPTY = ("shift_opened_at", "offline_since", "offline_until")
_FRACTION = re.compile(r"\.\d+(?=Z$)")
_ZONED = re.compile(r"(Z|[+-]\d\d:\d\d)$")
KZ_OFFSET = "+05:00"  # all of Kazakhstan since 1 March 2024 (ledger.wire.KZ_TIME)


@dataclass(frozen=True, slots=True)
class Listing:
    """How one list answer is shown: its table's columns and the line when it is empty."""

    columns: tuple[str, ...]
    empty: str


DEVICE_COLUMNS = (
    "system_id", "status", "blocked", "subscription_active", "trade_point_id",
    "kgd_registration_number", "serial_number", "model", "year",
)  # fmt: skip
KEY_COLUMNS = (
    "id", "name", "role", "organization_id", "trade_point_ids", "system_ids", "modules",
    "created_at", "revoked_at",
)  # fmt: skip
LISTINGS = {
    "organizations": Listing(("id", "iin", "title", "address", "oked"), "no organizations"),
    "trade_points": Listing(
        ("id", "organization_id", "title", "address", "latitude", "longitude"), "no trade points"
    ),
    "devices": Listing(DEVICE_COLUMNS, "no devices"),
    "entries": Listing(("at", "actor", "action", "system_id", "detail"), "no audit entries"),
    "keys": Listing(KEY_COLUMNS, "no keys"),
}


def enum_name(field: FieldDescriptor, number: int) -> str | None:
    """An enum value's name without the type's prefix, lower case; UNSPECIFIED as None."""
    enum = field.enum_type
    assert enum is not None
    known = enum.values_by_number.get(number)
    if known is None:
        return str(number)
    names = [v.name for v in enum.values]
    prefix = names[0].removesuffix("UNSPECIFIED") if names[0].endswith("UNSPECIFIED") else ""
    short = known.name.removeprefix(prefix).lower()
    return None if short == "unspecified" else short


def to_data(message: Message) -> dict[str, Any]:
    """A control API message as plain data (see the module's docstring)."""
    data: dict[str, Any] = {}
    fields: Sequence[Any] = message.DESCRIPTOR.fields  # the stubs split the descriptor types
    for field in fields:
        value = getattr(message, field.name)
        if field.is_repeated:
            data[field.name] = [_value(field, item) for item in value]
        elif field.name.endswith(TIME_SUFFIX):
            data[field.name.removesuffix(TIME_SUFFIX)] = iso_from_us(value)
        elif field.name == "detail_json":
            data["detail"] = json.loads(value) if value else None
        else:
            data[field.name] = _value(field, value)
    return _state(data) if "has_last_request" in data else data


def _value(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return to_data(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return enum_name(field, value)
    return value


def _state(data: dict[str, Any]) -> dict[str, Any]:
    """A device's exchange state: what a device never sent is null, not 0 (command SYSTEM)."""
    seen = data.pop("has_last_request")
    if seen:
        command = data["last_command"]
        with contextlib.suppress(ValueError):  # a number no command has stays a number
            data["last_command"] = Command(command).name
    else:
        data["last_request_number"] = data["last_command"] = None
    if not data["token"]:
        data["token"] = None  # not shown to this caller: ofd kkm get-token
    for name in NULL_WHEN_EMPTY:  # the device's wall clock: Kazakhstan's time, UTC+5
        value = data[name]
        data[name] = None if not value else value if _ZONED.search(value) else value + KZ_OFFSET
    data["protocol_version"] = data["protocol_version"] or None
    return data


def _for_table(row: dict[str, Any]) -> dict[str, Any]:
    """A row as a table shows it: coordinates in degrees with six decimals (the API's unit is
    micro-degrees), times to the second."""
    shown = dict(row)
    for name in ("latitude", "longitude"):
        if isinstance(shown.get(name), int):
            shown[name] = f"{shown[name] / MICRO:.6f}" if shown[name] else None
    for name in ("at", "last_contact", "created_at", "revoked_at"):
        if isinstance(shown.get(name), str):
            shown[name] = _FRACTION.sub("", shown[name])
    return shown


def render_answer(message: Message, fmt: str) -> str:
    """A list as a table (or CSV), any other answer as `key  value` lines; JSON for both."""
    data = to_data(message)
    if fmt == "json":
        return json.dumps(data, ensure_ascii=False, sort_keys=True)
    if len(data) == 1:
        ((name, value),) = data.items()
        listing = LISTINGS.get(name)
        if listing is not None and isinstance(value, list):
            return render_list(value, listing, fmt)
    return render_record(data)


def render_list(rows: Sequence[dict[str, Any]], listing: Listing, fmt: str) -> str:
    if fmt == "csv":
        return render(rows, "csv", columns=listing.columns)
    shown = [_for_table(row) for row in rows]
    return render(shown, "table", columns=listing.columns, empty=listing.empty)
