"""The offline-capable device model and the fleet runner, against a real gateway and PostgreSQL.

Unit: offline numbering, FIFO queues, the 72-hour self-block, with a clock the test sets.
Device against the gateway: each way a link fails (no answer, the answer lost after the gateway
did its work, 254) puts the device offline with its receipt kept; when the link is back the very
same frame is resent, the queue drains first in, first out, the journal holds every receipt once
and the token the device ends with is the OFD's. Fleet: a small run of every rate profile passes
the runner's own verification, and the command line with a gateway of its own exits 0.
"""

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import pytest
from conftest import register_device

from ingest.app import RunningGateway
from ingest.body import refusal_frame
from ingest.codec import FrameHeader
from ledger.errors import Refusal
from ledger.journal.view import journal_records
from ledger.wire import HEADER, HEADER_SIZE, Command, ResultCode
from simulators.fleet import (
    PROFILE_NAMES,
    Endpoints,
    FleetConfig,
    assign_versions,
    failures,
    main,
    report,
    run_against,
)
from simulators.fleet_device import OFFLINE_LIMIT, OfflineKkm
from simulators.fleet_ofd import check_journal, check_tokens
from simulators.kkm import SimulatedKkm

DEADLINE = 10.0  # bounds every socket await of the test's own servers
START = datetime(2026, 11, 26, 4, 0, tzinfo=UTC)  # 09:00 in Kazakhstan
UNUSED_PORT = 9  # the unit tests never connect
FAST_RETRY = 0.01  # the simulator's backoff between its own retries


@dataclass
class FixedClock:
    """Simulated time that moves only when the test moves it."""

    at: datetime = START

    def now(self) -> datetime:
        return self.at


def offline_device(
    clock: FixedClock, port: int = UNUSED_PORT, *, system_id: int = 1, token: int = 1
) -> OfflineKkm:
    kkm = SimulatedKkm(
        "127.0.0.1", port, version=203, system_id=system_id, token=token, backoff=FAST_RETRY
    )
    return OfflineKkm(kkm, clock)


# --- the device model, no network ---


def test_offline_numbers_are_unix_time_and_unique_within_one_second() -> None:
    device = offline_device(FixedClock())
    device.go_offline()
    made = [device.ring_up(START) for _ in range(5)]
    numbers = [r.offline_number for r in made if r is not None]
    unix = int(START.timestamp())
    assert numbers == [unix, unix + 1, unix + 2, unix + 3, unix + 4]
    # A later receipt whose own second is already used continues after the last number.
    later = device.ring_up(START + timedelta(seconds=2))
    assert later is not None
    assert later.offline_number == unix + 5
    far_later = device.ring_up(START + timedelta(hours=1))
    assert far_later is not None
    assert far_later.offline_number == unix + 3600


def test_queue_is_first_in_first_out_and_online_receipts_carry_no_offline_number() -> None:
    clock = FixedClock()
    device = offline_device(clock)
    device.ring_up()  # made online, before the link failed
    device.go_offline()
    for minute in range(1, 4):
        clock.at = START + timedelta(minutes=minute)
        device.ring_up()
    assert [r.document_number for r in device.queue] == [1, 2, 3, 4]
    assert device.queue[0].offline_number is None
    assert all(r.offline_number for r in list(device.queue)[1:])
    assert [r.made_at for r in device.queue] == sorted(r.made_at for r in device.queue)
    assert device.tally.made == 4
    assert device.tally.made_offline == 3


def test_device_blocks_itself_when_its_oldest_receipt_is_older_than_72_hours() -> None:
    device = offline_device(FixedClock())
    device.go_offline(since=START)
    assert device.ring_up(START) is not None
    assert not device.check_block(START + OFFLINE_LIMIT)  # exactly 72 hours is still allowed
    assert device.ring_up(START + OFFLINE_LIMIT) is not None
    assert device.check_block(START + OFFLINE_LIMIT + timedelta(seconds=1))
    assert device.ring_up(START + OFFLINE_LIMIT + timedelta(seconds=2)) is None
    assert device.tally.lost_sales == 1
    assert device.tally.self_blocks == 1
    assert len(device.queue) == 2


def test_versions_follow_the_mix_exactly() -> None:
    versions = assign_versions(10, ((203, 0.7), (204, 0.3)), seed=3)
    assert sorted(versions) == [203] * 7 + [204] * 3
    assert assign_versions(3, ((204, 1.0),), seed=1) == [204, 204, 204]


# --- a link that fails in one chosen way ---

LinkMode = Literal["pass", "no-answer", "answer-lost", "unavailable"]


@dataclass
class FaultyLink:
    """Between device and gateway, one frame per connection (the reference client's way):
    - no-answer: reads the request and closes (the gateway never sees it);
    - answer-lost: the gateway serves the request, its answer never reaches the device;
    - unavailable: answers 254 itself (the gateway never sees it);
    - pass: forwards both ways."""

    gateway_port: int
    mode: LinkMode = "pass"
    frames: list[bytes] = field(default_factory=list)  # every request frame that arrived

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(DEADLINE):
                frame = await _read_frame(reader)
                self.frames.append(frame)
                if self.mode == "no-answer":
                    return
                if self.mode == "unavailable":
                    header = FrameHeader(*HEADER.unpack_from(frame)[1:])
                    refusal = Refusal(ResultCode.SERVICE_TEMPORARILY_UNAVAILABLE, "outage")
                    writer.write(refusal_frame(header, Command.TICKET, refusal))
                    await writer.drain()
                    return
                answer = await self._forward(frame)
                if self.mode == "pass":
                    writer.write(answer)
                    await writer.drain()
        except (OSError, EOFError):
            pass  # the device gave up: nothing to relay
        finally:
            writer.close()

    async def _forward(self, frame: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.gateway_port)
        try:
            writer.write(frame)
            await writer.drain()
            return await _read_frame(reader)
        finally:
            writer.close()


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readexactly(HEADER_SIZE)
    return head + await reader.readexactly(HEADER.unpack(head)[2] - HEADER_SIZE)


@contextlib.asynccontextmanager
async def faulty_link(gateway_port: int) -> AsyncIterator[tuple[FaultyLink, int]]:
    link = FaultyLink(gateway_port)
    server = await asyncio.start_server(link.serve, "127.0.0.1", 0)
    try:
        yield link, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


# --- the device against the gateway ---


@pytest.mark.parametrize("failure", ["no-answer", "answer-lost", "unavailable"])
async def test_failed_receipt_is_resent_as_the_same_frame_then_the_queue_drains_in_order(
    gateway: RunningGateway, database_url: str, tmp_path: Path, failure: LinkMode
) -> None:
    registered = await register_device(database_url)
    clock = FixedClock()
    async with faulty_link(gateway.tcp.port) as (link, port):
        device = offline_device(clock, port, system_id=registered.system_id, token=registered.token)
        link.mode = failure
        device.ring_up()
        await device.pump(10)
        assert device.offline
        assert device.head_failed
        failed_frame = device.kkm.last_request_frame
        for minute in (1, 2, 3):
            clock.at = START + timedelta(minutes=minute)
            device.ring_up()
        assert [r.offline_number is None for r in device.queue] == [True, False, False, False]

        link.mode = "pass"
        sent_before = len(link.frames)
        clock.at = START + timedelta(minutes=5)
        await device.pump(10)
        assert link.frames[sent_before] == failed_frame  # byte for byte: same token and number
        # The token the device holds is the one the OFD issued last.
        tokens = await check_tokens([device])
        assert tokens.ok == 1, tokens

    assert not device.offline
    assert not device.queue
    assert device.stuck is None
    assert [a.document_key for a in device.acks] == ["s1/d1", "s1/d2", "s1/d3", "s1/d4"]
    assert [a.offline for a in device.acks] == [False, True, True, True]
    assert device.acks[0].unavailable_seen
    assert device.offline_periods == [(START, START + timedelta(minutes=5))]
    # The gateway journaled every receipt once, in the order the device sent them.
    journal = check_journal([device], journal_records(tmp_path / "journal"))
    assert journal.passed, journal
    assert journal.exactly_once == 4
    ours = [r.document_id for r in journal_records(tmp_path / "journal")
            if r.device_id == registered.system_id]  # fmt: skip
    assert ours == [f"{registered.system_id}/s1/d{n}" for n in (1, 2, 3, 4)]


async def test_late_backlog_is_accepted_and_sending_it_lifts_the_self_block(
    gateway: RunningGateway, database_url: str, tmp_path: Path
) -> None:
    """Receipts from 80 hours ago block the device; the OFD takes them all (never refused for
    being late) and the drained device can sell again."""
    registered = await register_device(database_url)
    clock = FixedClock()
    device = offline_device(
        clock, gateway.tcp.port, system_id=registered.system_id, token=registered.token
    )
    began = START - timedelta(hours=80)
    device.go_offline(since=began)
    for hour in (0, 1, 2):
        device.ring_up(began + timedelta(hours=hour))
    assert device.check_block()
    assert device.ring_up() is None
    await device.pump(10)
    assert device.ever_blocked
    assert not device.self_blocked
    assert not device.queue
    assert not device.offline
    assert [a.offline for a in device.acks] == [True, True, True]
    assert device.ring_up() is not None
    assert check_journal([device], journal_records(tmp_path / "journal")).exactly_once == 3


# --- fleets ---


@pytest.mark.parametrize("profile", PROFILE_NAMES)
async def test_every_profile_passes_verification(
    gateway: RunningGateway, tmp_path: Path, profile: str
) -> None:
    config = FleetConfig(
        devices=20,
        profile=profile,  # type: ignore[arg-type]  # one of PROFILE_NAMES
        seconds=1.5,
        backlog=20,
        probe_interval=0.2,
        drain_timeout=20.0,
        progress=False,
    )
    endpoints = Endpoints("127.0.0.1", gateway.tcp.port, f"127.0.0.1:{gateway.control_port}")
    run, journal = await run_against(config, endpoints, tmp_path / "journal", out=io.StringIO())
    assert failures(run, journal) == [], "\n".join(report(run, journal))
    assert journal is not None
    assert journal.exactly_once == run.tally.acked_receipts == run.tally.made > 0
    assert run.tokens.ok == 20
    assert {d.kkm.version for d in run.devices} == {203, 204}
    for device in run.devices:  # first in, first out: printed numbers are acknowledged in order
        numbers = [int(a.document_key.rsplit("d", 1)[1]) for a in device.acks]
        assert numbers == sorted(numbers)
    if profile == "mass-reconnect":
        assert run.tally.made_offline >= 20 * 20
        assert run.backlog_drain_seconds is not None
        assert run.ever_blocked == 0
        assert all(len(d.offline_periods) == 1 for d in run.devices)


async def test_persistent_connections_pass_verification(
    gateway: RunningGateway, tmp_path: Path
) -> None:
    config = FleetConfig(devices=10, profile="steady", seconds=1.0, persistent=True, progress=False)
    endpoints = Endpoints("127.0.0.1", gateway.tcp.port, f"127.0.0.1:{gateway.control_port}")
    run, journal = await run_against(config, endpoints, tmp_path / "journal", out=io.StringIO())
    assert failures(run, journal) == [], "\n".join(report(run, journal))
    assert gateway.tcp.stats.accepted <= 10 * 2  # about one connection per device


@pytest.mark.slow
def test_command_line_with_its_own_gateway_verifies_and_exits_0(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["--devices", "5", "--profile", "mass-reconnect", "--backlog", "5",
                 "--seconds", "1", "--quiet"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "verification passed" in printed
    assert "gateway stopped (exit code 0)" in printed
    assert "peak memory: fleet" in printed
    assert "peak memory: gateway" in printed
