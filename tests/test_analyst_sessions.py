"""Analysts' chDB sessions are reused (backends.ChdbAnalyst): a reused session still refuses
writes and setting changes, its limits still cut a query, a failed query's session is never
reused, an analyst's USE (which readonly=1 allows) never reaches one, and the warehouse closes
them all."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger.warehouse.backends import ChdbAnalyst, ChdbWarehouse, QueryLimits, apply_schema
from ledger.warehouse.reports import QueryRefused, run_query

DB = "ofd"
MAX_ROWS = 10


class CountedSessions:
    """chdb.session as the analyst uses it, counting the sessions opened and closed."""

    def __init__(self, module: Any) -> None:
        self._module = module
        self.opened = 0
        self.closed = 0

    def Session(self, connection: str) -> Any:  # noqa: N802 (chdb.session's name)
        self.opened += 1
        return _Counted(self, self._module.Session(connection))


class _Counted:
    def __init__(self, counts: CountedSessions, session: Any) -> None:
        self._counts = counts
        self._session = session

    def query(self, *args: Any, **kwargs: Any) -> Any:
        return self._session.query(*args, **kwargs)

    def close(self) -> None:
        self._counts.closed += 1
        self._session.close()


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[ChdbWarehouse]:
    opened = ChdbWarehouse(tmp_path / "warehouse")
    try:
        apply_schema(opened)
        yield opened
    finally:
        opened.close()


def _counted(warehouse: ChdbWarehouse, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    analyst = warehouse.analyst(QueryLimits(max_rows=MAX_ROWS, concurrency=1))
    assert isinstance(analyst, ChdbAnalyst)
    counts = CountedSessions(analyst._session_module)
    monkeypatch.setattr(analyst, "_session_module", counts)
    return analyst, counts


def test_a_reused_session_still_refuses_writes_and_setting_changes(
    warehouse: ChdbWarehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    analyst, counts = _counted(warehouse, monkeypatch)
    refused = [
        f"INSERT INTO {DB}.receipt_checks (check_key, receipt) VALUES ('k', '{{}}')",
        f"DROP TABLE {DB}.receipt_checks",
        "SET readonly = 0",
        f"SET max_result_rows = {MAX_ROWS * 10}",
        "SELECT 1 SETTINGS readonly = 0",
        "CREATE TEMPORARY TABLE t (x UInt8)",
    ]
    for sql in refused:
        assert analyst.select("SELECT 1 AS one") == [{"one": 1}]  # leaves its session kept
        with pytest.raises(Exception, match="READONLY"):
            analyst.select(sql)  # on the kept session
    assert counts.opened == len(refused)  # each session served two queries, then failed
    assert counts.closed == len(refused)  # ... and was closed, not kept
    analyst.select("SELECT 1 AS one")
    settings = analyst.select(
        "SELECT getSetting('readonly') AS readonly, getSetting('max_result_rows') AS max_rows"
    )
    assert settings == [{"readonly": 1, "max_rows": MAX_ROWS}]
    with pytest.raises(Exception, match="TOO_MANY_ROWS"):
        analyst.select(f"SELECT number FROM numbers({MAX_ROWS * 2})")  # on the kept session
    assert counts.opened == len(refused) + 1
    assert int(warehouse.select(f"SELECT count() AS n FROM {DB}.receipt_checks")[0]["n"]) == 0


def test_a_failed_querys_session_leaves_nothing_for_the_next(
    warehouse: ChdbWarehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    analyst, counts = _counted(warehouse, monkeypatch)
    assert analyst.select("SELECT 1 AS one") == [{"one": 1}]
    with pytest.raises(Exception, match="throwIf"):
        analyst.select("SELECT 1 AS one; SELECT throwIf(1)")
    # chDB hands a failed multi-statement's first answer out with its session's next one.
    assert analyst.select("SELECT 2 AS two") == [{"two": 2}]
    assert (counts.opened, counts.closed) == (2, 1)


def test_an_analysts_use_never_reaches_a_kept_session(
    warehouse: ChdbWarehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    analyst, counts = _counted(warehouse, monkeypatch)
    with pytest.raises(QueryRefused, match="only reading queries"):
        run_query(analyst, "USE system")
    assert run_query(analyst, "SELECT currentDatabase() AS db") == [{"db": "default"}]
    # The parser's checks in one kept session (no answer limits), the queries in another.
    assert counts.opened == 2


def test_the_warehouse_closes_its_analysts_sessions(tmp_path: Path) -> None:
    warehouse = ChdbWarehouse(tmp_path / "warehouse")
    analyst = warehouse.analyst(QueryLimits())
    assert isinstance(analyst, ChdbAnalyst)
    counts = CountedSessions(analyst._session_module)
    analyst._session_module = counts
    analyst.select("SELECT 1 AS one")
    analyst.select("SELECT 1 AS one", answer_limits=False)
    assert (counts.opened, counts.closed) == (2, 0)  # one kept for each set of settings
    warehouse.close()
    assert counts.closed == 2


def test_key_reads_take_one_engine_thread_under_the_same_limits(warehouse: ChdbWarehouse) -> None:
    analyst = warehouse.analyst(QueryLimits(max_rows=MAX_ROWS, threads=1))
    settings = analyst.select(
        "SELECT getSetting('max_threads') AS threads, getSetting('readonly') AS readonly,"
        " getSetting('max_result_rows') AS max_rows"
    )
    assert settings == [{"threads": 1, "readonly": 1, "max_rows": MAX_ROWS}]
