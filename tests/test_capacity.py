"""benchmarks.capacity on small synthetic inputs: the arithmetic (rounding up, linear in the
registers, the outage on top of the rest's peak), where each input comes from, and the CLI's
JSON. No gateway runs here (--no-measure); `make bench` runs the measurement."""

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks.capacity import (
    FALLBACK_FOOTPRINT,
    PG_INDEX_ENTRY,
    PG_TUPLE_OVERHEAD,
    STATE_FILLFACTOR,
    Assumptions,
    Costs,
    Footprint,
    main,
    measure_footprint,
    model,
)
from ingest.tcp_server import IDLE_TIMEOUT, MAX_CONNECTIONS

FOOTPRINT = Footprint(
    journal_bytes=500.0,
    kafka_bytes=250.0,
    wal_bytes=1000.0,
    state_row_bytes=972.0,
    registry_row_bytes=100.0,
    warehouse_bytes=200.0,
    source="synthetic",
)
COSTS = Costs(
    mode="per-request",
    gateway_us=100.0,
    postgres_us=50.0,
    kafka_records_per_s=10_000.0,
    loader_rows_per_s=1_000.0,
    footprint=FOOTPRINT,
    sources={},
)
# 36,000 registers x 10 receipts/day x 2 x 10% / 3600 s = 20 receipts/s at the peak.
SMALL = Assumptions(
    registers=36_000,
    receipts_per_day=10,
    peak_day_factor=2.0,
    peak_hour_share=0.1,
    utilisation=0.5,
    outage_registers=3_600,
    outage_hours=48,
    reconnect_minutes=10,
)


def test_peak_and_outage_demand() -> None:
    assert SMALL.peak_demand == pytest.approx(20.0)
    assert SMALL.outage_backlog == pytest.approx(3_600 * 10 * 2)  # two days queued each
    # The rest keeps its peak (90% of it); the backlog drains in 600 s.
    assert SMALL.outage_demand == pytest.approx(18.0 + 72_000 / 600)


def test_resources_round_up() -> None:
    doc = model(COSTS, SMALL)
    peak = doc["peak"]
    # 20/s x 100 µs = 0.002 cores, at 50%: 0.004 -> 1; never 0.
    assert peak["gateway_cores_for_cpu"] == 1
    assert peak["postgres_cores"] == 1
    assert peak["kafka_brokers"] == 3  # the replication factor is the floor
    assert peak["loaders"] == 1
    outage = doc["outage"]
    # 138/s x 100 µs / 0.5 = 0.0276 -> 1; loaders 138 / 500 -> 1.
    assert outage["loaders"] == 1
    assert outage["receipts_per_s"] == pytest.approx(138.0)


@pytest.mark.parametrize("registers", [1_000_000, 1_200_000, 1_234_567])
def test_doubling_the_registers_doubles_the_cores_rounding_up(registers: int) -> None:
    one = replace(SMALL, registers=registers, outage_registers=registers // 10)
    two = replace(one, registers=2 * registers, outage_registers=2 * one.outage_registers)
    assert two.peak_demand == pytest.approx(2 * one.peak_demand)
    exact = one.peak_demand * COSTS.gateway_us / 1e6 / one.utilisation
    first, second = model(COSTS, one)["peak"], model(COSTS, two)["peak"]
    assert first["gateway_cores_for_cpu"] == math.ceil(exact)
    assert second["gateway_cores_for_cpu"] == math.ceil(2 * exact)
    assert first["gateway_cores_for_cpu"] <= second["gateway_cores_for_cpu"]
    assert second["gateway_cores_for_cpu"] <= 2 * first["gateway_cores_for_cpu"]
    assert second["kafka_ingress_bytes_per_s"] == pytest.approx(
        2 * first["kafka_ingress_bytes_per_s"]
    )


def test_storage_arithmetic() -> None:
    storage = model(COSTS, SMALL)["storage"]
    daily = 36_000 * 10
    assert storage["kafka_bytes_per_day"] == pytest.approx(daily * 250 * 3)
    assert storage["kafka_bytes_per_day_uncompressed"] == pytest.approx(daily * 500 * 3)
    assert storage["kafka_bytes_retained"] == pytest.approx(daily * 250 * 3 * 7)
    assert storage["postgres_wal_bytes_per_day"] == pytest.approx(daily * 1000)
    # (972 + 28) / 0.5 + 100 + 28 + 2 x 40 = 2208 bytes per register.
    per_register = (972 + PG_TUPLE_OVERHEAD) / STATE_FILLFACTOR + 100 + PG_TUPLE_OVERHEAD
    per_register += 2 * PG_INDEX_ENTRY
    assert per_register == 2208
    assert storage["postgres_state_bytes"] == pytest.approx(36_000 * per_register)
    assert storage["warehouse_bytes_per_year"] == pytest.approx(daily * 365 * 200 * 2)


def test_persistent_connections_can_outnumber_the_cpu() -> None:
    persistent = replace(COSTS, mode="persistent")
    big = replace(SMALL, registers=1_200_000, receipts_per_day=40, outage_registers=100_000)
    peak = model(persistent, big)["peak"]
    connections = min(1_200_000, big.peak_demand * IDLE_TIMEOUT)
    assert peak["open_connections"] == pytest.approx(connections)
    assert peak["gateway_processes_for_connections"] == math.ceil(connections / MAX_CONNECTIONS)
    assert peak["gateway_cores"] == max(
        peak["gateway_cores_for_cpu"], peak["gateway_processes_for_connections"]
    )
    # A connection per request is open only while its exchange lasts.
    assert model(COSTS, big)["peak"]["gateway_processes_for_connections"] == 1


def _write(results: Path, name: str, doc: object) -> None:
    (results / name).write_text(json.dumps(doc))


def test_cli_reads_the_bench_results_and_writes_json(tmp_path: Path) -> None:
    _write(tmp_path, "ingest.json", {"finished_at": "t0", "runs": [
        {"target": "floor", "load": {"mode": "per-request", "valid": True},
         "server_cpu_us_per_request": 1.0},
        {"target": "gateway", "load": {"mode": "per-request", "valid": True},
         "server_cpu_us_per_request": 200.0, "postgres_cpu_us_per_request": 40.0},
    ]})  # fmt: skip
    _write(tmp_path, "kafka_producer.json", {"finished_at": "t1", "cases": [
        {"layer": "kafka append", "case": "KafkaJournal.append (acks=all)", "batch": 1,
         "items_per_s": 2_000.0},
        {"layer": "kafka append", "case": "KafkaJournal.append (acks=all)", "batch": 1024,
         "items_per_s": 100_000.0},
        {"layer": "kafka append", "case": "producer acks=0, flush", "batch": 1024,
         "items_per_s": 900_000.0},
    ]})  # fmt: skip
    _write(tmp_path, "warehouse.json", {"throughput": {"loader_rows_per_s": 5_000}})
    _write(tmp_path, "capacity.json", {"finished_at": "t2", "costs": {"footprint": {
        "journal_bytes": 400.0, "kafka_bytes": 100.0, "wal_bytes": 900.0,
        "state_row_bytes": 800.0, "registry_row_bytes": 90.0, "warehouse_bytes": 150.0,
        "receipts": 10, "source": "old", "register_disk_bytes": 1.0,
    }}})  # fmt: skip
    out = tmp_path / "out.json"
    assert main(["--results", str(tmp_path), "--no-measure", "--out", str(out),
                 "--registers", "1000", "--outage-registers", "100"]) == 0  # fmt: skip
    doc = json.loads(out.read_text())
    costs = doc["costs"]
    assert (costs["gateway_us_per_receipt"], costs["postgres_us_per_receipt"]) == (200.0, 40.0)
    assert costs["kafka_records_per_s_per_broker"] == 100_000.0  # the journal, largest batch
    assert costs["loader_rows_per_s"] == 5_000.0
    assert costs["footprint"]["wal_bytes"] == 900.0  # the last measured footprint
    sources = costs["sources"]
    assert "ingest.json" in sources["gateway"]
    assert "kafka_producer.json" in sources["kafka"]
    assert "capacity.json" in sources["footprint"]
    assert doc["assumptions"]["registers"] == 1000
    assert doc["peak"]["kafka_brokers"] == 3


def test_cli_falls_back_to_the_readme_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--results", str(tmp_path), "--no-measure"]) == 0
    doc = json.loads((tmp_path / "capacity.json").read_text())
    assert all("README" in doc["costs"]["sources"][k] for k in ("gateway", "kafka", "loader"))
    assert doc["costs"]["sources"]["footprint"] == FALLBACK_FOOTPRINT.source
    assert doc["costs"]["gateway_us_per_receipt"] == 235.0  # per-request, README's figure
    printed = capsys.readouterr().out
    assert "README's last benchmark section" in printed
    assert "national peak" in printed
    assert "outage + peak" in printed


def test_cli_refuses_nonsense(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--results", str(tmp_path), "--no-measure", "--utilisation", "1.5"])
    with pytest.raises(SystemExit):
        main(["--results", str(tmp_path), "--no-measure", "--registers", "10",
              "--outage-registers", "20"])  # fmt: skip


@pytest.mark.slow
def test_footprint_measurement_runs_a_real_gateway() -> None:
    """The measuring half, briefly: sizes come out positive and plausible, nothing else."""
    footprint = measure_footprint(seconds=0.5, devices=4, producer_batch=8)
    assert footprint.receipts > 0
    assert 100 < footprint.journal_bytes < 4096
    assert 0 < footprint.kafka_bytes < footprint.journal_bytes + 100
    assert footprint.wal_bytes > 0
    assert footprint.state_row_bytes > footprint.registry_row_bytes > 0
    assert footprint.warehouse_bytes > 0
