"""The pieces that bound what one client may take, without sockets: the PROXY v2 header parser,
the connection table and the byte budget (ingest/tcp_limits.py), the token-guess gate
(ingest/guessing.py), the refusal log cap and the decoder's buffer after a large frame.

Asserted by counts and order, never by measured time."""

import asyncio
import struct

import pytest

from ingest.body import answer_result, refusal_frame, response_frame
from ingest.codec import Frame, FrameDecoder, FrameHeader, encode
from ingest.guessing import GuessSettings, TokenGuard
from ingest.limits import FailureBudget
from ingest.logs import LogCap
from ingest.proxy_protocol import (
    MAX_HEADER_SIZE,
    SIGNATURE,
    ProxyHeaderError,
    ProxyHeaderParser,
    build_header,
)
from ingest.tcp_limits import (
    ALLOWANCE,
    READ_SIZE,
    BudgetStats,
    ByteBudget,
    ConnectionTable,
    SlotStats,
    source_key,
)
from ledger.errors import Refusal
from ledger.schemas import SCHEMAS
from ledger.wire import HEADER_SIZE, MAX_FRAME_SIZE, ResultCode


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- PROXY protocol v2 ---


def parse(data: bytes) -> ProxyHeaderParser:
    parser = ProxyHeaderParser()
    assert parser.feed(data)
    return parser


def test_proxy_ipv4_header_gives_the_client_and_keeps_the_frames_after_it() -> None:
    header = build_header(("203.0.113.7", 51000), ("192.0.2.1", 7777))
    assert len(header) == 16 + 12
    parser = parse(header + b"frames")
    assert (parser.source, parser.rest) == ("203.0.113.7", b"frames")


def test_proxy_ipv6_header_gives_the_client() -> None:
    parser = parse(build_header(("2001:db8::42", 51000), ("2001:db8::1", 7777)))
    assert (parser.source, parser.rest) == ("2001:db8::42", b"")


def test_proxy_local_command_keeps_the_socket_peer() -> None:
    """The balancer's own health check: no client address, the socket's peer stands."""
    parser = parse(build_header(None) + b"x")
    assert (parser.source, parser.rest) == (None, b"x")


def test_proxy_tlvs_after_the_addresses_are_skipped() -> None:
    tlvs = bytes([0x05, 0x00, 0x04]) + b"uniq"  # PP2_TYPE_UNIQUE_ID
    parser = parse(build_header(("198.51.100.9", 1), tlvs=tlvs) + b"rest")
    assert (parser.source, parser.rest) == ("198.51.100.9", b"rest")


@pytest.mark.parametrize("source", [("203.0.113.7", 5), ("2001:db8::42", 5), None])
def test_proxy_header_split_byte_by_byte(source: tuple[str, int] | None) -> None:
    data = build_header(source) + b"\xa2\x81"
    parser = ProxyHeaderParser()
    done = [parser.feed(data[n : n + 1]) for n in range(len(data) - 2)]
    assert done == [False] * (len(data) - 3) + [True]
    assert parser.source == (source[0] if source else None)
    assert parser.rest == b""


def _fixed(version_command: int, family_transport: int, length: int) -> bytes:
    return SIGNATURE + bytes([version_command, family_transport]) + struct.pack("!H", length)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"PROXY TCP4 203.0.113.7 192.0.2.1 5 7777\r\n", "signature"),  # version 1, text
        (b"\xa2\x81\xcb\x00", "signature"),  # a device speaking frames at once
        (_fixed(0x11, 0x11, 12) + bytes(12), "version 1"),
        (_fixed(0x22, 0x11, 12) + bytes(12), "command 2"),
        (_fixed(0x21, 0x12, 12) + bytes(12), "not a stream"),  # DGRAM
        (_fixed(0x21, 0x11, 8) + bytes(8), "IPv4 address block too short"),
        (_fixed(0x21, 0x21, 20) + bytes(20), "IPv6 address block too short"),
        (_fixed(0x21, 0x41, 0), "family 4"),
        (_fixed(0x21, 0x11, MAX_HEADER_SIZE), "limit"),
    ],
)
def test_malformed_proxy_headers_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ProxyHeaderError, match=message):
        ProxyHeaderParser().feed(data)


def test_a_wrong_first_byte_is_refused_before_sixteen_arrive() -> None:
    with pytest.raises(ProxyHeaderError):
        ProxyHeaderParser().feed(b"\xa2")


def test_an_oversized_header_is_refused_before_its_body_is_buffered() -> None:
    parser = ProxyHeaderParser()
    with pytest.raises(ProxyHeaderError, match="limit"):
        parser.feed(_fixed(0x21, 0x11, 0xFFFF))


# --- source keys ---


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("127.0.0.2", "127.0.0.2"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
    ],
)
def test_sources_are_addresses_and_ipv6_subscribers_are_their_64(address: str, key: str) -> None:
    assert source_key(address) == key


# --- the connection table ---


class Conn:
    def __init__(self, name: str, *, busy: bool = False) -> None:
        self.name = name
        self.source: str | None = None
        self.busy = busy
        self.evicted = False
        self.resumed = 0

    def evict(self) -> None:
        self.evicted = True

    def budget_resumed(self) -> None:
        self.resumed += 1

    def __repr__(self) -> str:
        return self.name


def test_per_source_limit_closes_the_sources_oldest_idle_unauthenticated_first() -> None:
    stats = SlotStats()
    table = ConnectionTable(100, 2, stats)
    a, b, c = Conn("a"), Conn("b"), Conn("c")
    for conn in (a, b):
        assert table.admit(conn)
        assert table.place(conn, "10.0.0.2")
    assert table.admit(c)
    assert table.place(c, "10.0.0.2")
    assert (a.evicted, b.evicted) == (True, False)
    assert (stats.active, stats.unauthenticated, stats.evicted_per_source) == (2, 2, 1)
    other = Conn("other")
    assert table.admit(other)
    assert table.place(other, "10.0.0.3")


def test_per_source_limit_refuses_when_every_unauthenticated_connection_is_busy() -> None:
    stats = SlotStats()
    table = ConnectionTable(100, 2, stats)
    busy = [Conn("b1", busy=True), Conn("b2", busy=True)]
    for conn in busy:
        assert table.admit(conn)
        assert table.place(conn, "10.0.0.2")
    late = Conn("late")
    assert table.admit(late)
    assert not table.place(late, "10.0.0.2")
    assert (stats.active, stats.refused_per_source) == (2, 1)
    assert not any(conn.evicted for conn in busy)


def test_authenticated_connections_do_not_count_against_their_source() -> None:
    """A NAT carrying many registers on persistent connections is not limited."""
    stats = SlotStats()
    table = ConnectionTable(100, 2, stats)
    devices = [Conn(f"d{n}") for n in range(10)]
    for conn in devices:
        assert table.admit(conn)
        assert table.place(conn, "10.0.0.2")
        table.authenticated(conn)
    assert not any(conn.evicted for conn in devices)
    assert (stats.active, stats.unauthenticated) == (10, 0)


def test_global_limit_closes_the_oldest_idle_unauthenticated_of_any_source() -> None:
    stats = SlotStats()
    table = ConnectionTable(3, 100, stats)
    device, holder1, holder2 = Conn("device"), Conn("h1"), Conn("h2")
    for conn, source in ((device, "10.0.0.1"), (holder1, "10.0.0.2"), (holder2, "10.0.0.2")):
        assert table.admit(conn)
        assert table.place(conn, source)
    table.authenticated(device)
    newcomer = Conn("new")
    assert table.admit(newcomer)
    assert (device.evicted, holder1.evicted, holder2.evicted) == (False, True, False)
    assert stats.evicted_global == 1
    table.release(holder1)  # its connection_lost comes later: nothing is counted twice
    assert stats.active == 3


def test_global_limit_refuses_when_only_devices_hold_the_slots() -> None:
    stats = SlotStats()
    table = ConnectionTable(2, 100, stats)
    for name in ("d1", "d2"):
        conn = Conn(name)
        assert table.admit(conn)
        assert table.place(conn, "10.0.0.1")
        table.authenticated(conn)
    assert not table.admit(Conn("late"))
    assert (stats.active, stats.refused_global) == (2, 1)


# --- the byte budget ---


def test_reads_are_sized_to_the_room_left_plus_the_allowance() -> None:
    stats = BudgetStats()
    budget = ByteBudget(total=100_000, per_source=60_000, stats=stats)
    assert budget.read_size("a", holding=0) == 60_000 + ALLOWANCE
    budget.change("a", 50_000)
    assert budget.read_size("a", holding=ALLOWANCE) == 10_000
    assert budget.read_size("b", holding=ALLOWANCE + 5) == 50_000
    budget.change("b", 50_000)
    assert budget.read_size("c", holding=ALLOWANCE) == 1  # no room: it stops after this byte
    assert budget.read_size("c", holding=0) == ALLOWANCE  # a small request still gets in
    assert budget.read_size("c", holding=100) == ALLOWANCE - 100
    budget.change("a", -50_000)
    budget.change("b", -50_000)
    assert (stats.held, stats.peak) == (0, 100_000)


def test_with_room_to_spare_reads_are_whole() -> None:
    budget = ByteBudget(total=64 << 20, per_source=8 << 20, stats=BudgetStats())
    budget.change("a", 1 << 20)
    assert budget.read_size("a", holding=(1 << 20) + ALLOWANCE) == READ_SIZE
    budget.change("a", (7 << 20) - READ_SIZE // 2)
    assert budget.read_size("a", holding=8 << 20) == READ_SIZE // 2  # its source is nearly full
    assert budget.read_size("b", holding=8 << 20) == READ_SIZE


def test_waiters_resume_oldest_first_when_bytes_are_released() -> None:
    stats = BudgetStats()
    budget = ByteBudget(total=4 * ALLOWANCE, per_source=4 * ALLOWANCE, stats=stats)
    first, second = Conn("first"), Conn("second")
    first.source = second.source = "10.0.0.2"
    budget.change("10.0.0.2", 4 * ALLOWANCE)
    budget.wait(first)
    budget.wait(second)
    budget.wait(first)  # once only
    assert (stats.waiting, stats.pauses) == (2, 2)
    budget.change("10.0.0.2", -ALLOWANCE)  # room for one small read: one resumed
    assert (first.resumed, second.resumed, stats.waiting) == (1, 0, 1)
    budget.forget(second)  # its connection closed
    assert stats.waiting == 0


def test_a_waiter_whose_source_has_no_room_lets_others_go_first() -> None:
    stats = BudgetStats()
    budget = ByteBudget(total=10 * ALLOWANCE, per_source=8 * ALLOWANCE, stats=stats)
    greedy, other = Conn("greedy"), Conn("other")
    greedy.source, other.source = "10.0.0.2", "10.0.0.3"
    budget.change("10.0.0.2", 8 * ALLOWANCE)
    budget.change("10.0.0.3", 2 * ALLOWANCE)
    budget.wait(greedy)
    budget.wait(other)
    budget.change("10.0.0.3", -ALLOWANCE)
    assert (greedy.resumed, other.resumed) == (0, 1)


# --- token guessing ---


def frame_for(device_id: int, token: int, request_number: int = 1) -> Frame:
    raw = encode(203, device_id, token, request_number, b"\x08\x02")
    return Frame(FrameHeader(203, len(raw), device_id, token, request_number), raw[HEADER_SIZE:])


class Pipeline:
    """Answers OK to token 7 and INVALID_TOKEN to any other; counts checks in flight."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most_in_flight = 0
        self.checked = 0

    async def __call__(self, frame: Frame) -> bytes:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0)
        self.in_flight -= 1
        self.checked += 1
        if frame.header.token == 7:
            response = SCHEMAS[203].Response(command=2)
            response.result.result_code = ResultCode.OK
            return response_frame(frame.header, 7, response)
        return refusal_frame(
            frame.header, 2, Refusal(ResultCode.INVALID_TOKEN, "token is not the last one issued")
        )


def guard(checks: int = 2, failures: int = 3, penalty: float = 0.05) -> TokenGuard:
    settings = GuessSettings(
        failures=FailureBudget(failures, 60.0),
        penalty_seconds=penalty,
        checks_per_source=checks,
        device_threshold=4,
    )
    return TokenGuard(settings, answer_result)


async def test_within_budget_nothing_is_gated_and_failures_are_counted() -> None:
    g, pipeline = guard(failures=100), Pipeline()
    lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    results = await asyncio.gather(
        *(g.answer("10.0.0.2", frame_for(5, 100 + n), pipeline, lost) for n in range(20))
    )
    assert pipeline.most_in_flight == 20  # all at once
    assert all(result is not None and result[1] == ResultCode.INVALID_TOKEN for result in results)
    assert (g.limiter.failures, g.stats.penalized) == (20, 0)
    assert g.stats.devices_over_threshold == 1  # device 5 crossed 4 failures once


async def test_over_budget_checks_in_flight_are_bounded_and_only_failures_pay() -> None:
    g, pipeline = guard(checks=2, failures=3), Pipeline()
    lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    for n in range(3):
        await g.answer("10.0.0.2", frame_for(5, 100 + n), pipeline, lost)
    assert g.limiter.over_budget("10.0.0.2")
    pipeline.most_in_flight = 0
    guesses = [g.answer("10.0.0.2", frame_for(5, 200 + n), pipeline, lost) for n in range(10)]
    results = await asyncio.gather(*guesses, g.answer("10.0.0.2", frame_for(5, 7), pipeline, lost))
    assert pipeline.most_in_flight <= 2
    assert [r[1] if r else None for r in results] == [ResultCode.INVALID_TOKEN] * 10 + [0]
    assert g.stats.penalized == 10  # the correct token paid no penalty
    assert g.stats.waiting == 0
    assert g.gated_sources == 0


async def test_another_source_and_a_trusted_connection_are_not_gated() -> None:
    g, pipeline = guard(checks=1, failures=1, penalty=30.0), Pipeline()
    lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    await g.answer("10.0.0.2", frame_for(5, 1), pipeline, lost)
    async with asyncio.timeout(5):
        ok = await g.answer("10.0.0.1", frame_for(5, 7), pipeline, lost)
        trusted = await g.answer("10.0.0.2", frame_for(5, 7), pipeline, lost, trusted=True)
    assert ok is not None
    assert ok[1] == 0
    assert trusted is not None
    assert trusted[1] == 0
    assert g.stats.penalized == 0


async def test_a_waiter_whose_connection_closes_is_dropped_unchecked() -> None:
    g, pipeline = guard(checks=1, failures=1, penalty=0.2), Pipeline()
    loop = asyncio.get_running_loop()
    lost: asyncio.Future[None] = loop.create_future()
    await g.answer("10.0.0.2", frame_for(5, 1), pipeline, lost)
    holder = loop.create_task(g.answer("10.0.0.2", frame_for(5, 2), pipeline, lost))
    gone: asyncio.Future[None] = loop.create_future()
    waiter = loop.create_task(g.answer("10.0.0.2", frame_for(5, 3), pipeline, gone))
    await asyncio.sleep(0.01)
    assert g.stats.waiting == 1
    checked = pipeline.checked
    gone.set_result(None)
    assert await waiter is None
    assert pipeline.checked == checked  # never reached the pipeline
    assert (await holder) is not None
    assert (g.stats.abandoned, g.stats.waiting, g.gated_sources) == (1, 0, 0)


async def test_a_cancelled_waiter_gives_its_slot_back() -> None:
    g, pipeline = guard(checks=1, failures=1, penalty=0.05), Pipeline()
    loop = asyncio.get_running_loop()
    lost: asyncio.Future[None] = loop.create_future()
    await g.answer("10.0.0.2", frame_for(5, 1), pipeline, lost)
    holder = loop.create_task(g.answer("10.0.0.2", frame_for(5, 2), pipeline, lost))
    waiter = loop.create_task(g.answer("10.0.0.2", frame_for(5, 3), pipeline, lost))
    await asyncio.sleep(0.01)
    waiter.cancel()
    await holder
    async with asyncio.timeout(5):
        after = await g.answer("10.0.0.2", frame_for(5, 7), pipeline, lost)
    assert after is not None
    assert after[1] == 0
    assert g.gated_sources == 0


# --- the refusal log cap ---


def test_log_lines_are_capped_per_key_and_the_next_says_how_many_were_left_out() -> None:
    clock = Clock()
    cap = LogCap(per_key=2, window_seconds=60.0, per_second=1000, clock=clock)
    assert [cap.allow(5) for _ in range(5)] == [0, 0, None, None, None]
    assert cap.allow(6) == 0  # another device has its own lines
    clock.now += 60.0
    assert cap.allow(5) == 3  # a new window: the line says three were left out
    assert cap.allow(5) == 0
    assert cap.suppressed == 3


def test_log_lines_are_capped_overall_per_second() -> None:
    """Ids sprayed at random are each new to the per-key table."""
    clock = Clock()
    cap = LogCap(per_key=5, per_second=10, clock=clock)
    allowed = [cap.allow(key) for key in range(100)]
    assert sum(a is not None for a in allowed) == 10
    clock.now += 1.0
    assert cap.allow(1000) == 0


def test_the_log_cap_table_is_bounded() -> None:
    cap = LogCap(per_key=1, per_second=10**9, max_keys=50)
    for key in range(1000):
        cap.allow(key)
    assert cap.allow(999) is None  # remembered
    assert cap.allow(0) == 0  # forgotten: allowed again


# --- the decoder after a large frame ---


def test_the_decoder_gives_a_large_frames_buffer_back() -> None:
    decoder = FrameDecoder()
    empty = decoder.capacity
    big = encode(203, 1, 2, 3, bytes(MAX_FRAME_SIZE - HEADER_SIZE))
    for n in range(0, len(big), 65536):
        decoder.feed(big[n : n + 65536])
    assert decoder.capacity > MAX_FRAME_SIZE
    frames, error = decoder.frames()
    assert error is None
    assert len(frames) == 1
    assert decoder.capacity < empty + 1024


def test_answer_result_reads_our_answers() -> None:
    header = FrameHeader(204, 0, 1, 2, 3)
    for code in (ResultCode.OK, ResultCode.INVALID_TOKEN, ResultCode.UNKNOWN_ERROR):
        answer = refusal_frame(header, 1, Refusal(code, "x"))
        assert answer_result(answer) == code
    long_text = refusal_frame(header, 1, Refusal(ResultCode.UNKNOWN_ID, "y" * 300))
    assert answer_result(long_text) == ResultCode.UNKNOWN_ID
