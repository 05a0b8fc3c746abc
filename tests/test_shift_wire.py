"""Shifts, money placements, reports and the full receipt rules at the wire, in both versions:
real frames into the gateway's socket, answers decoded from the bytes that come back, and
PostgreSQL and the journal read afterwards.

The device's side is `simulators.shift_model` (its own books, its own Z report) and
`simulators.documents` (every kind of document); the rules are those of protocol.md "Receipts,
shifts and reports" and "Offline mode", as `ledger/shifts.py` and `ledger/ticket_checks.py`
state them.
"""

import json
import random
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import register_device
from wire import device_row, journaled, kkm_for

from ingest.app import RunningGateway
from ledger.schemas import SCHEMAS
from ledger.wire import ResultCode
from ledger.zx_report import compare
from simulators.documents import (
    COMMODITY,
    DEPOSIT,
    DISCOUNT,
    REPORT_X,
    REPORT_Z,
    STORNO_COMMODITY,
    WITHDRAWAL,
    ItemSpec,
    ParentSpec,
    ReceiptSpec,
    TaxSpec,
    build_close_shift,
    build_money_placement,
    build_receipt,
    build_report,
)
from simulators.kkm import SimulatedKkm
from simulators.receipts import build_info
from simulators.shift_model import ShiftModel

VERSIONS = [203, 204]
START = datetime(2026, 11, 26, 9, 0, 0)
CASH, CARD = 0, 1
SELL, SELL_RETURN = 2, 3
TENGE = 100


async def shift_rows(database_url: str, system_id: int) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(
            "SELECT shift_number, device_z, ofd_z, differences, is_offline, closed_at"
            " FROM shift_reports WHERE system_id = $1 ORDER BY id",
            system_id,
        )
    finally:
        await conn.close()


def differences(row: asyncpg.Record) -> list[str]:
    loaded: list[str] = json.loads(row["differences"])
    return loaded


def sale(
    version: int,
    *,
    when: datetime = START,
    shift: int = 1,
    number: int = 1,
    amount: int = 1000 * TENGE,
    payment: int = CARD,
    operation: int = SELL,
    offline_number: int | None = None,
) -> Any:
    """A one-line receipt of `amount` tiyn, VAT included, paid one way."""
    spec = ReceiptSpec(
        operation=operation,
        when=when,
        items=(ItemSpec(COMMODITY, amount, "Шай", "1", 1000, amount, taxes=_vat(amount)),),
        total=amount,
        payments=((payment, amount),),
        shift_number=shift,
        document_number=number,
        offline_number=offline_number,
        parent=_parent(amount) if operation in (1, 3) else None,
    )
    return build_receipt(SCHEMAS[version], spec)


def _vat(amount: int) -> tuple[TaxSpec, ...]:
    return (TaxSpec(1200, (2 * amount * 1200 + 11200) // 22400),)


def _parent(total: int) -> ParentSpec:
    return ParentSpec("4228143549", START - timedelta(days=1), "600000000001", total)


async def kkm(gateway: RunningGateway, database_url: str, version: int) -> SimulatedKkm:
    device = await register_device(database_url)
    return kkm_for(gateway, version, device.system_id, device.token)


def header_token(kkm: SimulatedKkm) -> int:
    assert kkm.last_response_header is not None
    return kkm.last_response_header.token


# --- MONEY_PLACEMENT and NOT_ENOUGH_CASH (14) ---


@pytest.mark.parametrize("version", VERSIONS)
async def test_deposits_and_withdrawals_track_the_drawer(
    gateway: RunningGateway, database_url: str, tmp_path: Path, version: int
) -> None:
    """A deposit rotates the token; a withdrawal above the drawer is 14 and changes nothing;
    one within it is OK; INFO's X report shows the drawer and the placements."""
    device = await kkm(gateway, database_url, version)
    schema = SCHEMAS[version]
    token = device.token
    deposit = build_money_placement(
        schema,
        when=START,
        operation=DEPOSIT,
        amount=1000 * TENGE,
        shift_number=1,
        document_number=1,
    )
    assert (await device.send(deposit)).result.result_code == ResultCode.OK
    assert device.token != token
    token = device.token

    too_much = build_money_placement(
        schema,
        when=START,
        operation=WITHDRAWAL,
        amount=1500 * TENGE,
        shift_number=1,
        document_number=2,
    )
    refused = await device.send(too_much)
    assert refused.result.result_code == ResultCode.NOT_ENOUGH_CASH
    assert refused.result.result_text.startswith("money_placement.sum:")
    assert header_token(device) == token  # a refusal echoes the device's token
    row = await device_row(database_url, device.system_id)
    assert (row["token"], row["documents_accepted"]) == (token, 1)

    within = build_money_placement(
        schema,
        when=START,
        operation=WITHDRAWAL,
        amount=400 * TENGE,
        shift_number=1,
        document_number=3,
    )
    assert (await device.send(within)).result.result_code == ResultCode.OK
    info = await device.send(build_info(schema))
    zx = info.report.zx_report
    assert info.report.report == REPORT_X
    assert (zx.cash_sum.bills, zx.cash_sum.coins) == (600, 0)
    deposits, withdrawals = zx.money_placements
    assert (deposits.operations_count, deposits.operations_sum.bills) == (1, 1000)
    assert (withdrawals.operations_count, withdrawals.operations_sum.bills) == (1, 400)
    assert journaled(tmp_path, device.system_id) == [
        f"{device.system_id}/s1/m1",
        f"{device.system_id}/s1/m3",
    ]


@pytest.mark.parametrize("version", VERSIONS)
async def test_cash_paid_out_beyond_the_drawer_is_not_enough_cash(
    gateway: RunningGateway, database_url: str, version: int
) -> None:
    """A sale return paid in cash from an empty drawer is 14; after a cash sale it is OK."""
    device = await kkm(gateway, database_url, version)
    back = sale(version, operation=SELL_RETURN, payment=CASH, number=1)
    refused = await device.send(back)
    assert refused.result.result_code == ResultCode.NOT_ENOUGH_CASH
    assert refused.result.result_text.startswith("payments:")
    assert (await device.send(sale(version, payment=CASH, number=2))).result.result_code == 0
    again = sale(version, operation=SELL_RETURN, payment=CASH, number=3)
    assert (await device.send(again)).result.result_code == ResultCode.OK


# --- CLOSE_SHIFT: the OFD's Z report, reconciled with the device's ---


def model(version: int, seed: int = 7) -> ShiftModel:
    return ShiftModel(SCHEMAS[version], random.Random(seed), kgd_kkm_id="600000000001", start=START)


@pytest.mark.parametrize("version", VERSIONS)
async def test_close_shift_with_a_matching_z_report(
    gateway: RunningGateway, database_url: str, tmp_path: Path, version: int
) -> None:
    """The close is answered OK with the OFD's Z report, equal to the device's; both are stored,
    with no differences; the token rotates; the close is journaled as z<shift>."""
    device = await kkm(gateway, database_url, version)
    books = model(version)
    token_before_close = None
    shift = books.shift(documents=15, mode="mixed")
    for planned in shift.documents:
        if planned.kind == "close":
            token_before_close = device.token
        answer = await device.send(planned.request)
        assert answer.result.result_code == ResultCode.OK, answer.result.result_text
    assert answer.report.report == REPORT_Z
    assert compare(shift.z_report, answer.report.zx_report) == []
    assert device.token != token_before_close
    [row] = await shift_rows(database_url, device.system_id)
    assert row["shift_number"] == 1
    assert differences(row) == []
    assert SCHEMAS[version].ZXReport.FromString(row["device_z"]) == shift.z_report
    assert row["ofd_z"] == answer.report.zx_report.SerializeToString()
    assert f"{device.system_id}/z1" in journaled(tmp_path, device.system_id)
    state = await device_row(database_url, device.system_id)
    assert state["documents_accepted"] == len(shift.documents)


@pytest.mark.parametrize("version", VERSIONS)
async def test_close_shift_with_a_mismatching_z_report_is_stored_flagged_and_answered_ok(
    gateway: RunningGateway, database_url: str, version: int
) -> None:
    """A device Z report that disagrees is never refused: the answer carries the OFD's report,
    the row both reports and the named difference, and the mismatch is counted."""
    device = await kkm(gateway, database_url, version)
    books = model(version, seed=11)
    for planned in books.documents(8, mode="online"):
        assert (await device.send(planned.request)).result.result_code == ResultCode.OK
    close, z_report = books.close()
    wrong = close.request
    wrong.close_shift.z_report.cash_sum.bills += 5
    answer = await device.send(wrong)
    assert answer.result.result_code == ResultCode.OK
    assert answer.report.zx_report.cash_sum == z_report.cash_sum  # ours, not theirs
    [row] = await shift_rows(database_url, device.system_id)
    cash = z_report.cash_sum.bills * 100 + z_report.cash_sum.coins
    assert differences(row) == [f"cash_sum: device {cash + 500}, ofd {cash}"]
    assert row["device_z"] == wrong.close_shift.z_report.SerializeToString()
    assert gateway.pipeline.shift_stats.mismatched == 1
    assert gateway.pipeline.shift_stats.closed == 1


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_resent_close_gets_the_same_answer_and_is_stored_once(
    gateway: RunningGateway, database_url: str, version: int
) -> None:
    device = await kkm(gateway, database_url, version)
    assert (await device.send(sale(version))).result.result_code == ResultCode.OK
    close = build_close_shift(SCHEMAS[version], when=START + timedelta(hours=8), shift_number=1)
    await device.send_and_drop(close)
    first = await device.retransmit()
    assert first.result.result_code == ResultCode.OK
    frame = device.last_response_frame
    await device.retransmit()
    assert device.last_response_frame == frame
    assert len(await shift_rows(database_url, device.system_id)) == 1


async def test_a_203_close_without_a_z_report_is_stored_without_one(
    gateway: RunningGateway, database_url: str
) -> None:
    """2.0.3 makes the device's report optional: the OFD's is stored alone, nothing flagged."""
    device = await kkm(gateway, database_url, 203)
    assert (await device.send(sale(203))).result.result_code == ResultCode.OK
    close = build_close_shift(SCHEMAS[203], when=START + timedelta(hours=1), shift_number=1)
    assert not close.close_shift.HasField("z_report")
    answer = await device.send(close)
    assert answer.result.result_code == ResultCode.OK
    assert answer.report.zx_report.total_result[SELL].count == 1
    [row] = await shift_rows(database_url, device.system_id)
    assert row["device_z"] is None
    assert differences(row) == []


# --- shift numbers, opening and the 24-hour rule ---


@pytest.mark.parametrize("version", VERSIONS)
async def test_shift_numbers_run_on_from_registration(
    gateway: RunningGateway, database_url: str, version: int
) -> None:
    """The first shift is 1; after its close, documents of shift 1 or 3 are 13 naming
    fr_shift_number; shift 2 opens; closing shift 1 again is 13 too."""
    device = await kkm(gateway, database_url, version)
    schema = SCHEMAS[version]
    first = await device.send(sale(version, shift=2))
    assert first.result.result_code == ResultCode.INCORRECT_REQUEST_DATA
    assert first.result.result_text.startswith("fr_shift_number:")
    assert (await device.send(sale(version, shift=1))).result.result_code == ResultCode.OK
    close = build_close_shift(schema, when=START + timedelta(hours=1), shift_number=1)
    assert (await device.send(close)).result.result_code == ResultCode.OK
    for wrong in (1, 3):
        answer = await device.send(sale(version, shift=wrong, number=5))
        assert answer.result.result_code == ResultCode.INCORRECT_REQUEST_DATA
        assert answer.result.result_text.startswith("fr_shift_number:"), wrong
    again = build_close_shift(schema, when=START + timedelta(hours=2), shift_number=1)
    refused = await device.send(again)
    assert refused.result.result_code == ResultCode.INCORRECT_REQUEST_DATA
    assert refused.result.result_text.startswith("close_shift.fr_shift_number:")
    assert (await device.send(sale(version, shift=2, number=6))).result.result_code == 0
    row = await device_row(database_url, device.system_id)
    assert row["documents_accepted"] == 3
    info = await device.send(build_info(schema))
    assert info.service.last_document_info.fr_shift_number == 2
    assert info.service.last_document_info.printed_document_number == 6
    assert info.report.zx_report.shift_number == 2


@pytest.mark.parametrize("version", VERSIONS)
async def test_an_empty_shift_can_be_closed(
    gateway: RunningGateway, database_url: str, version: int
) -> None:
    device = await kkm(gateway, database_url, version)
    close = build_close_shift(SCHEMAS[version], when=START, shift_number=1)
    answer = await device.send(close)
    assert answer.result.result_code == ResultCode.OK
    assert answer.report.zx_report.shift_number == 1
    assert all(op.count == 0 for op in answer.report.zx_report.total_result)
    assert (await device.send(sale(version, shift=2))).result.result_code == ResultCode.OK


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_device_that_moves_on_without_a_close_gets_its_shift_closed_and_flagged(
    gateway: RunningGateway, database_url: str, version: int
) -> None:
    device = await kkm(gateway, database_url, version)
    assert (await device.send(sale(version, shift=1, number=1))).result.result_code == 0
    moved_on = sale(version, shift=2, number=2, when=START + timedelta(hours=2))
    assert (await device.send(moved_on)).result.result_code == ResultCode.OK
    [row] = await shift_rows(database_url, device.system_id)
    assert row["shift_number"] == 1
    assert row["device_z"] is None
    assert differences(row)[0].startswith("z_report: shift 1 was never closed")
    assert gateway.pipeline.shift_stats.mismatched == 1
    ofd_z = SCHEMAS[version].ZXReport.FromString(row["ofd_z"])
    assert ofd_z.total_result[SELL].count == 1


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_shift_open_past_24_hours_is_refused_except_offline_and_for_its_close(
    gateway: RunningGateway, database_url: str, version: int
) -> None:
    """OPEN_SHIFT_TIMEOUT_EXPIRED (11) for online documents 24 h after the shift's first;
    an offline backlog is never refused as late, and the close is always accepted."""
    device = await kkm(gateway, database_url, version)
    schema = SCHEMAS[version]
    assert (await device.send(sale(version, number=1))).result.result_code == ResultCode.OK
    late = START + timedelta(hours=24, seconds=1)
    refused = await device.send(sale(version, number=2, when=late))
    assert refused.result.result_code == ResultCode.OPEN_SHIFT_TIMEOUT_EXPIRED
    placement = build_money_placement(
        schema, when=late, operation=DEPOSIT, amount=100, shift_number=1, document_number=2
    )
    assert (await device.send(placement)).result.result_code == 11
    backlog = sale(version, number=2, when=late + timedelta(hours=30), offline_number=1_790_000_001)
    assert (await device.send(backlog)).result.result_code == ResultCode.OK
    offline_deposit = build_money_placement(
        schema,
        when=late + timedelta(hours=31),
        operation=DEPOSIT,
        amount=100,
        shift_number=1,
        document_number=3,
        offline=True,
    )
    assert (await device.send(offline_deposit)).result.result_code == ResultCode.OK
    close = build_close_shift(schema, when=late + timedelta(hours=32), shift_number=1)
    answer = await device.send(close)
    assert answer.result.result_code == ResultCode.OK
    assert answer.report.zx_report.ticket_operations[SELL].offline_count == 1
    assert answer.report.zx_report.money_placements[DEPOSIT].offline_count == 1


# --- REPORT and INFO: the OFD's counters ---


@pytest.mark.parametrize("version", VERSIONS)
async def test_report_x_and_z_and_info_answer_the_ofds_counters_without_rotating(
    gateway: RunningGateway, database_url: str, version: int
) -> None:
    device = await kkm(gateway, database_url, version)
    schema = SCHEMAS[version]
    books = model(version, seed=3)
    for planned in books.documents(12, mode="online"):
        assert (await device.send(planned.request)).result.result_code == ResultCode.OK
    when = books.clock + timedelta(minutes=1)
    expected = books.z_report(when)  # the device's own X report so far
    token = device.token
    for kind in (REPORT_X, REPORT_Z):
        answer = await device.send(build_report(schema, kind=kind, when=when, shift_number=1))
        assert answer.result.result_code == ResultCode.OK
        assert answer.report.report == kind
        assert compare(expected, answer.report.zx_report) == []
        assert header_token(device) == token
    info = await device.send(build_info(schema))
    assert info.result.result_code == ResultCode.OK
    assert info.report.report == REPORT_X
    # INFO carries no time: its report is dated by the OFD's clock, which is not compared.
    assert compare(expected, info.report.zx_report) == []
    assert info.service.last_document_info.fr_shift_number == 1
    assert info.service.last_document_info.printed_document_number == books.printed
    assert header_token(device) == token
    assert len(await shift_rows(database_url, device.system_id)) == 0


# --- the full receipt rules: 13 naming the field ---


def _two_lines(**changes: Any) -> ReceiptSpec:
    sold = ItemSpec(COMMODITY, 36_000, "Нан", "1", 2000, 18_000, taxes=_vat(36_000))
    discount = ItemSpec(DISCOUNT, 1000, taxes=_vat(1000))
    spec = ReceiptSpec(
        operation=SELL,
        when=START,
        items=(sold, discount),
        total=35_000,
        payments=((CASH, 35_000),),
        shift_number=1,
        document_number=1,
        taken=100_000,
        change=65_000,
    )
    return replace(spec, **changes)


def _item(index: int, **changes: Any) -> Any:
    def spoil(spec: ReceiptSpec) -> ReceiptSpec:
        items = list(spec.items)
        items[index] = replace(items[index], **changes)
        return replace(spec, items=tuple(items))

    return spoil


SPOILERS: dict[str, tuple[Any, str]] = {
    "percent-twice": (
        _item(0, taxes=(*_vat(36_000), *_vat(36_000))),
        "items[0].commodity.taxes[1].percent",
    ),
    "vat-off-by-a-tiyn": (
        _item(0, taxes=(TaxSpec(1200, _vat(36_000)[0].sum + 1),)),
        "items[0].commodity.taxes[0].sum",
    ),
    "percent-above-100": (
        _item(0, taxes=(TaxSpec(10_001, 0),)),
        "items[0].commodity.taxes[0].percent",
    ),
    "taxes-on-items-and-ticket": (
        lambda s: replace(s, taxes=_vat(35_000)),
        "taxes:",
    ),
    "line-sum-not-quantity-times-price": (_item(0, sum=36_001), "items[0].commodity.sum"),
    "zero-quantity": (_item(0, quantity_milli=0, sum=0), "items[0].commodity.quantity"),
    "empty-section": (_item(0, section_code=""), "items[0].commodity.section_code"),
    "zero-discount": (_item(1, sum=0, taxes=()), "items[1].discount.sum"),
    "storno-beyond-sold": (
        lambda s: replace(
            s,
            items=(
                *s.items,
                ItemSpec(STORNO_COMMODITY, 54_000, "Нан", "1", 3000, 18_000, taxes=_vat(54_000)),
            ),
        ),
        "items[2].storno_commodity.sum",
    ),
    "total-not-the-lines": (
        lambda s: replace(s, total=36_000, payments=((CASH, 36_000),), change=64_000),
        "amounts.total",
    ),
    "payments-short": (lambda s: replace(s, payments=((CASH, 34_000),)), "payments:"),
    "payment-type-twice": (
        lambda s: replace(s, payments=((CARD, 30_000), (CARD, 5_000)), taken=None, change=None),
        "payments[1].type",
    ),
    "change-not-taken-minus-cash": (lambda s: replace(s, change=66_000), "amounts.change"),
    "taken-without-cash": (
        lambda s: replace(s, payments=((CARD, 35_000),), change=None),
        "amounts.taken",
    ),
    "return-without-parent": (lambda s: replace(s, operation=SELL_RETURN), "parent_ticket:"),
    "return-above-its-parent": (
        lambda s: replace(s, operation=SELL_RETURN, parent=_parent(34_999)),
        "parent_ticket.parent_ticket_total",
    ),
}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", sorted(SPOILERS))
async def test_a_receipt_breaking_a_rule_is_13_naming_the_field(
    gateway: RunningGateway, database_url: str, version: int, case: str
) -> None:
    device = await kkm(gateway, database_url, version)
    spoil, field = SPOILERS[case]
    answer = await device.send(build_receipt(SCHEMAS[version], spoil(_two_lines())))
    assert answer.result.result_code == ResultCode.INCORRECT_REQUEST_DATA, case
    assert answer.result.result_text.startswith(field), answer.result.result_text
    assert header_token(device) == device.token
    # The unspoilt receipt is fine, so it was the rule that refused.
    assert (
        await device.send(build_receipt(SCHEMAS[version], _two_lines()))
    ).result.result_code == 0
