"""The warehouse on chDB: schema, decoding, exactly once by identity, reports and read-only SQL.

Every test opens its own chDB directory. chDB admits one process per directory, and these tests
run in the pytest process, so the crash tests start the loader as a subprocess (`ofd load`).
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from warehouse_journal import Sent, load_journals, receipt_record, write_journal

from ledger.warehouse.backends import QueryLimits, Warehouse, open_warehouse, schema_statements
from ledger.warehouse.loader import (
    CRASH_AFTER_INSERT_ENV,
    CRASH_EXIT_CODE,
    Loader,
    local_sources,
    read_position,
)
from ledger.warehouse.reports import QueryRefused, run_query, run_report
from ledger.warehouse.service import query, service_address, warehouse_dir
from simulators.receipts import Operation

DB = "ofd"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def _journal(data_dir: Path, count: int, *, devices: int = 3, gateway: str = "gw-a") -> list[Sent]:
    entries, sent = [], []
    for number in range(1, count + 1):
        operation = Operation.SELL_RETURN if number % 11 == 0 else Operation.SELL
        entry, doc = receipt_record(
            100 + number % devices, number, offline=number % 5 == 0, operation=operation
        )
        entries.append(entry)
        sent.append(doc)
    # A document journaled twice (answered 254, then resent): one identity, two records.
    entries.append(entries[3])
    write_journal(data_dir / "journal" / gateway, entries)
    return sent


@pytest.fixture
def warehouse(data_dir: Path) -> Iterator[Warehouse]:
    wh = open_warehouse(path=warehouse_dir(data_dir))
    try:
        yield wh
    finally:
        wh.close()


def _daily(sent: list[Sent]) -> dict[tuple[int, str], tuple[int, int, int]]:
    out: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for doc in sent:
        acc = out[(doc.device_id, doc.day)]
        acc[0] += 1
        acc[1] += int(doc.offline)
        acc[2] += doc.revenue
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def _check_exactly_once(wh: Warehouse, sent: list[Sent]) -> None:
    rows = wh.select(f"SELECT device_id, document_id FROM {DB}.documents")
    assert len(rows) == len(sent)
    assert {(r["device_id"], r["document_id"]) for r in rows} == {
        (d.device_id, d.document_id) for d in sent
    }
    receipts = wh.select(f"SELECT count() AS n FROM {DB}.receipts")[0]["n"]
    assert int(receipts) == len(sent)
    daily = wh.select(
        f"SELECT device_id, toString(day) AS day, sum(receipts) AS r,"
        f" sum(offline_receipts) AS o, sum(revenue) AS v FROM {DB}.daily_device"
        " GROUP BY device_id, day"
    )
    got = {(r["device_id"], r["day"]): (int(r["r"]), int(r["o"]), int(r["v"])) for r in daily}
    assert got == _daily(sent)


def test_schema_applies_twice_and_names_the_database(warehouse: Warehouse) -> None:
    from ledger.warehouse.backends import apply_schema  # noqa: PLC0415

    apply_schema(warehouse)  # idempotent: every start runs it
    tables = {r["name"] for r in warehouse.select("SHOW TABLES FROM ofd")}
    assert {
        "documents",
        "receipts",
        "receipt_items",
        "receipt_payments",
        "receipt_taxes",
        "shifts",
        "reports",
        "money_placements",
        "daily_device",
        "daily_tax",
        "daily_trade_point",
        "offline_share",
        "loader_positions",
    } <= tables
    assert all("{db}" not in s for s in schema_statements("other"))
    with pytest.raises(ValueError, match="identifier"):
        schema_statements("x; DROP")


def test_load_decodes_and_collapses_a_resent_document(data_dir: Path, warehouse: Warehouse) -> None:
    sent = _journal(data_dir, 120)
    loader = Loader(warehouse, lambda: local_sources(data_dir / "journal"))
    assert sum(loader.drain()) == 121  # every record read, the resent one included
    _check_exactly_once(warehouse, sent)
    items = warehouse.select(f"SELECT count() AS n, sum(sum) AS s FROM {DB}.receipt_items")[0]
    assert int(items["n"]) == 2 * len(sent)
    payments = warehouse.select(f"SELECT sum(sum) AS s FROM {DB}.receipt_payments")[0]
    assert int(payments["s"]) == sum(abs(d.revenue) for d in sent)
    vat = warehouse.select(f"SELECT sum(tax) AS t FROM {DB}.daily_tax WHERE percent = 1200")[0]
    assert int(vat["t"]) != 0
    # Nothing new: a second pass reads nothing and inserts nothing.
    assert sum(loader.drain()) == 0
    _check_exactly_once(warehouse, sent)
    # A fresh loader (a restart) resumes from the stored position, and the raw frame survived.
    again = Loader(warehouse, lambda: local_sources(data_dir / "journal"))
    assert sum(again.drain()) == 0
    frame = warehouse.select(f"SELECT request_frame FROM {DB}.documents LIMIT 1")[0]
    assert bytes.fromhex(frame["request_frame"])[:2]  # hex of header + body


class Crash(Exception):
    pass


def _crash() -> None:
    raise Crash


def test_replay_fills_a_view_the_crash_cut_off(data_dir: Path, warehouse: Warehouse) -> None:
    """A crash inside the INSERT: `documents` has the batch, two views do not (detached here to
    stand for the cut). The replay adds the views' rows and no document twice."""
    sent = _journal(data_dir, 80)
    for view in ("receipts_mv", "daily_device_mv"):
        warehouse.execute(f"DETACH TABLE {DB}.{view}")
    crashing = Loader(warehouse, lambda: local_sources(data_dir / "journal"), after_insert=_crash)
    with pytest.raises(Crash):
        crashing.step()
    for view in ("receipts_mv", "daily_device_mv"):
        warehouse.execute(f"ATTACH TABLE {DB}.{view}")
    assert int(warehouse.select(f"SELECT count() AS n FROM {DB}.receipts")[0]["n"]) == 0
    load_journals(warehouse, data_dir)
    _check_exactly_once(warehouse, sent)


def _ofd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingest.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_crash_between_insert_and_position_adds_no_duplicate(data_dir: Path) -> None:
    sent = _journal(data_dir, 300)
    # Batches of 100: the loader dies right after its second insert, before storing its position.
    crashed = _ofd(
        "load", "--data-dir", str(data_dir), "--once", "--batch", "100",
        env={CRASH_AFTER_INSERT_ENV: "2"},
    )  # fmt: skip
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
    resumed = _ofd("load", "--data-dir", str(data_dir), "--once", "--batch", "100")
    assert resumed.returncode == 0, resumed.stderr
    wh = open_warehouse(path=warehouse_dir(data_dir))
    try:
        _check_exactly_once(wh, sent)
        # The replayed batch was read again: the position covers the whole journal.
        assert load_journals(wh, data_dir) == 0
    finally:
        wh.close()


def test_service_answers_queries_while_loading_and_survives_sigkill(data_dir: Path) -> None:
    sent = _journal(data_dir, 60)
    service = subprocess.Popen(
        [sys.executable, "-m", "ingest.cli", "load", "--data-dir", str(data_dir), "--batch", "7"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while service_address(data_dir) is None:
            assert service.poll() is None, service.stderr.read() if service.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        count = 0
        while count < len(sent) and time.monotonic() < deadline:
            count = int(
                query(data_dir, {"sql": f"SELECT count() AS n FROM {DB}.documents"})[0]["n"]
            )
        assert count == len(sent)
        # The CLI goes through the service (the directory is held by it).
        out = _ofd("query", "--data-dir", str(data_dir), "--format", "json",
                   f"SELECT count() AS n FROM {DB}.receipts")  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == [{"n": str(len(sent))}] or json.loads(out.stdout) == [
            {"n": len(sent)}
        ]
        host, port = service_address(data_dir) or ("", 0)
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as answer:
            metrics = answer.read().decode()
        assert "ofd_warehouse_freshness_seconds_count" in metrics
        assert f"ofd_warehouse_documents_loaded_total {float(len(sent))}" in metrics
        refused = _ofd("query", "--data-dir", str(data_dir), f"DROP TABLE {DB}.documents")
        assert refused.returncode == 1
        assert "only reading queries" in refused.stderr
        report = _ofd("report", "receipts", "--data-dir", str(data_dir), "--device", "100",
                      "--from", "2026-11-02", "--to", "2026-11-04", "--format", "csv")  # fmt: skip
        assert report.returncode == 0, report.stderr
        lines = report.stdout.splitlines()
        assert lines[0].split(",")[:3] == ["time", "shift", "number"]
        assert any(line.endswith(",А") for line in lines[1:])
    finally:
        service.send_signal(signal.SIGKILL)
        service.wait(10)
    # Killed hard: its announcement is stale and ignored; the directory opens again.
    assert service_address(data_dir) is None
    rows = query(data_dir, {"sql": f"SELECT count() AS n FROM {DB}.documents"})
    assert int(rows[0]["n"]) == len(sent)


def test_readonly_sql_refuses_writes(warehouse: Warehouse) -> None:
    analyst = warehouse.analyst(QueryLimits())
    for sql in (
        f"INSERT INTO {DB}.daily_trade_point VALUES (today(), 1, 1, 1, 0, 1, 1)",
        f"SELECT 1; DROP TABLE {DB}.documents",
        "SELECT 1 SETTINGS readonly = 0",
        "SELECT 1 INTO OUTFILE '/tmp/x'",
        "",
    ):
        with pytest.raises(QueryRefused):
            run_query(analyst, sql)
    assert run_query(analyst, "SELECT ';' AS x;") == [{"x": ";"}]
    # tests/test_query_boundary.py probes the boundary in full.


def test_reports_enforce_their_limits(data_dir: Path, warehouse: Warehouse) -> None:
    sent = _journal(data_dir, 100)
    load_journals(warehouse, data_dir)
    shift = run_report(warehouse, "receipts", {"device": 101, "shift": 2})
    assert shift
    assert {r["shift"] for r in shift} == {2}
    summary = run_report(
        warehouse, "summary", {"devices": [100, 101, 102], "from": "2026-11-02", "to": "2026-11-08"}
    )
    daily = _daily(sent)
    assert {(r["device_id"], r["day"]): int(r["receipts"]) for r in summary} == {
        k: v[0] for k, v in daily.items() if k[1] <= "2026-11-08"
    }
    with pytest.raises(QueryRefused, match="exceeds 7"):
        run_report(
            warehouse, "summary", {"devices": [1, 2], "from": "2026-11-01", "to": "2026-11-08"}
        )
    with pytest.raises(QueryRefused, match="exceeds 31"):
        run_report(warehouse, "summary", {"device": 1, "from": "2026-10-01", "to": "2026-11-08"})
    with pytest.raises(QueryRefused, match="exceed 20"):
        run_report(warehouse, "summary", {"devices": list(range(21)), "from": "2026-11-01"})
    assert run_report(warehouse, "zx", {"device": 100, "from": "2026-11-01"}) == []


def test_identity_check_runs_in_chunks(
    data_dir: Path, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ClickHouse parses at most max_query_size of a SELECT, so big batches are checked in
    chunks; chunked, the loader still loads each document once, and a second pass nothing."""
    import ledger.warehouse.loader as loader_module  # noqa: PLC0415

    monkeypatch.setattr(loader_module, "HELD_CHECK_CHUNK", 7)
    sent = _journal(data_dir, 50)
    load_journals(warehouse, data_dir)
    _check_exactly_once(warehouse, sent)
    # A rewound position (as after a lost Kafka log) re-reads everything: all held, in chunks.
    warehouse.execute(f"TRUNCATE TABLE {DB}.loader_positions")
    warehouse.execute(f"TRUNCATE TABLE {DB}.loader_intents")
    load_journals(warehouse, data_dir)
    _check_exactly_once(warehouse, sent)


class _PartitionAfterRestart:
    """A source like a Kafka partition just assigned to a new loader: the first reads return
    only what has been fetched so far, though the log holds more (its end says so)."""

    name = "kafka:test/0"
    unit = "records"

    def __init__(self, payloads: list[bytes]) -> None:
        self._records = [(number, payload) for number, payload in enumerate(payloads, 1)]
        self.fetched = len(self._records)

    def read(self, position: int, limit: int) -> list[tuple[int, bytes]]:
        return [r for r in self._records if position < r[0] <= self.fetched][:limit]

    def committed(self, position: int) -> None:
        del position

    def end(self) -> int | None:
        return len(self._records)


def test_an_interrupted_batch_is_replayed_whole_never_as_a_shorter_new_one(
    tmp_path: Path,
) -> None:
    """The loader dies after inserting a batch, before storing its position; its successor
    first sees only part of that batch. Loading the part as a new batch would drop the crashed
    insert's documents as already held, so a view the crash cut off would never get them: the
    successor waits for the whole batch and replays it under the same token."""
    payloads = [receipt_record(400, n)[0].payload for n in range(1, 11)]
    source = _PartitionAfterRestart(payloads)
    wh = open_warehouse(path=tmp_path / "wh")
    tokens: list[str] = []
    insert = wh.insert

    def spying(table: str, rows: Any, *, token: str) -> None:
        if table == "documents":
            tokens.append(token)
        insert(table, rows, token=token)

    try:
        wh.insert = spying  # type: ignore[method-assign]

        def crash() -> None:
            raise RuntimeError("loader killed after its insert")

        with pytest.raises(RuntimeError, match="killed"):
            Loader(wh, lambda: [source], after_insert=crash).step()
        successor = Loader(wh, lambda: [source])
        source.fetched = 4  # a new consumer has fetched part of the batch so far
        assert successor.step() == 0
        assert tokens == [tokens[0]]  # nothing inserted as a new, shorter batch
        source.fetched = len(payloads)
        assert successor.step() == len(payloads)
        assert tokens == [tokens[0], tokens[0]]  # the same batch, the same token
        assert read_position(wh, source.name) == len(payloads)
    finally:
        wh.close()
