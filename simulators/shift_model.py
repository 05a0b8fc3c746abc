"""A cash register's own view of its shifts: random valid documents, and the Z report it prints.

The model plays one device across shifts: it makes receipts of every operation (returns with
their parent ticket), with stornos, discounts and markups on lines and on the ticket, VAT on the
lines or on the ticket, cash, card and mobile payments (split ones too), deposits and
withdrawals it can cover, some or all of them offline, then closes the shift with its Z report.

It keeps its own books: every document it made, added up its own way at the close. The rules it
follows are those of protocol.md and of the tally rules written in `ledger/tally.py`'s
docstring, but none of the gateway's code: a property test comparing this Z report with the
OFD's tests the OFD's arithmetic, not a copy of it.
"""

import random
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import ModuleType
from typing import Any, Literal

from simulators.documents import (
    COMMODITY,
    DEPOSIT,
    DISCOUNT,
    MARKUP,
    STORNO_COMMODITY,
    STORNO_DISCOUNT,
    STORNO_MARKUP,
    WITHDRAWAL,
    ItemSpec,
    ModifierSpec,
    ParentSpec,
    ReceiptSpec,
    TaxSpec,
    build_close_shift,
    build_money_placement,
    build_receipt,
)
from simulators.receipts import (
    PIECE,
    QUANTITY_SCALE,
    VAT_PERCENT,
    Operation,
    date_time,
    line_sum,
    money,
    random_lines,
    vat_included,
    version_of,
)

Mode = Literal["online", "offline", "mixed"]
CASH, CARD, MOBILE = 0, 1, 4
BILL = 1000 * 100  # a customer pays cash in 1000-tenge bills
# Money comes in with a sale and a buy return, goes out with a sale return and a buy.
SIGN = {Operation.BUY: -1, Operation.BUY_RETURN: 1, Operation.SELL: 1, Operation.SELL_RETURN: -1}
# How a line's sum enters its tax's turnover.
TAX_SIGN = {
    COMMODITY: 1,
    STORNO_COMMODITY: -1,
    MARKUP: 1,
    STORNO_MARKUP: -1,
    DISCOUNT: -1,
    STORNO_DISCOUNT: 1,
}


@dataclass(frozen=True, slots=True)
class Planned:
    """One request of the shift, in the order the device sends it."""

    kind: Literal["ticket", "placement", "close"]
    request: Any
    offline: bool


@dataclass(slots=True)
class Shift:
    number: int
    documents: list[Planned]
    z_report: Any  # the device's own, as carried by the close


@dataclass(slots=True)
class _Books:
    """What the device remembers of the open shift, document by document."""

    opened_at: datetime | None = None
    receipts: list[ReceiptSpec] = field(default_factory=list)
    offline_receipts: list[bool] = field(default_factory=list)
    placements: list[tuple[int, int, bool]] = field(default_factory=list)  # kind, sum, offline


def _vat(amount: int) -> tuple[TaxSpec, ...]:
    return (TaxSpec(VAT_PERCENT, vat_included(amount)),)


class ShiftModel:
    """One device, shift after shift. Deterministic for a given `rng`."""

    def __init__(
        self, schema: ModuleType, rng: random.Random, *, kgd_kkm_id: str, start: datetime
    ) -> None:
        self.schema = schema
        self.version = version_of(schema)
        self.rng = rng
        self.kgd_kkm_id = kgd_kkm_id
        self.clock = start
        self.shift_number = 0  # the last shift closed
        self.printed = 0  # printed document numbers run on across shifts
        self.drawer = 0
        self.lifetime_tickets = [0, 0, 0, 0]
        self.lifetime_placements = [0, 0]
        self.grand_totals = [0, 0, 0, 0]  # the non-nullable sums
        self.offline_number = 1_790_000_000
        self._books = _Books()
        self._start_sums = [0, 0, 0, 0]

    # --- making a shift ---

    def shift(self, *, documents: int, mode: Mode) -> Shift:
        """The documents of the next shift, its close last, and the device's Z report."""
        planned = self.documents(documents, mode=mode)
        offline = mode == "offline" or (mode == "mixed" and bool(planned) and planned[-1].offline)
        close, zx = self.close(offline=offline)
        return Shift(self.shift_number, [*planned, close], zx)

    def documents(self, count: int, *, mode: Mode) -> list[Planned]:
        """`count` more receipts and placements of the open shift (opening it if need be):
        all online, all offline, or a random stretch of them offline."""
        rng = self.rng
        number = self.shift_number + 1
        offline = [mode == "offline"] * count
        if mode == "mixed" and count:
            begin = rng.randrange(count)
            end = rng.randrange(begin, count + 1)
            offline[begin:end] = [True] * (end - begin)
        planned: list[Planned] = []
        for index in range(count):
            # An offline backlog may span more than a day: it must never be refused as late.
            long_gap = mode == "offline" and rng.random() < 0.2
            self.clock += timedelta(
                seconds=rng.randint(3600, 6 * 3600) if long_gap else rng.randint(5, 900)
            )
            if self._books.opened_at is None:
                self._books.opened_at = self.clock
            if rng.random() < 0.15:
                planned.append(self._placement(number, offline[index]))
            else:
                planned.append(self._receipt(number, offline[index]))
        return planned

    def close(self, *, offline: bool = False) -> tuple[Planned, Any]:
        """The CLOSE_SHIFT of the open shift (an empty one if nothing was made) with the
        device's Z report; the books then start the next shift."""
        rng = self.rng
        number = self.shift_number + 1
        self.clock += timedelta(seconds=rng.randint(5, 300))
        if self._books.opened_at is None:
            self._books.opened_at = self.clock  # the close is the whole of an empty shift
        zx = self.z_report(self.clock, number=number, closing=True)
        self.printed += 1
        withdraw = rng.random() < 0.2
        request = build_close_shift(
            self.schema,
            when=self.clock,
            shift_number=number,
            document_number=self.printed,
            z_report=zx,
            offline=offline,
            withdraw_money=withdraw,
        )
        self._close(number, withdraw=withdraw)
        return Planned("close", request, offline), zx

    def _close(self, number: int, *, withdraw: bool) -> None:
        self.shift_number = number
        if withdraw:
            self.drawer = 0
        self._books = _Books()
        self._start_sums = list(self.grand_totals)

    def _placement(self, shift_number: int, offline: bool) -> Planned:
        rng = self.rng
        if self.drawer and rng.random() < 0.5:
            kind, amount = WITHDRAWAL, rng.randint(1, self.drawer)
        else:
            kind, amount = DEPOSIT, rng.randint(1, 50_000) * 100
        self.drawer += amount if kind == DEPOSIT else -amount
        self.lifetime_placements[kind] += 1
        self._books.placements.append((kind, amount, offline))
        self.printed += 1
        request = build_money_placement(
            self.schema,
            when=self.clock,
            operation=kind,
            amount=amount,
            shift_number=shift_number,
            document_number=self.printed,
            offline=offline,
        )
        return Planned("placement", request, offline)

    def _receipt(self, shift_number: int, offline: bool) -> Planned:
        rng = self.rng
        operation = rng.choices(
            [Operation.SELL, Operation.SELL_RETURN, Operation.BUY, Operation.BUY_RETURN],
            weights=[60, 15, 10, 15],
        )[0]
        tax_mode = rng.choices(["items", "ticket", "none"], weights=[60, 20, 20])[0]
        item_taxes = tax_mode == "items"
        items = self._lines(item_taxes)
        net = sum(TAX_SIGN[i.kind] * i.sum for i in items)
        discount = markup = None
        if rng.random() < 0.1 and net > 10:
            cut = rng.randint(1, net // 10)
            discount = ModifierSpec(cut, _vat(cut) if item_taxes else (), "Жеңілдік")
            net -= cut
        if rng.random() < 0.1:
            extra = rng.randint(1, 20_000)
            markup = ModifierSpec(extra, _vat(extra) if item_taxes else (), "Үстеме")
            net += extra
        total = net
        payments, taken, change = self._payments(operation, total)
        parent = None
        if operation in (Operation.SELL_RETURN, Operation.BUY_RETURN):
            parent = ParentSpec(
                number=str(rng.randint(10**9, 10**10 - 1)),
                when=self.clock - timedelta(days=rng.randint(1, 30)),
                kgd_kkm_id=self.kgd_kkm_id,
                total=total + rng.randint(0, 100_000),
            )
        self.printed += 1
        number = None
        if offline:
            self.offline_number += 1
            number = self.offline_number
        spec = ReceiptSpec(
            operation=int(operation),
            when=self.clock,
            items=tuple(items),
            total=total,
            payments=tuple(payments),
            shift_number=shift_number,
            document_number=self.printed,
            taken=taken,
            change=change,
            markup=markup,
            discount=discount,
            taxes=_vat(total) if tax_mode == "ticket" else (),
            parent=parent,
            offline_number=number,
        )
        self.lifetime_tickets[operation] += 1
        self.grand_totals[operation] += total
        self._books.receipts.append(spec)
        self._books.offline_receipts.append(offline)
        return Planned("ticket", build_receipt(self.schema, spec), offline)

    def _lines(self, taxed: bool) -> list[ItemSpec]:
        """Commodities, some stornoed in part or whole, some discounts and markups (some of
        them stornoed): never more taken back than sold."""
        rng = self.rng
        items: list[ItemSpec] = []
        for line in random_lines(rng, rng.randint(1, 4)):
            amount = line.sum_tiyn
            items.append(
                ItemSpec(
                    COMMODITY,
                    amount,
                    line.name,
                    line.section_code,
                    line.quantity_milli,
                    line.price_tiyn,
                    line.measure_unit_code,
                    _vat(amount) if taxed else (),
                )
            )
        for sold in list(items):
            if rng.random() < 0.15 and len(items) > 1:
                step = QUANTITY_SCALE if sold.measure_unit_code == PIECE else 1
                back = rng.randint(1, sold.quantity_milli // step) * step
                amount = line_sum(back, sold.price)
                storno = ItemSpec(
                    STORNO_COMMODITY,
                    amount,
                    sold.name,
                    sold.section_code,
                    back,
                    sold.price,
                    sold.measure_unit_code,
                    _vat(amount) if taxed else (),
                )
                items.append(storno)
        net = sum(TAX_SIGN[i.kind] * i.sum for i in items)
        if net <= 0:  # everything was taken back: keep the sale, drop the stornos
            items = [i for i in items if i.kind == COMMODITY]
            net = sum(i.sum for i in items)
        for kind, undo in ((DISCOUNT, STORNO_DISCOUNT), (MARKUP, STORNO_MARKUP)):
            if rng.random() < 0.2 and net > 10:
                amount = rng.randint(1, net // 5) if kind == DISCOUNT else rng.randint(1, 30_000)
                taxes = _vat(amount) if taxed else ()
                items.append(ItemSpec(kind, amount, taxes=taxes))
                if rng.random() < 0.3:
                    items.append(ItemSpec(undo, amount, taxes=taxes))
                else:
                    net += amount if kind == MARKUP else -amount
        return items

    def _payments(
        self, operation: Operation, total: int
    ) -> tuple[list[tuple[int, int]], int | None, int | None]:
        """How the receipt is paid: the drawer never pays out more than it holds."""
        rng = self.rng
        if total == 0:
            return [], None, None
        how = rng.choice(["cash", "card", "mobile", "split"])
        cash = {"cash": total, "split": rng.randint(0, total)}.get(how, 0)
        if SIGN[operation] < 0 and cash > self.drawer:
            cash = 0
        other = total - cash
        payments = [(CASH, cash)] if cash else []
        if other:
            payments.append((MOBILE if how == "mobile" else CARD, other))
        taken = change = None
        if cash and SIGN[operation] > 0 and rng.random() < 0.8:
            taken = -(-cash // BILL) * BILL if rng.random() < 0.7 else cash
            change = taken - cash
        self.drawer += SIGN[operation] * cash
        return payments, taken, change

    # --- the device's own Z (or X) report ---

    def z_report(self, when: datetime, *, number: int | None = None, closing: bool = False) -> Any:
        """The report of the open shift as the device adds it up (a Z when `closing`)."""
        schema = self.schema
        books = self._books
        zx = schema.ZXReport()
        zx.date_time.CopyFrom(date_time(schema, when))
        zx.shift_number = number if number is not None else self.shift_number + 1
        sections: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
        counts: dict[int, dict[str, int]] = {op: defaultdict(int) for op in range(4)}
        taxes: dict[tuple[int, int], dict[int, list[int]]] = defaultdict(
            lambda: defaultdict(lambda: [0, 0, 0])
        )
        paid: dict[int, dict[int, list[int]]] = {op: defaultdict(lambda: [0, 0]) for op in range(4)}
        for spec, offline in zip(books.receipts, books.offline_receipts, strict=True):
            op = spec.operation
            mine = counts[op]
            mine["tickets"] += 1
            mine["sum"] += spec.total
            mine["offline"] += offline
            mine["change"] += spec.change or 0
            for kind, amount in spec.payments:
                paid[op][kind][0] += 1
                paid[op][kind][1] += amount
            for item in spec.items:
                if item.kind == COMMODITY:
                    sections[item.section_code][op][0] += 1
                    sections[item.section_code][op][1] += item.sum
                    mine["items"] += 1
                    mine["items_sum"] += item.sum
                elif item.kind == STORNO_COMMODITY:
                    sections[item.section_code][op][1] -= item.sum
                    mine["items_sum"] -= item.sum
                elif item.kind in (DISCOUNT, MARKUP):
                    name = "discount" if item.kind == DISCOUNT else "markup"
                    mine[name] += 1
                    mine[f"{name}_sum"] += item.sum
                else:
                    name = "discount" if item.kind == STORNO_DISCOUNT else "markup"
                    mine[f"{name}_sum"] -= item.sum
                for tax in item.taxes:
                    self._book_tax(taxes, op, tax, TAX_SIGN[item.kind] * item.sum)
            for name, modifier, sign in (
                ("discount", spec.discount, -1),
                ("markup", spec.markup, 1),
            ):
                if modifier is None:
                    continue
                if modifier.sum:
                    mine[name] += 1
                    mine[f"{name}_sum"] += modifier.sum
                for tax in modifier.taxes:
                    self._book_tax(taxes, op, tax, sign * modifier.sum)
            for tax in spec.taxes:
                self._book_tax(taxes, op, tax, spec.total)
        self._write_report(zx, sections, counts, taxes, paid)
        opened = books.opened_at or when
        zx.open_shift_time.CopyFrom(date_time(schema, opened))
        if closing:
            zx.close_shift_time.CopyFrom(date_time(schema, when))
        return zx

    @staticmethod
    def _book_tax(
        taxes: dict[tuple[int, int], dict[int, list[int]]], op: int, tax: TaxSpec, turnover: int
    ) -> None:
        sign = 1 if turnover >= 0 else -1
        amount = sign * tax.sum
        entry = taxes[tax.tax_type, tax.percent][op]
        entry[0] += turnover
        entry[1] += amount
        entry[2] += turnover - amount if tax.included else turnover

    def _write_report(
        self,
        zx: Any,
        sections: dict[str, dict[int, list[int]]],
        counts: dict[int, dict[str, int]],
        taxes: dict[tuple[int, int], dict[int, list[int]]],
        paid: dict[int, dict[int, list[int]]],
    ) -> None:
        schema = self.schema
        for code in sorted(sections):
            section = zx.sections.add(section_code=code)
            for op in sorted(sections[code]):
                lines, amount = sections[code][op]
                section.operations.add(operation=op, count=lines, sum=money(schema, amount))
        for op in range(4):
            mine = counts[op]
            zx.operations.add(
                operation=op, count=mine["items"], sum=money(schema, mine["items_sum"])
            )
            zx.discounts.add(
                operation=op, count=mine["discount"], sum=money(schema, mine["discount_sum"])
            )
            zx.markups.add(
                operation=op, count=mine["markup"], sum=money(schema, mine["markup_sum"])
            )
            zx.total_result.add(operation=op, count=mine["tickets"], sum=money(schema, mine["sum"]))
        for tax_type, percent in sorted(taxes):
            tax = zx.taxes.add(percent=percent)
            if self.version == 203:
                tax.tax_type = tax_type
            else:
                tax.type = tax_type
            for op in sorted(taxes[tax_type, percent]):
                turnover, amount, without = taxes[tax_type, percent][op]
                tax.operations.add(
                    operation=op,
                    turnover=money(schema, turnover),
                    sum=money(schema, amount),
                    turnover_without_tax=money(schema, without),
                )
        for op in range(4):
            zx.start_shift_non_nullable_sums.add(
                operation=op, sum=money(schema, self._start_sums[op])
            )
        for op in range(4):
            mine = counts[op]
            ticket_op = zx.ticket_operations.add(
                operation=op,
                tickets_total_count=self.lifetime_tickets[op],
                tickets_count=mine["tickets"],
                tickets_sum=money(schema, mine["sum"]),
                offline_count=mine["offline"],
                discount_sum=money(schema, mine["discount_sum"]),
                markup_sum=money(schema, mine["markup_sum"]),
                change_sum=money(schema, mine["change"]),
            )
            for kind in sorted(paid[op]):
                receipts, amount = paid[op][kind]
                ticket_op.payments.add(payment=kind, sum=money(schema, amount), count=receipts)
        for kind in (DEPOSIT, WITHDRAWAL):
            mine_placements = [p for p in self._books.placements if p[0] == kind]
            zx.money_placements.add(
                operation=kind,
                operations_total_count=self.lifetime_placements[kind],
                operations_count=len(mine_placements),
                operations_sum=money(schema, sum(p[1] for p in mine_placements)),
                offline_count=sum(p[2] for p in mine_placements),
            )
        zx.cash_sum.CopyFrom(money(schema, self.drawer))
        revenue = sum(SIGN[Operation(op)] * counts[op]["sum"] for op in range(4))
        zx.revenue.sum.CopyFrom(money(schema, abs(revenue)))
        zx.revenue.is_negative = revenue < 0
        for op in range(4):
            zx.non_nullable_sums.add(operation=op, sum=money(schema, self.grand_totals[op]))
