"""The framed TCP server: one asyncio.BufferedProtocol per connection, answers in request order.

A device may open one connection per request (the reference client does) or send many requests
on one connection; both are served. Limits are explicit: the number of connections (globally,
and per source without a known device: ingest/tcp_limits.py), the bytes held for requests not
yet answered (a global and a per-source budget: reads are sized to the room left), the frames
queued per connection (reading pauses beyond it), the time a started frame may take to arrive
(slow senders are cut off), the time a connection may stay without being answered OK for a
known device, and the time an idle connection is kept. Token guesses are slowed per source
(ingest/guessing.py). Behind an L4 balancer the PROXY protocol v2 header names the source.
"""

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

from ingest.body import answer_result, refusal_frame
from ingest.codec import Frame, FrameDecoder, FrameError, FrameHeader
from ingest.guessing import GuessSettings, TokenGuard
from ingest.proxy_protocol import ProxyHeaderError, ProxyHeaderParser
from ingest.tcp_limits import (
    ALLOWANCE,
    READ_SIZE,
    BudgetStats,
    ByteBudget,
    ConnectionTable,
    SlotStats,
    source_key,
)
from ledger.wire import ResultCode

MAX_CONNECTIONS = 10_000
# Connections one source may hold that have not been answered OK for a known device. A NAT in
# front of many registers opening one connection per request has a few dozen at once.
MAX_CONNECTIONS_PER_SOURCE = 256
# Frames read ahead of their answers on one connection; past this, reading pauses.
MAX_QUEUED_FRAMES = 8
READ_TIMEOUT = 10.0  # seconds for a started frame (or a new connection's first) to arrive whole
IDLE_TIMEOUT = 120.0  # seconds an idle persistent connection is kept open
# Seconds a connection may live without a request answered OK: a register's exchange takes
# well under its own 7 s timeout.
UNAUTHENTICATED_TIMEOUT = 10.0
# Bytes held for requests not yet answered, all connections together and per source.
PARTIAL_FRAME_BUDGET = 64 * 1024 * 1024
PARTIAL_FRAME_BUDGET_PER_SOURCE = 8 * 1024 * 1024
LISTEN_BACKLOG = 4096
_OK = int(ResultCode.OK)

Handler = Callable[[Frame], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 7777
    max_connections: int = MAX_CONNECTIONS
    max_connections_per_source: int = MAX_CONNECTIONS_PER_SOURCE
    max_queued_frames: int = MAX_QUEUED_FRAMES
    read_timeout: float = READ_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    unauthenticated_timeout: float = UNAUTHENTICATED_TIMEOUT
    partial_frame_budget: int = PARTIAL_FRAME_BUDGET
    partial_frame_budget_per_source: int = PARTIAL_FRAME_BUDGET_PER_SOURCE
    # A PROXY protocol v2 header starts every connection (from an L4 balancer): required, and
    # its source address is the one limits count.
    proxy_protocol: bool = False
    # One gateway process per core share the port (DESIGN.md, durability contract item 7).
    reuse_port: bool = False
    guessing: GuessSettings = field(default_factory=GuessSettings)

    def __post_init__(self) -> None:
        if min(self.max_connections, self.max_connections_per_source, self.max_queued_frames) < 1:
            raise ValueError("connection limits and queued frames must be at least 1")
        if min(self.read_timeout, self.idle_timeout, self.unauthenticated_timeout) <= 0:
            raise ValueError("timeouts must be positive")
        if min(self.partial_frame_budget, self.partial_frame_budget_per_source) < 1:
            raise ValueError("partial-frame budgets must be at least 1 byte")


@dataclass(slots=True)
class ServerStats:
    accepted: int = 0
    timed_out: int = 0  # closed by the read or idle timeout
    unauthenticated_closed: int = 0  # closed by the unauthenticated timeout
    frame_errors: int = 0
    proxy_header_errors: int = 0  # no valid PROXY v2 header (with proxy_protocol)
    slots: SlotStats = field(default_factory=SlotStats)
    held: BudgetStats = field(default_factory=BudgetStats)

    @property
    def active(self) -> int:
        return self.slots.active

    @property
    def refused_over_limit(self) -> int:
        return self.slots.refused_global


class FrameProtocol(asyncio.BufferedProtocol):
    def __init__(self, server: "TcpServer") -> None:
        self._server = server
        self._settings = server.settings
        self._loop = asyncio.get_running_loop()
        self._decoder = FrameDecoder()
        self._queue: deque[Frame] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._transport: asyncio.Transport | None = None
        self._closed = False
        self._queue_paused = False
        self._budget_paused = False
        self._reading_paused = False
        self._peer_done = False  # EOF seen or the stream broke: answer what is queued, then close
        self._fatal: FrameError | None = None
        self._answered = 0
        self.source: str | None = None
        self._proxy = ProxyHeaderParser() if self._settings.proxy_protocol else None
        self._held = 0  # bytes held: the decoder's and the unanswered frames'
        self._charged = 0  # of them, beyond the allowance: charged to the budget
        self._unanswered = 0  # bytes of whole frames read and not yet answered
        self._devices: set[int] | None = None  # answered OK for these: authenticated
        self._budget = server.budget
        self._read_buffer = server.read_buffer
        self._lost: asyncio.Future[None] = self._loop.create_future()
        self._writable = asyncio.Event()
        self._writable.set()
        now = self._loop.time()
        self._accepted_at = now
        self._waiting_since = now  # start of the current incomplete frame, or of idleness
        first_check = min(self._settings.read_timeout, self._settings.unauthenticated_timeout)
        self._timer = self._loop.call_at(now + first_check, self._check_deadline)

    # --- asyncio.BufferedProtocol callbacks ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        server = self._server
        if not server.connections.admit(self):
            self._refuse()
            return
        server.stats.accepted += 1
        if self._proxy is None:
            peer = transport.get_extra_info("peername")
            self._place(peer[0] if isinstance(peer, tuple) else str(peer))

    def get_buffer(self, sizehint: int) -> memoryview:
        size = self._budget.read_size(self.source, self._held)
        buffer = self._read_buffer
        return buffer if size >= READ_SIZE else buffer[:size]

    def buffer_updated(self, nbytes: int) -> None:
        if self._peer_done or self._closed:
            return
        data: memoryview | bytes = self._read_buffer[:nbytes]
        if self._proxy is not None:
            data = self._proxy_header(data)
            if not data:
                return
        self._received(data)

    def eof_received(self) -> bool:
        # Keep the socket open to write the answers of frames already read (half-close).
        self._peer_done = True
        if self._worker is None:
            self._close()
        return True

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed:
            self._closed = True
        server = self._server
        server.connections.release(self)
        self._budget.forget(self)
        self._decoder = FrameDecoder()  # a half-received frame is never finished now
        self._charge()
        if not self._lost.done():
            self._lost.set_result(None)
        self._timer.cancel()
        self._writable.set()  # a worker waiting to write must see the connection is gone

    # --- what the connection tables ask (ingest/tcp_limits.Holder) ---

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def evict(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.abort()

    def budget_resumed(self) -> None:
        self._budget_paused = False
        self._update_reading()

    # --- reading ---

    def _place(self, address: str) -> None:
        if not self._server.connections.place(self, source_key(address)):
            self._refuse()

    def _refuse(self) -> None:
        self._closed = True
        self._timer.cancel()
        assert self._transport is not None
        self._transport.abort()

    def _proxy_header(self, data: memoryview | bytes) -> memoryview | bytes:
        """Bytes before and in the PROXY header go to the parser; what follows is returned."""
        assert self._proxy is not None
        try:
            done = self._proxy.feed(data)
        except ProxyHeaderError:
            self._server.stats.proxy_header_errors += 1
            self._closed = True
            assert self._transport is not None
            self._transport.abort()
            return b""
        if not done:
            return b""
        parser, self._proxy = self._proxy, None
        if parser.source is not None:
            self._place(parser.source)
        else:  # LOCAL (the balancer's health check) or an unspecified family: the socket's peer
            peer = self._transport.get_extra_info("peername") if self._transport else None
            self._place(peer[0] if isinstance(peer, tuple) else str(peer))
        return b"" if self._closed else parser.rest

    def _received(self, data: memoryview | bytes) -> None:
        decoder = self._decoder
        before = decoder.buffered
        decoder.feed(data)
        frames, error = decoder.frames()
        after = decoder.buffered
        if error is not None:
            self._server.stats.frame_errors += 1
            self._fatal = error
            self._peer_done = True
        if not before and after:
            self._waiting_since = self._loop.time()
        if frames:
            # Every byte fed is still buffered or in a frame (unless framing broke: then the
            # decoder dropped the rest, and the frames are summed).
            framed = before + len(data) - after
            if error is not None:
                framed = sum(frame.header.size for frame in frames)
            self._unanswered += framed
            self._queue.extend(frames)
            if self._worker is None:
                self._worker = self._loop.create_task(self._work())
        elif self._peer_done and self._worker is None:
            self._worker = self._loop.create_task(self._work())
        if self._charge() <= 0 and self._held >= ALLOWANCE and not self._closed:
            self._budget_paused = True
            self._budget.wait(self)
        self._queue_paused = len(self._queue) >= self._settings.max_queued_frames
        if (self._queue_paused or self._budget_paused) != self._reading_paused:
            self._update_reading()

    def _charge(self) -> int:
        """Charges what is held now beyond the allowance to the budget; the room left to this
        connection's source (READ_SIZE when the charge did not change: only a change can use
        the room up)."""
        held = self._held = self._decoder.buffered + self._unanswered
        charged = held - ALLOWANCE if held > ALLOWANCE else 0
        if charged == self._charged:
            return READ_SIZE
        room = self._budget.change(self.source, charged - self._charged)
        self._charged = charged
        return room

    def _update_reading(self) -> None:
        paused = self._queue_paused or self._budget_paused
        if paused == self._reading_paused or self._closed or self._transport is None:
            return
        self._reading_paused = paused
        if paused:
            self._transport.pause_reading()
        else:
            self._transport.resume_reading()

    # --- answering ---

    async def _work(self) -> None:
        """Answers queued frames in order; a started request is always carried to its end
        (made durable), even if the device has gone, so its retry finds the stored answer."""
        server = self._server
        try:
            while self._queue:
                frame = self._queue.popleft()
                devices = self._devices
                if devices is not None and frame.header.device_id in devices:
                    # Answered OK for this device before: it has shown the token, so its
                    # failures are no guesses; no gate, no count (and no coroutine or result
                    # read on the persistent connection's hot path).
                    answer = await server.handler(frame)
                else:
                    result = await server.guard.answer(
                        self.source or "", frame, server.handler, self._lost
                    )
                    if result is None:  # waited for a guess slot, the connection went: dropped
                        self._unanswered -= sum(f.header.size for f in self._queue)
                        self._queue.clear()
                        self._unanswered -= frame.header.size
                        self._charge()
                        break
                    answer, code = result
                    if code == _OK:
                        self._authenticated(frame.header.device_id)
                await self._write(answer)
                self._unanswered -= frame.header.size
                self._charge()
                self._answered += 1
                if self._queue_paused and len(self._queue) < self._settings.max_queued_frames:
                    self._queue_paused = False
                    self._update_reading()
            if self._fatal is not None:
                await self._write(self._fatal_answer(self._fatal))
                self._close()
            elif self._peer_done:
                self._close()
        finally:
            self._worker = None
            self._waiting_since = self._loop.time()

    def _authenticated(self, device_id: int) -> None:
        if self._devices is None:
            self._devices = {device_id}
            self._server.connections.authenticated(self)
        else:
            self._devices.add(device_id)

    async def _write(self, data: bytes) -> None:
        await self._writable.wait()
        if not self._closed and self._transport is not None:
            self._transport.write(data)

    @staticmethod
    def _fatal_answer(error: FrameError) -> bytes:
        # Without a readable header (bad app code) there is no id to echo: answer as device 0.
        header = error.header or FrameHeader(203, 0, 0, 0, 0)
        return refusal_frame(header, 0, error)

    def _check_deadline(self) -> None:
        if self._closed:
            return
        settings = self._settings
        now = self._loop.time()
        unauthenticated_until = (
            self._accepted_at + settings.unauthenticated_timeout if self._devices is None else None
        )
        if unauthenticated_until is not None and now >= unauthenticated_until:
            # Whatever it is doing: a request in the pipeline is carried to its end anyway.
            self._server.stats.unauthenticated_closed += 1
            self._close()
            return
        if self._worker is not None:  # the pipeline bounds a request's time itself: look later
            deadline = now + settings.read_timeout
        else:
            # A started frame, or a new connection's first, must arrive within the read timeout.
            waiting_for_frame = self._decoder.buffered > 0 or not self._answered
            limit = settings.read_timeout if waiting_for_frame else settings.idle_timeout
            deadline = self._waiting_since + limit
            if now >= deadline:
                self._server.stats.timed_out += 1
                self._close()
                return
        if unauthenticated_until is not None:
            deadline = min(deadline, unauthenticated_until)
        self._timer = self._loop.call_at(deadline, self._check_deadline)

    def _close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()


class TcpServer:
    def __init__(
        self, settings: ServerSettings, handler: Handler, guard: TokenGuard | None = None
    ) -> None:
        self.settings = settings
        self.handler = handler
        self.guard = guard or TokenGuard(settings.guessing, answer_result)
        self.stats = ServerStats()
        self.connections = ConnectionTable(
            settings.max_connections, settings.max_connections_per_source, self.stats.slots
        )
        self.budget = ByteBudget(
            settings.partial_frame_budget,
            settings.partial_frame_budget_per_source,
            self.stats.held,
        )
        # Every read lands here first (one at a time: the loop runs one callback at a time),
        # then only what a connection must keep is copied into its decoder.
        self.read_buffer = memoryview(bytearray(READ_SIZE))
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: FrameProtocol(self),
            self.settings.host,
            self.settings.port,
            reuse_port=self.settings.reuse_port or None,
            backlog=LISTEN_BACKLOG,
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
