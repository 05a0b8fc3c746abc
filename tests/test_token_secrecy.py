"""Device tokens live in PostgreSQL only (issue 11, "Trust"): none reaches the journal, the
warehouse, a log line or a metric.

The attack: a token read from the journal or from the warehouse (documents.response_frame held
the device's next token, and a fallback document id spelled the token out) let an analyst send a
receipt in a shop's name, and the real till then got INVALID_TOKEN. The defence is checked on the
bytes: every token the device ever held, was given or was refused with, as 4-byte little-endian
(and its hex, as the warehouse keeps frames) and as decimal text, is searched for in the raw
journal segments, every column of every warehouse table, the captured log events and a
/metrics scrape.
"""

import asyncio
import dataclasses
import json
import re
import struct
import urllib.request
from collections.abc import AsyncIterator, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog
from conftest import TEST_SECRET, gateway_settings, register_device
from wire import DEADLINE, ask, body, kkm_for

from ingest.app import RunningGateway, running_gateway
from ingest.codec import encode
from ledger.fiscal import request_key
from ledger.journal import JournalEntry
from ledger.journal.local import LocalJournal
from ledger.journal.view import journal_records
from ledger.schemas import SCHEMAS
from ledger.warehouse.backends import Warehouse, open_warehouse
from ledger.warehouse.loader import Loader, local_sources
from ledger.wire import (
    ENVELOPE_VERSION,
    HEADER,
    HEADER_SIZE,
    TOKEN_FIELD,
    ResultCode,
    without_token,
)
from ofdproto.journal.v1.record_pb2 import JournalRecord
from simulators.documents import build_close_shift, build_money_placement
from simulators.receipts import Line, build_ticket

pytestmark = pytest.mark.adversity

START = datetime(2026, 11, 27, 9, 0, 0)
# Fixed, above 2^31 (a u32 token is not an int32), and unlike anything else in a frame.
FIRST_TOKEN = 0xC0FFEE42
WRONG_TOKEN = 0x5A17E00D
# A fallback document id: no shift and printed number, no offline number (ledger.fiscal).
KEYED_FALLBACK = re.compile(r"\d+/t[0-9a-f]{16}/r\d+")
TOKEN_FIELD_NUMBER = 8  # JournalRecord's former `token`, reserved since envelope version 2


def forms(token: int) -> tuple[bytes, ...]:
    """How a token shows in bytes or text: little-endian (and its hex), and decimal."""
    little = struct.pack("<I", token)
    return little, little.hex().encode(), str(token).encode()


def leaks(haystack: bytes, tokens: Iterable[int]) -> list[str]:
    return [
        f"token {token} as {form!r}"
        for token in sorted(set(tokens))
        for form in forms(token)
        if form in haystack
    ]


def journal_bytes(journal_root: Path) -> bytes:
    files = sorted(p for p in journal_root.rglob("*") if p.is_file())
    assert files, f"no journal under {journal_root}"
    return b"".join(p.read_bytes() for p in files)


def warehouse_dump(warehouse: Warehouse) -> bytes:
    """Every row of every table and view of the warehouse as text, and the frames it keeps as
    hex decoded back to bytes (so a token is found however it is kept)."""
    tables = warehouse.select(
        f"SELECT name FROM system.tables WHERE database = '{warehouse.database}'"
        " AND engine != 'MaterializedView' ORDER BY name"
    )
    assert {"documents", "receipts", "shifts"} <= {t["name"] for t in tables}
    out = []
    for table in tables:
        rows = warehouse.select(f"SELECT * FROM {warehouse.database}.{table['name']}")
        out.append(json.dumps(rows, default=str, ensure_ascii=False).encode())
        for row in rows:
            for column in ("request_frame", "response_frame"):
                if column in row:
                    out.append(bytes.fromhex(str(row[column])))
    return b"\n".join(out)


def load_warehouse(journal_root: Path, path: Path) -> Warehouse:
    warehouse = open_warehouse(path=path)
    assert sum(Loader(warehouse, lambda: local_sources(journal_root)).drain()) > 0
    return warehouse


@pytest.fixture
async def metered_gateway(tmp_path: Path, database_url: str) -> AsyncIterator[RunningGateway]:
    settings = dataclasses.replace(gateway_settings(tmp_path, database_url), metrics_port=0)
    async with running_gateway(settings) as running:
        yield running


def _scrape(port: int) -> bytes:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=DEADLINE) as reply:  # our own URL
        data: bytes = reply.read()
        return data


@pytest.mark.parametrize("version", [203, 204])
async def test_no_token_in_journal_warehouse_logs_or_metrics(
    metered_gateway: RunningGateway, database_url: str, tmp_path: Path, version: int
) -> None:
    gateway = metered_gateway
    device = await register_device(database_url, token=FIRST_TOKEN)
    sid = device.system_id
    kkm = kkm_for(gateway, version, sid, FIRST_TOKEN)
    schema = SCHEMAS[version]
    tokens = {FIRST_TOKEN, WRONG_TOKEN}
    signs: list[str] = []

    async def accepted(request: Any) -> Any:
        response = await kkm.send(request)
        assert response.result.result_code == ResultCode.OK, response.result.result_text
        assert kkm.token not in tokens, "every accepted document rotates the token"
        tokens.add(kkm.token)
        return response

    with structlog.testing.capture_logs() as logs:
        for number in (1, 2, 0):  # 0: no printed number, the fallback identity
            ticket = build_ticket(
                schema, when=START + timedelta(minutes=number or 3), shift_number=1,
                document_number=number, lines=[Line("Нан", "1", 1000, 10_000 * (number + 1))],
                payment="cash",
            )  # fmt: skip
            signs.append((await accepted(ticket)).ticket.ticket_number)
        placement = build_money_placement(  # no printed number: the fallback identity
            schema, when=START + timedelta(minutes=4), operation=1, amount=5_000, shift_number=1
        )
        await accepted(placement)
        close = build_close_shift(
            schema, when=START + timedelta(minutes=5), shift_number=1, document_number=4
        )
        await accepted(close)
        # An attacker's guess, refused: neither it nor the expected token reaches the log.
        guess = encode(version, sid, WRONG_TOKEN, kkm.request_number + 1, body(ticket))
        refused = await ask(gateway.tcp.port, guess)
        assert refused.code == ResultCode.INVALID_TOKEN
        # The retry of the last request: the very answer again, the new token in its header.
        first = kkm.last_response_frame
        assert (await kkm.retransmit()).result.result_code == ResultCode.OK
        assert kkm.last_response_frame == first
        assert HEADER.unpack_from(first)[4] == kkm.token
    await kkm.close()
    assert gateway.metrics_port is not None
    scraped = await asyncio.to_thread(_scrape, gateway.metrics_port)

    # The journal: not in any byte of any segment.
    journal_root = tmp_path / "journal"
    assert leaks(journal_bytes(journal_root), tokens) == []
    records = [r for r in journal_records(journal_root) if r.device_id == sid]
    assert len(records) == 5
    for record in records:
        assert record.envelope_version == ENVELOPE_VERSION
        assert not any(f.number == TOKEN_FIELD_NUMBER for f, _ in record.ListFields())
        for frame in (record.request_frame, record.response_frame):
            assert frame[TOKEN_FIELD] == bytes(4)
    assert sum(bool(KEYED_FALLBACK.fullmatch(r.document_id)) for r in records) == 2
    # Nothing else changed: the last document's frames are those on the wire, but the token.
    assert kkm.last_request_frame is not None
    assert records[-1].request_frame == without_token(kkm.last_request_frame)
    assert records[-1].response_frame == without_token(kkm.last_response_frame)
    assert records[-1].request_frame[HEADER_SIZE:] == kkm.last_request_frame[HEADER_SIZE:]

    # The warehouse, through the real loader: not in any column of any table.
    warehouse = load_warehouse(journal_root, tmp_path / "warehouse")
    try:
        assert leaks(warehouse_dump(warehouse), tokens) == []
        receipts = warehouse.select(
            "SELECT fiscal_sign, total, revenue FROM ofd.receipts INNER JOIN ofd.documents"
            f" USING (device_id, document_id) WHERE device_id = {sid} ORDER BY fiscal_sign"
        )
        assert sorted(r["fiscal_sign"] for r in receipts) == sorted(signs)
        assert sorted(int(r["total"]) for r in receipts) == [10_000, 20_000, 30_000]
        assert sum(int(r["revenue"]) for r in receipts) == 60_000
        placements = warehouse.select(
            f"SELECT kind, sum FROM ofd.money_placements WHERE device_id = {sid}"
        )
        assert [(int(p["kind"]), int(p["sum"])) for p in placements] == [(1, 5_000)]
        shifts = warehouse.select(f"SELECT shift_number FROM ofd.shifts WHERE device_id = {sid}")
        assert [int(s["shift_number"]) for s in shifts] == [1]
    finally:
        warehouse.close()

    # Logs and metrics.
    logged = json.dumps(logs, default=str, ensure_ascii=False).encode()
    assert any(e.get("result_name") == "INVALID_TOKEN" for e in logs), "the refusal is logged"
    assert leaks(logged, tokens) == []
    assert leaks(scraped, tokens) == []


async def test_retry_is_answered_from_postgresql_with_the_new_token(
    gateway: RunningGateway, database_url: str, tmp_path: Path
) -> None:
    """The journal keeps no token, and need not: a retry's answer (the new token in its header)
    is device_state.last_response, byte for byte."""
    device = await register_device(database_url, token=FIRST_TOKEN)
    kkm = kkm_for(gateway, 204, device.system_id, FIRST_TOKEN)
    ticket = build_ticket(
        SCHEMAS[204], when=START, shift_number=1, document_number=1,
        lines=[Line("Сүт", "1", 1000, 45_000)], payment="card",
    )  # fmt: skip
    assert (await kkm.send(ticket)).result.result_code == ResultCode.OK
    first = kkm.last_response_frame
    new_token = kkm.token
    assert new_token != FIRST_TOKEN
    assert kkm.last_request_frame is not None
    answer = await ask(gateway.tcp.port, kkm.last_request_frame)
    await kkm.close()
    assert answer.raw == first
    assert answer.header.token == new_token
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT token, last_response FROM device_state WHERE system_id = $1", device.system_id
        )
    finally:
        await conn.close()
    assert row is not None
    assert (row["token"], row["last_response"]) == (new_token, first)
    (record,) = [
        r for r in journal_records(tmp_path / "journal") if r.device_id == device.system_id
    ]
    assert record.response_frame == without_token(first) != first


def _old_record(sid: int, number: int, token: int, *, sign: str, fallback: bool) -> bytes:
    """A record as a gateway wrote it before envelope version 2: the token in field 8, in both
    frames' headers (the response's the next one), and in a fallback document id."""
    schema = SCHEMAS[203]
    request = build_ticket(
        schema, when=START + timedelta(minutes=number), shift_number=1,
        document_number=0 if fallback else number, lines=[Line("Нан", "1", 1000, 7_000)],
        payment="cash",
    )  # fmt: skip
    response = schema.Response(command=1)
    response.result.result_code = 0
    response.ticket.ticket_number = sign
    document = f"{sid}/t{token}/r{number}" if fallback else f"{sid}/s1/d{number}"
    record = JournalRecord(
        envelope_version=1, device_id=sid, protocol_version=203,
        received_at_us=1_795_000_000_000_000, gateway_id="gw-old", command=1,
        request_number=number, document_id=document, fiscal_sign=sign,
        request_frame=encode(203, sid, token, number, request.SerializeToString()),
        response_frame=encode(203, sid, token + 1, number, response.SerializeToString()),
    )  # fmt: skip
    field_8 = bytes([TOKEN_FIELD_NUMBER << 3]) + _varint(token)
    return record.SerializeToString() + field_8


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


def test_an_old_journal_loaded_into_a_new_warehouse_leaks_nothing(tmp_path: Path) -> None:
    """Envelope version 1 records still hold tokens: the loader blanks them, and renames a
    fallback id by its fiscal sign so that the copies of one document still collapse."""
    sid = 4_000_000_001
    old = [
        _old_record(sid, 1, 0x9ABCDEF0, sign="1000000001", fallback=False),
        _old_record(sid, 2, 0x9ABCDEF1, sign="1000000002", fallback=True),
        _old_record(sid, 2, 0x9ABCDEF1, sign="1000000002", fallback=True),  # its resend
    ]
    tokens = {0x9ABCDEF0, 0x9ABCDEF1, 0x9ABCDEF2}
    assert leaks(b"".join(old), tokens), "the old records do hold the tokens"
    journal = LocalJournal(tmp_path / "journal" / "gw-old")
    try:
        journal.append_sync([JournalEntry(sid, payload) for payload in old])
    finally:
        journal._close()
    warehouse = load_warehouse(tmp_path / "journal", tmp_path / "warehouse")
    try:
        assert leaks(warehouse_dump(warehouse), tokens) == []
        documents = warehouse.select(
            f"SELECT document_id, fiscal_sign FROM ofd.documents FINAL WHERE device_id = {sid}"
            " ORDER BY document_id"
        )
        assert [(d["document_id"], d["fiscal_sign"]) for d in documents] == [
            (f"{sid}/f1000000002/r2", "1000000002"),
            (f"{sid}/s1/d1", "1000000001"),
        ]
        receipts = warehouse.select(
            f"SELECT count() AS n FROM ofd.receipts WHERE device_id = {sid}"
        )
        assert int(receipts[0]["n"]) == 2
    finally:
        warehouse.close()


def test_without_token_blanks_the_token_alone() -> None:
    frame = HEADER.pack(0x81A2, 204, HEADER_SIZE + 3, 77, FIRST_TOKEN, 65_535) + b"doc"
    blank = without_token(frame)
    assert HEADER.unpack_from(blank) == (0x81A2, 204, HEADER_SIZE + 3, 77, 0, 65_535)
    assert blank[HEADER_SIZE:] == b"doc"
    assert without_token(blank) == blank
    assert without_token(b"") == b""
    assert without_token(frame[:14]) == frame[:12] + bytes(2)


def test_the_fallback_identity_is_keyed_and_deterministic() -> None:
    key = request_key(TEST_SECRET, 77, FIRST_TOKEN, 9)
    assert key == request_key(TEST_SECRET, 77, FIRST_TOKEN, 9), "a retry is the same document"
    assert key != request_key(TEST_SECRET, 77, FIRST_TOKEN + 1, 9)
    assert key != request_key(TEST_SECRET, 78, FIRST_TOKEN, 9)
    assert key != request_key(b"another secret", 77, FIRST_TOKEN, 9)
    assert key.endswith("/r9")
    assert leaks(key.encode(), {FIRST_TOKEN}) == []
