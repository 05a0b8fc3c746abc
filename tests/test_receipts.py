"""The request builders of the simulator: valid in their version, and exact in their arithmetic."""

import random
from collections.abc import Iterator
from datetime import UTC, datetime
from types import ModuleType
from typing import Any, get_args

import pytest
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st

from ledger.schemas import SCHEMAS
from ledger.ticket_checks import check_ticket
from ledger.wire import Command
from ofdproto.kkm.v203 import kkm_pb2 as pb203
from ofdproto.kkm.v204 import kkm_pb2 as pb204
from simulators.receipts import (
    CATALOGUE,
    KILOGRAM,
    PAYMENT_TYPES,
    VAT_PERCENT,
    Line,
    Money,
    Operation,
    PaymentKind,
    Request,
    build_info,
    build_system,
    build_ticket,
    cash_taken,
    line_sum,
    money,
    random_lines,
    tiyn,
    vat_included,
    version_of,
)

VERSIONS = sorted(SCHEMAS)
BILL = 1000_00  # tiyn in a 1000-tenge bill
WHEN = datetime(2026, 3, 14, 18, 45, 9)

versions = st.sampled_from(VERSIONS)
payments = st.sampled_from(get_args(PaymentKind))
line_strategy = st.builds(
    Line,
    name=st.sampled_from([goods.name for goods in CATALOGUE]),
    section_code=st.sampled_from(["1", "2", "3"]),
    quantity_milli=st.integers(min_value=1, max_value=100_000),
    price_tiyn=st.integers(min_value=0, max_value=50_000_000),
)
lines_strategy = st.lists(line_strategy, min_size=1, max_size=12)
moments = st.datetimes(min_value=datetime(2024, 3, 1), max_value=datetime(2035, 12, 31))


def ticket(
    version: int,
    lines: list[Line],
    payment: PaymentKind,
    *,
    when: datetime = WHEN,
    offline_number: int | None = None,
) -> Request:
    return build_ticket(
        SCHEMAS[version],
        when=when,
        shift_number=42,
        document_number=1017,
        lines=lines,
        payment=payment,
        offline_number=offline_number,
    )


def roundtrip(schema: ModuleType, request: Request) -> Request:
    """Serialize and parse back; FromString refuses a message missing a required field."""
    parsed: Request = schema.Request.FromString(request.SerializeToString())
    assert parsed == request
    return parsed


def all_money(message: Message) -> Iterator[Money]:
    """Every Money inside a message, however deep."""
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        for child in value if field.is_repeated else [value]:
            if field.message_type.name == "Money":
                yield child
            else:
                yield from all_money(child)


def commodities(request: Request) -> list[Any]:
    return [item.commodity for item in request.ticket.items]


# --- whole messages, both versions ---


@given(versions, lines_strategy, payments, moments)
def test_ticket_parses_back_in_its_version(
    version: int, lines: list[Line], payment: PaymentKind, when: datetime
) -> None:
    request = ticket(version, lines, payment, when=when)
    parsed = roundtrip(SCHEMAS[version], request)
    assert parsed.command == int(Command.TICKET)
    assert parsed.ticket.operation == int(Operation.SELL)
    assert len(parsed.ticket.items) == len(lines)
    assert parsed.ticket.domain.HasField("type")
    assert [c.measure_unit_code for c in commodities(parsed)] == [
        line.measure_unit_code for line in lines
    ]


@given(versions, lines_strategy, payments)
def test_the_gateway_checks_accept_every_built_ticket(
    version: int, lines: list[Line], payment: PaymentKind
) -> None:
    request = ticket(version, lines, payment)
    assert check_ticket(request.ticket) == sum(line.sum_tiyn for line in lines)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("build", [build_info, build_system])
def test_service_requests_parse_back(version: int, build: Any) -> None:
    schema = SCHEMAS[version]
    request = roundtrip(schema, build(schema))
    assert request.HasField("service")
    if isinstance(request, pb204.Request):  # reg_info and all of its org are required there
        org = request.service.reg_info.org
        for value in (org.title, org.address, org.iin, org.oked, org.address_kz):
            assert value
        assert len(org.iin) == 12
        assert org.iin.isdigit()


@pytest.mark.parametrize("version", VERSIONS)
def test_commands_and_reg_info_flag(version: int) -> None:
    schema = SCHEMAS[version]
    assert build_info(schema).command == int(Command.INFO)
    system = build_system(schema)
    assert system.command == int(Command.SYSTEM)
    assert not system.service.get_reg_info
    assert build_system(schema, get_reg_info=True).service.get_reg_info


def test_version_of_knows_only_served_schemas() -> None:
    assert [version_of(SCHEMAS[v]) for v in VERSIONS] == VERSIONS
    with pytest.raises(ValueError, match="not a served"):
        version_of(random)


# --- arithmetic ---


@given(versions, lines_strategy, payments)
def test_total_is_the_sum_of_exact_line_sums(
    version: int, lines: list[Line], payment: PaymentKind
) -> None:
    request = ticket(version, lines, payment)
    sums = [tiyn(c.sum) for c in commodities(request)]
    for line, commodity, line_total in zip(lines, commodities(request), sums, strict=True):
        assert commodity.quantity == line.quantity_milli
        assert tiyn(commodity.price) == line.price_tiyn
        # quantity x price rounded half up: off by at most half a tiyn, in thousandths
        assert abs(line.quantity_milli * line.price_tiyn - line_total * 1000) <= 500
    assert tiyn(request.ticket.amounts.total) == sum(sums)
    [paid] = request.ticket.payments
    assert paid.type == PAYMENT_TYPES[payment]
    assert tiyn(paid.sum) == sum(sums)


@given(versions, lines_strategy, payments)
def test_each_item_carries_twelve_percent_vat_included(
    version: int, lines: list[Line], payment: PaymentKind
) -> None:
    request = ticket(version, lines, payment)
    assert not request.ticket.taxes  # on items or on the ticket, never both
    for commodity in commodities(request):
        [tax] = commodity.taxes
        line_total, vat = tiyn(commodity.sum), tiyn(tax.sum)
        assert abs(vat * 112 - line_total * 12) <= 56  # 12/112 of the sum, rounded
        assert tax.percent == VAT_PERCENT
        assert tax.is_in_total_sum
        assert tax.taxation_type == 100
        assert (tax.tax_type if version == 203 else tax.type) == 100


@given(versions, lines_strategy)
def test_cash_is_paid_in_bills_and_changed(version: int, lines: list[Line]) -> None:
    amounts = ticket(version, lines, "cash").ticket.amounts
    total, taken, change = tiyn(amounts.total), tiyn(amounts.taken), tiyn(amounts.change)
    assert taken - change == total
    assert taken % BILL == 0
    assert 0 <= change < BILL


@given(versions, lines_strategy, st.sampled_from(["card", "mobile"]))
def test_cashless_has_no_taken_or_change(
    version: int, lines: list[Line], payment: PaymentKind
) -> None:
    amounts = ticket(version, lines, payment).ticket.amounts
    assert not amounts.HasField("taken")
    assert not amounts.HasField("change")


@given(versions, lines_strategy, payments)
def test_coins_stay_below_a_tenge_everywhere(
    version: int, lines: list[Line], payment: PaymentKind
) -> None:
    found = list(all_money(ticket(version, lines, payment)))
    assert found  # the walker does see the money
    assert all(0 <= m.coins < 100 for m in found)


@given(versions, st.integers(min_value=0, max_value=10**15))
def test_money_roundtrip(version: int, amount: int) -> None:
    value = money(SCHEMAS[version], amount)
    assert value.coins < 100
    assert tiyn(value) == amount


def test_negative_money_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        money(SCHEMAS[203], -1)


@pytest.mark.parametrize(
    ("total", "taken"),
    [(1, BILL), (BILL - 1, BILL), (BILL, BILL), (BILL + 1, 2 * BILL), (0, 0)],
)
def test_cash_taken_rounds_up_to_a_bill(total: int, taken: int) -> None:
    assert cash_taken(total) == taken


@pytest.mark.parametrize(
    ("quantity", "price", "expected"),
    [(1000, 18000, 18000), (250, 79050, 19763), (1, 500, 1), (1, 499, 0), (358, 112000, 40096)],
)
def test_line_sum_rounds_half_up(quantity: int, price: int, expected: int) -> None:
    assert line_sum(quantity, price) == expected


@pytest.mark.parametrize(
    ("line_total", "vat"),
    [(11200, 1200), (112, 12), (14, 2), (0, 0), (4, 0), (5, 1)],  # 5 x 12/112 = 0.536 -> 1
)
def test_vat_included(line_total: int, vat: int) -> None:
    assert vat_included(line_total) == vat


def test_vat_rounds_exact_halves_up() -> None:
    # x 12/112 lands on exact halves here; round() would go to the even neighbour instead.
    assert vat_included(14) == 2  # 1.5
    assert vat_included(42) == 5  # 4.5, round() says 4
    assert vat_included(70) == 8  # 7.5


# --- document numbers, date and time ---


@pytest.mark.parametrize("version", VERSIONS)
def test_numbers_and_offline_ticket(version: int) -> None:
    lines = [Line("Нан / Хлеб", "1", 2000, 18000)]
    request = ticket(version, lines, "card", offline_number=1_773_000_000)
    parsed = roundtrip(SCHEMAS[version], request).ticket
    assert parsed.fr_shift_number == 42
    assert parsed.printed_document_number == 1017
    assert parsed.offline_ticket_number == 1_773_000_000
    if isinstance(parsed, pb203.TicketRequest):
        assert parsed.shift_document_number == 1017
    assert not ticket(version, lines, "card").ticket.HasField("offline_ticket_number")


def test_shift_document_number_is_its_own_in_203() -> None:
    request = build_ticket(
        SCHEMAS[203],
        when=WHEN,
        shift_number=7,
        document_number=500,
        shift_document_number=3,
        lines=[Line("Сүт / Молоко", "1", 1000, 52000)],
        payment="cash",
    )
    assert isinstance(request, pb203.Request)
    assert request.ticket.shift_document_number == 3


@pytest.mark.parametrize("version", VERSIONS)
def test_date_time_is_kazakh_local_time(version: int) -> None:
    when = datetime(2026, 1, 31, 20, 30, 15, tzinfo=UTC)  # 01:30:15 next day in UTC+5
    stamp = ticket(version, [Line("Нан / Хлеб", "1", 1000, 18000)], "card", when=when)
    date, time = stamp.ticket.date_time.date, stamp.ticket.date_time.time
    assert (date.year, date.month, date.day) == (2026, 2, 1)
    assert (time.hour, time.minute, time.second) == (1, 30, 15)


@pytest.mark.parametrize("operation", list(Operation))
def test_operation_is_carried(operation: Operation) -> None:
    request = build_ticket(
        SCHEMAS[204],
        operation=operation,
        when=WHEN,
        shift_number=1,
        document_number=1,
        lines=[Line("Нан / Хлеб", "1", 1000, 18000)],
        payment="mobile",
    )
    assert request.ticket.operation == int(operation)


# --- lines and the catalogue ---


def test_line_refuses_what_no_receipt_holds() -> None:
    with pytest.raises(ValueError, match="quantity"):
        Line("Нан / Хлеб", "1", 0, 18000)
    with pytest.raises(ValueError, match="price"):
        Line("Нан / Хлеб", "1", 1000, -1)
    with pytest.raises(ValueError, match="section_code"):
        Line("Нан / Хлеб", "", 1000, 18000)
    with pytest.raises(ValueError, match="at least one line"):
        build_ticket(
            SCHEMAS[203], when=WHEN, shift_number=1, document_number=1, lines=[], payment="cash"
        )


def test_catalogue_is_bilingual_and_priced() -> None:
    assert any(goods.name == "Нан / Хлеб" for goods in CATALOGUE)
    for goods in CATALOGUE:
        kazakh, russian = goods.name.split(" / ")
        assert kazakh
        assert russian
        assert goods.price_tiyn > 0


@given(st.integers(min_value=0, max_value=2**32), st.integers(min_value=1, max_value=30))
def test_random_lines_are_catalogue_goods(seed: int, n: int) -> None:
    lines = random_lines(random.Random(seed), n)
    assert lines == random_lines(random.Random(seed), n)  # reproducible from the seed
    assert len(lines) == n
    prices = {goods.name: goods.price_tiyn for goods in CATALOGUE}
    for line in lines:
        assert prices[line.name] == line.price_tiyn
        if line.measure_unit_code == KILOGRAM:
            assert 100 <= line.quantity_milli <= 3000
        elif line.measure_unit_code == "796":
            assert line.quantity_milli % 1000 == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_random_receipts_parse_back(version: int) -> None:
    rng = random.Random(2026)
    for number in range(1, 51):
        lines = random_lines(rng, rng.randint(1, 8))
        payment: PaymentKind = rng.choice(get_args(PaymentKind))
        request = build_ticket(
            SCHEMAS[version],
            when=WHEN,
            shift_number=1,
            document_number=number,
            lines=lines,
            payment=payment,
        )
        roundtrip(SCHEMAS[version], request)
