"""The analyst boundary (issue 11, "Trust", item 1): the attacks found through `ofd query` and
the query endpoint, replayed against a real chDB warehouse started as the product starts it
(`ofd load`), each refused by the engine with a clear error, while loading goes on.

One service serves the whole module (starting chDB takes seconds; the machine is small), with
small limits so that a heavy query is cut quickly. The engine-only test opens a warehouse of its
own in the pytest process: chDB admits one process per directory, not one directory per process.
"""

import http.server
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
from warehouse_journal import receipt_record, write_journal

from ledger.warehouse.backends import QueryLimits, Row, open_warehouse
from ledger.warehouse.reports import QueryRefused, ReportLimits, run_query, run_report
from ledger.warehouse.service import (
    KEY_FILE,
    ServiceSettings,
    _handler,
    _key_hash,
    query,
    service_address,
    warehouse_dir,
)
from ledger.warehouse.service_client import ServiceError, ask_service

pytestmark = pytest.mark.adversity

DB = "ofd"
TIMEOUT = 2.0  # the service's --query-timeout
MAX_MEMORY = 200_000_000
MAX_ROWS = 10_000
LOADED_FIRST = 40
SECRET = "0f" * 32
OPERATOR_KEY = "ofd_operator_key_that_must_not_leak"


@dataclass
class Service:
    data_dir: Path
    process: subprocess.Popen[bytes]
    log: Path
    address: tuple[str, int]
    outside: Path  # files that must not appear, a URL that must not be fetched

    def ask(self, sql: str) -> list[dict[str, object]]:
        return query(self.data_dir, {"sql": sql}, query_limits=QueryLimits(timeout=TIMEOUT))

    def metrics(self) -> str:
        host, port = self.address
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as answer:
            text: str = answer.read().decode()
        return text

    def loaded(self) -> float:
        for line in self.metrics().splitlines():
            if line.startswith("ofd_warehouse_documents_loaded_total "):
                return float(line.split()[1])
        return 0.0


def _ofd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingest.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def _journal(data_dir: Path, gateway: str, first: int, count: int) -> None:
    entries = [receipt_record(100 + n % 3, n)[0] for n in range(first, first + count)]
    write_journal(data_dir / "journal" / gateway, entries)


class _Recorder(http.server.BaseHTTPRequestHandler):
    """An 'internal URL': any request that reaches it is an escape."""

    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"internal")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def internal_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/internal"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("boundary")
    data_dir = root / "data"
    outside = root / "outside"
    outside.mkdir()
    _journal(data_dir, "gw-a", 1, LOADED_FIRST)
    for name, text in (("operator.key", OPERATOR_KEY), ("secret", SECRET)):
        (data_dir / name).write_text(text + "\n")
        (data_dir / name).chmod(0o600)
    log = root / "load.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "ingest.cli", "load", "--data-dir", str(data_dir),
             "--query-timeout", str(TIMEOUT), "--query-max-memory", str(MAX_MEMORY),
             "--query-max-rows", str(MAX_ROWS), "--query-concurrency", "3"],
            stdout=out,  # structlog's lines (ofd load leaves its default: stdout)
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while (address := service_address(data_dir)) is None:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        running = Service(data_dir, process, log, address, outside)
        while running.loaded() < LOADED_FIRST:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def _documents(service: Service) -> int:
    return int(str(service.ask(f"SELECT count() AS n FROM {DB}.documents")[0]["n"]))


def test_analyst_queries_still_work(service: Service) -> None:
    assert _documents(service) >= LOADED_FIRST
    receipts = service.ask(
        f"SELECT device_id, count() AS n FROM {DB}.receipts GROUP BY device_id ORDER BY device_id"
    )
    assert [int(str(r["device_id"])) for r in receipts] == [100, 101, 102]
    daily = service.ask(f"SELECT sum(receipts) AS n FROM {DB}.daily_device")
    assert int(str(daily[0]["n"])) >= LOADED_FIRST
    assert {"documents", "receipts"} <= {
        str(r["name"]) for r in service.ask("SHOW TABLES FROM ofd")
    }
    assert service.ask(f"EXISTS TABLE {DB}.receipts") == [{"result": 1}]
    assert service.ask(f"DESCRIBE TABLE {DB}.receipts")
    assert service.ask("EXPLAIN SELECT 1")
    assert service.ask("WITH t AS (SELECT 1 AS x) SELECT x FROM t UNION ALL SELECT 2") in (
        [{"x": 1}, {"x": 2}],
        [{"x": 2}, {"x": 1}],
    )
    assert service.ask("SELECT ';' AS x; -- a comment with a quote ' in it") == [{"x": ";"}]
    # Through the command line too: `ofd query` presents the key from DATA_DIR/analyst.key.
    out = _ofd("query", "--data-dir", str(service.data_dir), "--format", "json",
               f"SELECT count() AS n FROM {DB}.receipts WHERE device_id = 100")  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = _ofd("report", "summary", "--data-dir", str(service.data_dir), "--device", "100",
                  "--from", "2026-11-02", "--format", "json")  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)


def test_a_trailing_comment_lifts_nothing(service: Service) -> None:
    """The settings are the session's, not SQL text appended after the query: a `--` at its end
    comments out nothing but itself."""
    for tail in (" --", "--", " -- x", "\n--", " /* */", " -- ' ;", " /* ; */"):
        sql = "SELECT getSetting('readonly') AS r, getSetting('max_execution_time') AS t" + tail
        assert service.ask(sql) == [{"r": 1, "t": TIMEOUT}], tail
    with pytest.raises(ServiceError, match="Timeout exceeded"):
        service.ask("SELECT count() FROM numbers(1000000000000) --")


def _probes(service: Service, url: str) -> list[tuple[str, str]]:
    dd, out = service.data_dir, service.outside
    return [
        # Files of the data directory, through the table function and the scalar one.
        (f"SELECT * FROM file('{dd}/operator.key', 'RawBLOB')", "function file() is not allowed"),
        (f"SELECT file('{dd}/secret') AS s", "function file() is not allowed"),
        (f"SELECT 1 IN file('{dd}/operator.key', 'x')", "function file() is not allowed"),
        (f"SELECT * FROM `file`('{dd}/secret', 'RawBLOB') --", "function file() is not allowed"),
        (f"DESCRIBE TABLE file('{dd}/secret', 'RawBLOB')", "function file() is not allowed"),
        # Internal URLs and other reaches outside.
        (f"SELECT * FROM url('{url}', 'RawBLOB')", "function url() is not allowed"),
        (f"SELECT * FROM URL('{url}', 'RawBLOB')", "function URL() is not allowed"),
        (f"SELECT * FROM s3('{url}/b/k', 'RawBLOB')", "function s3() is not allowed"),
        ("SELECT * FROM remote('127.0.0.1:9000', system.one)", "function remote() is not allowed"),
        (f"SELECT * FROM sqlite('{out}/made.db', 't')", "function sqlite() is not allowed"),
        ("SELECT * FROM executable('x.sh', 'TSV', 'x String')", "function executable() is not"),
        ("SELECT * FROM input('x String')", "function input() is not allowed"),
        ("SELECT * FROM python(settings)", "function python() is not allowed"),
        (f"SELECT * FROM numbers(1) JOIN url('{url}', 'RawBLOB') ON 1", "function url() is not"),
        # Writing a file.
        (f"SELECT 1 INTO OUTFILE '{out}/out1'", "INTO OUTFILE is not allowed"),
        (f"SELECT 1 INTO  OUTFILE '{out}/out2'", "INTO OUTFILE is not allowed"),
        (f"SELECT 1 into\toutfile '{out}/out3' AND STDOUT", "INTO OUTFILE is not allowed"),
        (f"EXPLAIN SELECT 1 INTO OUTFILE '{out}/out4'", "INTO OUTFILE is not allowed"),
        (f"INSERT INTO FUNCTION file('{out}/out5', 'CSV') SELECT 1", "got InsertQuery"),
        # Several statements, the second hidden behind a quote in a comment.
        (f"SELECT 1 /* ' */; DROP TABLE {DB}.documents", "Multi-statements are not allowed"),
        (f"SELECT 1 -- '\n; DROP TABLE {DB}.documents", "Multi-statements are not allowed"),
        (f"SELECT ';' /* ' */ ; CREATE TABLE {DB}.x (a UInt8) ENGINE = Memory", "Multi-state"),
        ("SELECT 1; SELECT 2", "Multi-statements are not allowed"),
        # Writes, DDL, and what readonly=1 alone lets through in chDB.
        (f"CREATE TABLE {DB}.x (a UInt8) ENGINE = Memory", "got CreateQuery"),
        (f"DROP TABLE {DB}.documents", "got DropQuery"),
        (f"TRUNCATE TABLE {DB}.documents", "got TruncateQuery"),
        (f"INSERT INTO {DB}.loader_positions VALUES ('x', 0)", "got InsertQuery"),
        (f"ALTER TABLE {DB}.documents DELETE WHERE 1", "got AlterQuery"),
        (f"OPTIMIZE TABLE {DB}.documents FINAL", "got OptimizeQuery"),
        ("KILL QUERY WHERE 1", "got KillQueryQuery"),
        ("SYSTEM STOP MERGES", "got SYSTEM"),
        ("EXPLAIN AST KILL QUERY WHERE 1", "EXPLAIN explains a SELECT only"),
        # Lifting the limits.
        ("SET readonly = 0", "got Set"),
        ("SET max_execution_time = 0", "got Set"),
        ("SELECT 1 SETTINGS readonly = 0", "Cannot modify 'readonly' setting in readonly mode"),
        ("SELECT 1 SETTINGS max_execution_time = 0", "Cannot modify 'max_execution_time'"),
        ("SELECT * FROM (SELECT 1 SETTINGS readonly = 0)", "SETTINGS is not allowed"),
        ("SELECT 1 FORMAT TabSeparated", "FORMAT is not allowed"),
    ]


def test_each_probe_is_refused_with_a_clear_error(service: Service, internal_url: str) -> None:
    before = _documents(service)
    wrong = []
    for sql, expected in _probes(service, internal_url):
        try:
            rows = service.ask(sql)
        except ServiceError as err:
            answer = str(err)
        else:
            answer = f"ran: {rows}"
        if expected not in answer:
            wrong.append((sql, answer))
        # No secret in any answer, not even in an error message.
        assert OPERATOR_KEY not in answer
        assert SECRET not in answer
    assert wrong == []
    assert list(service.outside.iterdir()) == []  # no OUTFILE, no sqlite file
    assert _Recorder.hits == []  # no URL fetched
    assert _documents(service) >= before  # the table is still there
    assert {"documents", "loader_positions"} <= {
        str(r["name"]) for r in service.ask("SHOW TABLES FROM ofd")
    }


def test_heavy_queries_are_cut_and_loading_goes_on(service: Service) -> None:
    errors: list[str] = []
    started = time.monotonic()

    def heavy() -> None:
        try:
            service.ask("SELECT count() FROM numbers(1000000000000)")
        except ServiceError as err:
            errors.append(str(err))

    thread = threading.Thread(target=heavy)
    thread.start()
    time.sleep(0.2)
    # While the query runs, a gateway journals more documents: the loader takes them at once.
    loaded = service.loaded()
    _journal(service.data_dir, "gw-b", 1000, 30)
    while service.loaded() < loaded + 30:
        assert time.monotonic() - started < TIMEOUT + 30
        time.sleep(0.05)
    loaded_after = time.monotonic() - started
    thread.join(30)
    took = time.monotonic() - started
    assert len(errors) == 1
    assert "Timeout exceeded" in errors[0]
    assert TIMEOUT <= took < TIMEOUT + 10
    assert loaded_after < took  # loaded while the query was still running
    with pytest.raises(ServiceError, match="memory limit exceeded"):
        service.ask("SELECT length(groupArray(number)) FROM numbers(100000000)")
    with pytest.raises(ServiceError, match="Limit for result exceeded"):
        service.ask(f"SELECT number FROM numbers({MAX_ROWS * 10})")
    assert _documents(service) >= LOADED_FIRST + 30


def _post(service: Service, headers: dict[str, str]) -> int:
    host, port = service.address
    request = urllib.request.Request(
        f"http://{host}:{port}/query",
        data=json.dumps({"sql": "SELECT 1"}).encode(),
        headers={"Content-Type": "application/json", **headers},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            return int(answer.status)
    except urllib.error.HTTPError as err:
        return err.code


def _unauthorized(service: Service) -> float:
    for line in service.metrics().splitlines():
        if line.startswith('ofd_warehouse_queries_total{outcome="unauthorized"}'):
            return float(line.split()[1])
    return 0.0


def test_a_caller_without_the_analyst_key_gets_401(service: Service) -> None:
    key_file = service.data_dir / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    counted = _unauthorized(service)
    assert _post(service, {}) == 401
    assert _post(service, {"Authorization": "Bearer ofd_analyst_wrong"}) == 401
    assert _post(service, {"Authorization": key}) == 401  # not a bearer
    assert _post(service, {"Authorization": f"Bearer {key}"}) == 200
    assert _unauthorized(service) == counted + 3
    assert "warehouse_query_unauthorized" in service.log.read_text()
    assert key not in service.log.read_text()
    refused = _ofd("query", "--data-dir", str(service.data_dir), "SELECT 1",
                   env={"OFD_ANALYST_KEY": "ofd_analyst_wrong"})  # fmt: skip
    assert refused.returncode == 1
    assert "analyst key is missing or wrong" in refused.stderr


def test_the_service_binds_loopback_only(tmp_path: Path) -> None:
    for host in ("0.0.0.0", "192.0.2.1", "example.org"):
        with pytest.raises(ValueError, match="loopback only"):
            ServiceSettings(data_dir=tmp_path, host=host)
    assert ServiceSettings(data_dir=tmp_path, host="::1").host == "::1"


def test_the_engine_refuses_without_the_parser_check(tmp_path: Path) -> None:
    """The session's settings hold on their own: statements sent straight to the analyst's
    session, past run_query's parse, are refused by chDB itself."""
    (tmp_path / "secret").write_text(SECRET)
    warehouse = open_warehouse(path=warehouse_dir(tmp_path))
    analyst = warehouse.analyst(QueryLimits(timeout=1.0, max_rows=10))
    try:
        for sql in (
            f"SELECT * FROM file('{tmp_path}/secret', 'RawBLOB')",
            "SELECT * FROM url('http://127.0.0.1:9/', 'RawBLOB')",
            f"INSERT INTO FUNCTION file('{tmp_path}/out', 'CSV') SELECT 1",
            f"CREATE TABLE {DB}.x (a UInt8) ENGINE = Memory",
            f"DROP TABLE {DB}.documents",
            "SET readonly = 0",
            "SELECT 1 SETTINGS max_execution_time = 100",
        ):
            with pytest.raises(Exception, match="readonly mode"):
                analyst.select(sql)
        with pytest.raises(Exception, match="Timeout exceeded"):
            analyst.select("SELECT count() FROM numbers(1000000000000)")
        with pytest.raises(Exception, match="Limit for result exceeded"):
            analyst.select("SELECT number FROM numbers(100)")
        assert not (tmp_path / "out").exists()
        # The loader's connection is not the analyst's: it still writes.
        warehouse.execute(f"INSERT INTO {DB}.loader_positions (source, position) VALUES ('t', 1)")
        # Reports run through the same restricted reader.
        assert run_report(analyst, "zx", {"device": 1, "from": "2026-11-01"}) == []
        with pytest.raises(QueryRefused, match="got DropQuery"):
            run_query(analyst, f"DROP TABLE {DB}.documents")
    finally:
        analyst.close()
        warehouse.close()


class _StuckAnalyst:
    """An analyst whose queries hang until released: the cap, without chDB's timing."""

    database = DB

    def __init__(self, limits: QueryLimits) -> None:
        self.limits = limits
        self.release = threading.Event()

    def select(self, sql: str, params: object = None, *, answer_limits: bool = True) -> list[Row]:
        self.release.wait(30)
        return [{"statement": "SELECT 1", "explain": "SelectWithUnionQuery", "name": "x"}]

    def stream(self, sql: str, fmt: str) -> Iterator[bytes]:
        self.release.wait(30)
        yield b""

    def close(self) -> None:
        pass


def test_queries_past_the_concurrency_cap_get_503() -> None:
    analyst = _StuckAnalyst(QueryLimits(timeout=0.5, concurrency=1))
    handler = _handler(analyst, ReportLimits(), _key_hash("k"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = ("127.0.0.1", server.server_address[1])
    first: list[object] = []
    try:
        holder = threading.Thread(
            target=lambda: first.append(ask_service(address, "/query", {"sql": "x"}, key="k"))
        )
        holder.start()
        time.sleep(0.2)
        with pytest.raises(ServiceError, match="1 queries running"):
            ask_service(address, "/query", {"sql": "x"}, key="k", timeout=0.5)
        analyst.release.set()
        holder.join(10)
        assert first  # the one holding the slot was answered
    finally:
        analyst.release.set()
        server.shutdown()
        server.server_close()
