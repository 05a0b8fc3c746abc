"""`make bench`: receipts per second and server CPU per receipt, gateway against echo floor.

    python -m benchmarks.run [--devices 64] [--seconds 8] [--warmup 1]
                             [--modes persistent,per-request] [--journal local|kafka]
                             [--out bench-results/ingest.json]

For each mode, in one run: the echo floor (same transport and codec, no work; for the grpc mode
`benchmarks.grpc_echo_floor`, the same gRPC server and Exchange call) is started, loaded and
stopped; then a gateway on the embedded default (`ofd serve` with a fresh data directory, so
PostgreSQL from pgserver and the local journal) is started, a fleet is registered through its
control API, the same load is run (in the grpc mode, against the gateway's gRPC ingest port) and
the gateway is stopped. Floor and gateway get the same
generator, devices and request bodies, so their ratio says what the gateway's work costs on this
machine, whatever the machine. Server CPU is read from /proc over the measurement window only;
the embedded PostgreSQL's CPU is reported apart from the gateway's.

`--journal kafka` measures the production path instead: one Apache Kafka node is
started for the run, and each gateway journals to a fresh topic on it with acks=all
(bench-results/ingest-kafka.json); the broker's CPU is reported apart too. The pieces are
`benchmarks.harness`'s, shared with `benchmarks.scale`.

Prints a table and the gateway/floor ratios and writes them as JSON. Exits 1 when any run saw an
answer that was not OK or a request without an answer: such a run measured something else.
"""

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.bodies import DEFAULT_POOL_SIZE, RequestPool, build_pool
from benchmarks.fleet import register_devices
from benchmarks.harness import (
    JOURNALS,
    Journal,
    Window,
    floor,
    floor_keys,
    gateway,
    journal_topic,
    kafka_bootstrap,
    measure,
    scratch_dir,
)
from benchmarks.load import MODES, Mode
from benchmarks.report import Measurement, document, table, write_json
from simulators.stage.processes import unwind_on_sigterm

DEFAULT_OUT = {"local": Path("bench-results/ingest.json"),
               "kafka": Path("bench-results/ingest-kafka.json")}  # fmt: skip


@dataclass(frozen=True, slots=True)
class BenchConfig:
    devices: int
    window: Window
    modes: tuple[Mode, ...]
    version: int
    journal: Journal
    out: Path


def _floor(mode: Mode, bench: BenchConfig, pool: RequestPool, scratch: Path) -> Measurement:
    with floor(mode, bench.version, scratch) as server:
        return measure("floor", server, port=server.port, keys=floor_keys(bench.devices),
                       pool=pool, mode=mode, window=bench.window)  # fmt: skip


def _gateway(
    mode: Mode, bench: BenchConfig, pool: RequestPool, scratch: Path, bootstrap: str | None
) -> Measurement:
    kafka = journal_topic(bootstrap) if bootstrap else None
    with gateway(mode, scratch, kafka) as running:
        keys = register_devices(running.control, bench.devices, running.server.control_key)
        return measure("gateway", running.server, port=running.load_port, keys=keys, pool=pool,
                       mode=mode, window=bench.window, brokers=running.brokers)  # fmt: skip


def run(bench: BenchConfig) -> list[Measurement]:
    pool = build_pool(bench.version)
    measurements: list[Measurement] = []
    with scratch_dir() as scratch, kafka_bootstrap(bench.journal, scratch) as bootstrap:
        for mode in bench.modes:
            print(f"{mode}: {bench.devices} devices, {bench.window.seconds:g} s,"
                  f" {bench.journal} journal", flush=True)  # fmt: skip
            measurements.append(_floor(mode, bench, pool, scratch))
            measurements.append(_gateway(mode, bench, pool, scratch, bootstrap))
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
    parser.add_argument(
        "--journal", choices=JOURNALS, default="local", help="the gateway's journal: local or Kafka"
    )
    parser.add_argument("--out", type=Path, help="default: bench-results/ingest[-kafka].json")
    args = parser.parse_args(argv)
    if args.devices < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("--devices and --seconds must be positive, --warmup not negative")
    out = args.out or DEFAULT_OUT[args.journal]
    window = Window(args.warmup, args.seconds)
    return BenchConfig(args.devices, window, args.modes, args.version, args.journal, out)


def main(argv: Sequence[str] | None = None) -> int:
    bench = parse_args(argv)
    unwind_on_sigterm()
    measurements = run(bench)
    print()
    print(table(measurements))
    config: dict[str, Any] = {
        "devices": bench.devices,
        "seconds": bench.window.seconds,
        "warmup": bench.window.warmup,
        "modes": list(bench.modes),
        "journal": bench.journal,
        "protocol_version": bench.version,
        "request_pool": DEFAULT_POOL_SIZE,
    }
    doc = document(measurements, config)
    write_json(bench.out, doc)
    print(f"\nresults: {bench.out}")
    return 0 if doc["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
