"""The OFD's own tally of a device's shift: what its Z report must say, from the documents held.

A pure, version-agnostic model: money in integer tiyn, no protobuf, no I/O. An accepted receipt
(reduced to a `Receipt` by `ledger.ticket_checks`) or money placement produces a new Tally;
`ledger.zx_report` renders one into a ZXReport of either protocol version and compares a
device's report with ours; `ledger.tally_codec` stores it.

Rules (protocol.md "Server-side tally rules"; the rest inferred, ours to choose):

- per operation: receipts and their totals; commodity lines and their net sum (a storno line
  counts zero lines with a negative sum); discounts and markups likewise (item lines plus the
  ticket-level modifier, when its sum is not zero) and their net sums; receipts sent offline;
  change handed out;
- per operation and section: commodity lines and net sum; per operation and tax (type,
  percent): turnover, tax and turnover without tax; per operation and payment type: receipts
  paid that way and the sum; per placement kind: count, sum and offline count;
- the shift's revenue and the cash in the drawer change sign by direction: a sale and a buy
  return bring money in, a sale return and a buy take it out; deposits add to the drawer and
  withdrawals take from it; the drawer never goes below zero;
- carried across shifts: the drawer (emptied by a close with `withdraw_money`), the lifetime
  receipt and placement counts (the reports' `*_total_count`), and the non-nullable sums: per
  operation, the sum of every receipt total since registration.

Representation, because a receipt folds into the tally and the tally is stored on every
receipt: one flat tuple of integers (`values`), fixed slots first, then one small block per
(operation, section), (operation, tax) and (operation, payment type) the shift has used, at the
offsets its `Layout` names. Layouts are interned, so devices whose shifts use the same sections
share one, with its stored form encoded once. Folding a receipt is a list copy and a few index
updates; `Tally.operations` gives the structured per-operation view rendering wants.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

BUY, BUY_RETURN, SELL, SELL_RETURN = 0, 1, 2, 3  # OperationTypeEnum, both versions
OPERATIONS = (BUY, BUY_RETURN, SELL, SELL_RETURN)
OPERATION_NAMES = ("BUY", "BUY_RETURN", "SELL", "SELL_RETURN")
DEPOSIT, WITHDRAWAL = 0, 1  # MoneyPlacementEnum
PLACEMENT_NAMES = ("DEPOSIT", "WITHDRAWAL")
CASH = 0  # PaymentTypeEnum.PAYMENT_CASH
# +1: money comes in (revenue up, cash into the drawer); -1: it goes out.
DIRECTION = (-1, +1, +1, -1)

# Per-operation counters, by index.
TICKETS, TICKETS_SUM, ITEMS, ITEMS_SUM = 0, 1, 2, 3
DISCOUNTS, DISCOUNT_SUM, MARKUPS, MARKUP_SUM = 4, 5, 6, 7
OFFLINE, CHANGE = 8, 9
COUNTERS = 10
PLACEMENT_WIDTH = 3  # (count, sum, offline count) per placement kind

# Fixed slots of Tally.values.
SHIFT, OPEN, OPENED_AT, REVENUE, DRAWER = 0, 1, 2, 3, 4
PLACEMENTS = 5  # 6 slots
LIFETIME_PLACEMENTS = 11  # 2
LIFETIME_TICKETS = 13  # 4
START_SUMS = 17  # 4
SUMS = 21  # 4
OPS = 25  # 4 x COUNTERS
FIXED = OPS + 4 * COUNTERS
EPOCH = datetime(2000, 1, 1)  # OPENED_AT holds seconds since, -1 for none
SECOND = timedelta(seconds=1)

TaxKey = tuple[int, int]  # (tax type, percent in hundredths of a percent)
# Block keys: ("s", op, section code) -> 2 slots, ("t", op, tax type, percent) -> 3,
# ("p", op, payment type) -> 2.
Key = tuple[str, int, str] | tuple[str, int, int, int] | tuple[str, int, int]
WIDTHS = {"s": 2, "t": 3, "p": 2}
MAX_INTERNED_LAYOUTS = 10_000


# Not frozen: made once per receipt, and a frozen dataclass's __init__ (object.__setattr__ per
# field) costs a microsecond more for these thirteen fields. Nothing changes one once made.
@dataclass(slots=True)
class Receipt:
    """What a checked receipt adds to the tally; every sum is net and not negative."""

    operation: int
    total: int
    items_count: int  # commodity lines (stornos count zero)
    items_sum: int  # commodity sums minus storno sums
    discounts: int
    discount_sum: int
    markups: int
    markup_sum: int
    # Sequences of 2 and 3 integers; the receipt checks hand over their own lists, not copies.
    sections: Mapping[str, Sequence[int]]  # code -> (commodity lines, net sum)
    taxes: Mapping[TaxKey, Sequence[int]]  # -> (turnover, tax, turnover without tax)
    payments: Mapping[int, int]  # payment type -> sum
    change: int
    offline: bool

    @property
    def cash_in(self) -> int:
        """What the receipt puts into the drawer (negative: takes out)."""
        return DIRECTION[self.operation] * self.payments.get(CASH, 0)


class Layout:
    """Where each block of a tally's values sits; shared by every tally with the same keys."""

    __slots__ = ("_grown", "encoded", "index", "keys", "size")

    def __init__(self, keys: tuple[Key, ...]) -> None:
        self.keys = keys
        self.index: dict[Key, int] = {}
        at = FIXED
        for key in keys:
            self.index[key] = at
            at += WIDTHS[key[0]]
        self.size = at
        self.encoded: bytes | None = None  # filled by the codec, once
        self._grown: dict[Key, Layout] = {}

    def grown(self, key: Key) -> "Layout":
        """This layout with one more block at the end."""
        layout = self._grown.get(key)
        if layout is None:
            layout = self._grown[key] = interned((*self.keys, key))
        return layout


_LAYOUTS: dict[tuple[Key, ...], Layout] = {}


def interned(keys: tuple[Key, ...]) -> Layout:
    layout = _LAYOUTS.get(keys)
    if layout is None:
        if len(_LAYOUTS) >= MAX_INTERNED_LAYOUTS:
            _LAYOUTS.clear()  # only sharing is lost; tallies keep their own layouts
        layout = _LAYOUTS[keys] = Layout(keys)
    return layout


EMPTY_LAYOUT = interned(())


@dataclass(frozen=True, slots=True)
class OperationTally:
    """One operation's counts in one shift (a view, built for rendering and tests)."""

    counters: tuple[int, ...]
    sections: Mapping[str, tuple[int, int]]  # code -> (lines, sum)
    taxes: Mapping[TaxKey, tuple[int, int, int]]  # -> (turnover, tax, turnover without)
    payments: Mapping[int, tuple[int, int]]  # type -> (receipts, sum)


def _fixed(shift_number: int = 0, *, is_open: bool = False) -> tuple[int, ...]:
    values = [0] * FIXED
    values[SHIFT] = shift_number
    values[OPEN] = int(is_open)
    values[OPENED_AT] = -1
    return tuple(values)


@dataclass(frozen=True, slots=True)
class Tally:
    """One device's counters: the current (or last closed) shift plus what carries over."""

    layout: Layout
    values: tuple[int, ...]
    # Device-local time of the open shift's first document (also in values, as seconds, for
    # storage): kept as a datetime too, since every receipt asks for it.
    opened_at: datetime | None = None

    @property
    def shift_number(self) -> int:
        """The open shift, or the last closed one (0: none yet)."""
        return self.values[SHIFT]

    @property
    def is_open(self) -> bool:
        return bool(self.values[OPEN])

    @property
    def revenue(self) -> int:
        return self.values[REVENUE]

    @property
    def cash(self) -> int:
        return self.values[DRAWER]

    @property
    def placements(self) -> tuple[int, ...]:
        return self.values[PLACEMENTS : PLACEMENTS + 2 * PLACEMENT_WIDTH]

    @property
    def lifetime_placements(self) -> tuple[int, ...]:
        return self.values[LIFETIME_PLACEMENTS : LIFETIME_PLACEMENTS + 2]

    @property
    def lifetime_tickets(self) -> tuple[int, ...]:
        return self.values[LIFETIME_TICKETS : LIFETIME_TICKETS + 4]

    @property
    def start_sums(self) -> tuple[int, ...]:
        """Non-nullable sums when the shift opened."""
        return self.values[START_SUMS : START_SUMS + 4]

    @property
    def sums(self) -> tuple[int, ...]:
        """Non-nullable sums now."""
        return self.values[SUMS : SUMS + 4]

    def counter(self, operation: int, index: int) -> int:
        return self.values[OPS + operation * COUNTERS + index]

    @property
    def operations(self) -> tuple[OperationTally, ...]:
        """The structured view, by OperationTypeEnum value."""
        values = self.values
        sections: list[dict[str, tuple[int, int]]] = [{}, {}, {}, {}]
        taxes: list[dict[TaxKey, tuple[int, int, int]]] = [{}, {}, {}, {}]
        payments: list[dict[int, tuple[int, int]]] = [{}, {}, {}, {}]
        for key, at in self.layout.index.items():
            op = key[1]
            if key[0] == "s":
                sections[op][str(key[2])] = (values[at], values[at + 1])
            elif key[0] == "t":
                tax_type, percent = int(key[2]), int(key[-1])
                taxes[op][tax_type, percent] = (values[at], values[at + 1], values[at + 2])
            else:
                payments[op][int(key[2])] = (values[at], values[at + 1])
        counters = [values[OPS + op * COUNTERS : OPS + (op + 1) * COUNTERS] for op in OPERATIONS]
        return tuple(
            OperationTally(counters[op], sections[op], taxes[op], payments[op]) for op in OPERATIONS
        )


EMPTY_TALLY = Tally(EMPTY_LAYOUT, _fixed())


def opened_from(values: Sequence[int]) -> datetime | None:
    """The open shift's first document's time, from its stored seconds (to the second)."""
    seconds = values[OPENED_AT]
    return None if seconds < 0 else EPOCH + seconds * SECOND


def tally_of(shift_number: int, *, is_open: bool) -> Tally:
    """A tally that knows only where the shifts stand (a device from before tallies)."""
    return Tally(EMPTY_LAYOUT, _fixed(shift_number, is_open=is_open))


def add_receipt(tally: Tally, receipt: Receipt) -> Tally:
    """The tally with `receipt` counted. The caller has opened the shift and checked the cash."""
    op = receipt.operation
    values = list(tally.values)
    cash = values[DRAWER] + receipt.cash_in
    if cash < 0:
        raise ValueError(f"cash in the drawer would be {cash} tiyn")
    values[DRAWER] = cash
    total = receipt.total
    values[REVENUE] += DIRECTION[op] * total
    values[LIFETIME_TICKETS + op] += 1
    values[SUMS + op] += total
    at = OPS + op * COUNTERS
    values[at + TICKETS] += 1
    values[at + TICKETS_SUM] += total
    values[at + ITEMS] += receipt.items_count
    values[at + ITEMS_SUM] += receipt.items_sum
    values[at + DISCOUNTS] += receipt.discounts
    values[at + DISCOUNT_SUM] += receipt.discount_sum
    values[at + MARKUPS] += receipt.markups
    values[at + MARKUP_SUM] += receipt.markup_sum
    values[at + OFFLINE] += receipt.offline
    values[at + CHANGE] += receipt.change
    layout = tally.layout
    index = layout.index
    for code, (lines, amount) in receipt.sections.items():
        key: Key = ("s", op, code)
        at = index.get(key, -1)
        if at < 0:
            layout, index, at = _grow(layout, key, values)
        values[at] += lines
        values[at + 1] += amount
    for (tax_type, percent), (turnover, tax, without) in receipt.taxes.items():
        key = ("t", op, tax_type, percent)
        at = index.get(key, -1)
        if at < 0:
            layout, index, at = _grow(layout, key, values)
        values[at] += turnover
        values[at + 1] += tax
        values[at + 2] += without
    for kind, amount in receipt.payments.items():
        key = ("p", op, kind)
        at = index.get(key, -1)
        if at < 0:
            layout, index, at = _grow(layout, key, values)
        values[at] += 1
        values[at + 1] += amount
    return Tally(layout, tuple(values), tally.opened_at)


def _grow(layout: Layout, key: Key, values: list[int]) -> tuple[Layout, dict[Key, int], int]:
    """A block for a key the shift has not used yet, at the end of the values."""
    grown = layout.grown(key)
    at = len(values)
    values.extend([0] * WIDTHS[key[0]])
    return grown, grown.index, at


def add_placement(tally: Tally, kind: int, amount: int, *, offline: bool) -> Tally:
    """The tally with a deposit or withdrawal counted; the caller has checked the drawer."""
    if kind not in (DEPOSIT, WITHDRAWAL):
        raise ValueError(f"placement kind {kind}")
    if amount < 0:
        raise ValueError(f"placement of {amount} tiyn")
    values = list(tally.values)
    cash = values[DRAWER] + (amount if kind == DEPOSIT else -amount)
    if cash < 0:
        raise ValueError(f"cash in the drawer would be {cash} tiyn")
    values[DRAWER] = cash
    at = PLACEMENTS + kind * PLACEMENT_WIDTH
    values[at] += 1
    values[at + 1] += amount
    values[at + 2] += offline
    values[LIFETIME_PLACEMENTS + kind] += 1
    return Tally(tally.layout, tuple(values), tally.opened_at)


def open_shift(tally: Tally, number: int, when: datetime | None) -> Tally:
    """A closed tally opened as shift `number` by its first document, made at `when`."""
    if tally.is_open:
        raise ValueError(f"shift {tally.shift_number} is still open")
    values = list(tally.values)
    values[SHIFT] = number
    values[OPEN] = 1
    values[OPENED_AT] = -1 if when is None else (when - EPOCH) // SECOND
    return Tally(tally.layout, tuple(values), None if when is None else opened_from(values))


def close_shift(tally: Tally, *, withdraw_money: bool) -> Tally:
    """The tally the next shift starts from: counters zero, carried values kept."""
    old = tally.values
    values = list(EMPTY_TALLY.values)
    values[SHIFT] = old[SHIFT]
    values[DRAWER] = 0 if withdraw_money else old[DRAWER]
    for start, width in ((LIFETIME_PLACEMENTS, 2), (LIFETIME_TICKETS, 4)):
        values[start : start + width] = old[start : start + width]
    values[START_SUMS : START_SUMS + 4] = old[SUMS : SUMS + 4]
    values[SUMS : SUMS + 4] = old[SUMS : SUMS + 4]
    return Tally(EMPTY_LAYOUT, tuple(values))


def inconsistencies(tally: Tally) -> list[str]:
    """Every internal rule the tally breaks (empty when consistent): for tests and debugging,
    never on the hot path."""
    found: list[str] = []
    if len(tally.values) != tally.layout.size:
        return [f"values: {len(tally.values)} for a layout of {tally.layout.size}"]
    if tally.opened_at != opened_from(tally.values):
        found.append("opened_at: not the stored seconds")
    negative = [name for name, v in _named_values(tally) if v < 0]
    found += [f"{name}: negative" for name in negative]
    for op, part in enumerate(tally.operations):
        name = OPERATION_NAMES[op]
        c = part.counters
        if c[ITEMS_SUM] - c[DISCOUNT_SUM] + c[MARKUP_SUM] != c[TICKETS_SUM]:
            found.append(f"{name}: items - discounts + markups != the receipts' totals")
        if sum(v[1] for v in part.sections.values()) != c[ITEMS_SUM]:
            found.append(f"{name}: sections do not add up to the items")
        if sum(v[0] for v in part.sections.values()) != c[ITEMS]:
            found.append(f"{name}: section lines do not add up to the items")
        if sum(v[1] for v in part.payments.values()) != c[TICKETS_SUM]:
            found.append(f"{name}: payments do not add up to the receipts' totals")
        if any(v[0] > c[TICKETS] for v in part.payments.values()):
            found.append(f"{name}: more receipts paid one way than receipts")
        if tally.sums[op] - tally.start_sums[op] != c[TICKETS_SUM]:
            found.append(f"{name}: non-nullable sums moved by other than the shift's receipts")
        if tally.lifetime_tickets[op] < c[TICKETS] or c[OFFLINE] > c[TICKETS]:
            found.append(f"{name}: receipt counts out of order")
    revenue = sum(DIRECTION[op] * tally.counter(op, TICKETS_SUM) for op in OPERATIONS)
    if revenue != tally.revenue:
        found.append("revenue: not the signed sum of the receipts' totals")
    for kind in (DEPOSIT, WITHDRAWAL):
        if tally.lifetime_placements[kind] < tally.placements[kind * PLACEMENT_WIDTH]:
            found.append(f"{PLACEMENT_NAMES[kind]}: fewer in a lifetime than in the shift")
    if not tally.is_open and (
        tally.layout.keys or any(tally.values[OPS:FIXED]) or any(tally.placements) or tally.revenue
    ):
        found.append("a closed shift holds counts")
    return found


def _named_values(tally: Tally) -> list[tuple[str, int]]:
    """Every slot that may never go negative (revenue may), by name."""
    values = tally.values
    skip = (OPENED_AT, REVENUE)
    named = [(f"values[{i}]", values[i]) for i in range(FIXED) if i not in skip]
    for key, at in tally.layout.index.items():
        named += [(f"{key}[{j}]", values[at + j]) for j in range(WIDTHS[key[0]])]
    return named
