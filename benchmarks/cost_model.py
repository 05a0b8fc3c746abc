"""Cost model: receipts per second per core, and the cores Kazakhstan's registers would need.

    python -m benchmarks.cost_model [--ingest bench-results/ingest.json]
        [--layers bench-results/layers.json] [--registers 1200000]
        [--receipts-per-day 40] [--peak-day-factor 2.0] [--peak-hour-share 0.12]
        [--utilisation 0.5] [--outage-share 0.1] [--outage-backlog 50]
        [--outage-drain-minutes 15] [--out bench-results/cost_model.json]

Cost per receipt comes from `benchmarks.run` (bench-results/ingest.json): the CPU the gateway
process and its PostgreSQL spent over the measurement window, divided by the receipts answered
OK, per connection mode (the reference client opens a connection per request; persistent
connections are what a server also accepts). Receipts per second per core = 1e6 / those µs.
It includes the embedded journal (in the gateway process) and the state database, not a Kafka
cluster or the warehouse loader, which run on their own machines in production.

`benchmarks.layers` (bench-results/layers.json) splits the time per receipt over the layers at the
largest batch measured: codec, validation, journal append and state commit. The journal's and the
database's figures are wall time and include waiting for the disk, which group commit overlaps
with other requests' work; the sum is a guide to where time goes, not a CPU bound.

Demand at the daily peak is an assumption, every part of it an option (defaults below):
  registers x receipts per register per day x peak-day factor (month-end, the eve of a
  holiday) x share of the day's receipts in the busiest hour / 3600 s.
A second scenario is a regional outage ending: a share of the registers reconnect at once, each
with a backlog, and the backlogs must drain within a time. Cores are demand / (receipts per
second per core x target utilisation), rounded up.
"""

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.report import write_json

DEFAULT_INGEST = Path("bench-results/ingest.json")
DEFAULT_LAYERS = Path("bench-results/layers.json")
DEFAULT_OUT = Path("bench-results/cost_model.json")
SECONDS_PER_HOUR = 3600
# Assumptions, not measurements; each is an option.
KZ_REGISTERS = 1_200_000  # registered online cash registers (the figure)
RECEIPTS_PER_DAY = 40  # mean per register: busy shops print hundreds, many registers a handful
PEAK_DAY_FACTOR = 2.0  # the busiest day of the month against an average day
PEAK_HOUR_SHARE = 0.12  # of a day's receipts in its busiest hour (a shop's evening peak)
UTILISATION = 0.5  # cores run at most half busy: headroom for bursts and a failed machine
OUTAGE_SHARE = 0.1  # of the registers behind one regional outage
OUTAGE_BACKLOG = 50  # receipts each of them queued offline
OUTAGE_DRAIN_MINUTES = 15.0  # the time the backlogs should drain in
LAYER_ORDER = ("codec", "validation", "journal append", "state commit")


@dataclass(frozen=True, slots=True)
class Assumptions:
    registers: int = KZ_REGISTERS
    receipts_per_day: float = RECEIPTS_PER_DAY
    peak_day_factor: float = PEAK_DAY_FACTOR
    peak_hour_share: float = PEAK_HOUR_SHARE
    utilisation: float = UTILISATION
    outage_share: float = OUTAGE_SHARE
    outage_backlog: int = OUTAGE_BACKLOG
    outage_drain_minutes: float = OUTAGE_DRAIN_MINUTES

    @property
    def peak_demand(self) -> float:
        """Receipts per second, fleet-wide, in the busiest hour of the busiest day."""
        daily = self.registers * self.receipts_per_day * self.peak_day_factor
        return daily * self.peak_hour_share / SECONDS_PER_HOUR

    @property
    def outage_demand(self) -> float:
        backlog = self.registers * self.outage_share * self.outage_backlog
        return backlog / (self.outage_drain_minutes * 60)


@dataclass(frozen=True, slots=True)
class ModeCost:
    mode: str
    gateway_us: float  # CPU per receipt in the gateway process
    postgres_us: float  # CPU per receipt in its PostgreSQL
    throughput: float  # receipts per second the run reached on the bench machine

    @property
    def total_us(self) -> float:
        return self.gateway_us + self.postgres_us

    @property
    def per_core(self) -> float:
        return 1e6 / self.total_us if self.total_us else 0.0


def mode_costs(ingest: dict[str, Any]) -> list[ModeCost]:
    costs = []
    for run in ingest.get("runs", []):
        if run.get("target") != "gateway" or not run["load"].get("valid", True):
            continue
        costs.append(
            ModeCost(
                mode=run["load"]["mode"],
                gateway_us=run["server_cpu_us_per_request"],
                postgres_us=run.get("postgres_cpu_us_per_request") or 0.0,
                throughput=run["load"]["throughput"],
            )
        )
    return costs


def layer_split(layers: dict[str, Any]) -> dict[str, float]:
    """µs per receipt in each layer at its largest batch (not the floors)."""
    split: dict[str, float] = {}
    for layer in LAYER_ORDER:
        cases = [c for c in layers.get("cases", []) if c["layer"] == layer and not c["floor"]]
        if cases:
            split[layer] = max(cases, key=lambda c: c["batch"])["item_us"]
    return split


def cores(demand: float, cost: ModeCost, utilisation: float) -> int:
    return math.ceil(demand / (cost.per_core * utilisation)) if cost.per_core else 0


def model(
    ingest: dict[str, Any], layers: dict[str, Any] | None, assume: Assumptions
) -> dict[str, Any]:
    costs = mode_costs(ingest)
    return {
        "benchmark": "cost_model",
        "inputs": {
            "ingest_finished_at": ingest.get("finished_at"),
            "layers_finished_at": None if layers is None else layers.get("finished_at"),
            "machine": ingest.get("machine"),
        },
        "assumptions": asdict(assume),
        "peak_demand_receipts_per_s": assume.peak_demand,
        "outage_demand_receipts_per_s": assume.outage_demand,
        "modes": [
            {
                **asdict(c),
                "total_us": c.total_us,
                "receipts_per_s_per_core": c.per_core,
                "cores_at_peak": cores(assume.peak_demand, c, assume.utilisation),
                "cores_for_outage_drain": cores(assume.outage_demand, c, assume.utilisation),
            }
            for c in costs
        ],
        "layer_us_per_receipt": {} if layers is None else layer_split(layers),
    }


def lines(doc: dict[str, Any]) -> list[str]:
    a = doc["assumptions"]
    out = ["cost per receipt (gateway + its PostgreSQL, CPU over the measurement window):"]
    for m in doc["modes"]:
        out.append(
            f"  {m['mode']:<12} {m['gateway_us']:6.1f} µs gateway + {m['postgres_us']:5.1f} µs"
            f" PostgreSQL = {m['total_us']:6.1f} µs -> {m['receipts_per_s_per_core']:,.0f}"
            f" receipts/s per core (bench reached {m['throughput']:,.0f}/s)"
        )
    if not doc["modes"]:
        out.append("  (no valid gateway run in the ingest results)")
    split = doc["layer_us_per_receipt"]
    if split:
        parts = " + ".join(f"{name} {us:.1f}" for name, us in split.items())
        out.append(
            f"time per receipt by layer (µs, at the largest batch; wall time): {parts}"
            f" = {sum(split.values()):.1f}"
        )
    out += [
        "Kazakhstan at its daily peak (assumptions; each is an option):",
        f"  {a['registers']:,} registers x {a['receipts_per_day']:g} receipts/day x peak-day"
        f" factor {a['peak_day_factor']:g} x {a['peak_hour_share']:.0%} in the peak hour / 3600 s"
        f" = {doc['peak_demand_receipts_per_s']:,.0f} receipts/s",
        f"  regional outage: {a['outage_share']:.0%} of registers x {a['outage_backlog']}"
        f" receipts drained in {a['outage_drain_minutes']:g} min"
        f" = {doc['outage_demand_receipts_per_s']:,.0f} receipts/s",
    ]
    for m in doc["modes"]:
        out.append(
            f"  {m['mode']:<12} cores at {a['utilisation']:.0%} utilisation: peak"
            f" {m['cores_at_peak']:,}, outage drain {m['cores_for_outage_drain']:,}"
        )
    return out


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cost_model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ingest", type=Path, default=DEFAULT_INGEST)
    parser.add_argument("--layers", type=Path, default=DEFAULT_LAYERS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    defaults = Assumptions()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    assume = Assumptions(**{name: getattr(args, name) for name in asdict(defaults)})
    if any(v <= 0 for v in asdict(assume).values()) or assume.utilisation > 1:
        parser.error("assumptions must be positive, --utilisation at most 1")
    ingest = _load(args.ingest)
    if ingest is None:
        print(f"error: no {args.ingest}: run `python -m benchmarks.run` first", file=sys.stderr)
        return 1
    doc = model(ingest, _load(args.layers), assume)
    print("\n".join(lines(doc)))
    write_json(args.out, doc)
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
