"""The last step of `make bench`: the headline numbers of every result file, in one place.

    python -m benchmarks.summary [--results bench-results] [--out bench-results/summary.json]

Reads what the earlier steps wrote (ingest, scale, scale-kafka, warehouse, cabinet, cost_model,
capacity), prints one block per file and writes the same numbers as JSON. A file that is missing
is named as missing, and one whose run was invalid (answers that were not OK, or lost) is
flagged; the exit code is 1 when any is, so `make bench` fails rather than summarising a run that
measured something else.
"""

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.report import finished_at, write_json

DEFAULT_RESULTS = Path("bench-results")
SUMMARY_NAME = "summary.json"

Headline = tuple[dict[str, Any], list[str]]  # numbers for the JSON, lines for people


def _ingest(doc: dict[str, Any]) -> Headline:
    numbers: dict[str, Any] = {}
    lines = []
    for run in doc["runs"]:
        if run["target"] != "gateway":
            continue
        load, mode = run["load"], run["load"]["mode"]
        ratio = doc["ratios"].get(mode)
        n = numbers[mode] = {
            "receipts_per_s": load["throughput"],
            "p50_ms": load["latency_us"]["p50"] / 1000,
            "p99_ms": load["latency_us"]["p99"] / 1000,
            "ratio_to_floor": ratio,
            "server_cpu_us_per_receipt": run["total_server_cpu_us_per_request"],
        }
        lines.append(
            f"  {mode:<12} {n['receipts_per_s']:>8,.0f} receipts/s, p50 {n['p50_ms']:.1f} ms,"
            f" p99 {n['p99_ms']:.1f} ms, {n['server_cpu_us_per_receipt']:.0f} µs server CPU,"
            f" floor ratio {ratio or 0:.3f}"
        )
    return numbers, lines


def _scale(doc: dict[str, Any]) -> Headline:
    points = doc["points"]
    top = max(points, key=lambda p: p["gateway"]["load"]["throughput"])
    best = doc["best_under_p99_target"]
    numbers = {
        "peak_receipts_per_s": top["gateway"]["load"]["throughput"],
        "peak_at_devices": top["devices"],
        "best_under_p99_target": best,
    }
    lines = [
        f"  peak {numbers['peak_receipts_per_s']:,.0f} receipts/s at {top['devices']} devices"
        f" (p99 {top['gateway']['load']['latency_us']['p99'] / 1000:.1f} ms)"
    ]
    target = doc["targets"]
    if best is None:
        lines.append(f"  no fleet size kept the p99 under {target['p99_ms']:g} ms")
    else:
        verdict = "met" if best["target_met"] else "NOT met"
        lines.append(
            f"  with p99 < {target['p99_ms']:g} ms: {best['receipts_per_second']:,.0f} receipts/s"
            f" at {best['devices']} devices; target {target['receipts_per_second']:,.0f}/s"
            f" {verdict} (needs {best['cores_for_target']:.1f} busy cores at that cost)"
        )
    return numbers, lines


def _warehouse(doc: dict[str, Any]) -> Headline:
    throughput, freshness = doc["throughput"], doc["freshness"]
    numbers = {
        "loader_rows_per_s": throughput["loader_rows_per_s"],
        "ratio_to_floor": throughput["ratio_to_floor"],
        "freshness_p50_s": freshness["freshness_p50_s"],
        "freshness_p99_s": freshness["freshness_p99_s"],
    }
    lines = [
        f"  loader {numbers['loader_rows_per_s']:,} rows/s (floor ratio"
        f" {numbers['ratio_to_floor']:.2f}); freshness p50 {numbers['freshness_p50_s'] * 1000:.0f}"
        f" ms, p99 {numbers['freshness_p99_s'] * 1000:.0f} ms"
    ]
    return numbers, lines


def _cost_model(doc: dict[str, Any]) -> Headline:
    numbers = {
        m["mode"]: {
            "cores_at_peak": m["cores_at_peak"],
            "cores_for_outage": m["cores_for_outage_drain"],
        }
        for m in doc["modes"]
    }
    lines = [
        f"  {mode:<12} Kazakhstan's peak {doc['peak_demand_receipts_per_s']:,.0f} receipts/s needs"
        f" {n['cores_at_peak']} cores, an outage drain {n['cores_for_outage']}"
        for mode, n in numbers.items()
    ]
    return numbers, lines


def _capacity(doc: dict[str, Any]) -> Headline:
    registers = doc["assumptions"]["registers"]
    numbers = {
        name: {
            "receipts_per_s": doc[name]["receipts_per_s"],
            "gateway_cores": doc[name]["gateway_cores"],
            "postgres_cores": doc[name]["postgres_cores"],
            "kafka_brokers": doc[name]["kafka_brokers"],
            "loaders": doc[name]["loaders"],
        }
        for name in ("peak", "outage")
    }
    numbers["storage"] = doc["storage"]
    lines = [
        f"  {registers:,} registers, {title}: {n['receipts_per_s']:,.0f} receipts/s needs"
        f" {n['gateway_cores']} gateway cores, {n['postgres_cores']} PostgreSQL,"
        f" {n['kafka_brokers']} Kafka brokers, {n['loaders']} loaders"
        for title, n in (("peak", numbers["peak"]), ("outage + peak", numbers["outage"]))
    ]
    storage = doc["storage"]
    lines.append(
        f"  Kafka {storage['kafka_bytes_per_day'] / 1e9:,.1f} GB/day (replicated), warehouse"
        f" {storage['warehouse_bytes_per_year'] / 1e12:,.1f} TB/year"
    )
    return numbers, lines


def _cabinet(doc: dict[str, Any]) -> Headline:
    check, pages = doc["check"], doc["pages"]
    numbers = {
        "checks_per_s": check["per_s"],
        "check_p99_ms": check["latency_ms"]["p99"],
        "ratio_to_floor": check["ratio_to_floor"],
        "page_p95_ms": {name: t["p95_ms"] for name, t in pages.items()},
    }
    worst = max(pages.items(), key=lambda item: item[1]["p95_ms"])
    lines = [
        f"  check {numbers['checks_per_s']:,} /s over {doc['config']['receipts']:,} receipts,"
        f" p99 {numbers['check_p99_ms']:.1f} ms (floor ratio {numbers['ratio_to_floor']:.3f});"
        f" slowest page p95 {worst[1]['p95_ms']:.0f} ms ({worst[0]})"
    ]
    return numbers, lines


# File stem -> (title, what to take from it). benchmarks.layers and benchmarks.kafka_producer
# print their own tables; their per-layer numbers feed the cost model, summarised here.
SECTIONS: dict[str, tuple[str, Callable[[dict[str, Any]], Headline]]] = {
    "ingest": ("gateway vs echo floor (benchmarks.run, local journal)", _ingest),
    "scale": ("scale curve, persistent connections, local journal", _scale),
    "scale-kafka": ("scale curve, persistent connections, Kafka journal (Apache Kafka) + "
                    "PostgreSQL", _scale),
    "warehouse": ("warehouse loader", _warehouse),
    "cabinet": ("public receipt check and cabinet pages (benchmarks.cabinet_check)", _cabinet),
    "cost_model": ("cost model", _cost_model),
    "capacity": ("capacity model (benchmarks.capacity)", _capacity),
}  # fmt: skip


def summarise(results: Path) -> tuple[dict[str, Any], list[str], bool]:
    """The summary document, its lines, and whether every file was there and valid."""
    numbers: dict[str, Any] = {}
    lines = ["make bench summary:"]
    ok = True
    for stem, (title, headline) in SECTIONS.items():
        path = results / f"{stem}.json"
        lines.append(f"{title} ({path}):")
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            lines.append("  MISSING")
            numbers[stem] = None
            ok = False
            continue
        numbers[stem], found = headline(doc)
        lines += found
        if doc.get("valid") is False:
            lines.append("  INVALID: answers that were not OK, or lost; see the file")
            ok = False
    return {"benchmark": "summary", "finished_at": finished_at(), "results": numbers}, lines, ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.summary",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--out", type=Path, help=f"default: RESULTS/{SUMMARY_NAME}")
    args = parser.parse_args(argv)
    doc, lines, ok = summarise(args.results)
    print("\n".join(lines))
    out = args.out or args.results / SUMMARY_NAME
    write_json(out, doc)
    print(f"\nresults: {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
