"""No single client can deny service (issue 11, "Trust", items 4 and 5), against a real
in-process gateway with small limits: slot holders, half-sent frames, token guessing and the
PROXY protocol's source address.

The attacker connects from 127.0.0.2 (its socket bound there; the loopback is 127.0.0.0/8), the
real device from 127.0.0.1 and, where it shares the attacker's address (carrier-grade NAT), from
127.0.0.2 too. Outcomes are asserted through answers, closes and the server's counters; time
appears only as generous deadlines and as a fixed window whose answers are counted against an
upper bound that a slower machine can only undershoot.
"""

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from conftest import RegisteredDevice, gateway_settings, register_device
from wire import DEADLINE, UNKNOWN_SYSTEM_ID, Link, decode

from ingest.app import RunningGateway, running_gateway
from ingest.codec import encode
from ingest.grpc_ingest import SERVICE as INGEST_SERVICE
from ingest.guessing import GuessSettings
from ingest.limits import FailureBudget
from ingest.proxy_protocol import build_header
from ledger.schemas import SCHEMAS
from ledger.wire import APP_CODE, HEADER, ResultCode
from ofdproto.ingest.v1 import ingest_pb2 as pb
from simulators.receipts import build_system

pytestmark = pytest.mark.adversity

ATTACKER = "127.0.0.2"
DEVICE = "127.0.0.1"
SYSTEM_BODY = build_system(SCHEMAS[203]).SerializeToString()


@contextlib.asynccontextmanager
async def gateway_with(
    data_dir: Path, database_url: str, **server: Any
) -> AsyncIterator[RunningGateway]:
    settings = gateway_settings(data_dir, database_url)
    settings = dataclasses.replace(settings, server=dataclasses.replace(settings.server, **server))
    async with running_gateway(settings) as running:
        yield running


@contextlib.asynccontextmanager
async def connect_from(port: int, source: str, first: bytes = b"") -> AsyncIterator[Link]:
    """A raw connection whose socket is bound to `source`; `first` is written at once."""
    async with asyncio.timeout(DEADLINE):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    if first:
        writer.write(first)
    try:
        yield Link(reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(DEADLINE):
                await writer.wait_closed()


def system_frame(device_id: int, token: int, request_number: int) -> bytes:
    return encode(203, device_id, token, request_number, SYSTEM_BODY)


def device_frame(device: RegisteredDevice, request_number: int) -> bytes:
    return system_frame(device.system_id, device.token, request_number)


async def ask_from(port: int, source: str, frame: bytes) -> int:
    """One request on its own connection from `source`, as the reference client does."""
    async with connect_from(port, source) as link:
        return (await link.ask(frame)).code


async def closed_by_server(link: Link) -> bool:
    """True once the server has closed the connection (EOF or reset), within DEADLINE."""
    with contextlib.suppress(ConnectionError):
        await link.read_to_eof()
    return True


async def until(condition: Any, what: str) -> None:
    """Waits (bounded by DEADLINE) for the server to reach a state it reaches on its own."""
    async with asyncio.timeout(DEADLINE):
        while not condition():  # noqa: ASYNC110 - the server's counters, polled
            await asyncio.sleep(0.01)
    assert condition(), what


# --- connection slots ---


async def test_a_slot_holder_hits_its_per_source_limit_while_a_device_is_served(
    tmp_path: Path, database_url: str
) -> None:
    """Ten connections from one address, each refused as an unknown id and then held open: the
    address never holds more than its four; its oldest idle ones are closed to make room, and
    a real device from another address is served throughout."""
    async with gateway_with(
        tmp_path, database_url, max_connections_per_source=4, unauthenticated_timeout=60.0,
        read_timeout=60.0,
    ) as gw:  # fmt: skip
        device = await register_device(database_url)
        port = gw.tcp.port
        async with contextlib.AsyncExitStack() as stack:
            holders = []
            for n in range(10):
                link = await stack.enter_async_context(connect_from(port, ATTACKER))
                answer = await link.ask(system_frame(UNKNOWN_SYSTEM_ID, 0, n))
                assert answer.code == ResultCode.UNKNOWN_ID
                holders.append(link)
            slots = gw.tcp.stats.slots
            assert slots.evicted_per_source == 6
            assert slots.unauthenticated == 4
            for link in holders[:6]:  # the oldest were closed
                assert await closed_by_server(link)
            assert await ask_from(port, DEVICE, device_frame(device, 1)) == ResultCode.OK
            assert slots.refused_global == slots.refused_per_source == 0


async def test_at_the_global_limit_idle_unauthenticated_connections_make_room(
    tmp_path: Path, database_url: str
) -> None:
    """With every slot held by connections that never showed a device, a new one is not
    refused: the oldest such connection is closed instead, and the device is served."""
    async with gateway_with(
        tmp_path, database_url, max_connections=5, unauthenticated_timeout=60.0, read_timeout=60.0
    ) as gw:
        device = await register_device(database_url)
        port = gw.tcp.port
        async with contextlib.AsyncExitStack() as stack:
            holders = [
                await stack.enter_async_context(connect_from(port, ATTACKER)) for _ in range(5)
            ]
            await until(lambda: gw.tcp.stats.active == 5, "five slots held")
            assert await ask_from(port, DEVICE, device_frame(device, 1)) == ResultCode.OK
            assert await closed_by_server(holders[0])
            assert gw.tcp.stats.slots.evicted_global == 1
            assert gw.tcp.stats.slots.refused_global == 0


async def test_unauthenticated_connections_are_closed_at_their_deadline(
    tmp_path: Path, database_url: str
) -> None:
    """A connection refused as an unknown id, and one that sends nothing, are closed at the
    unauthenticated deadline (long before the read and idle timeouts); a connection answered OK
    for a device outlives it."""
    async with gateway_with(
        tmp_path, database_url, unauthenticated_timeout=0.5, read_timeout=30.0,
        idle_timeout=60.0,
    ) as gw:  # fmt: skip
        device = await register_device(database_url)
        port = gw.tcp.port
        async with (
            connect_from(port, DEVICE) as real,
            connect_from(port, ATTACKER) as refused,
            connect_from(port, ATTACKER) as silent,
        ):
            assert (await real.ask(device_frame(device, 1))).code == ResultCode.OK
            unknown = await refused.ask(system_frame(UNKNOWN_SYSTEM_ID, 0, 1))
            assert unknown.code == ResultCode.UNKNOWN_ID
            assert await closed_by_server(refused)
            assert await closed_by_server(silent)
            assert gw.tcp.stats.unauthenticated_closed == 2
            await asyncio.sleep(0.6)  # past the unauthenticated deadline
            assert (await real.ask(device_frame(device, 2))).code == ResultCode.OK
        assert gw.tcp.stats.timed_out == 0


# --- half-sent frames ---


async def test_a_half_frame_flood_stays_within_the_budget_and_gives_it_all_back(
    tmp_path: Path, database_url: str
) -> None:
    """Forty connections each declare a 512 KiB frame and send 96 KiB of it (3.75 MiB wanted,
    against a 1 MiB budget): what the gateway holds stays within the budget (plus each
    connection's 8 KiB allowance), a device is served meanwhile, and once the flood hangs up
    nothing is held."""
    budget = 1 << 20
    flooders = 40
    half_frame = HEADER.pack(APP_CODE, 203, 512 * 1024, UNKNOWN_SYSTEM_ID, 0, 1) + bytes(96 * 1024)
    async with gateway_with(
        tmp_path, database_url, partial_frame_budget=budget, partial_frame_budget_per_source=budget,
        unauthenticated_timeout=60.0, read_timeout=60.0,
    ) as gw:  # fmt: skip
        device = await register_device(database_url)
        port = gw.tcp.port
        held = gw.tcp.stats.held
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(flooders):
                await stack.enter_async_context(connect_from(port, ATTACKER, half_frame))
            await until(lambda: held.held >= budget - 64 * 1024, "the budget spent")
            await until(lambda: held.waiting > 0, "flooders waiting for room")
            for n in range(1, 4):
                assert await ask_from(port, DEVICE, device_frame(device, n)) == ResultCode.OK
            # Charged beyond each connection's allowance: within the budget but for one byte
            # per connection (a read cannot be refused).
            assert held.peak <= budget + flooders + 1
            assert held.held < flooders * 96 * 1024  # far from everything they sent
        await until(lambda: held.held == 0, "every held byte released")
        await until(lambda: gw.tcp.stats.active == 0, "every connection gone")
        assert held.waiting == 0
        assert held.peak <= budget + flooders + 1


# --- token guessing ---


async def test_a_wrong_token_flood_is_slowed_while_the_real_device_is_answered(
    tmp_path: Path, database_url: str
) -> None:
    """Eight concurrent guessers at one device's token from 127.0.0.2 for a fixed window get
    at most the budget plus what the gate lets through (2 checks in flight, each failure held
    0.25 s); meanwhile the device, with the correct token, is answered OK from the guessers'
    own address and from another one."""
    failures, checks, penalty, window, guessers = 10, 2, 0.25, 2.0, 8
    guessing = GuessSettings(
        failures=FailureBudget(failures, 60.0),
        penalty_seconds=penalty,
        checks_per_source=checks,
        device_threshold=5,
    )
    async with gateway_with(
        tmp_path, database_url, guessing=guessing, unauthenticated_timeout=60.0
    ) as gw:
        device = await register_device(database_url)
        port = gw.tcp.port
        answers: list[int] = []
        stop = asyncio.Event()

        async def guesser(offset: int) -> None:
            guess = offset
            while not stop.is_set():
                guess += guessers
                wrong = (device.token + 1 + guess) % 2**32
                async with connect_from(port, ATTACKER) as link:
                    with contextlib.suppress(ConnectionError):
                        answers.append(
                            (await link.ask(system_frame(device.system_id, wrong, 1))).code
                        )

        async with asyncio.TaskGroup() as tasks:
            flood = [tasks.create_task(guesser(n)) for n in range(guessers)]
            await until(lambda: gw.tcp.guard.limiter.failures >= failures, "over budget")
            loop = asyncio.get_running_loop()
            counted_from, started = len(answers), loop.time()
            await asyncio.sleep(window)
            in_window, elapsed = len(answers) - counted_from, loop.time() - started
            same_address = await ask_from(port, ATTACKER, device_frame(device, 1))
            other_address = await ask_from(port, DEVICE, device_frame(device, 2))
            stop.set()
        assert all(task.done() for task in flood)
        assert (same_address, other_address) == (ResultCode.OK, ResultCode.OK)
        assert set(answers) == {ResultCode.INVALID_TOKEN}
        # Unlimited, eight guessers get hundreds of answers in the window; gated, at most
        # `checks` per penalty, plus those in flight at its edges (the guesses checked before
        # the budget was spent included), however slow the machine.
        assert in_window <= guessers + checks * (elapsed / penalty + 2)
        assert len(answers) >= failures
        guard = gw.tcp.guard
        assert guard.stats.penalized >= 1
        assert guard.stats.devices_over_threshold >= 1
        assert guard.limiter.refused >= 1


async def test_guesses_over_grpc_spend_the_same_budget_and_pass_the_same_gate(
    tmp_path: Path, database_url: str
) -> None:
    """An address that spent its budget on TCP has its gRPC guesses gated too (one check at a
    time, each failure held), while its correct token over gRPC is answered OK."""
    guessing = GuessSettings(
        failures=FailureBudget(4, 60.0), penalty_seconds=0.2, checks_per_source=1
    )
    async with gateway_with(tmp_path, database_url, guessing=guessing) as gw:
        device = await register_device(database_url)
        wrong = (device.token + 1) % 2**32
        for n in range(4):
            code = await ask_from(gw.tcp.port, DEVICE, system_frame(device.system_id, wrong, n))
            assert code == ResultCode.INVALID_TOKEN
        assert gw.grpc_port is not None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.grpc_port}") as channel:
            exchange = channel.unary_unary(
                f"/{INGEST_SERVICE}/Exchange",
                request_serializer=pb.Frame.SerializeToString,
                response_deserializer=pb.Frame.FromString,
            )

            async def grpc_code(token: int, request_number: int) -> int:
                metadata = (
                    ("x-kkm-id", str(device.system_id)),
                    ("x-kkm-token", str(token)),
                    ("x-kkm-request-number", str(request_number)),
                    ("x-kkm-version", "203"),
                )
                call = exchange(pb.Frame(body=SYSTEM_BODY), metadata=metadata, timeout=DEADLINE)
                response = SCHEMAS[203].Response.FromString((await call).body)
                return int(response.result.result_code)

            codes = await asyncio.gather(*(grpc_code(wrong, 10 + n) for n in range(5)))
            assert codes == [ResultCode.INVALID_TOKEN] * 5
            assert gw.tcp.guard.stats.penalized == 5  # every gRPC guess paid the penalty
            assert await grpc_code(device.token, 20) == ResultCode.OK
        assert gw.tcp.guard.stats.penalized == 5  # the correct token paid none


# --- PROXY protocol ---


async def test_behind_a_balancer_the_proxied_address_is_the_one_limited(
    tmp_path: Path, database_url: str
) -> None:
    """Every socket comes from the balancer (127.0.0.1); the per-source limit counts the
    addresses in the PROXY headers: three slot holders from 203.0.113.7 push one of their own
    out, a device from 198.51.100.1 is served, a health check (LOCAL) passes, and a connection
    without a header is closed unanswered."""
    async with gateway_with(
        tmp_path, database_url, proxy_protocol=True, max_connections_per_source=2,
        unauthenticated_timeout=60.0, read_timeout=60.0,
    ) as gw:  # fmt: skip
        device = await register_device(database_url)
        port = gw.tcp.port
        attacker = build_header(("203.0.113.7", 40000), ("192.0.2.1", port))
        async with contextlib.AsyncExitStack() as stack:
            for n in range(3):
                link = await stack.enter_async_context(connect_from(port, DEVICE, attacker))
                answer = await link.ask(system_frame(UNKNOWN_SYSTEM_ID, 0, n))
                assert answer.code == ResultCode.UNKNOWN_ID
            proxied = build_header(("198.51.100.1", 40001), ("192.0.2.1", port))
            async with connect_from(port, DEVICE, proxied) as real:
                assert (await real.ask(device_frame(device, 1))).code == ResultCode.OK
            async with connect_from(port, DEVICE, build_header(None)) as health:
                assert (await health.ask(device_frame(device, 2))).code == ResultCode.OK
            assert gw.tcp.stats.slots.evicted_per_source == 1
            async with connect_from(port, DEVICE, device_frame(device, 3)) as bare:
                assert await bare.read_to_eof() == b""
            assert gw.tcp.stats.proxy_header_errors == 1


async def test_a_proxy_header_split_byte_by_byte_is_read(tmp_path: Path, database_url: str) -> None:
    async with gateway_with(tmp_path, database_url, proxy_protocol=True) as gw:
        device = await register_device(database_url)
        data = build_header(("2001:db8::7", 40000)) + device_frame(device, 1)
        async with connect_from(gw.tcp.port, DEVICE) as link:
            for n in range(len(data)):
                await link.send(data[n : n + 1])
            assert decode(await link.read_frame()).code == ResultCode.OK
