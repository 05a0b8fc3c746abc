"""The framed TCP server: one asyncio.Protocol per connection, answers in request order.

A device may open one connection per request (the reference client does) or send many requests
on one connection; both are served. Limits are explicit: the number of connections, the frames
queued per connection (reading pauses beyond it), the time a started frame may take to arrive
(slow senders are cut off) and the time an idle connection is kept.
"""

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

from ingest.body import refusal_frame
from ingest.codec import Frame, FrameDecoder, FrameError, FrameHeader

MAX_CONNECTIONS = 10_000
# Frames read ahead of their answers on one connection; past this, reading pauses.
MAX_QUEUED_FRAMES = 8
READ_TIMEOUT = 10.0  # seconds for a started frame (or a new connection's first) to arrive whole
IDLE_TIMEOUT = 120.0  # seconds an idle persistent connection is kept open
LISTEN_BACKLOG = 4096

Handler = Callable[[Frame], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 7777
    max_connections: int = MAX_CONNECTIONS
    max_queued_frames: int = MAX_QUEUED_FRAMES
    read_timeout: float = READ_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    # One gateway process per core share the port (DESIGN.md, durability contract item 7).
    reuse_port: bool = False


@dataclass(slots=True)
class ServerStats:
    active: int = 0
    accepted: int = 0
    refused_over_limit: int = 0
    timed_out: int = 0
    frame_errors: int = 0


class FrameProtocol(asyncio.Protocol):
    def __init__(self, server: "TcpServer") -> None:
        self._server = server
        self._settings = server.settings
        self._loop = asyncio.get_running_loop()
        self._decoder = FrameDecoder()
        self._queue: deque[Frame] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._transport: asyncio.Transport | None = None
        self._closed = False
        self._reading_paused = False
        self._peer_done = False  # EOF seen or the stream broke: answer what is queued, then close
        self._fatal: FrameError | None = None
        self._answered = 0
        self._writable = asyncio.Event()
        self._writable.set()
        now = self._loop.time()
        self._waiting_since = now  # start of the current incomplete frame, or of idleness
        self._timer = self._loop.call_at(now + self._settings.read_timeout, self._check_deadline)

    # --- asyncio.Protocol callbacks ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        stats = self._server.stats
        if stats.active >= self._settings.max_connections:
            stats.refused_over_limit += 1
            self._closed = True
            self._timer.cancel()
            self._transport.abort()
            return
        stats.active += 1
        stats.accepted += 1

    def data_received(self, data: bytes) -> None:
        if self._peer_done:
            return
        idle_before = self._decoder.buffered == 0
        self._decoder.feed(data)
        frames, error = self._decoder.frames()
        if error is not None:
            self._server.stats.frame_errors += 1
            self._fatal = error
            self._peer_done = True
        if idle_before and self._decoder.buffered:
            self._waiting_since = self._loop.time()
        self._queue.extend(frames)
        if (frames or self._peer_done) and self._worker is None:
            self._worker = self._loop.create_task(self._work())
        if len(self._queue) >= self._settings.max_queued_frames and not self._reading_paused:
            self._reading_paused = True
            assert self._transport is not None
            self._transport.pause_reading()

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
            self._server.stats.active -= 1
        self._timer.cancel()
        self._writable.set()  # a worker waiting to write must see the connection is gone

    # --- answering ---

    async def _work(self) -> None:
        """Answers queued frames in order; a started request is always carried to its end
        (made durable), even if the device has gone, so its retry finds the stored answer."""
        try:
            while self._queue:
                frame = self._queue.popleft()
                answer = await self._server.handler(frame)
                await self._write(answer)
                self._answered += 1
                if self._reading_paused and len(self._queue) < self._settings.max_queued_frames:
                    self._reading_paused = False
                    if not self._closed and self._transport is not None:
                        self._transport.resume_reading()
            if self._fatal is not None:
                await self._write(self._fatal_answer(self._fatal))
                self._close()
            elif self._peer_done:
                self._close()
        finally:
            self._worker = None
            self._waiting_since = self._loop.time()

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
        now = self._loop.time()
        if self._worker is not None:  # the pipeline bounds a request's time itself: look later
            self._timer = self._loop.call_at(
                now + self._settings.read_timeout, self._check_deadline
            )
            return
        # A started frame, or a new connection's first, must arrive within the read timeout.
        waiting_for_frame = self._decoder.buffered > 0 or not self._answered
        limit = self._settings.read_timeout if waiting_for_frame else self._settings.idle_timeout
        deadline = self._waiting_since + limit
        if now >= deadline:
            self._server.stats.timed_out += 1
            self._close()
            return
        self._timer = self._loop.call_at(deadline, self._check_deadline)

    def _close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()


class TcpServer:
    def __init__(self, settings: ServerSettings, handler: Handler) -> None:
        self.settings = settings
        self.handler = handler
        self.stats = ServerStats()
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
