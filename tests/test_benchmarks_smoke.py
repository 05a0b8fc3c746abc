"""The benchmark machinery, run for a fraction of a second: well-formed results, no timings.

Benchmarks are not tests; this only checks that the generator, the floor, the /proc probes and
the report work, and that the generator speaks the protocol well enough for a real gateway to
answer every request OK (which needs the token rule applied to every answer).
"""

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import register_device

from benchmarks.bodies import DeviceKey, build_pool, ticket_ok_body
from benchmarks.cost_model import Assumptions
from benchmarks.cost_model import model as cost_model
from benchmarks.echo_floor import EchoProtocol
from benchmarks.grpc_echo_floor import start as start_grpc_floor
from benchmarks.harness import JOURNALS, Journal, Window
from benchmarks.load import MODES, TCP_MODES, LoadConfig, LoadResult, Mode, run_load
from benchmarks.procstat import cpu_seconds_between, peak_rss_kib, reset_peak_rss, sample
from benchmarks.report import Measurement, document, ratios, table
from benchmarks.scale import P99_TARGET_MS, Point, ScaleConfig, best_under_target
from benchmarks.scale import document as scale_document
from benchmarks.scale import main as scale_main
from benchmarks.scale import table as scale_table
from benchmarks.summary import main as summary_main
from ingest.app import RunningGateway
from ledger.schemas import SCHEMAS

SHORT = {"warmup": 0.05, "seconds": 0.25}
POOL = build_pool(203, size=5)


@pytest.fixture
async def floor_port() -> AsyncIterator[int]:
    answer = ticket_ok_body(POOL)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: EchoProtocol(answer), "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@pytest.fixture
async def grpc_floor_port() -> AsyncIterator[int]:
    server, port = await start_grpc_floor("127.0.0.1", 0, ticket_ok_body(POOL))
    try:
        yield port
    finally:
        await server.stop(None)


def _check_well_formed(result: LoadResult, mode: Mode, devices: int) -> None:
    assert result.valid, result
    assert result.mode == mode
    assert result.devices == devices
    assert result.requests > 0
    assert result.throughput > 0
    assert result.total_ok >= result.requests
    lat = result.latency_us
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert result.answer_bytes_mean > 18


@pytest.mark.parametrize("mode", TCP_MODES)
async def test_load_against_echo_floor(floor_port: int, mode: Mode) -> None:
    keys = (DeviceKey(1, 7), DeviceKey(2, 7), DeviceKey(3, 7))
    result = await run_load(LoadConfig("127.0.0.1", floor_port, mode, keys, POOL, **SHORT))
    _check_well_formed(result, mode, 3)
    assert result.answer_bytes_mean == 18 + len(ticket_ok_body(POOL))


async def test_grpc_load_against_grpc_echo_floor(grpc_floor_port: int) -> None:
    keys = (DeviceKey(1, 7), DeviceKey(2, 7), DeviceKey(3, 7))
    config = LoadConfig("127.0.0.1", grpc_floor_port, "grpc", keys, POOL, **SHORT)
    result = await run_load(config)
    _check_well_formed(result, "grpc", 3)
    assert result.answer_bytes_mean == 18 + len(ticket_ok_body(POOL))


def test_every_mode_is_tcp_or_grpc() -> None:
    assert set(MODES) == {*TCP_MODES, "grpc"}


@pytest.mark.parametrize("mode", MODES)
async def test_load_against_gateway_is_all_ok(
    gateway: RunningGateway, database_url: str, mode: Mode
) -> None:
    devices = [await register_device(database_url) for _ in range(2)]
    keys = tuple(DeviceKey(d.system_id, d.token) for d in devices)
    port = gateway.grpc_port if mode == "grpc" else gateway.tcp.port
    assert port is not None
    result = await run_load(LoadConfig("127.0.0.1", port, mode, keys, POOL, **SHORT))
    _check_well_formed(result, mode, 2)


async def test_probe_is_called_at_the_window_edges(floor_port: int) -> None:
    calls: list[str] = []

    class Probe:
        def begin(self) -> None:
            calls.append("begin")

        def end(self) -> None:
            calls.append("end")

    config = LoadConfig("127.0.0.1", floor_port, "persistent", (DeviceKey(1, 1),), POOL, **SHORT)
    await run_load(config, Probe())
    assert calls == ["begin", "end"]


def test_pool_keeps_every_document_distinct_past_its_end() -> None:
    schema = SCHEMAS[203]
    seen = set()
    for sequence in range(12):  # past the 5 bodies twice
        ticket = schema.Request.FromString(POOL.body(sequence)).ticket
        seen.add((ticket.fr_shift_number, ticket.printed_document_number))
    assert len(seen) == 12


def test_procstat_reads_this_process() -> None:
    pid = os.getpid()
    before = sample([pid], with_children=False)
    sum(i * i for i in range(200_000))  # burn a little CPU
    after = sample([pid], with_children=False)
    assert cpu_seconds_between(before, after) >= 0
    rss = peak_rss_kib(pid)
    assert rss is not None
    assert rss > 0
    reset_peak_rss(pid)
    assert peak_rss_kib(pid) is not None


def _fake_load(throughput: float, p99_us: float) -> LoadResult:
    latency = {"p50": p99_us / 2, "p90": p99_us, "p99": p99_us, "max": p99_us, "mean": p99_us / 2}
    return LoadResult("persistent", 2, 1.0, int(throughput), throughput, latency, 5.0, 119.0,
                      int(throughput), {}, 0, 0, 0)  # fmt: skip


def test_report_table_and_json() -> None:
    def fake(target: str, throughput: float) -> Measurement:
        load = _fake_load(throughput, 3.0)
        return Measurement(target, load, 10.0, 0.5, None if target == "floor" else 3.0, 1024)

    measurements = [fake("floor", 1000.0), fake("gateway", 400.0)]
    assert ratios(measurements) == {"persistent": 0.4}
    text = table(measurements)
    assert "gateway/floor throughput, persistent: 0.400" in text
    doc = json.loads(json.dumps(document(measurements, {"devices": 2})))
    assert doc["valid"] is True
    assert [run["target"] for run in doc["runs"]] == ["floor", "gateway"]
    assert doc["runs"][1]["total_server_cpu_us_per_request"] == 13.0


def _scale_point(devices: int, throughput: float, p99_ms: float) -> Point:
    floor = Measurement("floor", _fake_load(10 * throughput, 100.0), 5.0, 0.5, None, 512)
    load = _fake_load(throughput, p99_ms * 1000)
    gateway = Measurement("gateway", load, 100.0, 1.0, 20.0, 4096, broker_cpu_us_per_request=7.0)
    return Point(devices, floor, gateway)


SCALE_POINTS = [_scale_point(1, 500.0, 2.0), _scale_point(64, 7000.0, 20.0),
                _scale_point(1024, 7500.0, 150.0)]  # fmt: skip
SCALE_CONFIG = ScaleConfig((1, 64, 1024), Window(0.1, 1.0), "persistent", "kafka", 203, Path("x"))


def test_scale_table_and_json_name_the_best_point_under_the_p99_target() -> None:
    best = best_under_target(SCALE_POINTS)
    assert best is not None
    assert best.devices == 64
    assert best.gateway_p99_ms < P99_TARGET_MS
    text = scale_table(SCALE_POINTS, "kafka")
    assert "7,000 receipts/s at 64 devices" in text
    doc = json.loads(json.dumps(scale_document(SCALE_POINTS, SCALE_CONFIG)))
    assert doc["valid"] is True
    assert [p["devices"] for p in doc["points"]] == [1, 64, 1024]
    assert doc["points"][1]["ratio"] == 0.1
    assert doc["points"][1]["gateway"]["total_server_cpu_us_per_request"] == 127.0
    assert doc["best_under_p99_target"]["devices"] == 64
    assert doc["best_under_p99_target"]["target_met"] is False
    assert doc["best_under_p99_target"]["cores_for_target"] == 1.27


def test_summary_collects_every_result_and_names_what_is_missing(tmp_path: Path) -> None:
    floor = Measurement("floor", _fake_load(1000.0, 3.0), 10.0, 0.5, None, 1024)
    gateway = Measurement("gateway", _fake_load(400.0, 3.0), 100.0, 0.5, 20.0, 1024)
    ingest = document([floor, gateway], {"devices": 2})
    scale = scale_document(SCALE_POINTS, SCALE_CONFIG)
    docs = {
        "ingest": ingest,
        "scale": scale,
        "scale-kafka": scale,
        "cost_model": cost_model(ingest, None, Assumptions()),
    }
    for stem, doc in docs.items():
        (tmp_path / f"{stem}.json").write_text(json.dumps(doc))
    out = tmp_path / "summary.json"
    assert summary_main(["--results", str(tmp_path), "--out", str(out)]) == 1  # no warehouse
    summary = json.loads(out.read_text())["results"]
    assert summary["warehouse"] is None
    assert summary["ingest"]["persistent"]["ratio_to_floor"] == 0.4
    assert summary["scale-kafka"]["peak_at_devices"] == 1024
    assert summary["scale"]["best_under_p99_target"]["devices"] == 64
    assert set(summary["cost_model"]) == {"persistent"}


@pytest.mark.slow
@pytest.mark.parametrize("journal", JOURNALS)
def test_scale_runs_floor_and_gateway_processes_and_writes_json(
    journal: Journal, tmp_path: Path
) -> None:
    out = tmp_path / "scale.json"
    code = scale_main(["--devices", "1,2", "--seconds", "0.2", "--warmup", "0.05",
                       "--journal", journal, "--out", str(out)])  # fmt: skip
    doc = json.loads(out.read_text())
    assert code == 0, doc
    assert doc["valid"] is True
    assert doc["config"]["journal"] == journal
    assert [p["devices"] for p in doc["points"]] == [1, 2]
    for point in doc["points"]:
        assert point["ratio"] > 0
        gateway = point["gateway"]
        assert gateway["load"]["requests"] > 0
        assert gateway["postgres_cpu_us_per_request"] is not None
        assert (gateway["broker_cpu_us_per_request"] is None) == (journal == "local")
        assert gateway["server_peak_rss_kib"] > 0
