"""Capacity model: what Kazakhstan's 1.2 million registers need, at the national peak and when a
regional outage ends, from the costs measured on this machine.

    python -m benchmarks.capacity [--results bench-results] [--no-measure]
        [--registers 1200000] [--receipts-per-day 40] [--outage-registers 100000] [...]
        [--out bench-results/capacity.json]

Measured inputs, each with where it came from (the output names the source of every one):
- gateway CPU per receipt, and its PostgreSQL's: bench-results/ingest.json (benchmarks.run), the
  connection mode of --mode (per-request by default: the reference client opens a connection per
  request; persistent connections cost about half).
- Kafka records per second per broker: bench-results/kafka_producer.json, the production journal
  (acks=all, idempotent, lz4) in batches of 1,024, against the broker that benchmark starts.
- warehouse rows per second per loader: bench-results/warehouse.json.
- footprint, measured here unless --no-measure: a gateway on the embedded default takes receipts
  from the load generator for --seconds; then the journal's records give the bytes per document
  (the Kafka record's value) and their lz4 size in producer batches, PostgreSQL's WAL position
  the WAL per receipt, pg_column_size the device state and registry rows, and the same journal
  loaded into chDB (parts merged) the warehouse bytes per receipt. The generator's receipts (1-5
  lines from a small catalogue) repeat more than a country's do: the compressed sizes (Kafka's
  lz4, ClickHouse's parts) are optimistic, and the uncompressed records are given as the bound.
A missing input falls back to the figures of README's last benchmark section (and the footprint to
the last one measured here, FALLBACK_FOOTPRINT); the output says which did.

Assumptions (each an option; defaults below): demand at the peak is registers x receipts per
register per day x peak-day factor x the busiest hour's share / 3600 s (as benchmarks.cost_model).
A regional outage: --outage-registers registers offline for --outage-hours queue an average day's
receipts per 24 h each, then all reconnect within --reconnect-minutes, while the rest of the
country is at its peak. Capacity is sized for --utilisation of what was measured (headroom for
bursts and for losing a machine). Rounding is always up.
"""

import argparse
import asyncio
import importlib
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks import cost_model
from benchmarks.bodies import DeviceKey, RequestPool, build_pool
from benchmarks.fleet import register_devices
from benchmarks.harness import gateway, scratch_dir
from benchmarks.load import LoadConfig, run_load
from benchmarks.report import finished_at, machine, write_json
from benchmarks.servers import HOST
from ingest.tcp_server import IDLE_TIMEOUT, MAX_CONNECTIONS
from ledger.journal.local import JournalReader
from ledger.warehouse.backends import ChdbWarehouse, apply_schema
from ledger.warehouse.loader import Loader, LoaderSettings, local_sources

DEFAULT_RESULTS = Path("bench-results")
OUT_NAME = "capacity.json"
SECONDS_PER_DAY = 86_400
DAYS_PER_YEAR = 365
FOOTPRINT_SECONDS = 5.0
FOOTPRINT_DEVICES = 64
FOOTPRINT_VERSION = 204
# PostgreSQL's heap tuple header and line pointer; device_state's fillfactor (migration 0002)
# leaves half of each page for HOT updates; a bigint primary-key index entry with its overhead.
PG_TUPLE_OVERHEAD = 28
STATE_FILLFACTOR = 0.5
PG_INDEX_ENTRY = 40
PG_PAGE = 8192
# A Kafka record's framing in a v2 batch (lengths, attributes, deltas, the 4-byte key) and the
# batch header (61 bytes) shared by the records of one producer batch.
KAFKA_RECORD_OVERHEAD = 12
KAFKA_BATCH_HEADER = 61
# A connection per request lives for its handshake, one exchange and the close: about twice the
# per-request p99 the benchmark measured (22.9 ms).
PER_REQUEST_CONNECTION_SECONDS = 0.05
KAFKA_LAYER = "kafka append"
KAFKA_CASE = "KafkaJournal.append"

# README, "Performance": the last `make bench` (2026-11-26) on this 2-core machine.
README_GATEWAY_US = {"persistent": 125.0, "per-request": 235.0, "grpc": 693.0}
README_POSTGRES_US = 88.0  # the upper end of "+10-88 µs in PostgreSQL"
README_KAFKA_RECORDS_PER_S = 243_612.0
README_LOADER_ROWS_PER_S = 8_252.0
README_SOURCE = "README's last benchmark section (2026-11-26)"


@dataclass(frozen=True, slots=True)
class Footprint:
    """Bytes per receipt and per register, from a short run of the real gateway."""

    journal_bytes: float  # a journal record's value: the envelope the gateway writes
    kafka_bytes: float  # the same on a broker's disk: lz4 in producer batches, with framing
    wal_bytes: float  # PostgreSQL WAL per accepted receipt
    state_row_bytes: float  # device_state row (token, last answer, tally, ...)
    registry_row_bytes: float  # devices row (registration facts)
    warehouse_bytes: float  # on disk in ClickHouse, every table and view, parts merged
    receipts: int = 0  # receipts the measurement saw
    source: str = ""

    @property
    def register_disk_bytes(self) -> float:
        """PostgreSQL bytes on disk per register: both rows with their keys, the state row at
        its fillfactor."""
        state = (self.state_row_bytes + PG_TUPLE_OVERHEAD) / STATE_FILLFACTOR
        return state + self.registry_row_bytes + PG_TUPLE_OVERHEAD + 2 * PG_INDEX_ENTRY


# Measured by this module on 2026-12-06 (this machine, protocol 2.0.4, the load generator's
# receipts of 1-5 lines): used with --no-measure when no earlier capacity.json holds one.
FALLBACK_FOOTPRINT = Footprint(
    journal_bytes=505.0,
    kafka_bytes=154.0,
    wal_bytes=1037.0,
    state_row_bytes=1000.0,
    registry_row_bytes=106.0,
    warehouse_bytes=289.0,
    receipts=16_816,
    source="measured by benchmarks.capacity on 2026-12-06 (FALLBACK_FOOTPRINT)",
)


@dataclass(frozen=True, slots=True)
class Costs:
    """What one receipt costs and what one machine part does, each with its source."""

    mode: str  # how devices connect: per-request, persistent or grpc
    gateway_us: float
    postgres_us: float
    kafka_records_per_s: float  # per broker
    loader_rows_per_s: float  # per loader
    footprint: Footprint
    sources: dict[str, str]


@dataclass(frozen=True, slots=True)
class Assumptions:
    registers: int = cost_model.KZ_REGISTERS
    receipts_per_day: float = cost_model.RECEIPTS_PER_DAY
    peak_day_factor: float = cost_model.PEAK_DAY_FACTOR
    peak_hour_share: float = cost_model.PEAK_HOUR_SHARE
    utilisation: float = cost_model.UTILISATION
    outage_registers: int = 100_000
    outage_hours: float = 72.0  # the longest a register works offline before it blocks itself
    reconnect_minutes: float = 30.0
    replication: int = 3  # Kafka replication factor (min.insync.replicas 2)
    retention_days: float = 7.0  # the journal topic's retention
    producer_batch: int = 8  # records per partition in one producer batch (lz4 unit)
    checkpoint_minutes: float = 15.0  # PostgreSQL checkpoint_timeout: full-page images
    warehouse_replicas: int = 2  # ClickHouse replicas of each shard

    @property
    def daily_receipts(self) -> float:
        """Receipts on an average day, country-wide."""
        return self.registers * self.receipts_per_day

    @property
    def peak_demand(self) -> float:
        """Receipts per second in the busiest hour of the busiest day."""
        return self.daily_receipts * self.peak_day_factor * self.peak_hour_share / 3600

    @property
    def outage_backlog(self) -> float:
        """Receipts queued offline by the registers behind the outage."""
        return self.outage_registers * self.receipts_per_day * self.outage_hours / 24

    @property
    def rest_demand(self) -> float:
        """The peak of the registers the outage did not cut off."""
        return self.peak_demand * (self.registers - self.outage_registers) / self.registers

    @property
    def drain_demand(self) -> float:
        """The backlog drained within the reconnection window."""
        return self.outage_backlog / (self.reconnect_minutes * 60)

    @property
    def outage_demand(self) -> float:
        return self.rest_demand + self.drain_demand


def cores(demand: float, us_per_receipt: float, utilisation: float) -> int:
    """Cores to serve `demand` receipts/s at `us_per_receipt` of CPU each, kept at most
    `utilisation` busy; rounded up."""
    return math.ceil(demand * us_per_receipt / 1e6 / utilisation)


def connections(demand: float, mode: str, registers: int) -> float:
    """Device connections open at once: a persistent one stays until IDLE_TIMEOUT after its
    device's last request (bounded by every receipt coming from another device), one per
    request only while its exchange lasts."""
    if mode == "per-request":
        return demand * PER_REQUEST_CONNECTION_SECONDS
    return min(float(registers), demand * IDLE_TIMEOUT)


def scenario(
    demand: float, open_connections: float, costs: Costs, assume: Assumptions
) -> dict[str, Any]:
    """What a sustained `demand` (receipts/s) over `open_connections` needs."""
    fp = costs.footprint
    u = assume.utilisation
    cpu_cores = cores(demand, costs.gateway_us, u)
    # One process per core, each taking at most MAX_CONNECTIONS devices at once.
    for_connections = math.ceil(open_connections / MAX_CONNECTIONS)
    kafka_in = demand * fp.kafka_bytes  # bytes/s the leaders take
    # Every record is written by `replication` brokers; each broker does kafka_records_per_s.
    brokers_for_rate = math.ceil(demand * assume.replication / (costs.kafka_records_per_s * u))
    # Full-page images: at most every page of the state table once per checkpoint interval.
    state_pages = assume.registers * fp.register_disk_bytes / PG_PAGE
    fpw = min(state_pages, demand * assume.checkpoint_minutes * 60) * PG_PAGE
    wal = demand * fp.wal_bytes + fpw / (assume.checkpoint_minutes * 60)
    return {
        "receipts_per_s": demand,
        "gateway_cores_for_cpu": cpu_cores,
        "open_connections": open_connections,
        "gateway_processes_for_connections": for_connections,
        "gateway_cores": max(cpu_cores, for_connections),
        "postgres_cores": cores(demand, costs.postgres_us, u),
        "postgres_row_writes_per_s": demand,  # one conditional UPDATE of device_state each
        "postgres_wal_bytes_per_s": wal,
        "kafka_ingress_bytes_per_s": kafka_in,
        "kafka_disk_write_bytes_per_s": kafka_in * assume.replication,
        "kafka_brokers": max(assume.replication, brokers_for_rate),
        "loaders": math.ceil(demand / (costs.loader_rows_per_s * u)),
    }


def model(costs: Costs, assume: Assumptions) -> dict[str, Any]:
    fp = costs.footprint
    registers, cut_off = assume.registers, assume.outage_registers
    peak = scenario(
        assume.peak_demand, connections(assume.peak_demand, costs.mode, registers), costs, assume
    )
    outage_connections = connections(
        assume.rest_demand, costs.mode, registers - cut_off
    ) + connections(assume.drain_demand, costs.mode, cut_off)
    outage = scenario(assume.outage_demand, outage_connections, costs, assume)
    # The loaders sized for the peak catch up on the backlog with what they have to spare.
    spare = peak["loaders"] * costs.loader_rows_per_s - assume.peak_demand
    outage["warehouse_catch_up_minutes"] = assume.outage_backlog / spare / 60 if spare > 0 else None
    outage["backlog_receipts"] = assume.outage_backlog
    kafka_day = assume.daily_receipts * fp.kafka_bytes * assume.replication
    warehouse_year = (
        assume.daily_receipts * DAYS_PER_YEAR * fp.warehouse_bytes * assume.warehouse_replicas
    )
    return {
        "benchmark": "capacity",
        "finished_at": finished_at(),
        "machine": machine(),
        "assumptions": asdict(assume),
        "costs": {
            "mode": costs.mode,
            "gateway_us_per_receipt": costs.gateway_us,
            "postgres_us_per_receipt": costs.postgres_us,
            "kafka_records_per_s_per_broker": costs.kafka_records_per_s,
            "loader_rows_per_s": costs.loader_rows_per_s,
            "footprint": {**asdict(fp), "register_disk_bytes": fp.register_disk_bytes},
            "sources": costs.sources,
        },
        "daily_receipts": assume.daily_receipts,
        "peak": peak,
        "outage": outage,
        "storage": {
            "kafka_bytes_per_day": kafka_day,
            # Upper bound: the records as the gateway wrote them, before lz4.
            "kafka_bytes_per_day_uncompressed": kafka_day * fp.journal_bytes / fp.kafka_bytes,
            "kafka_bytes_retained": kafka_day * assume.retention_days,
            "kafka_bytes_per_broker": kafka_day * assume.retention_days / peak["kafka_brokers"],
            "postgres_state_bytes": assume.registers * fp.register_disk_bytes,
            "postgres_wal_bytes_per_day": assume.daily_receipts * fp.wal_bytes,
            # Full-page images: at most the whole state table once per checkpoint interval.
            "postgres_fpw_bytes_per_checkpoint": assume.registers * fp.register_disk_bytes,
            "warehouse_bytes_per_year": warehouse_year,
        },
    }


# --- reading what `make bench` measured ---


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return data


def gateway_cost(results: Path, mode: str) -> tuple[float, float, str]:
    """(gateway µs, PostgreSQL µs, source) per receipt in `mode`."""
    path = results / "ingest.json"
    doc = _load(path) or {}
    for run in doc.get("runs", []):
        load = run["load"]
        if run["target"] == "gateway" and load["mode"] == mode and load.get("valid", True):
            pg = run.get("postgres_cpu_us_per_request") or 0.0
            source = f"{path} ({mode}, {doc.get('finished_at')})"
            return float(run["server_cpu_us_per_request"]), float(pg), source
    return README_GATEWAY_US[mode], README_POSTGRES_US, f"{README_SOURCE}: no {mode} run in {path}"


def kafka_rate(results: Path) -> tuple[float, str]:
    path = results / "kafka_producer.json"
    doc = _load(path)
    cases = [c for c in (doc or {}).get("cases", [])
             if c["layer"] == KAFKA_LAYER and c["case"].startswith(KAFKA_CASE)]  # fmt: skip
    if doc is None or not cases:
        return README_KAFKA_RECORDS_PER_S, f"{README_SOURCE}: no {path}"
    best = max(cases, key=lambda c: c["batch"])
    return best["items_per_s"], f"{path} (batch {best['batch']}, {doc['finished_at']})"


def loader_rate(results: Path) -> tuple[float, str]:
    path = results / "warehouse.json"
    doc = _load(path)
    if doc is None:
        return README_LOADER_ROWS_PER_S, f"{README_SOURCE}: no {path}"
    return float(doc["throughput"]["loader_rows_per_s"]), str(path)


def earlier_footprint(results: Path) -> Footprint:
    """The footprint of the last capacity.json, else FALLBACK_FOOTPRINT."""
    doc = _load(results / OUT_NAME)
    if doc is None:
        return FALLBACK_FOOTPRINT
    known = {f.name for f in fields(Footprint)}
    saved = {k: v for k, v in doc["costs"]["footprint"].items() if k in known}
    return replace(Footprint(**saved), source=f"{results / OUT_NAME} ({doc['finished_at']})")


def costs_from(results: Path, mode: str, footprint: Footprint) -> Costs:
    gateway_us, postgres_us, gateway_source = gateway_cost(results, mode)
    kafka, kafka_source = kafka_rate(results)
    loader, loader_source = loader_rate(results)
    return Costs(
        mode=mode,
        gateway_us=gateway_us,
        postgres_us=postgres_us,
        kafka_records_per_s=kafka,
        loader_rows_per_s=loader,
        footprint=footprint,
        sources={
            "gateway": gateway_source,
            "kafka": kafka_source,
            "loader": loader_source,
            "footprint": footprint.source,
        },
    )


# --- measuring the footprint ---


def kafka_record_bytes(payloads: Sequence[bytes], batch: int) -> float:
    """Mean bytes per record on a broker's disk: lz4 over each producer batch of `batch`
    records, with the batch header and each record's framing."""
    # lz4 comes with clickhouse-connect and ships no type information.
    compress: Callable[[bytes], bytes] = importlib.import_module("lz4.frame").compress
    total = 0
    for start in range(0, len(payloads), batch):
        chunk = payloads[start : start + batch]
        total += len(compress(b"".join(chunk))) + KAFKA_BATCH_HEADER
        total += KAFKA_RECORD_OVERHEAD * len(chunk)
    return total / len(payloads)


def measure_footprint(seconds: float, devices: int, producer_batch: int) -> Footprint:
    """Runs a gateway (embedded PostgreSQL, local journal) under the load generator, then reads
    what the receipts left in PostgreSQL, the journal and a warehouse loaded from it."""
    pool = build_pool(FOOTPRINT_VERSION)
    with scratch_dir() as scratch:
        with gateway("persistent", scratch) as running:
            keys = register_devices(running.control, devices, running.server.control_key)
            pg_dir = running.server.pg_dir
            assert pg_dir is not None
            load = _database_footprint(pg_dir, running.load_port, keys, pool, seconds)
            database = asyncio.run(load)
        journal_root = pg_dir.parent / "journal"
        payloads = [entry.payload for directory in sorted(journal_root.iterdir())
                    for _, entry in JournalReader(directory).read()]  # fmt: skip
        if not payloads:
            raise RuntimeError("the gateway journaled nothing")
        warehouse = _warehouse_bytes(journal_root, scratch / "warehouse", len(payloads))
    wal_bytes, state_row, registry_row, accepted = database
    return Footprint(
        journal_bytes=sum(map(len, payloads)) / len(payloads),
        kafka_bytes=kafka_record_bytes(payloads, producer_batch),
        wal_bytes=wal_bytes / accepted,
        state_row_bytes=state_row,
        registry_row_bytes=registry_row,
        warehouse_bytes=warehouse,
        receipts=len(payloads),
        source=f"measured now: {len(payloads):,} receipts from {devices} devices",
    )


async def _database_footprint(
    pg_dir: Path, port: int, keys: tuple[DeviceKey, ...], pool: RequestPool, seconds: float
) -> tuple[float, float, float, int]:
    """(WAL bytes over the load, mean state row, mean registry row, receipts accepted)."""
    conn = await asyncpg.connect(host=str(pg_dir), user="postgres", database="postgres")
    try:
        await conn.execute("CHECKPOINT")  # full-page images are modelled apart
        before = await conn.fetchval("SELECT pg_current_wal_lsn()::text")
        load = await run_load(LoadConfig(HOST, port, "persistent", keys, pool, 0.0, seconds))
        wal = await conn.fetchval(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::float8", before
        )
        state = await conn.fetchval("SELECT avg(pg_column_size(s.*))::float8 FROM device_state s")
        registry = await conn.fetchval("SELECT avg(pg_column_size(d.*))::float8 FROM devices d")
    finally:
        await conn.close()
    if not load.valid or not load.total_ok:
        raise RuntimeError(f"the footprint load was not clean: {load}")
    return float(wal), float(state), float(registry), load.total_ok


def _warehouse_bytes(journal_root: Path, directory: Path, documents: int) -> float:
    """Bytes on disk per document once the journal is loaded into chDB and every part merged
    (the loader's own bookkeeping tables left out: they do not grow with documents)."""
    warehouse = ChdbWarehouse(directory)
    try:
        apply_schema(warehouse)
        loader = Loader(warehouse, lambda: local_sources(journal_root), LoaderSettings())
        loaded = sum(loader.drain())
        if loaded != documents:
            raise RuntimeError(f"loaded {loaded} of {documents} documents")
        db = warehouse.database
        tables = warehouse.select(
            f"SELECT name FROM system.tables WHERE database = '{db}'"
            " AND engine LIKE '%MergeTree' AND name NOT LIKE 'loader\\_%'"
        )
        for table in tables:
            warehouse.execute(f"OPTIMIZE TABLE {db}.{table['name']} FINAL")
        (row,) = warehouse.select(
            f"SELECT sum(bytes_on_disk) AS bytes FROM system.parts WHERE database = '{db}'"
            " AND active AND table NOT LIKE 'loader\\_%'"
        )
    finally:
        warehouse.close()
    return float(row["bytes"]) / documents


# --- output ---


def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:,.1f} {prefix}{unit}"
    return f"{value:,.0f} {unit}"


def lines(doc: dict[str, Any]) -> list[str]:
    a, c, s = doc["assumptions"], doc["costs"], doc["storage"]
    fp, src = c["footprint"], c["sources"]
    out = [
        "inputs (per receipt unless said):",
        f"  gateway CPU {c['gateway_us_per_receipt']:.0f} µs ({c['mode']} connections) +"
        f" PostgreSQL {c['postgres_us_per_receipt']:.0f} µs   <- {src['gateway']}",
        f"  Kafka {c['kafka_records_per_s_per_broker']:,.0f} records/s per broker"
        f"   <- {src['kafka']}",
        f"  loader {c['loader_rows_per_s']:,.0f} rows/s   <- {src['loader']}",
        f"  journal record {fp['journal_bytes']:.0f} B ({fp['kafka_bytes']:.0f} B on a broker, lz4"
        f" in batches of {a['producer_batch']}), WAL {fp['wal_bytes']:.0f} B, warehouse"
        f" {fp['warehouse_bytes']:.0f} B; per register: state row {fp['state_row_bytes']:.0f} B +"
        f" registry row {fp['registry_row_bytes']:.0f} B = {fp['register_disk_bytes']:.0f} B on"
        f" disk   <- {src['footprint']}",
        "assumptions:",
        f"  {a['registers']:,} registers x {a['receipts_per_day']:g} receipts/day"
        f" = {doc['daily_receipts']:,.0f}/day; peak: x{a['peak_day_factor']:g} on the busiest day,"
        f" {a['peak_hour_share']:.0%} of it in one hour; sized at {a['utilisation']:.0%}"
        " utilisation",
        f"  outage: {a['outage_registers']:,} registers offline {a['outage_hours']:g} h"
        f" ({doc['outage']['backlog_receipts']:,.0f} receipts queued) reconnect within"
        f" {a['reconnect_minutes']:g} min during the peak",
        "",
        f"{'scenario':<20} {'receipts/s':>10} {'gw cores':>8} {'(cpu/conn)':>10}"
        f" {'pg cores':>8} {'pg WAL/s':>10} {'Kafka in/s':>10} {'brokers':>7} {'loaders':>7}",
    ]
    for name, sc in (("national peak", doc["peak"]), ("outage + peak", doc["outage"])):
        split = f"{sc['gateway_cores_for_cpu']}/{sc['gateway_processes_for_connections']}"
        out.append(
            f"{name:<20} {sc['receipts_per_s']:>10,.0f} {sc['gateway_cores']:>8} {split:>10}"
            f" {sc['postgres_cores']:>8} {_si(sc['postgres_wal_bytes_per_s'], 'B'):>10}"
            f" {_si(sc['kafka_ingress_bytes_per_s'], 'B'):>10} {sc['kafka_brokers']:>7}"
            f" {sc['loaders']:>7}"
        )
    catch_up = doc["outage"]["warehouse_catch_up_minutes"]
    out += [
        "",
        f"Kafka: {_si(s['kafka_bytes_per_day'], 'B')}/day with replication {a['replication']}"
        f" (at most {_si(s['kafka_bytes_per_day_uncompressed'], 'B')} uncompressed),"
        f" {_si(s['kafka_bytes_retained'], 'B')} for {a['retention_days']:g} days"
        f" ({_si(s['kafka_bytes_per_broker'], 'B')} per broker)",
        f"PostgreSQL: device state {_si(s['postgres_state_bytes'], 'B')}, WAL of the row writes"
        f" {_si(s['postgres_wal_bytes_per_day'], 'B')}/day, plus full-page images of up to"
        f" {_si(s['postgres_fpw_bytes_per_checkpoint'], 'B')} per checkpoint"
        f" ({a['checkpoint_minutes']:g} min)",
        f"warehouse: {_si(s['warehouse_bytes_per_year'], 'B')}/year with"
        f" {a['warehouse_replicas']} replicas; the peak's loaders absorb the outage backlog in"
        + (f" {catch_up:.0f} min" if catch_up is not None else " (never: no spare loader)"),
    ]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.capacity",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--out", type=Path, help=f"default: RESULTS/{OUT_NAME}")
    parser.add_argument("--mode", choices=sorted(README_GATEWAY_US), default="per-request")
    parser.add_argument("--no-measure", action="store_true",
                        help="reuse the last footprint instead of running a gateway")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=FOOTPRINT_SECONDS)
    parser.add_argument("--devices", type=int, default=FOOTPRINT_DEVICES)
    defaults = Assumptions()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    assume = Assumptions(**{name: getattr(args, name) for name in asdict(defaults)})
    if any(v <= 0 for v in asdict(assume).values()) or assume.utilisation > 1:
        parser.error("assumptions must be positive, --utilisation at most 1")
    if assume.outage_registers > assume.registers:
        parser.error("--outage-registers must not exceed --registers")
    if args.no_measure:
        footprint = earlier_footprint(args.results)
    else:
        print(f"capacity: measuring the footprint ({args.seconds:g} s, {args.devices} devices)",
              flush=True)  # fmt: skip
        footprint = measure_footprint(args.seconds, args.devices, assume.producer_batch)
    doc = model(costs_from(args.results, args.mode, footprint), assume)
    print("\n".join(lines(doc)))
    out = args.out or args.results / OUT_NAME
    write_json(out, doc)
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
