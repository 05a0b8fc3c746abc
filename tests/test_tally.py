"""The OFD's tally, its storage and its Z report, without I/O: the rules of ledger/tally.py one
by one, then Hypothesis over random sequences of documents (nothing crashes, nothing becomes
inconsistent, storage round-trips) and over spoiled receipts (a bad receipt is refused with
code 13, never a crash)."""

from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.errors import Refusal
from ledger.schemas import SCHEMAS
from ledger.tally import (
    BUY,
    BUY_RETURN,
    CASH,
    DEPOSIT,
    EMPTY_TALLY,
    ITEMS,
    ITEMS_SUM,
    OFFLINE,
    OPERATIONS,
    SELL,
    SELL_RETURN,
    TICKETS,
    WITHDRAWAL,
    Receipt,
    Tally,
    add_placement,
    add_receipt,
    close_shift,
    inconsistencies,
    open_shift,
)
from ledger.tally_codec import from_bytes, to_bytes
from ledger.ticket_checks import summarize_ticket
from ledger.wire import ResultCode
from ledger.zx_report import compare, flatten, render
from simulators.documents import (
    COMMODITY,
    DISCOUNT,
    STORNO_COMMODITY,
    ItemSpec,
    ReceiptSpec,
    TaxSpec,
    build_receipt,
)
from simulators.receipts import vat_included

WHEN = datetime(2026, 11, 26, 9, 0, 0)
VERSIONS = [203, 204]


def receipt(
    operation: int = SELL,
    *,
    sections: dict[str, tuple[int, int]] | None = None,
    payments: dict[int, int] | None = None,
    discount: int = 0,
    markup: int = 0,
    offline: bool = False,
    change: int = 0,
) -> Receipt:
    """A Receipt as the checks would produce it: totals derived from the sections."""
    sections = sections or {"1": (1, 1000)}
    items_sum = sum(amount for _, amount in sections.values())
    total = items_sum - discount + markup
    return Receipt(
        operation=operation,
        total=total,
        items_count=sum(lines for lines, _ in sections.values()),
        items_sum=items_sum,
        discounts=int(discount > 0),
        discount_sum=discount,
        markups=int(markup > 0),
        markup_sum=markup,
        sections=sections,
        taxes={(100, 1200): (total, vat_included(total), total - vat_included(total))},
        payments=payments if payments is not None else {1: total},
        change=change,
        offline=offline,
    )


def opened(tally: Tally = EMPTY_TALLY, number: int = 1) -> Tally:
    return open_shift(tally, number, WHEN)


# --- the rules, one by one ---


def test_a_storno_line_counts_zero_items_with_a_negative_sum() -> None:
    # Two lines sold in section 1, one of them stornoed: 2 lines, 1500 - 500.
    tally = add_receipt(opened(), receipt(sections={"1": (2, 1000)}))
    part = tally.operations[SELL]
    assert part.counters[ITEMS] == 2
    assert part.counters[ITEMS_SUM] == 1000
    assert part.sections == {"1": (2, 1000)}
    assert inconsistencies(tally) == []


def test_offline_receipts_raise_the_offline_count() -> None:
    tally = opened()
    tally = add_receipt(tally, receipt(offline=True))
    tally = add_receipt(tally, receipt())
    assert tally.counter(SELL, OFFLINE) == 1
    assert tally.counter(SELL, TICKETS) == 2


@pytest.mark.parametrize(
    ("operation", "sign"), [(SELL, 1), (BUY_RETURN, 1), (SELL_RETURN, -1), (BUY, -1)]
)
def test_revenue_and_cash_change_sign_by_direction(operation: int, sign: int) -> None:
    tally = add_placement(opened(), DEPOSIT, 10_000, offline=False)
    tally = add_receipt(tally, receipt(operation, payments={CASH: 1000}))
    assert tally.revenue == sign * 1000
    assert tally.cash == 10_000 + sign * 1000
    assert tally.sums[operation] == 1000  # non-nullable sums only grow


def test_the_drawer_never_goes_below_zero() -> None:
    with pytest.raises(ValueError, match="cash"):
        add_receipt(opened(), receipt(SELL_RETURN, payments={CASH: 1000}))
    with pytest.raises(ValueError, match="cash"):
        add_placement(opened(), WITHDRAWAL, 1, offline=False)


def test_non_nullable_sums_and_lifetime_counts_carry_across_shifts() -> None:
    tally = add_receipt(opened(), receipt(payments={CASH: 1000}))
    tally = add_placement(tally, DEPOSIT, 500, offline=True)
    closed = close_shift(tally, withdraw_money=False)
    assert (closed.shift_number, closed.is_open) == (1, False)
    assert closed.start_sums == closed.sums == (0, 0, 1000, 0)
    assert closed.lifetime_tickets == (0, 0, 1, 0)
    assert closed.lifetime_placements == (1, 0)
    assert closed.cash == 1500
    assert closed.revenue == 0
    assert closed.counter(SELL, TICKETS) == 0
    assert closed.placements == (0,) * 6
    assert inconsistencies(closed) == []
    second = add_receipt(opened(closed, 2), receipt(sections={"1": (1, 200)}, payments={CASH: 200}))
    assert second.sums[SELL] - second.start_sums[SELL] == 200
    assert close_shift(second, withdraw_money=True).cash == 0


def test_placements_count_sum_and_offline() -> None:
    tally = add_placement(opened(), DEPOSIT, 700, offline=True)
    tally = add_placement(tally, WITHDRAWAL, 200, offline=False)
    assert tally.placements == (1, 700, 1, 1, 200, 0)
    assert tally.cash == 500


# --- rendering and comparing ---


def _busy_tally() -> Tally:
    tally = add_placement(opened(), DEPOSIT, 50_000, offline=False)
    tally = add_receipt(tally, receipt(payments={CASH: 900, 1: 100}, discount=50, markup=50))
    tally = add_receipt(tally, receipt(SELL_RETURN, payments={CASH: 1000}, offline=True))
    return add_receipt(tally, receipt(BUY, sections={"2": (3, 4500)}, payments={4: 4500}))


@pytest.mark.parametrize("version", VERSIONS)
def test_a_report_has_every_required_field_and_agrees_with_itself(version: int) -> None:
    schema = SCHEMAS[version]
    tally = _busy_tally()
    zx = render(tally, schema, version, report_time=WHEN, close_time=WHEN)
    assert zx.IsInitialized()
    again = schema.ZXReport.FromString(zx.SerializeToString())
    assert compare(again, zx) == []
    flat = flatten(zx)
    assert flat["ticket_operations[SELL].payments[CASH].sum"] == 900
    assert flat["sections[2].BUY.count"] == 3
    assert flat["cash_sum"] == 50_000 + 900 - 1000 - 0
    assert flat["revenue"] == 1000 - 1000 - 4500
    assert flat["ticket_operations[SELL_RETURN].offline_count"] == 1


@pytest.mark.parametrize("version", VERSIONS)
def test_a_difference_is_named_by_field(version: int) -> None:
    schema = SCHEMAS[version]
    ours = render(_busy_tally(), schema, version, report_time=WHEN)
    theirs = schema.ZXReport()
    theirs.CopyFrom(ours)
    theirs.ticket_operations[SELL].tickets_sum.bills += 1
    theirs.sections[0].operations[0].count += 2
    assert compare(theirs, ours) == [
        "sections[1].SELL.count: device 3, ofd 1",
        "ticket_operations[SELL].tickets_sum: device 1100, ofd 1000",
    ]


def test_entries_left_out_count_as_zero_and_optional_fields_left_out_are_not_compared() -> None:
    schema = SCHEMAS[203]
    tally = add_receipt(opened(), receipt())
    ours = render(tally, schema, 203, report_time=WHEN)
    theirs = schema.ZXReport()
    theirs.CopyFrom(ours)
    del theirs.discounts[:]  # all zero: leaving them out says the same
    for ticket_op in theirs.ticket_operations:
        ticket_op.ClearField("offline_count")  # optional in 2.0.3
    theirs.ClearField("open_shift_time")
    assert compare(theirs, ours) == []


# --- storage ---


def test_storage_round_trips_and_refuses_garbage() -> None:
    tally = _busy_tally()
    assert from_bytes(to_bytes(tally)) == tally
    assert from_bytes(to_bytes(EMPTY_TALLY)) == EMPTY_TALLY
    data = to_bytes(tally)
    for bad in (b"", data[:-1], data + b"\0", b"\x02" + data[1:], data[:10]):
        with pytest.raises(ValueError):  # noqa: PT011  # any ValueError: the point is no other
            from_bytes(bad)


def test_a_running_sum_past_64_bits_cannot_be_stored() -> None:
    huge = add_receipt(opened(), receipt(sections={"1": (1, 2**63)}))
    with pytest.raises(Exception, match=r"format|range|argument"):
        to_bytes(huge)


# --- Hypothesis: random documents never crash the tally or break its rules ---

sections_st = st.dictionaries(
    st.sampled_from(["1", "2", "3", "Бөлім"]),
    st.tuples(st.integers(0, 5), st.integers(0, 10**9)),
    min_size=1,
    max_size=3,
)


@st.composite
def receipts(draw: st.DrawFn) -> Receipt:
    operation = draw(st.sampled_from(OPERATIONS))
    sections = draw(sections_st)
    items_sum = sum(amount for _, amount in sections.values())
    discount = draw(st.integers(0, items_sum))
    markup = draw(st.integers(0, 10**7))
    total = items_sum - discount + markup
    cash = draw(st.integers(0, total))
    payments = {CASH: cash, 1: total - cash}
    return receipt(
        operation,
        sections=sections,
        payments={k: v for k, v in payments.items() if v},
        discount=discount,
        markup=markup,
        offline=draw(st.booleans()),
        change=draw(st.integers(0, 10**6)),
    )


documents = st.lists(
    st.one_of(
        receipts(),
        st.tuples(st.sampled_from([DEPOSIT, WITHDRAWAL]), st.integers(0, 10**9), st.booleans()),
        st.sampled_from(["close", "close-withdraw"]),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(documents)
def test_random_documents_keep_the_tally_consistent_and_storable(docs: list[Any]) -> None:
    tally = EMPTY_TALLY
    for doc in docs:
        if isinstance(doc, str):
            if tally.is_open:
                tally = close_shift(tally, withdraw_money=doc == "close-withdraw")
            continue
        if not tally.is_open:
            tally = open_shift(tally, tally.shift_number + 1, WHEN + timedelta(hours=1))
        try:
            if isinstance(doc, Receipt):
                tally = add_receipt(tally, doc)
            else:
                tally = add_placement(tally, doc[0], doc[1], offline=doc[2])
        except ValueError as err:  # only the drawer may refuse, and then nothing changed
            refused = str(err)
            assert "cash" in refused
        assert inconsistencies(tally) == []
        assert from_bytes(to_bytes(tally)) == tally
    for version in VERSIONS:
        zx = render(tally, SCHEMAS[version], version, report_time=WHEN)
        assert zx.IsInitialized()
        assert compare(zx, zx) == []


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_stored_bytes_either_load_or_raise_value_error(data: bytes) -> None:
    try:
        tally = from_bytes(data)
    except ValueError:
        return
    assert to_bytes(tally) == data


# --- Hypothesis: spoiled receipts are refused with 13, never a crash ---


def _valid_spec(operation: int = SELL) -> ReceiptSpec:
    lines = (
        ItemSpec(COMMODITY, 36_000, "Нан", "1", 2000, 18_000, taxes=(TaxSpec(1200, 3857),)),
        ItemSpec(STORNO_COMMODITY, 18_000, "Нан", "1", 1000, 18_000, taxes=(TaxSpec(1200, 1929),)),
        ItemSpec(DISCOUNT, 1000, taxes=(TaxSpec(1200, 107),)),
    )
    return ReceiptSpec(
        operation=operation,
        when=WHEN,
        items=lines,
        total=17_000,
        payments=((CASH, 17_000),),
        shift_number=1,
        document_number=1,
        taken=100_000,
        change=83_000,
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_the_valid_spec_is_accepted(version: int) -> None:
    summary = summarize_ticket(build_receipt(SCHEMAS[version], _valid_spec()).ticket)
    assert summary.total == 17_000
    assert summary.items_count == 1
    assert summary.sections == {"1": [1, 18_000]}
    assert summary.taxes[100, 1200][0] == 17_000
    assert summary.discounts == 1


_numeric = st.integers(0, 2**40)


@settings(max_examples=400, deadline=None)
@given(
    version=st.sampled_from(VERSIONS),
    operation=st.sampled_from(OPERATIONS),
    path=st.sampled_from(
        [
            ("items", 0, "commodity", "quantity"),
            ("items", 0, "commodity", "sum", "bills"),
            ("items", 0, "commodity", "price", "coins"),
            ("items", 1, "storno_commodity", "sum", "bills"),
            ("items", 1, "storno_commodity", "taxes", 0, "percent"),
            ("items", 2, "discount", "sum", "coins"),
            ("items", 0, "commodity", "taxes", 0, "sum", "bills"),
            ("amounts", "total", "bills"),
            ("amounts", "taken", "bills"),
            ("amounts", "change", "coins"),
            ("payments", 0, "sum", "bills"),
            ("payments", 0, "type"),
            ("items", 2, "type"),
        ]
    ),
    value=_numeric,
)
def test_a_spoiled_receipt_is_refused_with_13_or_accepted_never_crashes(
    version: int, operation: int, path: tuple[Any, ...], value: int
) -> None:
    request: Any = build_receipt(SCHEMAS[version], _valid_spec(operation))
    target: Any = request.ticket
    for step in path[:-1]:
        target = target[step] if isinstance(step, int) else getattr(target, step)
    try:
        setattr(target, path[-1], value)
    except ValueError:
        return  # not a value the field can hold: the wire could not carry it either
    if not request.IsInitialized():
        return
    try:
        summary = summarize_ticket(request.ticket)
    except Refusal as refusal:
        code, text = refusal.code, refusal.text
        assert code == ResultCode.INCORRECT_REQUEST_DATA
        assert ": " in text, text  # "<field>: <rule>"
        return
    assert summary.total >= 0
    assert all(amount >= 0 for _, amount in summary.sections.values())
