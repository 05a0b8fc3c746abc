"""What a benchmark run found: per-target measurements, the summary table, the JSON document."""

import json
import os
import platform
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from benchmarks.load import LoadResult

AIM = 0.5  # the aim: at least half the floor's throughput, with durable acknowledgements


@dataclass(frozen=True, slots=True)
class Measurement:
    """One load against one server: what the client saw and what the server spent."""

    target: str  # "floor" | "gateway"
    load: LoadResult
    server_cpu_us_per_request: float
    server_cpu_cores: float  # mean cores busy in the window
    postgres_cpu_us_per_request: float | None  # the embedded PostgreSQL, gateway only
    server_peak_rss_kib: int | None  # the server's peak over the measurement window
    broker_cpu_us_per_request: float | None = None  # the Kafka broker, with the Kafka journal

    @property
    def total_server_cpu_us_per_request(self) -> float:
        """Everything the durable path spent: the gateway, its PostgreSQL and its broker."""
        sides = (self.postgres_cpu_us_per_request, self.broker_cpu_us_per_request)
        return self.server_cpu_us_per_request + sum(us or 0.0 for us in sides)


def ratios(measurements: list[Measurement]) -> dict[str, float]:
    """Gateway throughput / floor throughput, per mode measured on both."""
    by_key = {(m.load.mode, m.target): m.load.throughput for m in measurements}
    out: dict[str, float] = {}
    for (mode, target), throughput in by_key.items():
        floor = by_key.get((mode, "floor"))
        if target == "gateway" and floor:
            out[mode] = throughput / floor
    return out


def errors(load: LoadResult) -> str:
    if load.valid:
        return "0"
    parts = [f"{name}={n}" for name, n in load.not_ok.items()]
    for label, n in (("link", load.link_errors), ("bad", load.bad_answers),
                     ("unfinished", load.unfinished)):  # fmt: skip
        if n:
            parts.append(f"{label}={n}")
    return ",".join(parts)


def _ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def us_or_dash(us: float | None) -> str:
    return "-" if us is None else f"{us:.0f}"


def mib_or_dash(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.0f}"


def table(measurements: list[Measurement]) -> str:
    header = (
        f"{'mode':<12} {'target':<8} {'req/s':>9} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7}"
        f" {'srv µs/req':>10} {'pg µs/req':>9} {'kafka µs':>8} {'srv cores':>9}"
        f" {'client µs':>9} {'RSS MiB':>7} {'errors':>6}"
    )
    rows = [header, "-" * len(header)]
    for m in measurements:
        load = m.load
        rows.append(
            f"{load.mode:<12} {m.target:<8} {load.throughput:>9,.0f}"
            f" {_ms(load.latency_us['p50']):>7} {_ms(load.latency_us['p90']):>7}"
            f" {_ms(load.latency_us['p99']):>7} {m.server_cpu_us_per_request:>10.1f}"
            f" {us_or_dash(m.postgres_cpu_us_per_request):>9}"
            f" {us_or_dash(m.broker_cpu_us_per_request):>8} {m.server_cpu_cores:>9.2f}"
            f" {load.client_cpu_us_per_request:>9.1f} {mib_or_dash(m.server_peak_rss_kib):>7}"
            f" {errors(load):>6}"
        )
    rows.append("")
    for mode, ratio in ratios(measurements).items():
        verdict = "met" if ratio >= AIM else "NOT met"
        rows.append(f"gateway/floor throughput, {mode}: {ratio:.3f} (aim >= {AIM}: {verdict})")
    invalid = [f"{m.load.mode}/{m.target}" for m in measurements if not m.load.valid]
    if invalid:
        rows.append(f"INVALID runs (answers that were not OK, or lost): {', '.join(invalid)}")
    return "\n".join(rows)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "uvloop": version("uvloop"),
    }


def finished_at() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def run_json(m: Measurement) -> dict[str, Any]:
    """One measurement as JSON, with its validity and total server cost spelt out."""
    run = asdict(m)
    run["load"]["valid"] = m.load.valid
    run["total_server_cpu_us_per_request"] = m.total_server_cpu_us_per_request
    return run


def document(measurements: list[Measurement], config: dict[str, Any]) -> dict[str, Any]:
    return {
        "benchmark": "ingest",
        "finished_at": finished_at(),
        "machine": machine(),
        "config": config,
        "runs": [run_json(m) for m in measurements],
        "ratios": ratios(measurements),
        "aim": AIM,
        "valid": all(m.load.valid for m in measurements),
    }


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)
