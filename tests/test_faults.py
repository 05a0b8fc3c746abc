"""Faults at the wire that tests/test_tcp_server.py and tests/test_session_wire.py leave out.

Already covered there, and not repeated here: a frame split into many small writes that still
arrives in time (test_frame_split_across_many_small_writes_is_answered), a sender that stops
mid-frame, half-close mid-frame, bad app codes, impossible or oversized declared sizes, unknown
versions, bodies that do not parse, one wrong or stale token, a lost answer retransmitted.

Here: a client that keeps trickling bytes is still cut off at the read timeout; random garbage
always gets PROTOCOL_ERROR (or another refusal) or a close, never a hang, and the gateway serves
the next device; a request cut off by a full close commits nothing and can be sent again;
a receipt dated far in the future or the past is accepted (the OFD must not refuse a late
backlog) while an impossible date is INCORRECT_REQUEST_DATA; a late duplicate of an older
request is refused without being counted again; a storm of wrong tokens does not lock out the
right one.

Timeouts are asserted by behaviour (the server closes), never by measuring time; every await on
a socket is bounded by DEADLINE so a wrong server fails a test rather than hanging it.
"""

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import RegisteredDevice, gateway_settings, register_device
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.app import RunningGateway, running_gateway
from ingest.codec import encode
from ledger.journal.view import journal_records
from ledger.schemas import SCHEMAS
from ledger.wire import APP_CODE, HEADER, HEADER_SIZE, ResultCode
from simulators.receipts import Line, build_system, build_ticket

DEADLINE = 10.0
TRICKLE_READ_TIMEOUT = 0.3  # short enough for a test to outlast
TRICKLE_STEP = 0.02  # a byte this often: never silent, never done within the read timeout
MAX_TRICKLE_BYTES = 200  # bounds the trickle loop if the server never closes
GARBAGE_EXAMPLES = 25
WRONG_TOKENS = 40


# --- helpers ---


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    async with asyncio.timeout(DEADLINE):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(DEADLINE):
                await writer.wait_closed()


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes; a reset counts as a close."""
    async with asyncio.timeout(DEADLINE):
        try:
            return await reader.read()
        except ConnectionResetError:
            return b""


def split_frames(data: bytes) -> list[tuple[int, int, Any]]:
    """(version, device id, Response) of every whole answer frame in `data`."""
    answers = []
    while len(data) >= HEADER_SIZE:
        app, version, size, device_id, _, _ = HEADER.unpack_from(data)
        assert app == APP_CODE
        assert HEADER_SIZE <= size <= len(data)
        schema = SCHEMAS.get(version, SCHEMAS[203])
        answers.append((version, device_id, schema.Response.FromString(data[HEADER_SIZE:size])))
        data = data[size:]
    assert data == b"", "a partial answer frame"
    return answers


async def ask(port: int, frame: bytes) -> tuple[int, Any]:
    """One request on its own connection: (header token, Response)."""
    async with connection(port) as (reader, writer):
        writer.write(frame)
        async with asyncio.timeout(DEADLINE):
            await writer.drain()
            head = await reader.readexactly(HEADER_SIZE)
            _, version, size, _, token, _ = HEADER.unpack(head)
            body = await reader.readexactly(size - HEADER_SIZE)
    return token, SCHEMAS[version].Response.FromString(body)


def ticket(version: int, document_number: int, when: datetime) -> Any:
    return build_ticket(
        SCHEMAS[version],
        when=when,
        shift_number=1,
        document_number=document_number,
        lines=[Line("Нан / Хлеб", "1", 1000, 18000)],
        payment="card",
    )


def frame(device: RegisteredDevice, request: Any, number: int, version: int = 203) -> bytes:
    return encode(version, device.system_id, device.token, number, request.SerializeToString())


async def documents_accepted(database_url: str, system_id: int) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval(
            "SELECT documents_accepted FROM device_state WHERE system_id = $1", system_id
        )
    finally:
        await conn.close()
    return count


def journaled(data_dir: Path, system_id: int) -> list[str]:
    return [
        r.document_id for r in journal_records(data_dir / "journal") if r.device_id == system_id
    ]


# --- slow clients ---


async def test_client_that_keeps_trickling_is_still_cut_off_at_the_read_timeout(
    tmp_path: Path, database_url: str
) -> None:
    """Bytes that keep coming are not progress: a frame must arrive whole within the read
    timeout, or a client could hold a connection forever at one byte a tick."""
    settings = gateway_settings(tmp_path, database_url)
    settings = replace(settings, server=replace(settings.server, read_timeout=TRICKLE_READ_TIMEOUT))
    async with running_gateway(settings) as gw:
        device = await register_device(database_url)
        # Declares a frame far longer than will ever be sent at this pace.
        data = HEADER.pack(APP_CODE, 203, 4096, device.system_id, device.token, 1) + bytes(4096)
        async with connection(gw.tcp.port) as (reader, writer):
            sent = 0
            with contextlib.suppress(ConnectionError):
                while sent < MAX_TRICKLE_BYTES and not reader.at_eof():
                    writer.write(data[sent : sent + 1])
                    await writer.drain()
                    sent += 1
                    await asyncio.sleep(TRICKLE_STEP)
            assert await read_until_closed(reader) == b""
        assert sent < MAX_TRICKLE_BYTES  # the server closed; the loop did not run out
        assert gw.tcp.stats.timed_out == 1
        assert await documents_accepted(database_url, device.system_id) == 0


# --- garbage and truncation ---

_random_bytes = st.binary(min_size=1, max_size=300)
_framed_garbage = st.builds(
    lambda version, size, ids, body: (
        HEADER.pack(APP_CODE, version, size, ids[0], ids[1], ids[2]) + body
    ),
    st.sampled_from([203, 204, 0, 202, 0xFFFF]),
    st.integers(min_value=0, max_value=HEADER_SIZE + 300),
    st.tuples(st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFF)),
    st.binary(max_size=300),
)


@settings(
    max_examples=GARBAGE_EXAMPLES,
    deadline=None,
    # One gateway serves every example on purpose: it has to survive all of them.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(garbage=st.one_of(_random_bytes, _framed_garbage))
async def test_garbage_gets_a_refusal_or_a_close_and_the_gateway_serves_on(
    gateway: RunningGateway, database_url: str, garbage: bytes
) -> None:
    async with connection(gateway.tcp.port) as (reader, writer):
        writer.write(garbage)
        writer.write_eof()  # the client is done: no read timeout needed to end the wait
        await writer.drain()
        answers = split_frames(await read_until_closed(reader))
    # Nothing in random bytes is a registered device with its token: never OK.
    assert all(r.result.result_code != ResultCode.OK for _, _, r in answers)
    # The gateway is alive and well for a real device afterwards.
    device = await register_device(database_url)
    _, response = await ask(gateway.tcp.port, frame(device, build_system(SCHEMAS[203]), 1))
    assert response.result.result_code == ResultCode.OK


async def test_request_cut_off_by_a_close_commits_nothing_and_can_be_sent_again(
    gateway: RunningGateway, database_url: str, tmp_path: Path
) -> None:
    device = await register_device(database_url)
    whole = frame(device, ticket(203, 1, datetime(2026, 11, 26, 10, 0)), 1)
    for cut in (HEADER_SIZE - 1, HEADER_SIZE, len(whole) - 1):
        async with connection(gateway.tcp.port) as (_, writer):
            writer.write(whole[:cut])
            async with asyncio.timeout(DEADLINE):
                await writer.drain()
        # Leaving the block closed the socket fully, mid-frame.
    assert journaled(tmp_path, device.system_id) == []
    token, response = await ask(gateway.tcp.port, whole)  # same token, same request number
    assert response.result.result_code == ResultCode.OK
    assert token != device.token
    assert journaled(tmp_path, device.system_id) == [f"{device.system_id}/s1/d1"]
    assert await documents_accepted(database_url, device.system_id) == 1


# --- clock skew ---


@pytest.mark.parametrize(
    "when", [datetime(2099, 12, 31, 23, 59, 59), datetime(2001, 1, 1, 0, 0, 0)], ids=str
)
async def test_receipt_dated_far_in_the_future_or_past_is_accepted(
    gateway: RunningGateway, database_url: str, when: datetime
) -> None:
    """A device clock years off still gets its receipt signed: the OFD has no rule against a
    receipt's own date (it must accept a late backlog, protocol.md offline mode), and the QR
    code carries the device's date. The shift opens at that date, so the 24-hour shift rule
    then judges the device's later documents by the same clock."""
    device = await register_device(database_url)
    request = ticket(204, 1, when)
    data = encode(204, device.system_id, device.token, 1, request.SerializeToString())
    _, response = await ask(gateway.tcp.port, data)
    assert response.result.result_code == ResultCode.OK, response.result.result_text
    assert response.ticket.qr_code.decode().endswith(f"&t={when:%Y%m%dT%H%M%S}")
    assert await documents_accepted(database_url, device.system_id) == 1


async def test_impossible_date_is_incorrect_request_data(
    gateway: RunningGateway, database_url: str
) -> None:
    device = await register_device(database_url)
    request = ticket(203, 1, datetime(2026, 2, 28, 12, 0))
    request.ticket.date_time.date.day = 30  # 30 February
    _, response = await ask(gateway.tcp.port, frame(device, request, 1))
    assert response.result.result_code == ResultCode.INCORRECT_REQUEST_DATA
    assert "date_time" in response.result.result_text
    assert await documents_accepted(database_url, device.system_id) == 0


# --- stale requests and wrong tokens ---


async def test_late_duplicate_of_an_older_request_is_refused_and_not_counted_again(
    gateway: RunningGateway, database_url: str, tmp_path: Path
) -> None:
    """Request 1 resent after request 2 succeeded (a delayed duplicate): its token has rotated
    twice since, so it is INVALID_TOKEN; nothing is journaled again and the device goes on."""
    device = await register_device(database_url)
    when = datetime(2026, 11, 26, 10, 0)
    first = frame(device, ticket(203, 1, when), 1)
    token, response = await ask(gateway.tcp.port, first)
    assert response.result.result_code == ResultCode.OK
    second = encode(203, device.system_id, token, 2, ticket(203, 2, when).SerializeToString())
    token, response = await ask(gateway.tcp.port, second)
    assert response.result.result_code == ResultCode.OK

    _, stale = await ask(gateway.tcp.port, first)
    assert stale.result.result_code == ResultCode.INVALID_TOKEN
    assert journaled(tmp_path, device.system_id) == [
        f"{device.system_id}/s1/d1",
        f"{device.system_id}/s1/d2",
    ]
    system = encode(203, device.system_id, token, 3, build_system(SCHEMAS[203]).SerializeToString())
    _, response = await ask(gateway.tcp.port, system)
    assert response.result.result_code == ResultCode.OK
    assert await documents_accepted(database_url, device.system_id) == 2


async def test_storm_of_wrong_tokens_does_not_lock_out_the_right_one(
    gateway: RunningGateway, database_url: str
) -> None:
    """Forty wrong tokens at once (a misconfigured till, or someone guessing) are each refused;
    the device with the right token is served next, with no lock-out or back-off."""
    device = await register_device(database_url)
    rng = random.Random(5)
    wrong = [t for t in (rng.randrange(1, 2**32) for _ in range(WRONG_TOKENS)) if t != device.token]
    body = build_system(SCHEMAS[203]).SerializeToString()
    answers = await asyncio.gather(
        *(
            ask(gateway.tcp.port, encode(203, device.system_id, token, n, body))
            for n, token in enumerate(wrong, 1)
        )
    )
    assert {r.result.result_code for _, r in answers} == {ResultCode.INVALID_TOKEN}
    request = ticket(203, 1, datetime(2026, 11, 26, 10, 0))
    token, response = await ask(gateway.tcp.port, frame(device, request, WRONG_TOKENS + 1))
    assert response.result.result_code == ResultCode.OK
    assert token != device.token
