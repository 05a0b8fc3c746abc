"""The framed TCP server with real sockets: persistent and one-shot connections, pipelining,
fragmented frames, slow and silent peers, broken framing, the connection limit, half-close, and
many devices at once.

Timeouts are asserted by behaviour only (the server closes, or answers), never by measuring
time; every await is bounded by DEADLINE so a wrong server fails a test instead of hanging it.
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
from wire import DEADLINE, connect, decode

from ingest.app import RunningGateway, running_gateway
from ingest.codec import FrameHeader, encode
from ledger.journal.view import journal_records
from ledger.schemas import SCHEMAS
from ledger.wire import APP_CODE, HEADER, HEADER_SIZE, MAX_FRAME_SIZE, Command, ResultCode
from simulators.kkm import SimulatedKkm
from simulators.receipts import Line, build_info, build_system, build_ticket, random_lines

# For tests of the timeouts: short enough to wait for, and an idle timeout far beyond DEADLINE
# where a test must show the read timeout (not the idle one) closed the connection.
SHORT_READ_TIMEOUT = 0.3
LONG_IDLE_TIMEOUT = 60.0


# --- helpers ---


def parts(raw: bytes) -> tuple[FrameHeader, Any]:
    """An answer frame as (header, response)."""
    answer = decode(raw)
    return answer.header, answer.response


@contextlib.asynccontextmanager
async def gateway_with(
    data_dir: Path, database_url: str, **server: Any
) -> AsyncIterator[RunningGateway]:
    """A gateway of its own whose TCP server settings differ from the fixture's."""
    settings = gateway_settings(data_dir, database_url)
    settings = replace(settings, server=replace(settings.server, **server))
    async with running_gateway(settings) as running:
        yield running


def ticket(version: int, document_number: int = 1) -> Any:
    return build_ticket(
        SCHEMAS[version],
        when=datetime(2026, 11, 26, 12, 30, 5),
        shift_number=1,
        document_number=document_number,
        lines=[Line("Сүт / Молоко 1 л", "1", 1000, 52000)],
        payment="cash",
    )


def frame_of(
    device: RegisteredDevice, request: Any, request_number: int, version: int = 203
) -> bytes:
    return encode(
        version, device.system_id, device.token, request_number, request.SerializeToString()
    )


def system_frame(device: RegisteredDevice, request_number: int) -> bytes:
    return frame_of(device, build_system(SCHEMAS[203]), request_number)


# --- persistent and one-shot connections ---


async def test_pipelined_frames_of_several_devices_are_answered_in_order(
    gateway: RunningGateway, database_url: str
) -> None:
    """Five TICKETs written at once on one connection get five answers, in request order."""
    devices = [await register_device(database_url) for _ in range(5)]
    async with connect(gateway.tcp.port) as link:
        await link.send(b"".join(frame_of(d, ticket(203), 1) for d in devices))
        answers = [parts(await link.read_frame()) for _ in devices]
    assert [h.device_id for h, _ in answers] == [d.system_id for d in devices]
    assert all(r.result.result_code == ResultCode.OK for _, r in answers)
    assert len({r.ticket.ticket_number for _, r in answers}) == 5
    assert all(h.token != d.token for (h, _), d in zip(answers, devices, strict=True))


async def test_pipelining_past_the_read_ahead_limit_is_answered_in_order(
    gateway: RunningGateway, database_url: str
) -> None:
    """More frames than the server reads ahead (reading pauses, then resumes) all get answers."""
    device = await register_device(database_url)
    count = 3 * gateway.tcp.settings.max_queued_frames
    requests = [
        build_system(SCHEMAS[203]) if n % 2 else build_info(SCHEMAS[203])
        for n in range(1, count + 1)
    ]
    async with connect(gateway.tcp.port) as link:
        await link.send(b"".join(frame_of(device, r, n) for n, r in enumerate(requests, 1)))
        answers = [parts(await link.read_frame()) for _ in requests]
    assert [h.request_number for h, _ in answers] == list(range(1, count + 1))
    assert [r.command for _, r in answers] == [r.command for r in requests]
    assert all(r.result.result_code == ResultCode.OK for _, r in answers)


@pytest.mark.parametrize("persistent", [False, True])
async def test_one_connection_per_request_or_one_for_all(
    gateway: RunningGateway, database_url: str, persistent: bool
) -> None:
    """The reference client's connect-write-read-close and a persistent connection both work."""
    device = await register_device(database_url)
    async with SimulatedKkm(
        "127.0.0.1",
        gateway.tcp.port,
        version=203,
        system_id=device.system_id,
        token=device.token,
        persistent=persistent,
    ) as kkm:
        for document in range(1, 6):
            response = await kkm.send(ticket(203, document))
            assert response.result.result_code == ResultCode.OK
    assert gateway.tcp.stats.accepted == (1 if persistent else 5)


async def test_frame_split_across_many_small_writes_is_answered(
    gateway: RunningGateway, database_url: str
) -> None:
    """A frame trickling in a few bytes at a time (header split too) is reassembled and served."""
    device = await register_device(database_url)
    frames = [system_frame(device, 1), frame_of(device, ticket(203), 2)]
    rng = random.Random(7)
    async with connect(gateway.tcp.port) as link:
        for frame in frames:
            pos = 0
            while pos < len(frame):
                step = rng.randint(1, 5)
                await link.send(frame[pos : pos + step])
                pos += step
                await asyncio.sleep(0.002)
        answers = [parts(await link.read_frame()) for _ in frames]
    assert [r.result.result_code for _, r in answers] == [ResultCode.OK, ResultCode.OK]
    assert [h.request_number for h, _ in answers] == [1, 2]


# --- slow, silent and idle peers ---


@pytest.mark.parametrize("sent", [5, HEADER_SIZE, HEADER_SIZE + 7])
async def test_slow_sender_is_disconnected_after_the_read_timeout(
    tmp_path: Path, database_url: str, sent: int
) -> None:
    """A peer that starts a frame and stops is cut off, unanswered, by the read timeout."""
    async with gateway_with(
        tmp_path, database_url, read_timeout=SHORT_READ_TIMEOUT, idle_timeout=LONG_IDLE_TIMEOUT
    ) as gw:
        device = await register_device(database_url)
        async with connect(gw.tcp.port) as link:
            await link.send(frame_of(device, ticket(203), 1)[:sent])
            assert await link.read_to_eof() == b""
        assert gw.tcp.stats.timed_out == 1


async def test_frame_started_after_an_answer_is_bounded_by_the_read_timeout(
    tmp_path: Path, database_url: str
) -> None:
    """A frame begun after an answer is cut off by the read timeout, not the idle timeout."""
    async with gateway_with(
        tmp_path, database_url, read_timeout=SHORT_READ_TIMEOUT, idle_timeout=LONG_IDLE_TIMEOUT
    ) as gw:
        device = await register_device(database_url)
        async with connect(gw.tcp.port) as link:
            answer = (await link.ask(system_frame(device, 1))).response
            assert answer.result.result_code == ResultCode.OK
            await link.send(system_frame(device, 2)[: HEADER_SIZE + 1])
            assert await link.read_to_eof() == b""
        assert gw.tcp.stats.timed_out == 1


async def test_connection_that_sends_nothing_is_closed_after_the_read_timeout(
    tmp_path: Path, database_url: str
) -> None:
    """A new connection whose first frame never comes is closed by the read timeout."""
    async with gateway_with(
        tmp_path, database_url, read_timeout=SHORT_READ_TIMEOUT, idle_timeout=LONG_IDLE_TIMEOUT
    ) as gw:
        async with connect(gw.tcp.port) as link:
            assert await link.read_to_eof() == b""
        assert gw.tcp.stats.timed_out == 1


async def test_idle_persistent_connection_outlives_the_read_timeout_then_closes(
    tmp_path: Path, database_url: str
) -> None:
    """Between requests a pause past the read timeout is fine; idleness closes eventually."""
    async with gateway_with(tmp_path, database_url, read_timeout=0.2, idle_timeout=1.5) as gw:
        device = await register_device(database_url)
        async with connect(gw.tcp.port) as link:
            first = (await link.ask(system_frame(device, 1))).response
            await asyncio.sleep(0.5)  # past the read timeout, well within the idle timeout
            second = (await link.ask(system_frame(device, 2))).response
            assert await link.read_to_eof() == b""
        assert (first.result.result_code, second.result.result_code) == (0, 0)
        assert gw.tcp.stats.timed_out == 1


# --- broken framing ---


async def test_bad_app_code_is_answered_protocol_error_then_closed(
    gateway: RunningGateway, database_url: str
) -> None:
    """A frame without the 0x81A2 app code gets PROTOCOL_ERROR (as device 0), then a close."""
    device = await register_device(database_url)
    frame = b"\x00\x00" + system_frame(device, 1)[2:]
    async with connect(gateway.tcp.port) as link:
        await link.send(frame)
        header, response = parts(await link.read_frame())
        assert await link.read_to_eof() == b""
    assert response.result.result_code == ResultCode.PROTOCOL_ERROR
    assert "app code" in response.result.result_text
    assert (header.version, header.device_id) == (203, 0)
    assert gateway.tcp.stats.frame_errors == 1


async def test_good_frames_before_a_broken_one_are_answered_then_protocol_error(
    gateway: RunningGateway, database_url: str
) -> None:
    """Frames that arrived whole before broken framing are answered, then PROTOCOL_ERROR, close."""
    device = await register_device(database_url)
    data = system_frame(device, 1) + system_frame(device, 2) + b"\x00\x00" + bytes(16)
    async with connect(gateway.tcp.port) as link:
        await link.send(data)
        answers = [parts(await link.read_frame()) for _ in range(3)]
        assert await link.read_to_eof() == b""
    assert [r.result.result_code for _, r in answers] == [
        ResultCode.OK,
        ResultCode.OK,
        ResultCode.PROTOCOL_ERROR,
    ]
    assert [h.request_number for h, _ in answers[:2]] == [1, 2]


@pytest.mark.parametrize("size", [MAX_FRAME_SIZE + 1, 0xFFFFFFFF, HEADER_SIZE - 1, 0])
async def test_bad_declared_size_is_answered_at_once_then_closed(
    gateway: RunningGateway, database_url: str, size: int
) -> None:
    """An impossible frame size gets PROTOCOL_ERROR from the header alone, then a close."""
    # Only the header is sent: had the server waited for the body, its read timeout would have
    # closed the connection without an answer.
    device = await register_device(database_url)
    header = HEADER.pack(APP_CODE, 204, size, device.system_id, device.token, 77)
    async with connect(gateway.tcp.port) as link:
        await link.send(header)
        answer_header, response = parts(await link.read_frame())
        assert await link.read_to_eof() == b""
    assert response.result.result_code == ResultCode.PROTOCOL_ERROR
    assert (answer_header.device_id, answer_header.request_number) == (device.system_id, 77)
    assert answer_header.token == device.token
    assert gateway.tcp.stats.timed_out == 0


# --- the connection limit ---


async def test_connections_over_the_limit_are_closed_at_once(
    tmp_path: Path, database_url: str
) -> None:
    """With max_connections=2 a third connection is dropped unanswered; a freed slot is reused."""
    async with gateway_with(tmp_path, database_url, max_connections=2) as gw:
        device = await register_device(database_url)
        port = gw.tcp.port
        async with connect(port) as first, connect(port) as second:
            for n, link in enumerate((first, second), 1):
                response = (await link.ask(system_frame(device, n))).response
                assert response.result.result_code == ResultCode.OK
            async with connect(port) as third:
                with contextlib.suppress(ConnectionError):
                    await third.send(system_frame(device, 3))
                assert await third.read_to_eof() == b""  # no answer: it was never served
            assert gw.tcp.stats.refused_over_limit == 1
            assert gw.tcp.stats.active == 2

            await first.writer.drain()
            first.writer.close()
            async with asyncio.timeout(DEADLINE):
                while gw.tcp.stats.active > 1:  # noqa: ASYNC110 - the server sees the close later
                    await asyncio.sleep(0.01)
            async with connect(port) as fourth:
                response = (await fourth.ask(system_frame(device, 4))).response
                assert response.result.result_code == ResultCode.OK
            response = (await second.ask(system_frame(device, 5))).response
            assert response.result.result_code == ResultCode.OK


# --- half-close ---


async def test_half_closed_connection_still_gets_its_answer(
    gateway: RunningGateway, database_url: str
) -> None:
    """A client that shuts its write side after sending a frame still reads the answer."""
    device = await register_device(database_url)
    kkm = SimulatedKkm(
        "127.0.0.1", gateway.tcp.port, version=203, system_id=device.system_id, token=device.token
    )
    _, response = parts(await kkm.exchange_raw(frame_of(device, ticket(203), 1), half_close=True))
    assert response.result.result_code == ResultCode.OK
    assert len(response.ticket.ticket_number) == 10


async def test_half_close_after_pipelined_frames_gets_every_answer_then_close(
    gateway: RunningGateway, database_url: str
) -> None:
    """Three frames, then EOF from the client: three answers in order, then the server closes."""
    device = await register_device(database_url)
    async with connect(gateway.tcp.port) as link:
        await link.send(b"".join(system_frame(device, n) for n in (1, 2, 3)))
        link.writer.write_eof()
        answers = [parts(await link.read_frame()) for _ in range(3)]
        assert await link.read_to_eof() == b""
    assert [h.request_number for h, _ in answers] == [1, 2, 3]
    assert all(r.result.result_code == ResultCode.OK for _, r in answers)


async def test_half_close_in_the_middle_of_a_frame_closes_unanswered(
    gateway: RunningGateway, database_url: str
) -> None:
    """A client that gives up mid-frame (write side shut) is closed without an answer."""
    device = await register_device(database_url)
    kkm = SimulatedKkm(
        "127.0.0.1", gateway.tcp.port, version=203, system_id=device.system_id, token=device.token
    )
    partial = frame_of(device, ticket(203), 1)[:30]
    assert await kkm.exchange_raw(partial, half_close=True) == b""
    assert gateway.tcp.stats.timed_out == 0


# --- many devices ---


async def test_many_concurrent_devices_all_get_distinct_fiscal_signs(
    gateway: RunningGateway, database_url: str, tmp_path: Path
) -> None:
    """50 devices x 5 receipts at once: all OK, distinct signs, each counted and journaled once."""
    devices = [await register_device(database_url) for _ in range(50)]
    receipts = 5

    async def till(index: int, device: RegisteredDevice) -> list[str]:
        version = 203 if index % 2 else 204
        rng = random.Random(index)
        signs = []
        async with SimulatedKkm(
            "127.0.0.1",
            gateway.tcp.port,
            version=version,
            system_id=device.system_id,
            token=device.token,
            persistent=index % 3 == 0,
        ) as kkm:
            for document in range(1, receipts + 1):
                request = build_ticket(
                    SCHEMAS[version],
                    when=datetime(2026, 11, 26, 9, 0, document),
                    shift_number=1,
                    document_number=document,
                    lines=random_lines(rng, rng.randint(1, 4)),
                    payment=rng.choice(["cash", "card", "mobile"]),
                )
                response = await kkm.send(request)
                assert response.result.result_code == ResultCode.OK, response.result.result_text
                signs.append(response.ticket.ticket_number)
        return signs

    async with asyncio.timeout(60):
        results = await asyncio.gather(*(till(i, d) for i, d in enumerate(devices)))
    signs = [s for per_device in results for s in per_device]
    assert len(signs) == len(set(signs)) == 50 * receipts

    conn = await asyncpg.connect(database_url)
    try:
        counts = await conn.fetch("SELECT documents_accepted FROM device_state")
    finally:
        await conn.close()
    assert sorted(r["documents_accepted"] for r in counts) == [receipts] * 50
    records = list(journal_records(tmp_path / "journal"))
    assert sorted(r.fiscal_sign for r in records) == sorted(signs)
    assert {r.command for r in records} == {Command.TICKET}
