"""The rules of a receipt (TICKET): what a gateway must not sign, and what it adds to the tally.

One pass over the receipt checks it and reduces it to a `ledger.tally.Receipt`. A refusal is
INCORRECT_REQUEST_DATA whose text starts with the field and says the rule, so a firmware author
can fix the document. Nothing here looks at the time: an offline receipt is never refused for
being late.

The rules (protocol.md "Receipts"; where it is silent, inferred):

- items: at least one; each carries the line its type names (commodity, storno of a commodity,
  markup, storno of a markup, discount, storno of a discount); a commodity or its storno has a
  section code, a positive quantity in thousandths, and a sum equal to quantity x price
  rounded half up to the tiyn; modifier lines have a positive sum;
- a receipt cannot take back more than it holds: per section, stornos at most the commodities;
  stornoed discounts (markups) at most the discounts (markups); per tax, the net turnover and
  the net tax are not negative;
- taxes on items (their lines and the ticket-level modifiers) or on the ticket, never both; in
  one list each percent at most once, at most 100.00 %; the tax equals percent of the turnover
  (the line's sum, or the total for a ticket tax) to the tiyn, rounded half up: included in the
  sum (p / (100 % + p)) when `is_in_total_sum`, on top of it (p / 100 %) otherwise;
- amounts.total = commodities - stornos - discounts + markups (ticket-level ones included);
- at most one payment per type; the payments add up to the total; a payment of zero is not
  counted; taken and change only with a cash payment, and then taken - change = the cash paid;
- a return (BUY_RETURN, SELL_RETURN) carries its parent ticket, whose total is not below the
  return's; other receipts may carry one, which is not looked at.
"""

from datetime import datetime
from typing import Any

from ledger.errors import Refusal
from ledger.tally import BUY_RETURN, CASH, OPERATION_NAMES, SELL_RETURN, Receipt, TaxKey
from ledger.wire import ResultCode

QUANTITY_SCALE = 1000  # quantities are in thousandths
PERCENT_SCALE = 10_000  # percents in hundredths: 1200 = 12.00 %
MAX_ITEMS = 10_000
# ItemTypeEnum value -> the field holding that line (the same numbers in 2.0.3 and 2.0.4).
ITEM_FIELDS = {
    1: "commodity",
    2: "storno_commodity",
    3: "markup",
    4: "storno_markup",
    5: "discount",
    6: "storno_discount",
}
COMMODITY, STORNO_COMMODITY, MARKUP, STORNO_MARKUP, DISCOUNT, STORNO_DISCOUNT = range(1, 7)
# The sign a line's sum takes in its tax's turnover.
TURNOVER_SIGN = {1: 1, 2: -1, 3: 1, 4: -1, 5: -1, 6: 1}


def refuse(text: str) -> Refusal:
    return Refusal(ResultCode.INCORRECT_REQUEST_DATA, text)


def tiyn(money: Any, field: str) -> int:
    """Money as a number of tiyn; refuses coins outside 0..99."""
    coins: int = money.coins
    if coins > 99:
        raise refuse(f"{field}.coins: {coins} is not 0..99")
    return money.bills * 100 + coins  # type: ignore[no-any-return]


def line_sum_matches(quantity: int, price: int, line_sum: int) -> bool:
    """quantity (thousandths) x price, rounded half up to the tiyn, equals the line's sum."""
    return (quantity * price + QUANTITY_SCALE // 2) // QUANTITY_SCALE == line_sum


def tax_of(turnover: int, percent: int, *, included: bool) -> int:
    """The tax on a turnover, rounded half up: inside it when included, on top otherwise.

    Integer arithmetic, because float division would round 0.5 cases either way.
    """
    denominator = PERCENT_SCALE + percent if included else PERCENT_SCALE
    return (2 * turnover * percent + denominator) // (2 * denominator)


def _tax_type_field(ticket: Any) -> str:
    """2.0.3 calls it tax_type (uint32), 2.0.4 type (TaxTypeEnum): same number, same meaning."""
    name = _TAX_TYPE_FIELDS.get(type(ticket))
    if name is None:
        tax = ticket.DESCRIPTOR.nested_types_by_name["Tax"]
        name = "tax_type" if "tax_type" in tax.fields_by_name else "type"
        _TAX_TYPE_FIELDS[type(ticket)] = name
    return name


_TAX_TYPE_FIELDS: dict[type, str] = {}


def _taxes_field(index: int, name: str) -> str:
    # Built only for a refusal: formatting a field name per line costs more than checking it.
    return f"items[{index}].{name}.taxes" if index >= 0 else name


def _add_taxes(  # noqa: PLR0917  # on every line: positional arguments are cheaper
    taxes: Any,
    base: int,
    sign: int,
    into: dict[TaxKey, list[int]],
    type_field: str,
    where: tuple[int, str],
) -> None:
    """Checks one list of taxes on a turnover of `base` tiyn and adds them, signed, to `into`.
    `where` is (item index, line name), or (-1, field) for a list outside the items."""
    # A set only for a list of several: most lines carry one tax.
    seen: set[int] | None = set() if len(taxes) > 1 else None
    for index, tax in enumerate(taxes):
        percent: int = tax.percent
        money = tax.sum
        coins: int = money.coins
        amount: int = money.bills * 100 + coins
        included: bool = tax.is_in_total_sum
        denominator = PERCENT_SCALE + percent if included else PERCENT_SCALE
        expected = (2 * base * percent + denominator) // (2 * denominator)
        if percent > PERCENT_SCALE or coins > 99 or amount != expected:
            _refuse_tax(tax, index, base, _taxes_field(*where))
        if seen is not None:
            if percent in seen:
                field = _taxes_field(*where)
                raise refuse(f"{field}[{index}].percent: {percent} given twice in one list")
            seen.add(percent)
        without = base - amount if included else base
        key = (getattr(tax, type_field), percent)
        acc = into.get(key)
        if acc is None:
            into[key] = [sign * base, sign * amount, sign * without]
        else:
            acc[0] += sign * base
            acc[1] += sign * amount
            acc[2] += sign * without


def _refuse_tax(tax: Any, index: int, base: int, field: str) -> None:
    """Raises the refusal naming what is wrong with one tax; returns when nothing is."""
    percent: int = tax.percent
    if percent > PERCENT_SCALE:
        raise refuse(f"{field}[{index}].percent: {percent} is above 10000 (100.00 %)")
    amount = tiyn(tax.sum, f"{field}[{index}].sum")
    included: bool = tax.is_in_total_sum
    expected = tax_of(base, percent, included=included)
    if amount != expected:
        how = "included in" if included else "on top of"
        raise refuse(
            f"{field}[{index}].sum: {amount} tiyn is not {percent / 100:.2f} % {how} the"
            f" turnover of {base} tiyn, which is {expected}"
        )


class _Lines:
    """What the items (and the ticket-level modifiers) add up to, while they are walked."""

    __slots__ = (
        "discount_sum",
        "discounts",
        "first_taxed",
        "items_count",
        "items_sum",
        "last_storno",
        "last_storno_discount",
        "last_storno_markup",
        "markup_sum",
        "markups",
        "sections",
        "taxes",
    )

    def __init__(self) -> None:
        self.sections: dict[str, list[int]] = {}
        self.last_storno: dict[str, int] = {}
        self.taxes: dict[TaxKey, list[int]] = {}
        self.items_count = self.items_sum = 0
        self.discounts = self.discount_sum = self.markups = self.markup_sum = 0
        self.last_storno_discount = self.last_storno_markup = -1
        self.first_taxed = -1  # index of the first item with taxes

    def modifier(self, line: Any, index: int, kind: int, name: str) -> int:
        amount = tiyn(line.sum, f"items[{index}].{name}.sum")
        if amount == 0:
            raise refuse(f"items[{index}].{name}.sum: a {name} line of zero")
        if kind == MARKUP:
            self.markups += 1
            self.markup_sum += amount
        elif kind == STORNO_MARKUP:
            self.markup_sum -= amount
            self.last_storno_markup = index
        elif kind == DISCOUNT:
            self.discounts += 1
            self.discount_sum += amount
        else:
            self.discount_sum -= amount
            self.last_storno_discount = index
        return amount

    def check_nothing_negative(self) -> None:
        for code, (_, net) in self.sections.items():
            if net < 0:
                raise refuse(
                    f"items[{self.last_storno[code]}].storno_commodity.sum: stornos in section"
                    f" {code!r} exceed its commodities by {-net} tiyn"
                )
        if self.markup_sum < 0:
            at = self.last_storno_markup
            raise refuse(f"items[{at}].storno_markup.sum: more than the markups")
        if self.discount_sum < 0:
            at = self.last_storno_discount
            raise refuse(f"items[{at}].storno_discount.sum: more than the discounts")

    def ticket_modifiers(self, amounts: Any, type_field: str) -> None:
        """amounts.markup and amounts.discount: counted when not zero; taxes are item taxes."""
        for name, sign in (("markup", 1), ("discount", -1)):
            if not amounts.HasField(name):
                continue
            modifier = getattr(amounts, name)
            amount = tiyn(modifier.sum, f"amounts.{name}.sum")
            if amount and sign > 0:
                self.markups += 1
                self.markup_sum += amount
            elif amount:
                self.discounts += 1
                self.discount_sum += amount
            if modifier.taxes:
                self.first_taxed = max(self.first_taxed, 0)
                where = (-1, f"amounts.{name}.taxes")
                _add_taxes(modifier.taxes, amount, sign, self.taxes, type_field, where)


def _walk_items(items: Any, type_field: str) -> _Lines:  # noqa: PLR0915  # one hot loop
    """Checks every item and adds it up. Written for speed: it runs for every line of every
    receipt, so commodity lines and their single tax are handled inline, every protobuf field
    is read once, and field names are built only to refuse (by `_refuse_line`)."""
    if not items:
        raise refuse("items: a ticket needs at least one item")
    if len(items) > MAX_ITEMS:
        raise refuse(f"items: more than {MAX_ITEMS}")
    lines = _Lines()
    sections = lines.sections
    tax_totals = lines.taxes
    items_count = items_sum = 0
    for index, item in enumerate(items):
        kind: int = item.type
        if kind <= STORNO_COMMODITY:
            # An unset line reads as an empty one, whose zero quantity refuses below.
            line = item.commodity if kind == COMMODITY else item.storno_commodity
            price, money = line.price, line.sum
            price_coins: int = price.coins
            coins: int = money.coins
            quantity: int = line.quantity
            price_tiyn: int = price.bills * 100 + price_coins
            amount: int = money.bills * 100 + coins
            code: str = line.section_code
            if (
                price_coins > 99
                or coins > 99
                or not quantity
                or not code
                or (quantity * price_tiyn + QUANTITY_SCALE // 2) // QUANTITY_SCALE != amount
            ):
                _refuse_line(item, index)
            acc = sections.get(code)
            if acc is None:
                acc = sections[code] = [0, 0]
            if kind == COMMODITY:
                acc[0] += 1
                acc[1] += amount
                items_count += 1
                items_sum += amount
                turnover = amount
            else:
                acc[1] -= amount
                items_sum -= amount
                lines.last_storno[code] = index
                turnover = -amount
        else:
            name = ITEM_FIELDS[kind]  # parsing refuses values outside the enum
            if not item.HasField(name):
                raise refuse(f"items[{index}].{name}: missing from an item of type {kind}")
            line = getattr(item, name)
            amount = lines.modifier(line, index, kind, name)
            turnover = TURNOVER_SIGN[kind] * amount
        taxes = line.taxes
        if not taxes:
            continue
        if lines.first_taxed < 0:
            lines.first_taxed = index
        if len(taxes) > 1:
            where = (index, ITEM_FIELDS[kind])
            _add_taxes(taxes, amount, 1 if turnover >= 0 else -1, tax_totals, type_field, where)
            continue
        tax = taxes[0]  # one tax, the usual case: inline
        percent: int = tax.percent
        money = tax.sum
        coins = money.coins
        tax_sum: int = money.bills * 100 + coins
        included: bool = tax.is_in_total_sum
        denominator = PERCENT_SCALE + percent if included else PERCENT_SCALE
        if (
            percent > PERCENT_SCALE
            or coins > 99
            or (2 * amount * percent + denominator) // (2 * denominator) != tax_sum
        ):
            _refuse_tax(tax, 0, amount, _taxes_field(index, ITEM_FIELDS[kind]))
        if turnover < 0:
            tax_sum = -tax_sum
        key = (getattr(tax, type_field), percent)
        acc = tax_totals.get(key)
        without = turnover - tax_sum if included else turnover
        if acc is None:
            tax_totals[key] = [turnover, tax_sum, without]
        else:
            acc[0] += turnover
            acc[1] += tax_sum
            acc[2] += without
    lines.items_count = items_count
    lines.items_sum = items_sum
    lines.check_nothing_negative()
    return lines


def _refuse_line(item: Any, index: int) -> None:
    """Raises the refusal naming what is wrong with a commodity or storno line."""
    kind: int = item.type
    name = ITEM_FIELDS[kind]
    if not item.HasField(name):
        raise refuse(f"items[{index}].{name}: missing from an item of type {kind}")
    line = getattr(item, name)
    price = tiyn(line.price, f"items[{index}].{name}.price")
    amount = tiyn(line.sum, f"items[{index}].{name}.sum")
    quantity: int = line.quantity
    if not quantity:
        raise refuse(f"items[{index}].{name}.quantity: must be positive")
    if not line.section_code:
        raise refuse(f"items[{index}].{name}.section_code: empty")
    if not line_sum_matches(quantity, price, amount):
        raise refuse(
            f"items[{index}].{name}.sum: {amount} tiyn is not quantity {quantity}/1000"
            f" x price {price}"
        )


def summarize_ticket(ticket: Any) -> Receipt:
    """Checks the receipt and returns what it adds to the tally. Raises Refusal(13)."""
    type_field = _tax_type_field(ticket)
    lines = _walk_items(ticket.items, type_field)
    amounts = ticket.amounts
    total = tiyn(amounts.total, "amounts.total")
    if amounts.HasField("markup") or amounts.HasField("discount"):
        lines.ticket_modifiers(amounts, type_field)
    net = lines.items_sum - lines.discount_sum + lines.markup_sum
    if total != net:
        raise refuse(
            f"amounts.total: {total} tiyn is not commodities - stornos - discounts + markups"
            f" = {net} tiyn"
        )
    taxes = lines.taxes
    if ticket.taxes:
        if lines.first_taxed >= 0:
            raise refuse("taxes: given on the ticket and on its items; one or the other")
        _add_taxes(ticket.taxes, total, 1, taxes, type_field, (-1, "taxes"))
    for (tax_type, percent), (turnover, amount, _) in taxes.items():
        if turnover < 0 or amount < 0:
            raise refuse(f"items: the net turnover or tax of tax {tax_type}/{percent} is negative")
    payments, change = _check_payments(ticket, total)
    operation: int = ticket.operation
    if operation in (BUY_RETURN, SELL_RETURN):
        _check_parent(ticket, operation, total)
    # Positional: keywords cost a microsecond more, on every receipt. The order is Receipt's.
    return Receipt(
        operation,
        total,
        lines.items_count,
        lines.items_sum,
        lines.discounts,
        lines.discount_sum,
        lines.markups,
        lines.markup_sum,
        lines.sections,
        taxes,
        payments,
        change,
        bool(ticket.offline_ticket_number),
    )


def check_ticket(ticket: Any) -> int:
    """Checks the receipt; returns its total in tiyn. Raises Refusal(INCORRECT_REQUEST_DATA)."""
    return summarize_ticket(ticket).total


def _check_payments(ticket: Any, total: int) -> tuple[dict[int, int], int]:
    """Payment type -> sum (zeros left out), and the change handed out."""
    payments: dict[int, int] = {}
    zeros: list[int] = []  # types paid zero: left out of the tally, still only once each
    paid = 0
    for index, payment in enumerate(ticket.payments):
        kind: int = payment.type
        if kind in payments or kind in zeros:
            raise refuse(f"payments[{index}].type: payment type {kind} given twice")
        money = payment.sum
        coins: int = money.coins
        if coins > 99:
            tiyn(money, f"payments[{index}].sum")
        amount: int = money.bills * 100 + coins
        if amount:
            payments[kind] = amount
            paid += amount
        else:
            zeros.append(kind)
    if paid != total:
        raise refuse(f"payments: sum {paid} tiyn differs from amounts.total {total}")
    amounts = ticket.amounts
    taken = tiyn(amounts.taken, "amounts.taken") if amounts.HasField("taken") else None
    change = tiyn(amounts.change, "amounts.change") if amounts.HasField("change") else 0
    cash = payments.get(CASH, 0)
    if not cash:
        if taken or change:
            raise refuse("amounts.taken: taken or change given without a cash payment")
    elif taken is None:
        if change:
            raise refuse("amounts.change: change given without amounts.taken")
    elif taken - change != cash:
        raise refuse(
            f"amounts.change: {change} tiyn is not amounts.taken {taken} minus the cash"
            f" payment {cash}"
        )
    return payments, change


def _check_parent(ticket: Any, operation: int, total: int) -> None:
    if not ticket.HasField("parent_ticket"):
        raise refuse(f"parent_ticket: a {OPERATION_NAMES[operation]} needs its parent ticket")
    parent = ticket.parent_ticket
    if not parent.parent_ticket_number:
        raise refuse("parent_ticket.parent_ticket_number: empty")
    if not parent.kgd_kkm_id:
        raise refuse("parent_ticket.kgd_kkm_id: empty")
    when, at = parent.parent_ticket_data_time.date, parent.parent_ticket_data_time.time
    try:
        datetime(when.year, when.month, when.day, at.hour, at.minute, at.second)
    except ValueError as err:
        raise refuse(f"parent_ticket.parent_ticket_data_time: not a moment ({err})") from err
    parent_total = tiyn(parent.parent_ticket_total, "parent_ticket.parent_ticket_total")
    if parent_total < total:
        raise refuse(
            f"parent_ticket.parent_ticket_total: {parent_total} tiyn is less than the"
            f" return's total {total}"
        )
