"""The OFD's tally as a ZXReport of either protocol version, and a device's report against ours.

Rendering lists every operation in the per-operation lists (operations, discounts, markups,
total_result, ticket_operations, both non-nullable lists) and both placement kinds, and only the
sections, taxes and payment types the shift used, each sorted. 2.0.4 makes most report fields
required; every one of them is filled (zeros included). Tax and payment types 2.0.4's enums do
not define (a 2.0.3 device's CREDIT or TARE payment) cannot be written into a 2.0.4 report and
are left out of it.

Comparing flattens both reports into named values ("ticket_operations[SELL].tickets_sum") and
reports every name whose values differ. Entries a report leaves out count as zero, so a device
that lists an unused operation with zeros matches one that omits it; an optional field a 2.0.3
device did not send is not compared. The report's own time, close time and checksum are not
compared: they describe the printout, not the shift. `side_by_side` is the same comparison
field by field, both values shown (the cabinet's reports page, from the warehouse's flattened
copies).
"""

from dataclasses import dataclass
from datetime import datetime
from types import ModuleType
from typing import Any

from ledger.tally import (
    CHANGE,
    DEPOSIT,
    DISCOUNT_SUM,
    DISCOUNTS,
    ITEMS,
    ITEMS_SUM,
    MARKUP_SUM,
    MARKUPS,
    OFFLINE,
    OPERATION_NAMES,
    OPERATIONS,
    PLACEMENT_NAMES,
    PLACEMENT_WIDTH,
    TICKETS,
    TICKETS_SUM,
    WITHDRAWAL,
    Tally,
)

REPORT_Z, REPORT_X = 0, 1  # ReportTypeEnum
PAYMENT_NAMES = ("CASH", "CARD", "CREDIT", "TARE", "MOBILE")  # PaymentTypeEnum, 2.0.3
MAX_UINT32 = 2**31 - 1  # protocol.md: unsigned fields stop at the signed maximum of their width
MAX_BILLS = 2**63 - 1


def set_date_time(message: Any, when: datetime) -> None:
    """Fills a protocol DateTime (device-local time, no zone)."""
    message.date.year, message.date.month, message.date.day = when.year, when.month, when.day
    message.time.hour, message.time.minute = when.hour, when.minute
    message.time.second = when.second


def read_date_time(message: Any) -> datetime:
    """A protocol DateTime as a naive datetime; ValueError when it is not a real moment."""
    date, time = message.date, message.time
    return datetime(date.year, date.month, date.day, time.hour, time.minute, time.second)


def _money(message: Any, tiyn: int) -> None:
    bills, coins = divmod(max(tiyn, 0), 100)
    message.bills = min(bills, MAX_BILLS)
    message.coins = coins


def _count(value: int) -> int:
    # A lifetime count could in principle outgrow the wire's uint32; the report then saturates.
    return min(max(value, 0), MAX_UINT32)


def _operation(target: Any, op: int, count: int, tiyn: int) -> None:
    entry = target.add()
    entry.operation = op
    entry.count = _count(count)
    _money(entry.sum, tiyn)


def render(
    tally: Tally,
    schema: ModuleType,
    version: int,
    *,
    report_time: datetime,
    close_time: datetime | None = None,
) -> Any:
    """The ZXReport (of `schema`, the module of `version`) the tally says."""
    zx = schema.ZXReport()
    set_date_time(zx.date_time, report_time)
    zx.shift_number = _count(tally.shift_number if tally.is_open else tally.shift_number + 1)
    _render_sections(zx, tally)
    _render_operations(zx, tally)
    _render_taxes(zx, tally, schema, version)
    for op in OPERATIONS:
        start = zx.start_shift_non_nullable_sums.add()
        start.operation = op
        _money(start.sum, tally.start_sums[op])
    _render_ticket_operations(zx, tally, schema)
    for kind in (DEPOSIT, WITHDRAWAL):
        at = kind * PLACEMENT_WIDTH
        placement = zx.money_placements.add()
        placement.operation = kind
        placement.operations_total_count = _count(tally.lifetime_placements[kind])
        placement.operations_count = _count(tally.placements[at])
        _money(placement.operations_sum, tally.placements[at + 1])
        placement.offline_count = _count(tally.placements[at + 2])
    _money(zx.cash_sum, tally.cash)
    _money(zx.revenue.sum, abs(tally.revenue))
    zx.revenue.is_negative = tally.revenue < 0
    for op in OPERATIONS:
        now = zx.non_nullable_sums.add()
        now.operation = op
        _money(now.sum, tally.sums[op])
    opened = tally.opened_at if tally.is_open and tally.opened_at is not None else report_time
    set_date_time(zx.open_shift_time, opened)
    if close_time is not None:
        set_date_time(zx.close_shift_time, close_time)
    return zx


def _render_sections(zx: Any, tally: Tally) -> None:
    parts = tally.operations
    for code in sorted({code for part in parts for code in part.sections}):
        section = zx.sections.add()
        section.section_code = code
        for op in OPERATIONS:
            lines = parts[op].sections.get(code)
            if lines is not None:
                _operation(section.operations, op, *lines)


def _render_operations(zx: Any, tally: Tally) -> None:
    for op in OPERATIONS:
        counters = tally.operations[op].counters
        _operation(zx.operations, op, counters[ITEMS], counters[ITEMS_SUM])
        _operation(zx.discounts, op, counters[DISCOUNTS], counters[DISCOUNT_SUM])
        _operation(zx.markups, op, counters[MARKUPS], counters[MARKUP_SUM])
        _operation(zx.total_result, op, counters[TICKETS], counters[TICKETS_SUM])


def _render_taxes(zx: Any, tally: Tally, schema: ModuleType, version: int) -> None:
    parts = tally.operations
    for tax_type, percent in sorted({key for part in parts for key in part.taxes}):
        if version >= 204 and tax_type not in schema.TaxTypeEnum.values():
            continue
        tax = zx.taxes.add()
        if version >= 204:
            tax.type = tax_type
        else:
            tax.tax_type = tax_type
        tax.percent = _count(percent)
        for op in OPERATIONS:
            values = parts[op].taxes.get((tax_type, percent))
            if values is None:
                continue
            entry = tax.operations.add()
            entry.operation = op
            _money(entry.turnover, values[0])
            _money(entry.sum, values[1])
            _money(entry.turnover_without_tax, values[2])


def _render_ticket_operations(zx: Any, tally: Tally, schema: ModuleType) -> None:
    payment_types = schema.PaymentTypeEnum.values()
    for op in OPERATIONS:
        part = tally.operations[op]
        counters = part.counters
        ticket_op = zx.ticket_operations.add()
        ticket_op.operation = op
        ticket_op.tickets_total_count = _count(tally.lifetime_tickets[op])
        ticket_op.tickets_count = _count(counters[TICKETS])
        _money(ticket_op.tickets_sum, counters[TICKETS_SUM])
        for kind in sorted(part.payments):
            if kind not in payment_types:
                continue
            receipts, amount = part.payments[kind]
            paid = ticket_op.payments.add()
            paid.payment = kind
            _money(paid.sum, amount)
            paid.count = _count(receipts)
        ticket_op.offline_count = _count(counters[OFFLINE])
        _money(ticket_op.discount_sum, counters[DISCOUNT_SUM])
        _money(ticket_op.markup_sum, counters[MARKUP_SUM])
        _money(ticket_op.change_sum, counters[CHANGE])


# --- comparing ---

Value = int | str | None  # None: an optional field the report did not carry


def _tiyn(money: Any) -> int:
    return int(money.bills) * 100 + int(money.coins)


def _name(names: tuple[str, ...], value: int) -> str:
    return names[value] if 0 <= value < len(names) else str(value)


def _optional(message: Any, name: str, read: Any) -> Value:
    return read(getattr(message, name)) if message.HasField(name) else None


def _put(out: dict[str, Value], key: str, value: Value) -> None:
    # A report that lists one entry twice is read as the sum of the two.
    old = out.get(key)
    if isinstance(old, int) and isinstance(value, int):
        value += old
    out[key] = value


def flatten(zx: Any) -> dict[str, Value]:
    """Every number a ZXReport (either version) states, by name; money in tiyn."""
    out: dict[str, Value] = {"shift_number": int(zx.shift_number)}
    for section in zx.sections:
        for entry in section.operations:
            key = f"sections[{section.section_code}].{_name(OPERATION_NAMES, entry.operation)}"
            _put(out, f"{key}.count", int(entry.count))
            _put(out, f"{key}.sum", _tiyn(entry.sum))
    for listing in ("operations", "discounts", "markups", "total_result"):
        for entry in getattr(zx, listing):
            key = f"{listing}[{_name(OPERATION_NAMES, entry.operation)}]"
            _put(out, f"{key}.count", int(entry.count))
            _put(out, f"{key}.sum", _tiyn(entry.sum))
    for tax in zx.taxes:
        tax_type = tax.type if hasattr(tax, "type") else tax.tax_type
        for entry in tax.operations:
            key = f"taxes[{tax_type}/{tax.percent}].{_name(OPERATION_NAMES, entry.operation)}"
            _put(out, f"{key}.turnover", _tiyn(entry.turnover))
            _put(out, f"{key}.sum", _tiyn(entry.sum))
            without = _optional(entry, "turnover_without_tax", _tiyn)
            _put(out, f"{key}.turnover_without_tax", without)
    for listing in ("start_shift_non_nullable_sums", "non_nullable_sums"):
        for entry in getattr(zx, listing):
            _put(out, f"{listing}[{_name(OPERATION_NAMES, entry.operation)}]", _tiyn(entry.sum))
    for ticket_op in zx.ticket_operations:
        key = f"ticket_operations[{_name(OPERATION_NAMES, ticket_op.operation)}]"
        _put(out, f"{key}.tickets_total_count", int(ticket_op.tickets_total_count))
        _put(out, f"{key}.tickets_count", int(ticket_op.tickets_count))
        _put(out, f"{key}.tickets_sum", _tiyn(ticket_op.tickets_sum))
        for paid in ticket_op.payments:
            kind = f"{key}.payments[{_name(PAYMENT_NAMES, paid.payment)}]"
            _put(out, f"{kind}.sum", _tiyn(paid.sum))
            _put(out, f"{kind}.count", _optional(paid, "count", int))
        _put(out, f"{key}.offline_count", _optional(ticket_op, "offline_count", int))
        for money_field in ("discount_sum", "markup_sum", "change_sum"):
            _put(out, f"{key}.{money_field}", _optional(ticket_op, money_field, _tiyn))
    for placement in zx.money_placements:
        key = f"money_placements[{_name(PLACEMENT_NAMES, placement.operation)}]"
        _put(out, f"{key}.operations_total_count", int(placement.operations_total_count))
        _put(out, f"{key}.operations_count", int(placement.operations_count))
        _put(out, f"{key}.operations_sum", _tiyn(placement.operations_sum))
        _put(out, f"{key}.offline_count", _optional(placement, "offline_count", int))
    out["cash_sum"] = _tiyn(zx.cash_sum)
    revenue = _tiyn(zx.revenue.sum)
    out["revenue"] = -revenue if zx.revenue.is_negative else revenue
    if zx.HasField("open_shift_time"):
        try:
            out["open_shift_time"] = read_date_time(zx.open_shift_time).isoformat()
        except ValueError:
            out["open_shift_time"] = "invalid"
    return out


@dataclass(frozen=True, slots=True)
class FieldPair:
    """One named value of two flattened reports, the device's beside the OFD's."""

    name: str
    device: Value  # None: the device's report does not state it
    ofd: Value
    differs: bool  # by compare's rule: absent counts as zero, an unstated optional is not compared
    money: bool  # tiyn; else a count, a number or a time


def is_money(name: str) -> bool:
    """Whether a flattened report's value named `name` is money (tiyn)."""
    last = name.rsplit(".", 1)[-1]
    return last.endswith(("sum", "turnover", "turnover_without_tax")) or name.startswith(
        ("non_nullable_sums", "start_shift_non_nullable_sums", "revenue")
    )


def side_by_side(device: dict[str, Value], ofd: dict[str, Value]) -> list[FieldPair]:
    """Every name either flattened report states, sorted, with both values and whether they
    differ: the device's Z beside the OFD's, field by field."""
    pairs = []
    for key in sorted(device.keys() | ofd.keys()):
        device_value, ofd_value = device.get(key, 0), ofd.get(key, 0)
        compared = device_value is not None and ofd_value is not None  # an unstated optional
        if key == "open_shift_time" and (key not in device or key not in ofd):
            compared = False
        pairs.append(
            FieldPair(
                key,
                device.get(key),
                ofd.get(key),
                compared and device_value != ofd_value,
                is_money(key),
            )
        )
    return pairs


def compare(device: Any, ofd: Any) -> list[str]:
    """Named differences between a device's ZXReport and the OFD's, sorted; empty: they agree."""
    return [
        f"{pair.name}: device {pair.device or 0}, ofd {pair.ofd or 0}"
        for pair in side_by_side(flatten(device), flatten(ofd))
        if pair.differs
    ]
