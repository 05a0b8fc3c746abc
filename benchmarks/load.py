"""A closed-loop load generator: D simulated cash registers, one request in flight each.

Each device has its own system id, token and request number. It sends TICKET frames whose bodies
come from a prebuilt pool (`benchmarks.bodies`), adopts the header token of every OK answer as a
real device must (the gateway rotates it on every receipt), and sends the next request only
when the answer to the last one is in. Three ways to connect:

- persistent: one connection per device for the whole run;
- per-request: connect, write, read one frame, close, as the reference client does;
- grpc: one gRPC channel (its own HTTP/2 connection) per device for the whole run, each request
  a unary `ofdproto.ingest.v1.Ingest/Exchange` call with the header values in metadata; the
  answer's come back in its initial metadata, and the answer is put together again as the TCP
  frame it stands for, so it is checked (and its size counted) exactly as a TCP answer.

The run is warm-up, then a measurement window, then a drain: only answers that arrive inside the
window count towards throughput and latency, and a `WindowProbe` is called at the window's edges
so the caller can read the server's CPU over exactly that time. Every answer that is not OK,
every broken link and every answer that does not match its request is counted; a valid run has
none of them.

A gRPC call that fails (any status but OK) is a broken link: the protocol's answers, refusals
included, always come with status OK.

Persistent mode is driven by protocol callbacks rather than coroutines, to keep the client's
own cost per request low: on this 2-core machine the client shares the CPU with the server.

    python -m benchmarks.load --port P [--mode persistent] [--devices 64] [--seconds 8]
        (--mode grpc: P is the gateway's --grpc-port, or a `benchmarks.grpc_echo_floor`'s)
        [--control HOST:PORT]   register fresh devices there (a gateway); else ids 1..D, token 1
"""

import argparse
import asyncio
import functools
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal, Protocol, cast, get_args

import grpc
import grpc.aio
import uvloop
from google.protobuf.message import DecodeError

from benchmarks.bodies import DeviceKey, RequestPool, build_pool
from benchmarks.fleet import register_devices
from ingest.codec import encode
from ingest.grpc_ingest import ID_KEY, REQUEST_NUMBER_KEY, SERVICE, TOKEN_KEY, VERSION_KEY
from ledger.schemas import SCHEMAS
from ledger.wire import HEADER, HEADER_SIZE, MAX_FRAME_SIZE, ResultCode
from ofdproto.ingest.v1 import ingest_pb2 as pb

Mode = Literal["persistent", "per-request", "grpc"]
MODES: tuple[Mode, ...] = get_args(Mode)
TCP_MODES: tuple[Mode, ...] = ("persistent", "per-request")
EXCHANGE = f"/{SERVICE}/Exchange"
CALL_TIMEOUT = 10.0  # seconds one gRPC call may take before it counts as a broken link
# A channel of its own per device: without a local subchannel pool, channels to one address
# share one connection and the devices would be multiplexed on it.
CHANNEL_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)
MAX_REQUEST_NUMBER = 0xFFFF
DRAIN_TIMEOUT = 5.0  # seconds the in-flight requests get to finish after the window
CONNECT_TIMEOUT = 5.0
PERCENTILES = (50, 90, 99)


class WindowProbe(Protocol):
    """Called at the edges of the measurement window, inside the event loop."""

    def begin(self) -> None: ...

    def end(self) -> None: ...


@dataclass(frozen=True, slots=True)
class LoadConfig:
    host: str
    port: int
    mode: Mode
    devices: tuple[DeviceKey, ...]
    pool: RequestPool
    warmup: float = 1.0
    seconds: float = 8.0


@dataclass(frozen=True, slots=True)
class LoadResult:
    mode: Mode
    devices: int
    window_seconds: float
    requests: int  # OK answers inside the window
    throughput: float  # OK answers per second inside the window
    latency_us: dict[str, float]  # p50, p90, p99, max, mean
    client_cpu_us_per_request: float
    answer_bytes_mean: float  # the size of OK answer frames: the floor's must match the gateway's
    total_ok: int  # OK answers in warm-up, window and drain
    not_ok: dict[str, int]  # result code name -> answers
    link_errors: int
    bad_answers: int
    unfinished: int  # requests still without an answer when the drain timed out

    @property
    def valid(self) -> bool:
        return not (self.not_ok or self.link_errors or self.bad_answers or self.unfinished)


@dataclass(slots=True)
class _Recorder:
    """Counts for the whole run; latencies only for answers inside the window."""

    window_open: bool = False
    latencies_ns: list[int] = field(default_factory=list)
    answer_bytes: int = 0
    total_ok: int = 0
    not_ok: Counter[int] = field(default_factory=Counter)
    link_errors: int = 0
    bad_answers: int = 0


class _Device:
    """One register's identity and counters; builds frames and applies the token rule."""

    __slots__ = ("pool", "request_number", "schema", "sequence", "system_id", "token", "version")

    def __init__(self, key: DeviceKey, pool: RequestPool) -> None:
        self.system_id = key.system_id
        self.token = key.token
        self.request_number = 0
        self.sequence = 0  # receipts accepted so far: the next one is pool.body(sequence)
        self.pool = pool
        self.version = pool.version
        self.schema = SCHEMAS[pool.version]

    def next_frame(self) -> bytes:
        self.request_number = (self.request_number + 1) & MAX_REQUEST_NUMBER
        body = self.pool.body(self.sequence)
        return encode(self.version, self.system_id, self.token, self.request_number, body)

    def next_call(self) -> tuple[pb.Frame, tuple[tuple[str, str], ...]]:
        """The next request as a gRPC Exchange: the body, and the header values as metadata."""
        self.request_number = (self.request_number + 1) & MAX_REQUEST_NUMBER
        metadata = (
            (ID_KEY, str(self.system_id)),
            (TOKEN_KEY, str(self.token)),
            (REQUEST_NUMBER_KEY, str(self.request_number)),
            (VERSION_KEY, str(self.version)),
        )
        return pb.Frame(body=self.pool.body(self.sequence)), metadata

    def accept(self, raw: bytes, started_ns: int, rec: _Recorder) -> None:
        """Checks one answer frame against the last request and records it."""
        _, _, _, device_id, token, request_number = HEADER.unpack_from(raw)
        if device_id != self.system_id or request_number != self.request_number:
            rec.bad_answers += 1
            return
        try:
            code = self.schema.Response.FromString(raw[HEADER_SIZE:]).result.result_code
        except DecodeError:
            rec.bad_answers += 1
            return
        if code != ResultCode.OK:
            rec.not_ok[code] += 1  # keep the token; the receipt is sent again with a new number
            return
        self.token = token
        self.sequence += 1
        rec.total_ok += 1
        if rec.window_open:
            rec.latencies_ns.append(time.perf_counter_ns() - started_ns)
            rec.answer_bytes += len(raw)


class _FrameReader:
    """The client's side of framing: whole answer frames out of received chunks.

    An answer nearly always arrives as one chunk holding exactly one frame; that case costs one
    header unpack.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> bytes | None:
        """The answer frame once whole; raises ValueError on a size no frame can have."""
        buffer = self._buffer + data if self._buffer else data
        if len(buffer) < HEADER_SIZE:
            self._buffer = buffer
            return None
        size = HEADER.unpack_from(buffer)[2]
        if not HEADER_SIZE <= size <= MAX_FRAME_SIZE:
            raise ValueError(f"answer frame size {size}")
        if len(buffer) < size:
            self._buffer = buffer
            return None
        if len(buffer) > size:  # one request in flight: nothing may follow its answer
            raise ValueError("bytes after the answer frame")
        self._buffer = b""
        return buffer


class _Run:
    """What every connection of one run shares."""

    def __init__(self, config: LoadConfig) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.rec = _Recorder()
        self.sending = True
        self.open_devices = 0
        self.all_closed = self.loop.create_future()

    def device_closed(self) -> None:
        self.open_devices -= 1
        if self.open_devices == 0 and not self.all_closed.done():
            self.all_closed.set_result(None)


class _PersistentDevice(asyncio.Protocol):
    """One device on one connection: each answer's callback sends the next request."""

    def __init__(self, device: _Device, run: _Run) -> None:
        self._device = device
        self._run = run
        self._reader = _FrameReader()
        self._transport: asyncio.Transport | None = None
        self._sent_ns = 0
        self._in_flight = False

    def itself(self) -> "_PersistentDevice":
        """The protocol factory for this device's one connection."""
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._run.open_devices += 1
        self._send()

    def _send(self) -> None:
        assert self._transport is not None
        frame = self._device.next_frame()
        self._in_flight = True
        self._sent_ns = time.perf_counter_ns()
        self._transport.write(frame)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        try:
            raw = self._reader.feed(data)
        except ValueError:
            self._run.rec.bad_answers += 1
            self._transport.abort()
            return
        if raw is None:
            return
        self._in_flight = False
        self._device.accept(raw, self._sent_ns, self._run.rec)
        if self._run.sending:
            self._send()
        else:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._in_flight:
            self._run.rec.link_errors += 1
            self._in_flight = False
        self._run.device_closed()

    def stop_now(self) -> bool:
        """Closes the connection; True when a request was still without an answer."""
        unfinished = self._in_flight
        self._in_flight = False  # counted as unfinished by the caller, not as a link error
        if self._transport is not None:
            self._transport.abort()
        return unfinished


class _OneShot(asyncio.Protocol):
    """One request on its own connection: write on connect, resolve on the whole answer."""

    def __init__(self, frame: bytes, answer: asyncio.Future[bytes]) -> None:
        self._frame = frame
        self._answer = answer
        self._reader = _FrameReader()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).write(self._frame)

    def data_received(self, data: bytes) -> None:
        if self._answer.done():
            return
        try:
            raw = self._reader.feed(data)
        except ValueError as err:
            self._answer.set_exception(err)
            return
        if raw is not None:
            self._answer.set_result(raw)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._answer.done():
            # Always a ConnectionError, whatever broke the link, so the device loop counts it.
            lost = ConnectionError(f"closed before the answer: {exc!r}")
            lost.__cause__ = exc
            self._answer.set_exception(lost)


async def _per_request_device(device: _Device, run: _Run) -> None:
    config, loop, rec = run.config, run.loop, run.rec
    while run.sending:
        frame = device.next_frame()
        started = time.perf_counter_ns()
        answer: asyncio.Future[bytes] = loop.create_future()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                transport, _ = await loop.create_connection(
                    functools.partial(_OneShot, frame, answer), config.host, config.port
                )
        except OSError:
            rec.link_errors += 1
            continue
        try:
            raw = await answer
        except ValueError:
            rec.bad_answers += 1
            continue
        except OSError:
            rec.link_errors += 1
            continue
        finally:
            transport.close()
        device.accept(raw, started, rec)


def _answer_frame(answer: pb.Frame, metadata: grpc.aio.Metadata | None) -> bytes:
    """The TCP frame an Exchange answer stands for; ValueError when its metadata is not whole."""
    values = dict(metadata or ())
    try:
        version, device_id, token, number = (
            int(values[key]) for key in (VERSION_KEY, ID_KEY, TOKEN_KEY, REQUEST_NUMBER_KEY)
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"answer metadata {values!r}") from err
    return encode(version, device_id, token, number, answer.body)


async def _grpc_device(device: _Device, run: _Run, channel: grpc.aio.Channel) -> None:
    rec = run.rec
    exchange = channel.unary_unary(
        EXCHANGE,
        request_serializer=pb.Frame.SerializeToString,
        response_deserializer=pb.Frame.FromString,
    )
    while run.sending:
        request, metadata = device.next_call()
        started = time.perf_counter_ns()
        call = exchange(request, metadata=metadata, timeout=CALL_TIMEOUT)
        try:
            answer = await call
            raw = _answer_frame(answer, await call.initial_metadata())
        except grpc.aio.AioRpcError:
            rec.link_errors += 1
            continue
        except ValueError:
            rec.bad_answers += 1
            continue
        device.accept(raw, started, rec)


async def _connect_all(run: _Run, protocols: list[_PersistentDevice]) -> None:
    """One connection per device; if any fails, those that were made are closed again."""
    host, port = run.config.host, run.config.port
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await asyncio.gather(
                *(run.loop.create_connection(p.itself, host, port) for p in protocols)
            )
    except BaseException:
        for protocol in protocols:
            protocol.stop_now()
        raise


async def _drain_persistent(run: _Run, protocols: list[_PersistentDevice]) -> int:
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT):
            await run.all_closed
    except TimeoutError:
        return sum(p.stop_now() for p in protocols)
    return 0


async def _drain_tasks(tasks: list[asyncio.Task[None]]) -> int:
    _, pending = await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return len(pending)


def _percentile(ordered: list[int], pct: float) -> float:
    """Nearest-rank percentile of an ascending list, in the list's unit."""
    if not ordered:
        return 0.0
    rank = max(1, -(-len(ordered) * pct // 100))
    return float(ordered[int(rank) - 1])


def _summary(
    config: LoadConfig, run: _Run, window_s: float, cpu_s: float, unfinished: int
) -> LoadResult:
    rec = run.rec
    ordered = sorted(rec.latencies_ns)
    count = len(ordered)
    latency = {f"p{p}": _percentile(ordered, p) / 1000 for p in PERCENTILES}
    latency["max"] = ordered[-1] / 1000 if ordered else 0.0
    latency["mean"] = sum(ordered) / count / 1000 if count else 0.0
    return LoadResult(
        mode=config.mode,
        devices=len(config.devices),
        window_seconds=window_s,
        requests=count,
        throughput=count / window_s if window_s else 0.0,
        latency_us=latency,
        client_cpu_us_per_request=cpu_s * 1e6 / count if count else 0.0,
        answer_bytes_mean=rec.answer_bytes / count if count else 0.0,
        total_ok=rec.total_ok,
        not_ok={_code_name(code): n for code, n in sorted(rec.not_ok.items())},
        link_errors=rec.link_errors,
        bad_answers=rec.bad_answers,
        unfinished=unfinished,
    )


def _code_name(code: int) -> str:
    try:
        return ResultCode(code).name
    except ValueError:
        return str(code)


async def run_load(config: LoadConfig, probe: WindowProbe | None = None) -> LoadResult:
    """Warm-up, measurement window, drain; the probe is called at the window's edges."""
    if not config.devices:
        raise ValueError("a load needs at least one device")
    run = _Run(config)
    devices = [_Device(key, config.pool) for key in config.devices]
    protocols: list[_PersistentDevice] = []
    tasks: list[asyncio.Task[None]] = []
    channels: list[grpc.aio.Channel] = []
    if config.mode == "persistent":
        protocols = [_PersistentDevice(device, run) for device in devices]
        await _connect_all(run, protocols)
    elif config.mode == "grpc":
        target = f"{config.host}:{config.port}"
        channels = [grpc.aio.insecure_channel(target, CHANNEL_OPTIONS) for _ in devices]
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await asyncio.gather(*(channel.channel_ready() for channel in channels))
        except BaseException:
            await asyncio.gather(*(channel.close() for channel in channels))
            raise
        tasks = [
            asyncio.create_task(_grpc_device(d, run, c), name=f"device-{d.system_id}")
            for d, c in zip(devices, channels, strict=True)
        ]
    else:
        tasks = [
            asyncio.create_task(_per_request_device(d, run), name=f"device-{d.system_id}")
            for d in devices
        ]
    await asyncio.sleep(config.warmup)
    if probe is not None:
        probe.begin()
    run.rec.window_open = True
    cpu_start, t_start = time.process_time(), time.perf_counter()
    await asyncio.sleep(config.seconds)
    run.rec.window_open = False
    window_s, cpu_s = time.perf_counter() - t_start, time.process_time() - cpu_start
    if probe is not None:
        probe.end()
    run.sending = False
    unfinished = await (_drain_persistent(run, protocols) if protocols else _drain_tasks(tasks))
    await asyncio.gather(*(channel.close() for channel in channels))
    return _summary(config, run, window_s, cpu_s, unfinished)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=MODES, default="persistent")
    parser.add_argument("--devices", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--version", type=int, choices=(203, 204), default=203)
    parser.add_argument("--control", help="register fresh devices through this control API")
    args = parser.parse_args(argv)
    if args.control:
        keys = register_devices(args.control, args.devices)
    else:
        keys = tuple(DeviceKey(n, 1) for n in range(1, args.devices + 1))
    config = LoadConfig(args.host, args.port, args.mode, keys, build_pool(args.version),
                        args.warmup, args.seconds)  # fmt: skip
    result = uvloop.run(run_load(config))
    json.dump(asdict(result), sys.stdout, indent=2)
    print()
    return 0 if result.valid else 1


if __name__ == "__main__":
    raise SystemExit(main())
