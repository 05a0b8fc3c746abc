"""The same schema and loader through the server code path (ServerWarehouse: clickhouse-connect).

Against CLICKHOUSE_URL when it is set (e.g. http://default:@127.0.0.1:8123); else against
clickhouse-connect's `chdb://` DSN on a directory of the test's own, so that the server path runs
in every test run: no current ClickHouse server can be installed from the registries these
machines reach (Debian's is too old for clickhouse-connect). Each run uses a database of its own,
dropped afterwards.
"""

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from warehouse_journal import receipt_record, write_journal

from ledger.warehouse.backends import QueryLimits, ServerWarehouse, Warehouse, open_warehouse
from ledger.warehouse.loader import Loader, local_sources
from ledger.warehouse.reports import QueryRefused, run_query, run_report

URL = os.environ.get("CLICKHOUSE_URL", "")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Warehouse]:
    database = f"ofd_test_{uuid.uuid4().hex[:10]}"
    warehouse = open_warehouse(url=URL or f"chdb://{tmp_path / 'clickhouse'}", database=database)
    try:
        yield warehouse
    finally:
        warehouse.execute(f"DROP DATABASE IF EXISTS {database}")
        warehouse.close()


def test_server_loads_exactly_once(server: Warehouse, tmp_path: Path) -> None:
    assert isinstance(server, ServerWarehouse)
    records = [receipt_record(300 + n % 2, n, offline=n % 4 == 0) for n in range(1, 50)]
    entries = [entry for entry, _ in records]
    write_journal(tmp_path / "journal" / "gw", [*entries, entries[0]])
    loader = Loader(server, lambda: local_sources(tmp_path / "journal"))
    assert sum(loader.drain()) == len(entries) + 1
    db = server.database
    rows = server.select(f"SELECT count() AS n FROM {db}.documents")
    assert int(rows[0]["n"]) == len(records)
    daily = server.select(f"SELECT sum(receipts) AS n, sum(revenue) AS r FROM {db}.daily_device")
    assert int(daily[0]["n"]) == len(records)
    assert int(daily[0]["r"]) == sum(sent.revenue for _, sent in records)
    again = Loader(server, lambda: local_sources(tmp_path / "journal"))
    assert sum(again.drain()) == 0
    summary = run_report(server, "summary", {"devices": [300, 301], "from": "2026-11-02"})
    assert summary


@pytest.mark.skipif(
    not URL,
    reason="needs a real server: through the chdb:// DSN clickhouse-connect sends settings as SQL"
    " text, which the parse-side rules refuse; chDB's own boundary is tests/test_query_boundary.py",
)
def test_server_analyst_runs_under_the_same_settings(server: Warehouse) -> None:
    """The settings travel as the request's settings (clickhouse-connect `settings=`); the
    parse-side rules are the same code as on chDB (tests/test_query_boundary.py)."""
    analyst = server.analyst(QueryLimits(timeout=1.0, max_rows=10))
    try:
        rows = run_query(analyst, "SELECT getSetting('readonly') AS r --")
        assert int(rows[0]["r"]) == 1
        with pytest.raises(Exception, match="TIMEOUT_EXCEEDED"):
            run_query(analyst, "SELECT count() FROM numbers(1000000000000)")
        with pytest.raises(Exception, match="TOO_MANY_ROWS"):
            run_query(analyst, "SELECT number FROM numbers(100)")
        for sql in (
            "SELECT file('/etc/hostname')",
            f"DROP TABLE {server.database}.documents",
            "SELECT 1 SETTINGS readonly = 0",
            "SELECT 1; SELECT 2",
        ):
            with pytest.raises(QueryRefused):
                run_query(analyst, sql)
        with pytest.raises(Exception, match="READONLY"):
            analyst.select("SELECT * FROM url('http://127.0.0.1:9/', 'RawBLOB')")
    finally:
        analyst.close()
