"""Valid KKM requests for either protocol version: receipts (TICKET), SYSTEM and INFO.

Pure functions, no I/O. Give them the generated module of a version (`ledger.schemas.SCHEMAS[203]`
or `[204]`) and they return a Request that serializes and parses back in that version, every
required field set.

Money is counted in whole tiyn (1 tenge = 100 tiyn) and the arithmetic is exact integer
arithmetic, rounded half up where a division is unavoidable, with the same rule the gateway checks
(`ledger.ticket_checks`): a line's sum is quantity (thousandths) x price; VAT is included in each
line at 12 %; the total is the sum of the lines; a cash customer hands over whole 1000-tenge bills.

The generated modules are typed per version, but `SCHEMAS` holds them as plain modules, so the
message filling below works on `Any` and every public function returns a typed union.
"""

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from types import ModuleType
from typing import Any, Literal, TypeAlias, cast

from ledger.schemas import SCHEMAS
from ledger.wire import KZ_TIME, Command
from ofdproto.kkm.v203 import kkm_pb2 as pb203
from ofdproto.kkm.v204 import kkm_pb2 as pb204

Request: TypeAlias = pb203.Request | pb204.Request
Money: TypeAlias = pb203.Money | pb204.Money
DateTime: TypeAlias = pb203.DateTime | pb204.DateTime
PaymentKind: TypeAlias = Literal["cash", "card", "mobile"]

# All of Kazakhstan is on UTC+5 since 1 March 2024, and protocol date-times carry no zone.

TIYN_PER_TENGE = 100
QUANTITY_SCALE = 1000  # quantities are in thousandths: 1000 = one piece, 250 = 250 g of a kg item
CASH_BILL_TIYN = 1000 * TIYN_PER_TENGE  # a cash customer pays with 1000-tenge bills
VAT_PERCENT = 1200  # hundredths of a percent: 12.00 %
PERCENT_SCALE = 10_000
# 2.0.3 carries tax and taxation types as bare uint32; 2.0.4 made them enums with these values.
VAT_TAX_TYPE = 100  # TaxTypeEnum.VAT
STS_TAXATION_TYPE = 100  # TaxationTypeEnum.STS

# Measure unit codes of the Kazakh classifier (the same numbers as OKEI).
PIECE = "796"
KILOGRAM = "166"
LITRE = "112"


class Operation(IntEnum):
    """OperationTypeEnum, the same numbers in 2.0.3 and 2.0.4."""

    BUY = 0
    BUY_RETURN = 1
    SELL = 2
    SELL_RETURN = 3


# PaymentTypeEnum values; 2.0.4 dropped CREDIT (2) and TARE (3) but kept these numbers.
PAYMENT_TYPES: dict[PaymentKind, int] = {"cash": 0, "card": 1, "mobile": 4}


# --- arithmetic, in tiyn ---


def line_sum(quantity_milli: int, price_tiyn: int) -> int:
    """quantity / 1000 x price, rounded half up to the tiyn (the gateway's own rule)."""
    return (quantity_milli * price_tiyn + QUANTITY_SCALE // 2) // QUANTITY_SCALE


def vat_included(sum_tiyn: int, percent: int = VAT_PERCENT) -> int:
    """The VAT inside a price that includes it: sum x p / (100 % + p), rounded half up.

    Integer arithmetic, because float division would round 0.5 cases either way.
    """
    denominator = PERCENT_SCALE + percent
    return (2 * sum_tiyn * percent + denominator) // (2 * denominator)


def cash_taken(total_tiyn: int) -> int:
    """What a customer hands over for a total: rounded up to whole 1000-tenge bills."""
    return -(-total_tiyn // CASH_BILL_TIYN) * CASH_BILL_TIYN


@dataclass(frozen=True, slots=True)
class Line:
    """One receipt line: a commodity sold by the piece or by weight or volume."""

    name: str
    section_code: str
    quantity_milli: int
    price_tiyn: int
    measure_unit_code: str = PIECE

    def __post_init__(self) -> None:
        if self.quantity_milli <= 0:
            raise ValueError(f"quantity_milli must be positive, got {self.quantity_milli}")
        if self.price_tiyn < 0:
            raise ValueError(f"price_tiyn must not be negative, got {self.price_tiyn}")
        if not self.section_code:
            raise ValueError("section_code is required by the protocol")

    @property
    def sum_tiyn(self) -> int:
        return line_sum(self.quantity_milli, self.price_tiyn)

    @property
    def vat_tiyn(self) -> int:
        return vat_included(self.sum_tiyn)


@dataclass(frozen=True, slots=True)
class Settlement:
    """How a receipt is paid: taken and change only for cash."""

    total: int
    taken: int | None = None
    change: int | None = None


def settle(lines: Sequence[Line], payment: PaymentKind) -> Settlement:
    total = sum(line.sum_tiyn for line in lines)
    if payment != "cash":
        return Settlement(total)
    taken = cash_taken(total)
    return Settlement(total, taken, taken - total)


# --- small message helpers ---


def version_of(schema: ModuleType) -> int:
    """The header version (203, 204) whose generated module `schema` is."""
    for version, module in SCHEMAS.items():
        if module is schema:
            return version
    raise ValueError(f"{schema.__name__} is not a served protocol version")


def money(schema: ModuleType, amount_tiyn: int) -> Money:
    """{bills: tenge, coins: tiyn}; coins always 0..99."""
    if amount_tiyn < 0:
        raise ValueError(f"money cannot be negative on the wire, got {amount_tiyn} tiyn")
    bills, coins = divmod(amount_tiyn, TIYN_PER_TENGE)
    return cast(Money, schema.Money(bills=bills, coins=coins))


def tiyn(value: Money) -> int:
    return value.bills * TIYN_PER_TENGE + value.coins


def date_time(schema: ModuleType, when: datetime) -> DateTime:
    """A protocol DateTime in Kazakh local time; an aware `when` is converted to UTC+5 first."""
    if when.tzinfo is not None:
        when = when.astimezone(KZ_TIME)
    return cast(
        DateTime,
        schema.DateTime(
            date={"year": when.year, "month": when.month, "day": when.day},
            time={"hour": when.hour, "minute": when.minute, "second": when.second},
        ),
    )


# --- receipts ---


def build_ticket(
    schema: ModuleType,
    *,
    operation: Operation = Operation.SELL,
    when: datetime,
    shift_number: int,
    document_number: int,
    lines: Sequence[Line],
    payment: PaymentKind,
    operator_code: int = 1,
    offline_number: int | None = None,
    shift_document_number: int | None = None,
) -> Request:
    """A TICKET request with one commodity item per line, VAT on each item, one payment.

    `document_number` is the printed document number; 2.0.3 also carries the number of the
    document within the shift, which defaults to the same value when not given.
    """
    if not lines:
        raise ValueError("a receipt needs at least one line")
    version = version_of(schema)
    settlement = settle(lines, payment)

    request: Any = schema.Request(command=Command.TICKET)
    ticket = request.ticket
    ticket.operation = int(operation)
    ticket.date_time.CopyFrom(date_time(schema, when))
    ticket.operator.code = operator_code
    # Optional in 2.0.3, required in 2.0.4; a shop is the trading domain in both.
    ticket.domain.type = schema.DOMAIN_TRADING
    for line in lines:
        item = ticket.items.add()
        item.type = schema.TicketRequest.Item.ITEM_TYPE_COMMODITY
        commodity = item.commodity
        commodity.name = line.name
        commodity.section_code = line.section_code
        commodity.quantity = line.quantity_milli
        commodity.price.CopyFrom(money(schema, line.price_tiyn))
        commodity.sum.CopyFrom(money(schema, line.sum_tiyn))
        commodity.measure_unit_code = line.measure_unit_code
        _fill_vat(schema, version, commodity.taxes.add(), line.vat_tiyn)

    # The payment carries the total even in cash: what was handed over is amounts.taken, and the
    # gateway checks that the payments add up to the total.
    paid = ticket.payments.add()
    paid.type = PAYMENT_TYPES[payment]
    paid.sum.CopyFrom(money(schema, settlement.total))
    ticket.amounts.total.CopyFrom(money(schema, settlement.total))
    if settlement.taken is not None and settlement.change is not None:
        ticket.amounts.taken.CopyFrom(money(schema, settlement.taken))
        ticket.amounts.change.CopyFrom(money(schema, settlement.change))

    ticket.fr_shift_number = shift_number
    ticket.printed_document_number = document_number
    if version == 203:  # field 15 is reserved in 2.0.4
        ticket.shift_document_number = (
            document_number if shift_document_number is None else shift_document_number
        )
    if offline_number is not None:
        ticket.offline_ticket_number = offline_number
    return cast(Request, request)


def _fill_vat(schema: ModuleType, version: int, tax: Any, vat_tiyn: int) -> None:
    """VAT included in the item's sum; the one field whose name and type differ by version."""
    if version == 203:
        tax.tax_type = VAT_TAX_TYPE
    else:
        tax.type = VAT_TAX_TYPE  # TaxTypeEnum.VAT
    tax.taxation_type = STS_TAXATION_TYPE  # a bare uint32 in 2.0.3, TaxationTypeEnum.STS in 2.0.4
    tax.percent = VAT_PERCENT
    tax.sum.CopyFrom(money(schema, vat_tiyn))
    tax.is_in_total_sum = True


# --- service requests ---


@dataclass(frozen=True, slots=True)
class Organisation:
    """The taxpayer a device is registered to, as 2.0.4 devices report it in every service block."""

    title: str
    address: str
    iin: str  # IIN of a sole trader or BIN of a company: 12 digits, last one a check digit
    oked: str  # economic activity code
    address_kz: str


DEFAULT_ORG = Organisation(
    title="ТОО «Дала Маркет»",
    address="г. Алматы, ул. Абая, д. 10",
    iin="180240012342",
    oked="47111",  # retail sale in non-specialised stores, food predominating
    address_kz="Алматы қ., Абай к-сі, 10 үй",
)


def build_system(
    schema: ModuleType, *, get_reg_info: bool = False, org: Organisation = DEFAULT_ORG
) -> Request:
    """A SYSTEM (keep-alive) request, optionally asking for the registration info."""
    request: Any = _service_request(schema, Command.SYSTEM, org)
    if get_reg_info:
        request.service.get_reg_info = True
    return cast(Request, request)


def build_info(schema: ModuleType, *, org: Organisation = DEFAULT_ORG) -> Request:
    """An INFO (initialisation) request with an empty service block."""
    return cast(Request, _service_request(schema, Command.INFO, org))


def _service_request(schema: ModuleType, command: Command, org: Organisation) -> Any:
    request: Any = schema.Request(command=command)
    service = request.service
    service.SetInParent()  # "empty" still means present: the OFD answers into it
    if version_of(schema) >= 204:
        # 2.0.4 makes reg_info required, and every field of its org.
        service.reg_info.kkm.SetInParent()
        service.reg_info.org.title = org.title
        service.reg_info.org.address = org.address
        service.reg_info.org.iin = org.iin
        service.reg_info.org.oked = org.oked
        service.reg_info.org.address_kz = org.address_kz
    return request


# --- goods ---


@dataclass(frozen=True, slots=True)
class Goods:
    """A catalogue entry; weighed goods are priced per kilogram (or litre) and sold in grams."""

    name: str
    price_tiyn: int
    section_code: str = "1"
    measure_unit_code: str = PIECE

    @property
    def weighed(self) -> bool:
        return self.measure_unit_code != PIECE


# Names as a Kazakh shop prints them, Kazakh first; prices of a city grocery. Some prices carry
# tiyn and some goods are weighed, so sums exercise the rounding.
CATALOGUE: tuple[Goods, ...] = (
    Goods("Нан / Хлеб", 180_00),
    Goods("Сүт / Молоко 1 л", 520_00),
    Goods("Айран / Айран 1 л", 410_00),
    Goods("Қымыз / Кумыс 0,5 л", 1_250_00),
    Goods("Жұмыртқа / Яйца 10 дана", 890_00),
    Goods("Шай / Чай 250 г", 1_490_00),
    Goods("Бауырсақ / Баурсаки", 60_50),
    Goods("Су / Вода 1,5 л", 249_99, "2"),
    Goods("Ет (сиыр) / Говядина", 3_890_00, "3", KILOGRAM),
    Goods("Алма / Яблоки", 790_50, "3", KILOGRAM),
    Goods("Күріш / Рис", 620_00, "3", KILOGRAM),
    Goods("Қант / Сахар", 545_00, "3", KILOGRAM),
    Goods("Ірімшік / Сыр", 4_290_00, "3", KILOGRAM),
    Goods("Күнбағыс майы / Подсолнечное масло", 1_120_00, "3", LITRE),
)


def random_lines(rng: random.Random, n: int) -> list[Line]:
    """n lines drawn from the catalogue: 1-5 pieces, or 100 g to 3 kg of weighed goods."""
    if n < 1:
        raise ValueError("a receipt needs at least one line")
    lines: list[Line] = []
    for _ in range(n):
        goods = rng.choice(CATALOGUE)
        quantity = rng.randint(100, 3000) if goods.weighed else rng.randint(1, 5) * QUANTITY_SCALE
        lines.append(
            Line(
                goods.name, goods.section_code, quantity, goods.price_tiyn, goods.measure_unit_code
            )
        )
    return lines
