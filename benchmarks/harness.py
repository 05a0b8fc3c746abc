"""What every gateway-against-floor benchmark shares: servers started and always stopped, one
measured load against one of them, and the journal the gateway writes to.

`benchmarks.run` (modes at one fleet size) and `benchmarks.scale` (fleet sizes in one mode) are
both built from these pieces, so their numbers mean the same thing:

- `floor` / `gateway` start a server as a subprocess and stop it on the way out, whatever
  happened; the gateway runs on the embedded default (`ofd serve`, PostgreSQL from pgserver in a
  fresh data directory), journaling to its local files or, given a `KafkaSettings`, to Kafka;
- `kafka_bootstrap` starts one Apache Kafka node (a benchmark port) for the Kafka journal, and
  `journal_topic` names a fresh topic on it for one gateway, which creates it at start;
- `measure` runs one closed-loop load and reads the server's CPU over the measurement window
  from /proc, apart from its PostgreSQL's and the broker's.
"""

import contextlib
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import uvloop

from benchmarks.bodies import DeviceKey, RequestPool
from benchmarks.kafka_producer import kafka_broker
from benchmarks.load import LoadConfig, Mode, run_load
from benchmarks.procstat import (
    CpuSample,
    children_of,
    cpu_seconds_between,
    peak_rss_kib,
    reset_peak_rss,
    sample,
)
from benchmarks.report import Measurement
from benchmarks.servers import (
    HOST,
    ServerProcess,
    free_ports,
    start_echo_floor,
    start_gateway,
    start_grpc_echo_floor,
    stop,
)
from ledger.journal.kafka import KafkaSettings
from simulators.stage.processes import postmaster_pids

Journal = Literal["local", "kafka"]
JOURNALS: tuple[Journal, ...] = get_args(Journal)
BROKER_COMMAND = "java"  # /proc/<pid>/comm of the broker kafka_bootstrap starts (this process
# starts no other JVM)
# Short: pgserver's Unix socket lives in <data dir>/pg and a socket path is capped at 107 bytes.
TEMP_ROOT = "/tmp"  # noqa: S108  # a private mkdtemp directory under it


@dataclass(frozen=True, slots=True)
class Window:
    """Seconds of warm-up before the measurement window, and the window itself."""

    warmup: float
    seconds: float


@dataclass(frozen=True, slots=True)
class Gateway:
    """A running gateway under test and where its load goes."""

    server: ServerProcess
    load_port: int  # the TCP port, or the gRPC ingest port in the grpc mode
    control: str  # host:port of its control API
    brokers: tuple[int, ...]  # pids of the Kafka broker it journals to; none for the local journal


def _brokers() -> tuple[int, ...]:
    """This process's JVM children: the Kafka node `kafka_bootstrap` started."""
    found = []
    for pid in children_of({os.getpid()}):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == BROKER_COMMAND:
                found.append(pid)
    return tuple(found)


class ServerProbe:
    """Samples the server's CPU (and its PostgreSQL's and broker's) at the load window's edges;
    the server's peak memory is reset at the start, so it is the window's peak."""

    def __init__(self, server: ServerProcess, brokers: Sequence[int]) -> None:
        self._pid = server.pid
        self._groups = (
            [self._pid],
            postmaster_pids(server.pg_dir) if server.pg_dir else [],
            list(brokers),
        )
        self._before: list[CpuSample] | None = None
        self.server_cpu_s = 0.0
        self.postgres_cpu_s: float | None = None
        self.broker_cpu_s: float | None = None

    def _sample(self) -> list[CpuSample]:
        return [sample(pids, with_children=True) for pids in self._groups]

    def begin(self) -> None:
        reset_peak_rss(self._pid)
        self._before = self._sample()

    def end(self) -> None:
        assert self._before is not None, "end() before begin()"
        used = [
            cpu_seconds_between(before, after)
            for before, after in zip(self._before, self._sample(), strict=True)
        ]
        _, pg_roots, brokers = self._groups
        self.server_cpu_s = used[0]
        self.postgres_cpu_s = used[1] if pg_roots else None
        self.broker_cpu_s = used[2] if brokers else None


def measure(
    target: str,
    server: ServerProcess,
    *,
    port: int,
    keys: tuple[DeviceKey, ...],
    pool: RequestPool,
    mode: Mode,
    window: Window,
    brokers: Sequence[int] = (),
) -> Measurement:
    """One load of `keys` against `server` on `port`, with the server's costs over the window
    (and the costs of the `brokers` it journals to)."""
    probe = ServerProbe(server, brokers)
    config = LoadConfig(HOST, port, mode, keys, pool, window.warmup, window.seconds)
    load = uvloop.run(run_load(config, probe))
    n = load.requests

    def per_request(cpu_s: float | None) -> float | None:
        if cpu_s is None:
            return None
        return cpu_s * 1e6 / n if n else 0.0

    measurement = Measurement(
        target=target,
        load=load,
        server_cpu_us_per_request=per_request(probe.server_cpu_s) or 0.0,
        server_cpu_cores=probe.server_cpu_s / load.window_seconds,
        postgres_cpu_us_per_request=per_request(probe.postgres_cpu_s),
        server_peak_rss_kib=peak_rss_kib(server.pid),
        broker_cpu_us_per_request=per_request(probe.broker_cpu_s),
    )
    print(
        f"  {mode} {target}, {len(keys)} devices: {load.throughput:,.0f} req/s,"
        f" p99 {load.latency_us['p99'] / 1000:.1f} ms,"
        f" {measurement.server_cpu_us_per_request:.1f} µs server CPU per request",
        flush=True,
    )
    return measurement


def floor_keys(count: int) -> tuple[DeviceKey, ...]:
    """The floor checks nothing: any ids do, and the token it echoes never changes."""
    return tuple(DeviceKey(n, 1) for n in range(1, count + 1))


@contextlib.contextmanager
def floor(mode: Mode, version: int, run_dir: Path) -> Iterator[ServerProcess]:
    """The echo floor for `mode` (the gRPC one for grpc) on a free benchmark port."""
    (port,) = free_ports(1)
    start = start_grpc_echo_floor if mode == "grpc" else start_echo_floor
    server = start(run_dir / f"floor-{mode}-{uuid.uuid4().hex[:8]}.log", port, version)
    try:
        yield server
    finally:
        stop(server)


@contextlib.contextmanager
def gateway(mode: Mode, run_dir: Path, kafka: KafkaSettings | None = None) -> Iterator[Gateway]:
    """A gateway on the embedded default in a fresh data directory under `run_dir`, with gRPC
    ingest only in the grpc mode (the TCP modes measure the gateway they always did)."""
    port, control_port, grpc_port = free_ports(3)
    if mode != "grpc":
        grpc_port = 0
    data_dir = run_dir / f"g-{mode}-{uuid.uuid4().hex[:8]}"
    server = start_gateway(
        data_dir, port, control_port, secrets.token_hex(32), grpc_port, kafka=kafka
    )
    try:
        brokers = _brokers() if kafka else ()
        yield Gateway(server, grpc_port or server.port, f"{HOST}:{control_port}", brokers)
    finally:
        stop(server)


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A private directory for server logs and data, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="ofdb-", dir=TEMP_ROOT))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def kafka_bootstrap(journal: Journal, scratch: Path) -> Iterator[str | None]:
    """A broker for the Kafka journal (None for the local one), stopped on the way out."""
    if journal == "local":
        yield None
        return
    with kafka_broker(scratch / "kafka") as bootstrap:
        yield bootstrap


def journal_topic(bootstrap: str) -> KafkaSettings:
    """A fresh journal topic for one gateway, with the production settings otherwise: the
    gateway creates it at start with the default partition count, as a first deployment would."""
    return KafkaSettings(bootstrap, topic=f"bench.gateway.{uuid.uuid4().hex[:8]}")
