"""The frame codec: bytes in, frames out; frames in, bytes out. No I/O, no asyncio.

The header's layout and limits are ledger.wire's. The declared size is checked against hard
limits as soon as the header is complete, before a single body byte is buffered, so a hostile
length cannot make us allocate.
"""

from dataclasses import dataclass

from ledger.errors import Refusal
from ledger.wire import (
    APP_CODE,
    HEADER,
    HEADER_SIZE,
    MAX_FRAME_SIZE,
    SUPPORTED_VERSIONS,
    ResultCode,
)


@dataclass(frozen=True, slots=True)
class FrameHeader:
    version: int
    size: int
    device_id: int
    token: int
    request_number: int


@dataclass(frozen=True, slots=True)
class Frame:
    header: FrameHeader
    body: bytes


class FrameError(Refusal):
    """The byte stream cannot be trusted any more: answer PROTOCOL_ERROR and close.

    `header` is set when the 18 header bytes were read, so the answer can echo id and request
    number; it is None when even the app code was wrong.
    """

    def __init__(self, text: str, header: FrameHeader | None = None) -> None:
        super().__init__(ResultCode.PROTOCOL_ERROR, text)
        self.header = header


def encode(version: int, device_id: int, token: int, request_number: int, body: bytes) -> bytes:
    """One frame: header (its size computed from the body) and body."""
    size = HEADER_SIZE + len(body)
    return HEADER.pack(APP_CODE, version, size, device_id, token, request_number) + body


class FrameDecoder:
    """Incremental decoder: feed any slicing of the stream, take whole frames out.

    After a FrameError the decoder stays failed: the stream has lost its framing.
    """

    __slots__ = ("_buffer", "_error", "_pending_header")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._pending_header: FrameHeader | None = None
        self._error: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held that are not yet part of a returned frame."""
        return len(self._buffer)

    @property
    def capacity(self) -> int:
        """Bytes the buffer occupies. CPython gives a bytearray's memory back when more than
        half of it is deleted, so a large frame taken out leaves no large buffer behind."""
        return self._buffer.__sizeof__()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            return  # failed for good: holding more bytes would only let a peer make us allocate
        self._buffer += data

    def next_frame(self) -> Frame | None:
        """The next whole frame, or None until more bytes arrive. Raises FrameError."""
        if self._error is not None:
            raise self._error
        header = self._pending_header
        if header is None:
            if len(self._buffer) < HEADER_SIZE:
                return None
            header = self._parse_header()
            self._pending_header = header
        if len(self._buffer) < header.size:
            return None
        body = bytes(self._buffer[HEADER_SIZE : header.size])
        del self._buffer[: header.size]
        self._pending_header = None
        return Frame(header, body)

    def frames(self) -> tuple[list[Frame], FrameError | None]:
        """Every whole frame buffered now, and the error that ended the stream, if it did.

        Both at once: the requests that arrived whole before broken framing still get their
        answers, and the error is not left for a later call that may never come.
        """
        out: list[Frame] = []
        try:
            while (frame := self.next_frame()) is not None:
                out.append(frame)
        except FrameError as err:
            return out, err
        return out, None

    def _parse_header(self) -> FrameHeader:
        app, version, size, device_id, token, request_number = HEADER.unpack_from(self._buffer)
        if app != APP_CODE:
            self._fail(FrameError(f"bad app code 0x{app:04X}, expected 0x{APP_CODE:04X}"))
        header = FrameHeader(version, size, device_id, token, request_number)
        if version not in SUPPORTED_VERSIONS:
            self._fail(FrameError(f"protocol version {version} is not served (203, 204)", header))
        if size < HEADER_SIZE or size > MAX_FRAME_SIZE:
            self._fail(
                FrameError(f"frame size {size} outside {HEADER_SIZE}..{MAX_FRAME_SIZE}", header)
            )
        return header

    def _fail(self, error: FrameError) -> None:
        self._error = error
        self._buffer.clear()
        raise error
