"""Basic checks of a receipt (TICKET): the arithmetic a gateway must not sign if it is wrong.

The refusal text names the field and the rule, so a firmware author can fix the document.
The full rule set (taxes, stornos against turnover, returns) lives with the ledger's tally.
"""

from typing import Any

from ledger.errors import Refusal
from ledger.results import ResultCode

QUANTITY_SCALE = 1000  # quantities are in thousandths
MAX_ITEMS = 10_000


def refuse(text: str) -> Refusal:
    return Refusal(ResultCode.INCORRECT_REQUEST_DATA, text)


def tiyn(money: Any, field: str) -> int:
    """Money as a number of tiyn; refuses coins outside 0..99."""
    if money.coins > 99:
        raise refuse(f"{field}.coins: {money.coins} is not 0..99")
    return int(money.bills) * 100 + int(money.coins)


def line_sum_matches(quantity: int, price: int, line_sum: int) -> bool:
    """quantity (thousandths) x price, rounded half up to the tiyn, equals the line's sum."""
    return (quantity * price + QUANTITY_SCALE // 2) // QUANTITY_SCALE == line_sum


def check_ticket(ticket: Any) -> int:
    """Checks the receipt; returns its total in tiyn. Raises Refusal(INCORRECT_REQUEST_DATA)."""
    if not ticket.items:
        raise refuse("items: a ticket needs at least one item")
    if len(ticket.items) > MAX_ITEMS:
        raise refuse(f"items: more than {MAX_ITEMS}")
    for index, item in enumerate(ticket.items):
        for kind in ("commodity", "storno_commodity"):
            if item.HasField(kind):
                line = getattr(item, kind)
                where = f"items[{index}].{kind}"
                quantity, price = line.quantity, tiyn(line.price, f"{where}.price")
                line_sum = tiyn(line.sum, f"{where}.sum")
                if not line_sum_matches(quantity, price, line_sum):
                    raise refuse(
                        f"{where}.sum: {line_sum} tiyn is not quantity {quantity}/1000"
                        f" x price {price}"
                    )
    total = tiyn(ticket.amounts.total, "amounts.total")
    seen_types: set[int] = set()
    paid = 0
    for index, payment in enumerate(ticket.payments):
        if payment.type in seen_types:
            raise refuse(f"payments[{index}].type: payment type {payment.type} given twice")
        seen_types.add(payment.type)
        paid += tiyn(payment.sum, f"payments[{index}].sum")
    if ticket.payments and paid != total:
        raise refuse(f"payments: sum {paid} tiyn differs from amounts.total {total}")
    amounts = ticket.amounts
    if amounts.HasField("taken") and amounts.HasField("change"):
        taken = tiyn(amounts.taken, "amounts.taken")
        change = tiyn(amounts.change, "amounts.change")
        if change > taken:
            raise refuse(f"amounts.change: {change} tiyn exceeds amounts.taken {taken}")
    return total
