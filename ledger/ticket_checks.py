"""Basic checks of a receipt (TICKET): the arithmetic a gateway must not sign if it is wrong.

The refusal text names the field and the rule, so a firmware author can fix the document.
The full rule set (taxes, stornos against turnover, returns) lives with the ledger's tally.
"""

from typing import Any

from ledger.errors import Refusal
from ledger.results import ResultCode

QUANTITY_SCALE = 1000  # quantities are in thousandths
MAX_ITEMS = 10_000
# ItemTypeEnum value -> the field holding that line (the same numbers in 2.0.3 and 2.0.4).
LINE_KINDS = {1: "commodity", 2: "storno_commodity"}


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


def _check_line(line: Any, index: int, kind: str) -> None:
    price, line_sum = line.price, line.sum
    if price.coins > 99 or line_sum.coins > 99:  # tiyn() refuses, naming the field
        tiyn(price, f"items[{index}].{kind}.price")
        tiyn(line_sum, f"items[{index}].{kind}.sum")
    price_tiyn = price.bills * 100 + price.coins
    sum_tiyn = line_sum.bills * 100 + line_sum.coins
    if not line_sum_matches(line.quantity, price_tiyn, sum_tiyn):
        raise refuse(
            f"items[{index}].{kind}.sum: {sum_tiyn} tiyn is not quantity {line.quantity}/1000"
            f" x price {price_tiyn}"
        )


def check_ticket(ticket: Any) -> int:
    """Checks the receipt; returns its total in tiyn. Raises Refusal(INCORRECT_REQUEST_DATA)."""
    items = ticket.items
    if not items:
        raise refuse("items: a ticket needs at least one item")
    if len(items) > MAX_ITEMS:
        raise refuse(f"items: more than {MAX_ITEMS}")
    for index, item in enumerate(items):
        # Only commodity lines carry quantity x price; the kind is known from the item's type.
        kind = LINE_KINDS.get(item.type)
        if kind is not None and item.HasField(kind):
            _check_line(getattr(item, kind), index, kind)
    total = tiyn(ticket.amounts.total, "amounts.total")
    if ticket.payments:
        seen_types: set[int] = set()
        paid = 0
        for index, payment in enumerate(ticket.payments):
            if payment.type in seen_types:
                raise refuse(f"payments[{index}].type: payment type {payment.type} given twice")
            seen_types.add(payment.type)
            paid += tiyn(payment.sum, f"payments[{index}].sum")
        if paid != total:
            raise refuse(f"payments: sum {paid} tiyn differs from amounts.total {total}")
    amounts = ticket.amounts
    if amounts.HasField("taken") and amounts.HasField("change"):
        taken = tiyn(amounts.taken, "amounts.taken")
        change = tiyn(amounts.change, "amounts.change")
        if change > taken:
            raise refuse(f"amounts.change: {change} tiyn exceeds amounts.taken {taken}")
    return total
