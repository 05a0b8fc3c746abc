"""`make bench`: receipts per second and server CPU per receipt, gateway against echo floor.

    python -m benchmarks.run [--devices 64] [--seconds 8] [--warmup 1]
                             [--modes persistent,per-request] [--out bench-results/ingest.json]

For each mode, in one run: the echo floor (same transport and codec, no work; for the grpc mode
`benchmarks.grpc_echo_floor`, the same gRPC server and Exchange call) is started, loaded and
stopped; then a gateway on the embedded default (`ofd serve` with a fresh data directory, so
PostgreSQL from pgserver and the local journal) is started, a fleet is registered through its
control API, the same load is run (in the grpc mode, against the gateway's gRPC ingest port) and
the gateway is stopped. Floor and gateway get the same
generator, devices and request bodies, so their ratio says what the gateway's work costs on this
machine, whatever the machine. Server CPU is read from /proc over the measurement window only;
the embedded PostgreSQL's CPU is reported apart from the gateway's.

Prints a table and the gateway/floor ratios and writes them as JSON. Exits 1 when any run saw an
answer that was not OK or a request without an answer: such a run measured something else.
"""

import argparse
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import uvloop

from benchmarks.bodies import DEFAULT_POOL_SIZE, RequestPool, build_pool
from benchmarks.fleet import register_devices
from benchmarks.load import MODES, DeviceKey, LoadConfig, Mode, run_load
from benchmarks.procstat import (
    CpuSample,
    cpu_seconds_between,
    peak_rss_kib,
    sample,
)
from benchmarks.report import Measurement, document, table, write_json
from benchmarks.servers import (
    HOST,
    ServerProcess,
    free_ports,
    start_echo_floor,
    start_gateway,
    start_grpc_echo_floor,
    stop,
)
from simulators.processes import postmaster_pids

DEFAULT_OUT = Path("bench-results/ingest.json")
# Short: pgserver's Unix socket lives in <data dir>/pg and a socket path is capped at 107 bytes.
TEMP_ROOT = "/tmp"  # noqa: S108  # a private mkdtemp directory under it


@dataclass(frozen=True, slots=True)
class BenchConfig:
    devices: int
    seconds: float
    warmup: float
    modes: tuple[Mode, ...]
    version: int
    out: Path


class ServerProbe:
    """Samples the server's CPU (and its PostgreSQL's) at the load window's edges."""

    def __init__(self, server: ServerProcess) -> None:
        self._pid = server.pid
        self._pg_roots = postmaster_pids(server.pg_dir) if server.pg_dir else []
        self._before: tuple[CpuSample, CpuSample] | None = None
        self.server_cpu_s = 0.0
        self.postgres_cpu_s: float | None = None

    def _sample(self) -> tuple[CpuSample, CpuSample]:
        return sample([self._pid], with_children=True), sample(self._pg_roots, with_children=True)

    def begin(self) -> None:
        self._before = self._sample()

    def end(self) -> None:
        assert self._before is not None, "end() before begin()"
        after = self._sample()
        self.server_cpu_s = cpu_seconds_between(self._before[0], after[0])
        if self._pg_roots:
            self.postgres_cpu_s = cpu_seconds_between(self._before[1], after[1])


def _measure(
    target: str,
    server: ServerProcess,
    *,
    port: int,
    keys: tuple[DeviceKey, ...],
    pool: RequestPool,
    mode: Mode,
    bench: BenchConfig,
) -> Measurement:
    probe = ServerProbe(server)
    config = LoadConfig(HOST, port, mode, keys, pool, bench.warmup, bench.seconds)
    load = uvloop.run(run_load(config, probe))
    n = load.requests

    def per_request(cpu_s: float) -> float:
        return cpu_s * 1e6 / n if n else 0.0

    measurement = Measurement(
        target=target,
        load=load,
        server_cpu_us_per_request=per_request(probe.server_cpu_s),
        server_cpu_cores=probe.server_cpu_s / load.window_seconds,
        postgres_cpu_us_per_request=(
            None if probe.postgres_cpu_s is None else per_request(probe.postgres_cpu_s)
        ),
        server_peak_rss_kib=peak_rss_kib(server.pid),
    )
    print(
        f"  {mode} {target}: {load.throughput:,.0f} req/s,"
        f" {measurement.server_cpu_us_per_request:.1f} µs server CPU per request",
        flush=True,
    )
    return measurement


def _floor(mode: Mode, bench: BenchConfig, pool: RequestPool, run_dir: Path) -> Measurement:
    (port,) = free_ports(1)
    start = start_grpc_echo_floor if mode == "grpc" else start_echo_floor
    server = start(run_dir / f"floor-{mode}.log", port, bench.version)
    try:
        # The floor checks nothing: any ids do, and the token it echoes never changes.
        keys = tuple(DeviceKey(n, 1) for n in range(1, bench.devices + 1))
        return _measure(
            "floor", server, port=server.port, keys=keys, pool=pool, mode=mode, bench=bench
        )
    finally:
        stop(server)


def _gateway(mode: Mode, bench: BenchConfig, pool: RequestPool, run_dir: Path) -> Measurement:
    port, control_port, grpc_port = free_ports(3)
    if mode != "grpc":
        grpc_port = 0  # gRPC ingest off: the TCP modes measure the gateway they always did
    data_dir = run_dir / f"g-{mode}"
    server = start_gateway(data_dir, port, control_port, secrets.token_hex(32), grpc_port)
    try:
        keys = register_devices(f"{HOST}:{control_port}", bench.devices, server.control_key)
        load_port = grpc_port or server.port
        return _measure(
            "gateway", server, port=load_port, keys=keys, pool=pool, mode=mode, bench=bench
        )
    finally:
        stop(server)


def run(bench: BenchConfig) -> list[Measurement]:
    pool = build_pool(bench.version)
    run_dir = Path(tempfile.mkdtemp(prefix="ofdb-", dir=TEMP_ROOT))
    measurements: list[Measurement] = []
    try:
        for mode in bench.modes:
            print(f"{mode}: {bench.devices} devices, {bench.seconds:g} s", flush=True)
            measurements.append(_floor(mode, bench, pool, run_dir))
            measurements.append(_gateway(mode, bench, pool, run_dir))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return measurements


def _modes(text: str) -> tuple[Mode, ...]:
    chosen: list[Mode] = []
    for name in (part.strip() for part in text.split(",") if part.strip()):
        matching = [mode for mode in MODES if mode == name]
        if not matching:
            raise argparse.ArgumentTypeError(f"unknown mode {name!r}; choose from {MODES}")
        chosen += matching
    return tuple(chosen)


def parse_args(argv: Sequence[str] | None) -> BenchConfig:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--devices", type=int, default=64, help="simulated registers")
    parser.add_argument("--seconds", type=float, default=8.0, help="measurement window")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before the window")
    parser.add_argument("--modes", type=_modes, default=MODES, help="comma-separated")
    parser.add_argument("--version", type=int, choices=(203, 204), default=203)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.devices < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("--devices and --seconds must be positive, --warmup not negative")
    return BenchConfig(args.devices, args.seconds, args.warmup, args.modes, args.version, args.out)


def _exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    # SystemExit unwinds through the finally blocks that stop the servers and remove temp dirs.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    bench = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    measurements = run(bench)
    print()
    print(table(measurements))
    config: dict[str, Any] = {
        "devices": bench.devices,
        "seconds": bench.seconds,
        "warmup": bench.warmup,
        "modes": list(bench.modes),
        "protocol_version": bench.version,
        "request_pool": DEFAULT_POOL_SIZE,
    }
    doc = document(measurements, config)
    write_json(bench.out, doc)
    print(f"\nresults: {bench.out}")
    return 0 if doc["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
