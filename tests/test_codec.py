"""The frame codec: header layout, incremental decoding under any slicing, and refusals."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.codec import Frame, FrameDecoder, FrameError, FrameHeader, encode
from ledger.wire import APP_CODE, HEADER_SIZE, MAX_FRAME_SIZE, SUPPORTED_VERSIONS, ResultCode

U32_MAX = 2**32 - 1
U16_MAX = 2**16 - 1
RAW_HEADER = struct.Struct("<HHIIIH")

versions = st.sampled_from(sorted(SUPPORTED_VERSIONS))
u32s = st.integers(min_value=0, max_value=U32_MAX)
u16s = st.integers(min_value=0, max_value=U16_MAX)
bodies = st.binary(max_size=600)


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    body = draw(bodies)
    header = FrameHeader(
        version=draw(versions),
        size=HEADER_SIZE + len(body),
        device_id=draw(u32s),
        token=draw(u32s),
        request_number=draw(u16s),
    )
    return Frame(header, body)


def wire(frame: Frame) -> bytes:
    h = frame.header
    return encode(h.version, h.device_id, h.token, h.request_number, frame.body)


def raw_header(
    *,
    app: int = APP_CODE,
    version: int = 203,
    size: int = HEADER_SIZE,
    device_id: int = 1,
    token: int = 2,
    request_number: int = 3,
) -> bytes:
    return RAW_HEADER.pack(app, version, size, device_id, token, request_number)


def drain(decoder: FrameDecoder) -> list[Frame]:
    out: list[Frame] = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    return out


def sample(request_number: int = 7, body: bytes = b"\x08\x01\x12\x03abc") -> Frame:
    header = FrameHeader(204, HEADER_SIZE + len(body), 203539, 671795700, request_number)
    return Frame(header, body)


# --- the header layout, against the protocol's captured example ---


def test_constants() -> None:
    assert HEADER_SIZE == 18
    assert APP_CODE == 0x81A2
    assert sorted(SUPPORTED_VERSIONS) == [203, 204]
    assert MAX_FRAME_SIZE > HEADER_SIZE


def test_captured_example_header_bytes() -> None:
    body = bytes(range(256)) * 2 + b"\x00" * 47
    assert len(body) == 559
    data = encode(203, 203539, 671795700, 84, body)
    assert len(data) == 577
    assert data[:2] == b"\xa2\x81"
    assert data[:HEADER_SIZE] == bytes.fromhex("a281 cb00 41020000 131b0300 f4c90a28 5400")
    assert data[HEADER_SIZE:] == body


def test_captured_example_decodes() -> None:
    body = b"\x5a" * 559
    decoder = FrameDecoder()
    decoder.feed(bytes.fromhex("a281 cb00 41020000 131b0300 f4c90a28 5400") + body)
    frame = decoder.next_frame()
    assert frame == Frame(FrameHeader(203, 577, 203539, 671795700, 84), body)
    assert decoder.buffered == 0


# --- decoding whole, sliced, several, partial ---


def test_frame_fed_whole() -> None:
    frame = sample()
    decoder = FrameDecoder()
    assert decoder.next_frame() is None
    decoder.feed(wire(frame))
    assert decoder.buffered == frame.header.size
    assert decoder.next_frame() == frame
    assert decoder.buffered == 0
    assert decoder.next_frame() is None


def test_frame_fed_byte_by_byte() -> None:
    frame = sample()
    data = wire(frame)
    decoder = FrameDecoder()
    for i, byte in enumerate(data[:-1]):
        decoder.feed(bytes([byte]))
        assert decoder.next_frame() is None, f"frame returned after {i + 1} of {len(data)} bytes"
        assert decoder.buffered == i + 1
    decoder.feed(data[-1:])
    assert decoder.next_frame() == frame
    assert decoder.buffered == 0


def test_empty_body_frame() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode(203, 1, 2, 3, b""))
    assert decoder.next_frame() == Frame(FrameHeader(203, HEADER_SIZE, 1, 2, 3), b"")
    assert decoder.buffered == 0


def test_feeding_nothing_changes_nothing() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"")
    assert decoder.next_frame() is None
    assert decoder.buffered == 0


def test_several_frames_in_one_feed() -> None:
    sent = [sample(1), sample(2, b""), sample(3, b"\xff" * 1000), sample(4)]
    decoder = FrameDecoder()
    decoder.feed(b"".join(wire(f) for f in sent))
    assert decoder.frames() == (sent, None)
    assert decoder.buffered == 0
    assert decoder.frames() == ([], None)


@pytest.mark.parametrize("kept", [1, 5, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 3])
def test_trailing_partial_bytes_kept_and_completed_later(kept: int) -> None:
    first, second = sample(1), sample(2, b"\x01" * 40)
    data = wire(second)
    decoder = FrameDecoder()
    decoder.feed(wire(first) + data[:kept])
    assert decoder.frames() == ([first], None)
    assert decoder.buffered == kept
    assert decoder.next_frame() is None
    assert decoder.buffered == kept
    decoder.feed(data[kept:])
    assert decoder.frames() == ([second], None)
    assert decoder.buffered == 0


def test_frame_of_max_size_accepted() -> None:
    body = b"\x00" * (MAX_FRAME_SIZE - HEADER_SIZE)
    decoder = FrameDecoder()
    data = encode(204, 5, 6, 7, body)
    decoder.feed(data[:HEADER_SIZE])
    assert decoder.next_frame() is None
    decoder.feed(data[HEADER_SIZE:])
    frame = decoder.next_frame()
    assert frame is not None
    assert frame.header.size == MAX_FRAME_SIZE
    assert frame.body == body


@pytest.mark.parametrize(
    ("device_id", "token", "request_number"),
    [
        (0, 0, 0),
        (U32_MAX, U32_MAX, U16_MAX),
        (2**31, 2**31, 2**15),
        (2**31 - 1, 2**31 + 1, 65535),
        (203539, 671795700, 0),
    ],
)
@pytest.mark.parametrize("version", sorted(SUPPORTED_VERSIONS))
def test_round_trip_boundaries(
    version: int, device_id: int, token: int, request_number: int
) -> None:
    decoder = FrameDecoder()
    decoder.feed(encode(version, device_id, token, request_number, b"body"))
    assert decoder.next_frame() == Frame(
        FrameHeader(version, HEADER_SIZE + 4, device_id, token, request_number), b"body"
    )


@settings(deadline=None)
@given(frame=frames())
def test_round_trip(frame: Frame) -> None:
    data = wire(frame)
    assert len(data) == frame.header.size
    decoder = FrameDecoder()
    decoder.feed(data)
    assert decoder.next_frame() == frame
    assert decoder.buffered == 0


@settings(deadline=None)
@given(sent=st.lists(frames(), max_size=5), data=st.data())
def test_any_slicing_yields_the_same_frames(sent: list[Frame], data: st.DataObject) -> None:
    stream = b"".join(wire(f) for f in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20), label="cuts"))
    decoder = FrameDecoder()
    received: list[Frame] = []
    consumed = 0
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        decoder.feed(stream[start:end])
        received += drain(decoder)
        consumed = sum(f.header.size for f in received)
        assert decoder.buffered == end - consumed
    assert received == sent
    assert consumed == len(stream)
    assert decoder.buffered == 0


# --- refusals ---


@pytest.mark.parametrize("app", [0x0000, 0xA281, 0x81A3, 0xFFFF])
def test_bad_app_code(app: int) -> None:
    decoder = FrameDecoder()
    decoder.feed(raw_header(app=app))
    with pytest.raises(FrameError) as caught:
        decoder.next_frame()
    assert caught.value.header is None
    assert caught.value.code is ResultCode.PROTOCOL_ERROR


@settings(deadline=None)
@given(app=u16s.filter(lambda a: a != APP_CODE), rest=st.binary(min_size=16, max_size=40))
def test_any_bad_app_code_refused_without_header(app: int, rest: bytes) -> None:
    decoder = FrameDecoder()
    decoder.feed(struct.pack("<H", app) + rest)
    with pytest.raises(FrameError) as caught:
        decoder.next_frame()
    assert caught.value.header is None


@pytest.mark.parametrize("version", [202, 205, 0, 1, 200, 2003, U16_MAX])
def test_unknown_version_refused_with_header(version: int) -> None:
    decoder = FrameDecoder()
    decoder.feed(encode(version, U32_MAX, 2**31 + 5, 84, b"\x08\x01"))
    with pytest.raises(FrameError) as caught:
        decoder.next_frame()
    error = caught.value
    assert error.code is ResultCode.PROTOCOL_ERROR
    assert error.header is not None
    assert error.header.version == version
    # The answer echoes id and request number, so they must be decoded too.
    assert error.header.device_id == U32_MAX
    assert error.header.token == 2**31 + 5
    assert error.header.request_number == 84


@pytest.mark.parametrize("size", [0, 1, HEADER_SIZE - 1, MAX_FRAME_SIZE + 1, 2**31, U32_MAX])
def test_bad_size_refused_as_soon_as_header_is_complete(size: int) -> None:
    header = raw_header(size=size, device_id=42, request_number=9)
    decoder = FrameDecoder()
    decoder.feed(header[:-1])
    assert decoder.next_frame() is None
    decoder.feed(header[-1:])
    with pytest.raises(FrameError) as caught:
        decoder.next_frame()
    error = caught.value
    assert error.code is ResultCode.PROTOCOL_ERROR
    assert error.header is not None
    assert error.header.size == size
    assert error.header.device_id == 42
    assert error.header.request_number == 9
    assert decoder.buffered <= HEADER_SIZE


def test_bad_size_refused_before_body_is_buffered() -> None:
    decoder = FrameDecoder()
    decoder.feed(raw_header(size=MAX_FRAME_SIZE + 1))
    with pytest.raises(FrameError):
        decoder.next_frame()
    # A peer that keeps sending the announced body must not make the decoder hold it.
    for _ in range(64):
        decoder.feed(b"\x00" * 16384)
    assert decoder.buffered <= HEADER_SIZE
    with pytest.raises(FrameError):
        decoder.next_frame()


@pytest.mark.parametrize(
    "bad",
    [
        raw_header(app=0x1234),
        raw_header(version=205),
        raw_header(size=HEADER_SIZE - 1),
        raw_header(size=MAX_FRAME_SIZE + 1),
    ],
    ids=["app", "version", "small", "large"],
)
def test_decoder_stays_failed(bad: bytes) -> None:
    decoder = FrameDecoder()
    decoder.feed(bad)
    with pytest.raises(FrameError) as first:
        decoder.next_frame()
    decoder.feed(wire(sample()))
    for _ in range(3):
        with pytest.raises(FrameError) as again:
            decoder.next_frame()
        assert again.value is first.value
    assert decoder.frames() == ([], first.value)
    assert decoder.buffered <= HEADER_SIZE


def test_good_frames_before_a_bad_one_come_first() -> None:
    good = [sample(1), sample(2, b"")]
    decoder = FrameDecoder()
    decoder.feed(b"".join(wire(f) for f in good) + encode(202, 77, 88, 3, b"xyz"))
    assert decoder.next_frame() == good[0]
    assert decoder.next_frame() == good[1]
    with pytest.raises(FrameError) as caught:
        decoder.next_frame()
    assert caught.value.header is not None
    assert caught.value.header.device_id == 77
    assert caught.value.header.request_number == 3


def test_frames_returns_good_frames_and_the_error_together() -> None:
    good = [sample(1), sample(2, b"")]
    decoder = FrameDecoder()
    decoder.feed(b"".join(wire(f) for f in good) + encode(202, 77, 88, 3, b"xyz"))
    frames, error = decoder.frames()
    assert frames == good
    assert error is not None
    assert error.header is not None
    assert error.header.device_id == 77


def test_frames_reports_an_error_when_the_first_frame_is_bad() -> None:
    decoder = FrameDecoder()
    decoder.feed(raw_header(app=0) + wire(sample()))
    frames, error = decoder.frames()
    assert frames == []
    assert isinstance(error, FrameError)


def test_frame_error_is_a_protocol_error_refusal() -> None:
    header = FrameHeader(205, HEADER_SIZE, 1, 2, 3)
    error = FrameError("text", header)
    assert error.code is ResultCode.PROTOCOL_ERROR
    assert error.header is header
    assert FrameError("text").header is None
