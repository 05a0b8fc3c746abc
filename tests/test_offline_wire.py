"""Offline ("autonomous") mode at the wire, in both versions: offline numbers and their
duplicates, the offline period a device reports, its open window as the OFD lists it, offline
documents marked where they are stored, and a three-day backlog drained first in, first out.

The device is `simulators.shift_model` (its own books and Z reports) driven through a real
gateway; the rules are protocol.md "Offline mode" as `ledger/offline.py` states them.
"""

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from test_shift_wire import START, differences, kkm, model, sale, shift_rows
from wire import device_row, journaled

from ingest.app import RunningGateway
from ledger.journal.view import journal_records
from ledger.offline import OFFLINE_LIMIT, OFFLINE_WARNING, open_windows
from ledger.schemas import SCHEMAS
from ledger.wire import ResultCode
from simulators.documents import build_offline_system
from simulators.kkm import SimulatedKkm
from simulators.receipts import build_info
from simulators.shift_model import Planned, Shift, ShiftModel

VERSIONS = [203, 204]
OFFLINE_NUMBER = 1_790_000_001
CARD = 1
# What a refused receipt still changes in later shifts: the counters that never reset.
LIFETIME_FIELDS = ("start_shift_non_nullable_sums", "non_nullable_sums", "ticket_operations")


async def offline_rows(database_url: str, system_id: int) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(
            "SELECT offline_number, fiscal_sign, shift_number FROM offline_tickets"
            " WHERE system_id = $1 ORDER BY offline_number",
            system_id,
        )
    finally:
        await conn.close()


async def windows(database_url: str, now: datetime, at_least: timedelta) -> list[Any]:
    conn = await asyncpg.connect(database_url)
    try:
        return await open_windows(conn, now=now, at_least=at_least)
    finally:
        await conn.close()


def system_reporting(version: int, begin: datetime, end: datetime) -> Any:
    return build_offline_system(SCHEMAS[version], begin=begin, end=end)


# --- offline numbers: the same document again, or another one under the same number ---


@pytest.mark.parametrize("version", VERSIONS)
async def test_an_identical_offline_resend_is_the_same_document(
    gateway: RunningGateway, database_url: str, tmp_path: Path, version: int
) -> None:
    """The same offline receipt sent again under a new request number (the device lost the
    answer and its queue kept the receipt): the same ticket number, counted and journaled once."""
    device = await kkm(gateway, database_url, version)
    receipt = sale(version, offline_number=OFFLINE_NUMBER)
    first = await device.send(receipt)
    assert first.result.result_code == ResultCode.OK
    again = await device.send(receipt)
    assert again.result.result_code == ResultCode.OK, again.result.result_text
    assert again.ticket.ticket_number == first.ticket.ticket_number
    assert again.ticket.qr_code == first.ticket.qr_code
    row = await device_row(database_url, device.system_id)
    assert row["documents_accepted"] == 1
    assert len(journaled(tmp_path, device.system_id)) == 1
    [stored] = await offline_rows(database_url, device.system_id)
    assert (stored["offline_number"], stored["fiscal_sign"]) == (
        OFFLINE_NUMBER,
        first.ticket.ticket_number,
    )
    info = await device.send(build_info(SCHEMAS[version]))
    [sell] = [op for op in info.report.zx_report.ticket_operations if op.operation == 2]
    assert (sell.tickets_count, sell.offline_count) == (1, 1)


@pytest.mark.parametrize("version", VERSIONS)
async def test_another_document_under_a_used_offline_number_is_refused(
    gateway: RunningGateway, database_url: str, version: int
) -> None:
    """A second, different receipt under an offline number already held: 13 naming the field,
    the token unchanged, nothing counted; the first receipt stands."""
    device = await kkm(gateway, database_url, version)
    first = await device.send(sale(version, offline_number=OFFLINE_NUMBER))
    assert first.result.result_code == ResultCode.OK
    token = device.token
    other = sale(version, number=2, amount=2000 * 100, offline_number=OFFLINE_NUMBER)
    refused = await device.send(other)
    assert refused.result.result_code == ResultCode.INCORRECT_REQUEST_DATA
    assert refused.result.result_text.startswith("offline_ticket_number:")
    assert first.ticket.ticket_number in refused.result.result_text
    assert device.last_response_header is not None
    assert device.last_response_header.token == token
    assert (await device_row(database_url, device.system_id))["documents_accepted"] == 1
    # The next offline number is fine.
    fine = sale(version, number=2, amount=2000 * 100, offline_number=OFFLINE_NUMBER + 1)
    assert (await device.send(fine)).result.result_code == ResultCode.OK


# --- the offline window: reported, visible while open, closed by the first online document ---


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_reported_offline_period_is_visible_until_the_device_is_online(
    gateway: RunningGateway, database_url: str, version: int
) -> None:
    """SYSTEM with offline_period opens the window: a device 60 hours in is listed among those
    to warn about (48 h and more), with 12 hours left; SYSTEM does not rotate the token; an online
    receipt closes the window."""
    device = await kkm(gateway, database_url, version)
    began = START - timedelta(hours=60)
    token = device.token
    answer = await device.send(system_reporting(version, began, START))
    assert answer.result.result_code == ResultCode.OK
    assert device.token == token
    [window] = await windows(database_url, START, OFFLINE_WARNING)
    assert (window.system_id, window.since, window.until) == (device.system_id, began, START)
    assert window.age == timedelta(hours=60)
    assert window.left == OFFLINE_LIMIT - timedelta(hours=60)
    assert window.reported_at is not None
    # Not yet old enough for a list asking for 61 hours and more.
    assert await windows(database_url, START, timedelta(hours=61)) == []
    assert (await device.send(sale(version))).result.result_code == ResultCode.OK
    assert await windows(database_url, START, timedelta(0)) == []


@pytest.mark.parametrize("version", VERSIONS)
async def test_offline_documents_open_the_window_and_are_marked_where_stored(
    gateway: RunningGateway, database_url: str, tmp_path: Path, version: int
) -> None:
    """A drain of offline documents opens the window at the oldest one even without a report;
    each is stored offline (offline_tickets, the journal's is_offline, the shift report)."""
    device = await kkm(gateway, database_url, version)
    books = model(version, seed=3)
    shift = books.shift(documents=6, mode="offline")
    for planned in shift.documents:
        answer = await device.send(planned.request)
        assert answer.result.result_code == ResultCode.OK, answer.result.result_text
    first = _when(shift.documents[0])
    [window] = await windows(database_url, first + timedelta(hours=1), timedelta(0))
    assert window.since == first
    tickets = [p for p in shift.documents if p.kind == "ticket"]
    assert len(await offline_rows(database_url, device.system_id)) == len(tickets)
    records = [r for r in journal_records(tmp_path / "journal") if r.device_id == device.system_id]
    assert len(records) == len(shift.documents)
    assert all(r.is_offline for r in records)
    [report] = await shift_rows(database_url, device.system_id)
    assert report["is_offline"]
    assert differences(report) == []


def _when(planned: Planned) -> datetime:
    request = planned.request
    field = {"ticket": "ticket", "placement": "money_placement", "close": "close_shift"}
    message = getattr(request, field[planned.kind])
    for name in ("date_time", "datetime", "close_time"):
        if name in message.DESCRIPTOR.fields_by_name and message.HasField(name):
            moment = getattr(message, name)
            return datetime(
                moment.date.year,
                moment.date.month,
                moment.date.day,
                moment.time.hour,
                moment.time.minute,
                moment.time.second,
            )
    raise AssertionError(f"no time in {planned.kind}")


# --- three days offline: several shifts closed offline, drained first in, first out ---


def three_days_offline(books: ShiftModel) -> list[Shift]:
    """Five shifts made and closed offline, a break between each: two and a half to three
    days of backlog, short of the 72 hours after which the device would block itself."""
    shifts = []
    for _ in range(5):
        shifts.append(books.shift(documents=10, mode="offline"))
        books.clock += timedelta(hours=6)
    return shifts


async def drain(
    device: SimulatedKkm, shifts: list[Shift], *, skip: Any = None
) -> dict[int, list[Any]]:
    """Sends every document in order; returns the answers by shift number. A document refused
    is left out afterwards (support removed it) and the drain goes on, as the device does."""
    answers: dict[int, list[Any]] = {}
    for shift in shifts:
        for planned in shift.documents:
            answer = await device.send(planned.request)
            answers.setdefault(shift.number, []).append(answer)
            if planned.request is not skip:
                assert answer.result.result_code == ResultCode.OK, answer.result.result_text
    return answers


@pytest.mark.parametrize("version", VERSIONS)
async def test_three_days_offline_drains_in_order_and_every_shift_reconciles(
    gateway: RunningGateway, database_url: str, tmp_path: Path, version: int
) -> None:
    device = await kkm(gateway, database_url, version)
    books = model(version, seed=21)
    shifts = three_days_offline(books)
    first, last = _when(shifts[0].documents[0]), _when(shifts[-1].documents[-1])
    assert timedelta(days=2, hours=12) < last - first < OFFLINE_LIMIT
    # Before the drain the device says how long it has been offline: it is on the warning list.
    reported = await device.send(system_reporting(version, first, last))
    assert reported.result.result_code == ResultCode.OK
    assert [w.system_id for w in await windows(database_url, last, OFFLINE_WARNING)] == [
        device.system_id
    ]
    await drain(device, shifts)
    rows = await shift_rows(database_url, device.system_id)
    assert [r["shift_number"] for r in rows] == [1, 2, 3, 4, 5]
    for row, shift in zip(rows, shifts, strict=True):
        assert differences(row) == [], row["shift_number"]
        assert row["is_offline"]
        assert row["device_z"] == shift.z_report.SerializeToString()
    documents = sum(len(s.documents) for s in shifts)
    assert (await device_row(database_url, device.system_id))["documents_accepted"] == documents
    assert len(journaled(tmp_path, device.system_id)) == documents
    assert gateway.pipeline.shift_stats.mismatched == 0
    # Online again: the first online receipt closes the window.
    after = sale(version, when=last + timedelta(hours=1), shift=6, number=books.printed + 1)
    assert (await device.send(after)).result.result_code == ResultCode.OK
    assert await windows(database_url, last + timedelta(hours=1), timedelta(0)) == []


def _card_receipt(shift: Shift) -> Any:
    """A receipt of the shift paid without cash: leaving it out changes no drawer."""
    for planned in shift.documents:
        if planned.kind == "ticket" and all(p.type != 0 for p in planned.request.ticket.payments):
            return planned.request
    raise AssertionError("no receipt paid without cash")


@pytest.mark.parametrize("version", VERSIONS)
async def test_one_tampered_document_in_the_backlog_is_refused_and_flagged_alone(
    gateway: RunningGateway, database_url: str, tmp_path: Path, version: int
) -> None:
    """The same backlog with one receipt altered after the device booked it: that receipt alone
    is refused (13 naming the field), its shift's close is answered OK and flagged with the
    difference, and every other document is accepted. Later shifts differ only in the counters
    that never reset (the device counted the receipt, the OFD did not)."""
    device = await kkm(gateway, database_url, version)
    books = model(version, seed=21)
    shifts = three_days_offline(books)
    tampered = _card_receipt(shifts[2])
    tampered.ticket.items[0].commodity.sum.bills += 1
    answers = await drain(device, shifts, skip=tampered)
    refused = [a for a in answers[3] if a.result.result_code != ResultCode.OK]
    assert len(refused) == 1
    assert refused[0].result.result_code == ResultCode.INCORRECT_REQUEST_DATA
    assert refused[0].result.result_text.startswith("items[0].commodity.sum")
    rows = await shift_rows(database_url, device.system_id)
    assert [r["shift_number"] for r in rows] == [1, 2, 3, 4, 5]
    assert differences(rows[0]) == differences(rows[1]) == []
    assert differences(rows[2]) != []
    for row in rows[3:]:
        assert all(d.startswith(LIFETIME_FIELDS) for d in differences(row)), differences(row)
    documents = sum(len(s.documents) for s in shifts)
    accepted = (await device_row(database_url, device.system_id))["documents_accepted"]
    assert accepted == documents - 1
    assert len(journaled(tmp_path, device.system_id)) == documents - 1
    assert gateway.pipeline.shift_stats.mismatched >= 1


@pytest.mark.parametrize("version", VERSIONS)
async def test_an_offline_period_ending_before_it_begins_is_refused(
    gateway: RunningGateway, database_url: str, version: int
) -> None:
    device = await kkm(gateway, database_url, version)
    backwards = system_reporting(version, START, START - timedelta(minutes=1))
    answer = await device.send(backwards)
    assert answer.result.result_code == ResultCode.INCORRECT_REQUEST_DATA
    assert answer.result.result_text.startswith("service.offline_period.end_time:")
    assert await windows(database_url, START, timedelta(0)) == []
