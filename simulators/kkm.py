"""One simulated cash register (KKM) on the wire: real frames over TCP, client side.

The device keeps the two numbers the protocol turns on. Before every new request it increments
its request number (wrapping 65535 -> 0); after an OK answer it adopts the token of the response
header, since the OFD may have rotated it; after any other answer it keeps its token. When the
link fails it resends the very same frame (same token and request number: the idempotency key)
a few times, then gives up with DeviceOffline, as firmware would before going autonomous.

Like the reference client it opens one connection per request (connect, write, read one frame,
close); `persistent=True` keeps one connection for many requests instead, which a server must
also accept. Every attempt runs under one deadline (`timeout`, 7 s like the reference client),
so no await can hang.

One device is one task: a SimulatedKkm is not meant to be used by concurrent coroutines.
"""

import asyncio
import contextlib
from types import ModuleType, TracebackType
from typing import Self, TypeAlias

from google.protobuf.message import DecodeError, Message

from ingest.codec import FrameHeader, encode
from ledger.errors import OfdError
from ledger.schemas import SCHEMAS
from ledger.wire import APP_CODE, HEADER, HEADER_SIZE, MAX_FRAME_SIZE, ResultCode
from ofdproto.kkm.v203 import kkm_pb2 as pb203
from ofdproto.kkm.v204 import kkm_pb2 as pb204

Response: TypeAlias = pb203.Response | pb204.Response

MAX_REQUEST_NUMBER = 0xFFFF
MAX_TOKEN = 0xFFFFFFFF
CLOSE_TIMEOUT = 1.0  # closing must not hang a test even when the peer stopped reading

# What a broken link looks like from asyncio streams: refused, reset, timed out (TimeoutError is
# an OSError), or closed before a whole frame arrived (IncompleteReadError is an EOFError).
LINK_ERRORS = (OSError, EOFError)

Connection: TypeAlias = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class DeviceOffline(OfdError):
    """No answer after every retry: a real device would now go autonomous (offline)."""


class BadResponse(OfdError):
    """The OFD answered with bytes a device cannot use: broken framing, an unknown version, a
    body that does not parse, or a header that does not echo the device's id and request number.
    """


class SimulatedKkm:
    """One cash register: its identity, token and request number, and its link to the OFD."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        version: int,
        system_id: int,
        token: int,
        persistent: bool = False,
        timeout: float = 7.0,
        request_number: int = 0,
        retries: int = 3,
        backoff: float = 0.05,
    ) -> None:
        if not 0 <= token <= MAX_TOKEN:
            raise ValueError(f"token {token} is not a u32")
        if not 0 <= request_number <= MAX_REQUEST_NUMBER:
            raise ValueError(f"request number {request_number} is not a u16")
        if retries < 0:
            raise ValueError("retries cannot be negative")
        self.host = host
        self.port = port
        self.version = version
        self.system_id = system_id
        self.persistent = persistent
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._token = token
        self._request_number = request_number
        self._last_request_frame: bytes | None = None
        self._connection: Connection | None = None
        self.last_response_frame = b""
        self.last_response_header: FrameHeader | None = None

    # --- state a test looks at ---

    @property
    def token(self) -> int:
        return self._token

    @property
    def request_number(self) -> int:
        """The number of the last request built (the next one gets this + 1)."""
        return self._request_number

    @property
    def last_request_frame(self) -> bytes | None:
        return self._last_request_frame

    @property
    def schema(self) -> ModuleType:
        """The generated module to build this device's requests with."""
        return SCHEMAS[self.version]

    def enter_token(self, token: int) -> None:
        """A person types a token from the OFD cabinet, as after INVALID_TOKEN."""
        if not 0 <= token <= MAX_TOKEN:
            raise ValueError(f"token {token} is not a u32")
        self._token = token

    # --- the exchange ---

    async def send(self, request: Message | bytes) -> Response:
        """A new request (next request number, current token); retries, then DeviceOffline.

        Raw body bytes are sent as they are, for requests a real device would not build.
        """
        return await self._deliver(self._new_frame(request))

    async def retransmit(self) -> Response:
        """The last frame again, byte for byte, as after a lost answer."""
        if self._last_request_frame is None:
            raise RuntimeError("nothing was sent yet")
        return await self._deliver(self._last_request_frame)

    async def send_and_drop(self, request: Message | bytes) -> None:
        """A new request whose answer is lost: write the frame and close without reading."""
        frame = self._new_frame(request)
        try:
            async with asyncio.timeout(self.timeout):
                _, writer = await self._connect()
                try:
                    writer.write(frame)
                    await writer.drain()
                finally:
                    # Also the persistent connection: the answer must go nowhere.
                    self._connection = None
                    await _close(writer)
        except LINK_ERRORS as error:
            raise DeviceOffline(f"could not deliver request {self._request_number}") from error

    async def exchange_raw(
        self, frame: bytes, *, timeout: float | None = None, half_close: bool = False
    ) -> bytes:
        """Arbitrary bytes on a new connection; the raw bytes of one response frame back.

        Returns b"" when the server closes (or resets) without answering, and whatever arrived
        when it closes mid-frame. `half_close` shuts the write side after sending, like a client
        that gives up mid-frame. Raises TimeoutError when nothing ends the wait. The device's
        token, request number and last frames are left alone.
        """
        async with asyncio.timeout(self.timeout if timeout is None else timeout):
            reader, writer = await asyncio.open_connection(self.host, self.port)
            try:
                writer.write(frame)
                await writer.drain()
                if half_close and writer.can_write_eof():
                    writer.write_eof()
                return await _read_lenient(reader)
            finally:
                await _close(writer)

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await _close(connection[1])

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # --- internals ---

    def _new_frame(self, request: Message | bytes) -> bytes:
        body = request if isinstance(request, bytes) else request.SerializeToString()
        self._request_number = (self._request_number + 1) & MAX_REQUEST_NUMBER
        frame = encode(self.version, self.system_id, self._token, self._request_number, body)
        self._last_request_frame = frame
        return frame

    async def _deliver(self, frame: bytes) -> Response:
        error: BaseException | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                raw = await self._round_trip(frame)
            except LINK_ERRORS as link_error:
                error = link_error
                await self.close()  # a persistent connection is unusable after this
                continue
            except BadResponse:
                await self.close()
                raise
            return self._accept(frame, raw)
        number = _header(frame).request_number
        raise DeviceOffline(
            f"no answer to request {number} after {self.retries + 1} attempts"
        ) from error

    async def _round_trip(self, frame: bytes) -> bytes:
        async with asyncio.timeout(self.timeout):
            reader, writer = await self._connect()
            try:
                writer.write(frame)
                await writer.drain()
                return await _read_frame(reader)
            finally:
                if not self.persistent:
                    await _close(writer)

    async def _connect(self) -> Connection:
        if self._connection is not None:
            return self._connection
        connection = await asyncio.open_connection(self.host, self.port)
        if self.persistent:
            self._connection = connection
        return connection

    def _accept(self, request_frame: bytes, raw: bytes) -> Response:
        """Parses an answer and applies the token rule; the raw frame is kept either way."""
        header = _header(raw)
        self.last_response_frame = raw
        self.last_response_header = header
        sent = _header(request_frame)
        if (header.device_id, header.request_number) != (sent.device_id, sent.request_number):
            raise BadResponse(
                f"answer for id {header.device_id} request {header.request_number}, "
                f"sent id {sent.device_id} request {sent.request_number}"
            )
        schema = SCHEMAS.get(header.version)
        if schema is None:
            raise BadResponse(f"answer in protocol version {header.version}")
        try:
            response: Response = schema.Response.FromString(raw[HEADER_SIZE:])
        except DecodeError as error:
            raise BadResponse(f"answer body does not parse: {error}") from error
        # Python's protobuf does not enforce proto2 required fields while parsing.
        if not response.IsInitialized():
            raise BadResponse("answer lacks required fields")
        if response.result.result_code == ResultCode.OK:
            self._token = header.token
        return response


def _header(frame: bytes) -> FrameHeader:
    _, version, size, device_id, token, request_number = HEADER.unpack_from(frame)
    return FrameHeader(version, size, device_id, token, request_number)


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    """Exactly one frame; IncompleteReadError when the peer closes first."""
    head = await reader.readexactly(HEADER_SIZE)
    app, _, size, *_ = HEADER.unpack(head)
    if app != APP_CODE:
        raise BadResponse(f"answer app code 0x{app:04X}")
    if not HEADER_SIZE <= size <= MAX_FRAME_SIZE:
        raise BadResponse(f"answer frame size {size}")
    return head + await reader.readexactly(size - HEADER_SIZE)


async def _read_lenient(reader: asyncio.StreamReader) -> bytes:
    """Up to one frame, whatever the server sent, for tests that look at bad answers."""
    try:
        head = await reader.readexactly(HEADER_SIZE)
    except asyncio.IncompleteReadError as error:
        return error.partial
    except ConnectionResetError:
        return b""
    size = HEADER.unpack(head)[2]
    if not HEADER_SIZE < size <= MAX_FRAME_SIZE:
        return head
    try:
        return head + await reader.readexactly(size - HEADER_SIZE)
    except asyncio.IncompleteReadError as error:
        return head + error.partial
    except ConnectionResetError:
        return head


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await writer.wait_closed()
