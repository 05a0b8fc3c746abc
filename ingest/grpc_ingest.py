"""The device protocol over gRPC (service ofdproto.ingest.v1.Ingest), beside the control API.

A gRPC request becomes the very `ingest.codec.Frame` a TCP connection would have produced: the
header's values from metadata (and, on a stream, from the message), the body unchanged. It goes
through the same handler as TCP, so session rules, result codes, fiscal signs and stored retry
answers are the TCP ones byte for byte; the answer frame is split back into body and metadata.
`proto/ofdproto/ingest/v1/ingest.proto` documents the metadata.

Header values that cannot be read are answered like broken framing on TCP: a PROTOCOL_ERROR
Response, not a gRPC error, so a device sees one error vocabulary whatever the transport.
"""

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ingest.body import answer_result, refusal_frame
from ingest.codec import Frame, FrameError, FrameHeader
from ingest.guessing import GuessSettings, TokenGuard
from ingest.limits import peer_address
from ingest.tcp_limits import source_key
from ledger.errors import Refusal
from ledger.wire import HEADER, HEADER_SIZE, MAX_FRAME_SIZE, SUPPORTED_VERSIONS, ResultCode
from ofdproto.ingest.v1 import ingest_pb2 as pb

SERVICE = "ofdproto.ingest.v1.Ingest"
ID_KEY = "x-kkm-id"
TOKEN_KEY = "x-kkm-token"  # noqa: S105  # a metadata key, not a secret
REQUEST_NUMBER_KEY = "x-kkm-request-number"
VERSION_KEY = "x-kkm-version"
HEADER_KEYS = (ID_KEY, TOKEN_KEY, REQUEST_NUMBER_KEY, VERSION_KEY)
MAX_U32 = 0xFFFF_FFFF
MAX_U16 = 0xFFFF
MAX_DIGITS = 10  # a u32 in decimal: longer text is refused before int() sees it
# The version a refusal is built and echoed with when the device's could not be read (as TCP).
FALLBACK_VERSION = 203
MAX_BODY = MAX_FRAME_SIZE - HEADER_SIZE
# A Frame message is its body plus a few bytes of tags; anything bigger is refused by gRPC before
# it is buffered whole (the TCP codec's hard limit, checked before the body is read).
MAX_MESSAGE = MAX_FRAME_SIZE + 64
# RPCs in progress at once on the gRPC port (the TCP server's connection limit); past it gRPC
# answers RESOURCE_EXHAUSTED rather than queueing without bound.
MAX_CONCURRENT_RPCS = 10_000
SERVER_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
)

Handler = Callable[[Frame], Coroutine[Any, Any, bytes]]
Metadata = Iterable[tuple[str, str | bytes]]


@dataclass(slots=True)
class GrpcIngestStats:
    bad_metadata: int = 0  # requests answered PROTOCOL_ERROR before reaching the pipeline


def _number(values: dict[str, str], key: str, limit: int) -> int | None:
    text = values.get(key)
    if text is None or not (0 < len(text) <= MAX_DIGITS and text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value <= limit else None


class HeaderValues:
    """The frame header values a call carried, each None where it could not be read."""

    __slots__ = ("device_id", "request_number", "token", "version")

    def __init__(self, metadata: Metadata | None) -> None:
        values: dict[str, str] = {}
        for key, value in metadata or ():
            # A key sent twice is ambiguous: neither value is trusted.
            if key in HEADER_KEYS and isinstance(value, str):
                values[key] = "" if key in values else value
        self.device_id = _number(values, ID_KEY, MAX_U32)
        self.token = _number(values, TOKEN_KEY, MAX_U32)
        self.request_number = _number(values, REQUEST_NUMBER_KEY, MAX_U16)
        self.version = _number(values, VERSION_KEY, MAX_U16)

    def frame(self, body: bytes) -> Frame:
        """The frame TCP would have read; raises FrameError carrying the header to echo."""
        header = FrameHeader(
            self.version if self.version is not None else FALLBACK_VERSION,
            HEADER_SIZE + len(body),
            self.device_id or 0,
            self.token or 0,
            self.request_number or 0,
        )
        missing = [
            key
            for key, value in zip(
                HEADER_KEYS,
                (self.device_id, self.token, self.request_number, self.version),
                strict=True,
            )
            if value is None
        ]
        if missing:
            raise FrameError(f"metadata {', '.join(missing)} missing or not a number", header)
        if header.version not in SUPPORTED_VERSIONS:
            raise FrameError(f"protocol version {header.version} is not served (203, 204)", header)
        if len(body) > MAX_BODY:
            raise FrameError(f"frame size {header.size} over {MAX_FRAME_SIZE}", header)
        return Frame(header, body)


def _answer_metadata(answer: bytes) -> tuple[tuple[str, str], ...]:
    _, version, _, device_id, token, request_number = HEADER.unpack_from(answer)
    return (
        (ID_KEY, str(device_id)),
        (TOKEN_KEY, str(token)),
        (REQUEST_NUMBER_KEY, str(request_number)),
        (VERSION_KEY, str(version)),
    )


class _Caller:
    """One call's source address (token guesses are limited per source, as on TCP), its end,
    and the devices it has been answered OK for (a stream that showed a device's token)."""

    __slots__ = ("devices", "lost", "source")

    def __init__(self, context: grpc.aio.ServicerContext[pb.Frame, pb.Frame]) -> None:
        self.source = source_key(peer_address(context.peer()))
        lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost = lost
        self.devices: set[int] = set()

        def ended(_: object) -> None:
            if not lost.done():
                lost.set_result(None)

        # The stubs type the callback as a class of their own; any callable is taken.
        context.add_done_callback(cast(Any, ended))


class GrpcIngest:
    """The server side: `handler` is the pipeline (through its metrics), as for TCP, and
    `guard` the TCP server's token-guess gate, so one source's budget spans both transports."""

    def __init__(self, handler: Handler, guard: TokenGuard | None = None) -> None:
        self._handler = handler
        self._guard = guard or TokenGuard(GuessSettings(), answer_result)
        self._inflight: set[asyncio.Task[bytes]] = set()
        self.stats = GrpcIngestStats()

    def generic_handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Exchange": grpc.unary_unary_rpc_method_handler(
                    self.exchange,
                    request_deserializer=pb.Frame.FromString,
                    response_serializer=pb.Frame.SerializeToString,
                ),
                "Stream": grpc.stream_stream_rpc_method_handler(
                    self.stream,
                    request_deserializer=pb.Frame.FromString,
                    response_serializer=pb.Frame.SerializeToString,
                ),
            },
        )

    async def exchange(
        self, request: pb.Frame, context: grpc.aio.ServicerContext[pb.Frame, pb.Frame]
    ) -> pb.Frame:
        answer = await self._answer(
            HeaderValues(context.invocation_metadata()), request.body, _Caller(context)
        )
        await context.send_initial_metadata(_answer_metadata(answer))
        return pb.Frame(body=answer[HEADER_SIZE:])

    async def stream(
        self,
        requests: AsyncIterator[pb.Frame],
        context: grpc.aio.ServicerContext[pb.Frame, pb.Frame],
    ) -> AsyncIterator[pb.Frame]:
        """One device's requests in order, one answer each; a stream whose call metadata is
        bad gets one PROTOCOL_ERROR answer and ends, like a TCP connection that lost framing."""
        call = HeaderValues(context.invocation_metadata())
        caller = _Caller(context)
        await context.send_initial_metadata(
            (
                (ID_KEY, str(call.device_id or 0)),
                (VERSION_KEY, str(FALLBACK_VERSION if call.version is None else call.version)),
            )
        )
        call_readable = call.device_id is not None and call.version in SUPPORTED_VERSIONS
        async for message in requests:
            call.token = message.token
            call.request_number = (
                message.request_number if message.request_number <= MAX_U16 else None
            )
            answer = await self._answer(call, message.body, caller)
            _, _, _, _, token, request_number = HEADER.unpack_from(answer)
            yield pb.Frame(body=answer[HEADER_SIZE:], token=token, request_number=request_number)
            if not call_readable:
                return

    async def _answer(self, values: HeaderValues, body: bytes, caller: _Caller) -> bytes:
        try:
            frame = values.frame(body)
        except FrameError as err:
            self.stats.bad_metadata += 1
            # HeaderValues.frame always names a header; the fallback only satisfies the type.
            header = err.header or FrameHeader(FALLBACK_VERSION, HEADER_SIZE, 0, 0, 0)
            return refusal_frame(header, 0, err)
        # A started request is carried to its end even if the client cancels the call, as on
        # TCP when the device hangs up: its retry must find the stored answer, and a cancelled
        # wait must not cut the pipeline off between the commit and the device's lock release.
        task = asyncio.get_running_loop().create_task(self._guarded(frame, caller))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return await asyncio.shield(task)

    async def _guarded(self, frame: Frame, caller: _Caller) -> bytes:
        """The pipeline's answer, through the token-guess gate of the caller's source."""
        device_id = frame.header.device_id
        result = await self._guard.answer(
            caller.source, frame, self._handler, caller.lost, trusted=device_id in caller.devices
        )
        if result is None:  # the call ended while waiting for a slot: nobody reads this
            gone = Refusal(ResultCode.SERVICE_TEMPORARILY_UNAVAILABLE, "the call ended")
            return refusal_frame(frame.header, 0, gone)
        answer, code = result
        if code == ResultCode.OK:
            caller.devices.add(device_id)
        return answer

    async def drain(self, timeout: float) -> None:
        """Waits (bounded) for requests whose callers went away to finish."""
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=timeout)


def add_health_and_reflection(server: grpc.aio.Server, services: Sequence[str]) -> Any:
    """The standard health service (each of `services` and "" SERVING until shutdown) and
    server reflection listing `services`; returns the health servicer (async `set`,
    `enter_graceful_shutdown`), typed loosely as grpcio-health-checking ships no types."""
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    reflection.enable_server_reflection(
        (*services, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    return servicer


async def mark_serving(servicer: Any, services: Sequence[str]) -> None:
    for service in ("", *services):
        await servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
