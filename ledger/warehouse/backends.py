"""The two ways to reach the warehouse, behind one small interface: chDB in-process, or a server.

chDB allows one process per data directory (a second cannot open it, not even read-only), so the
embedded backend is opened by the one process that owns the directory (the loader service) and
everyone else asks that process. A ClickHouse server is reached with clickhouse-connect and the
same SQL. Both are synchronous: callers on an event loop run them in a worker thread.

Analysts read through `Warehouse.analyst(limits)`, never through the loader's connection: a
session of its own whose restrictions the engine enforces (QueryLimits.settings), so that a query
can neither write, nor lift its limits, nor hold the loader's lock.
"""

import contextlib
import fcntl
import importlib
import json
import logging
import os
import re
import threading
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from ledger.errors import OfdError

DEFAULT_DATABASE = "ofd"
SCHEMA_RESOURCE = "schema.sql"
# Statements of schema.sql are separated by a line holding only ';' (SQL bodies contain ';'-free
# text, but splitting on a line of its own keeps that assumption out of the parser).
STATEMENT_SEPARATOR = "\n;\n"

# Views added to the schema after warehouses already held documents. A view sees only what is
# inserted after it exists, so apply_schema fills its table from `documents` with the view's own
# SELECT whenever the table is empty (before the loader starts: nothing is inserted meanwhile). A
# fill cut short by a crash leaves the table part-filled and is not redone: TRUNCATE the table and
# the next start fills it again.
BACKFILLED_VIEWS = ("receipt_checks_mv",)
_VIEW = re.compile(
    r"^CREATE MATERIALIZED VIEW IF NOT EXISTS (?P<view>[\w.]+) TO (?P<table>[\w.]+) AS\s+"
    r"(?P<select>.*)$",
    flags=re.DOTALL,
)

Row = dict[str, Any]
GIB = 1 << 30
MIB = 1 << 20
STREAM_CHUNK = 1 << 20  # bytes read at a time from a server's streamed answer
_ERRNO = re.compile(r"\[Errno -?\d+\] [^\"')]+")


class WarehouseHeld(OfdError):
    """Another process has the chDB directory open (chDB admits one process per directory)."""

    def __init__(self, path: Path, pid: int | None) -> None:
        holder = "another process" if pid is None else f"process {pid}"
        super().__init__(f"the warehouse {path} is held by {holder}")
        self.path = path
        self.pid = pid


class WarehouseUnreachable(OfdError):
    """The ClickHouse server of --clickhouse-url does not answer."""


# chDB directories this process holds: resolved path -> (fd of the lock file, opens). One
# process may open a directory more than once (tests do); another process may not at all.
_held: dict[Path, tuple[int, int]] = {}
_held_lock = threading.Lock()


def _hold(path: Path) -> None:
    """An flock on <path>.lock with this pid in it, before chDB opens the directory: a second
    process learns who holds it, instead of chDB's BAD_ARGUMENTS."""
    key = path.resolve()
    with _held_lock:
        if key in _held:
            fd, opens = _held[key]
            _held[key] = (fd, opens + 1)
            return
        fd = os.open(key.parent / f"{key.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise WarehouseHeld(path, int(text) if text.isdigit() else None) from err
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held[key] = (fd, 1)


def _release(path: Path) -> None:
    key = path.resolve()
    with _held_lock:
        fd, opens = _held.pop(key, (-1, 0))
        if opens > 1:
            _held[key] = (fd, opens - 1)
        elif fd >= 0:
            os.close(fd)  # the flock goes with it


def redacted(url: str) -> str:
    """A URL without the password it may carry."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True, slots=True)
class QueryLimits:
    """What one analyst query may take. `ofd load` and `ofd query` take them as options."""

    timeout: float = 30.0  # seconds (max_execution_time): a query is cut, not waited for
    max_memory: int = GIB  # bytes (max_memory_usage) per query
    max_rows: int = 100_000  # rows in the answer (max_result_rows); more is an error, not a cut
    max_bytes: int = 64 * MIB  # bytes in the answer (max_result_bytes), uncompressed
    concurrency: int = 2  # queries at once through the service; the others wait, then get 503
    threads: int = 0  # engine threads per query (max_threads); 0: the engine's own (the cores)

    def __post_init__(self) -> None:
        if self.timeout <= 0 or min(self.max_memory, self.max_rows, self.max_bytes) <= 0:
            raise ValueError("query limits must be positive")
        if self.concurrency < 1:
            raise ValueError("query concurrency must be at least 1")
        if self.threads < 0:
            raise ValueError("query threads cannot be negative")

    def settings(self, *, answer_limits: bool = True) -> dict[str, str]:
        """The ClickHouse settings an analyst's session starts with (chDB: connection arguments;
        a server: the request's settings), never SQL text the query could cut off.

        readonly=1 is the keystone: the engine then refuses writes and DDL, every table function
        that reaches a file, a URL, another server or a process (they need CREATE TEMPORARY
        TABLE, which readonly=1 denies), and any change of a setting (SET, a SETTINGS clause,
        readonly itself), so the limits below cannot be lifted by the query they limit.
        `answer_limits=False` is for the engine's own parse of a query (reports.run_query):
        an AST dump of a long query may have more lines than the answer may have rows."""
        settings = {
            "readonly": "1",
            "max_execution_time": f"{self.timeout:g}",
            "timeout_overflow_mode": "throw",
            "max_memory_usage": str(self.max_memory),
            "allow_ddl": "0",  # readonly=1 already forbids DDL; this names the rule
            "allow_introspection_functions": "0",
        }
        if self.threads:
            settings["max_threads"] = str(self.threads)
        if answer_limits:
            settings |= {
                "max_result_rows": str(self.max_rows),
                "max_result_bytes": str(self.max_bytes),
                "result_overflow_mode": "throw",
            }
        return settings


class Reader(Protocol):
    """What reports need: the database's name and a query."""

    database: str

    def select(self, sql: str) -> list[Row]: ...


class Analyst(Protocol):
    """An analyst's restricted reader (Warehouse.analyst)."""

    database: str
    limits: QueryLimits

    def select(
        self, sql: str, params: Mapping[str, str] | None = None, *, answer_limits: bool = True
    ) -> list[Row]:
        """Runs one statement under `limits`; `params` fill `{name:String}` placeholders."""

    def stream(self, sql: str, fmt: str) -> Iterator[bytes]:
        """One statement's answer in ClickHouse format `fmt`, chunk by chunk, under `limits`
        but for the answer's size (an export has no row cap; time and memory still count)."""

    def close(self) -> None: ...


class Warehouse(Protocol):
    database: str

    def execute(self, sql: str) -> None:
        """Runs a statement that returns nothing (DDL, INSERT with inline data)."""

    def select(self, sql: str) -> list[Row]:
        """Runs a query; rows as dicts by column name."""

    def insert(self, table: str, rows: Sequence[Row], *, token: str) -> None:
        """Inserts the rows in one INSERT; a retry with the same token is dropped by ClickHouse."""

    def analyst(self, limits: QueryLimits) -> Analyst:
        """A reader for analysts' queries, apart from this connection (see QueryLimits)."""

    def close(self) -> None: ...


def schema_statements(database: str) -> list[str]:
    if not database.isidentifier():
        raise ValueError(f"warehouse database name {database!r} is not an identifier")
    text = resources.files(__package__).joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    body = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
    return [
        s.strip().replace("{db}", database) for s in body.split(STATEMENT_SEPARATOR) if s.strip()
    ]


def apply_schema(warehouse: Warehouse) -> None:
    """Creates every table and view that is missing, and fills a backfilled view's empty table
    from what `documents` already holds; safe to run on every start."""
    statements = schema_statements(warehouse.database)
    for statement in statements:
        warehouse.execute(statement)
    for statement in statements:
        view = _VIEW.match(statement)
        if view is None or view["view"].rpartition(".")[2] not in BACKFILLED_VIEWS:
            continue
        found = warehouse.select(f"SELECT count() AS n FROM {view['table']}")
        if not int(found[0]["n"]):
            warehouse.execute(f"INSERT INTO {view['table']} {view['select']}")


def _insert_sql(database: str, table: str, rows: Sequence[Row], token: str) -> str:
    if "'" in token or "\\" in token:
        raise ValueError(f"insert token {token!r} must not hold quotes")
    data = "\n".join(json.dumps(row, ensure_ascii=False, separators=(",", ":")) for row in rows)
    return (
        f"INSERT INTO {database}.{table} SETTINGS insert_deduplication_token = '{token}',"
        " deduplicate_blocks_in_dependent_materialized_views = 1"
        f" FORMAT JSONEachRow\n{data}"
    )


class ChdbWarehouse:
    """chDB in `path`: this process must be the only one using the directory."""

    def __init__(self, path: Path, database: str = DEFAULT_DATABASE) -> None:
        # chdb's annotations are partial; it is imported where used (a heavy import) and typed
        # as Any here, at the one place it is called.
        session_module: Any = importlib.import_module("chdb.session")
        path.mkdir(parents=True, exist_ok=True)
        self.database = database
        self._path = path
        _hold(path)
        try:
            self._session: Any = session_module.Session(str(path))
        except BaseException:
            _release(path)
            raise
        # The session is shared by the loader thread and the query endpoint's threads.
        self._lock = threading.Lock()
        self._analysts: list[ChdbAnalyst] = []  # closed with the warehouse: they keep sessions

    def execute(self, sql: str) -> None:
        with self._lock:
            self._session.query(sql)

    def select(self, sql: str) -> list[Row]:
        with self._lock:
            result = self._session.query(sql, "JSONEachRow")
        data: bytes = result.bytes()
        return [json.loads(line) for line in data.splitlines() if line]

    def insert(self, table: str, rows: Sequence[Row], *, token: str) -> None:
        if rows:
            self.execute(_insert_sql(self.database, table, rows, token))

    def analyst(self, limits: QueryLimits) -> Analyst:
        analyst = ChdbAnalyst(self._path, self.database, limits)
        with self._lock:
            self._analysts.append(analyst)
        return analyst

    def close(self) -> None:
        with self._lock:
            for analyst in self._analysts:
                analyst.close()
            self._session.close()
        _release(self._path)


def _escaped(value: str) -> str:
    """A query parameter as chDB reads it: in ClickHouse's escaped (TSV) text form."""
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


class ChdbAnalyst:
    """Analysts' queries on the chDB directory the loader holds, in sessions of their own.

    chDB lets one process open several sessions on its directory, and a session's connection
    arguments are its startup settings: readonly=1 and the limits are set before the first
    query and cannot be changed by one (readonly=1 forbids changing any setting, creating even
    a temporary table, and every write). Sessions run in parallel with the loader's (no shared
    lock: a slow query does not stall loading) and see what it inserts as it commits.

    A session is reused (opening one costs about as much as the public check's point read):
    up to `limits.concurrency` idle ones are kept for each set of settings. What a query could
    leave in a session for the next is thus refused: settings, tables and writes by readonly=1;
    the current database (USE, which readonly=1 allows) by reports.analyst_statement, which
    runs reading statements only, while named reports name their tables in full. A session
    whose query failed is closed, never reused: chDB returned a failed multi-statement's
    partial output with that session's next answer."""

    def __init__(self, path: Path, database: str, limits: QueryLimits) -> None:
        if "?" in str(path) or "&" in str(path):
            raise ValueError(f"a chDB path cannot hold '?' or '&': {path}")
        self.database = database
        self.limits = limits
        self._session_module: Any = importlib.import_module("chdb.session")
        self._path = path
        # answer_limits -> idle sessions opened with those settings
        self._idle: dict[bool, list[Any]] = {True: [], False: []}
        self._idle_lock = threading.Lock()
        self._closed = False

    def _connection(self, answer_limits: bool) -> str:
        settings = self.limits.settings(answer_limits=answer_limits)
        return f"{self._path}?" + "&".join(f"{k}={v}" for k, v in settings.items())

    @contextlib.contextmanager
    def _session(self, answer_limits: bool) -> Iterator[Any]:
        """An idle session with these settings, or a new one; kept again after a clean query."""
        with self._idle_lock:
            idle = self._idle[answer_limits]
            session = idle.pop() if idle else None
        if session is None:
            session = self._session_module.Session(self._connection(answer_limits))
        try:
            yield session
        except BaseException:
            session.close()
            raise
        with self._idle_lock:
            kept = not self._closed and len(idle) < self.limits.concurrency
            if kept:
                idle.append(session)
        if not kept:
            session.close()

    def select(
        self, sql: str, params: Mapping[str, str] | None = None, *, answer_limits: bool = True
    ) -> list[Row]:
        bound = {name: _escaped(value) for name, value in (params or {}).items()}
        with self._session(answer_limits) as session:
            data: bytes = session.query(sql, "JSONEachRow", params=bound).bytes()
        return [json.loads(line) for line in data.splitlines() if line]

    def stream(self, sql: str, fmt: str) -> Iterator[bytes]:
        # A session of its own: an export is long, and may be cut off mid-answer.
        session = self._session_module.Session(self._connection(answer_limits=False))
        try:
            for chunk in session.send_query(sql, fmt):
                data: bytes = chunk.bytes()
                if data:
                    yield data
        finally:
            session.close()

    def close(self) -> None:
        """Closes the idle sessions; one in use is closed when its query ends."""
        with self._idle_lock:
            self._closed = True
            sessions = [s for idle in self._idle.values() for s in idle]
            for idle in self._idle.values():
                idle.clear()
        for session in sessions:
            session.close()


class ServerWarehouse:
    """A ClickHouse server over HTTP (clickhouse-connect), e.g. CLICKHOUSE_URL=http://h:8123."""

    def __init__(self, url: str, database: str = DEFAULT_DATABASE) -> None:
        import clickhouse_connect  # noqa: PLC0415

        self.database = database
        self._url = url
        # Its logger would print a line of its own ("Unexpected Http Driver Exception") beside
        # the one error the caller reports.
        quiet = logging.getLogger("clickhouse_connect")
        level, quiet.level = quiet.level, logging.CRITICAL
        try:
            self._client = clickhouse_connect.get_client(dsn=url)
        except clickhouse_connect.driver.exceptions.Error as err:
            found = _ERRNO.search(str(err))
            reason = found[0].strip() if found else str(err).splitlines()[0]
            raise WarehouseUnreachable(
                f"cannot reach ClickHouse at {redacted(url)} ({reason}): check --clickhouse-url"
                " (CLICKHOUSE_URL) and that the server is up"
            ) from err
        finally:
            quiet.setLevel(level)
        self._lock = threading.Lock()

    def execute(self, sql: str) -> None:
        with self._lock:
            self._client.command(sql)

    def select(self, sql: str) -> list[Row]:
        with self._lock:
            result = self._client.query(sql)
        names = result.column_names
        return [dict(zip(names, row, strict=True)) for row in result.result_rows]

    def insert(self, table: str, rows: Sequence[Row], *, token: str) -> None:
        if rows:
            self.execute(_insert_sql(self.database, table, rows, token))

    def analyst(self, limits: QueryLimits) -> Analyst:
        return ServerAnalyst(self._url, self.database, limits)

    def close(self) -> None:
        with self._lock:
            self._client.close()


class ServerAnalyst:
    """Analysts' queries on a ClickHouse server: a client of their own (no session, so queries
    run side by side and never wait for the loader's), the same settings sent with every request
    (clickhouse-connect's `settings=`: URL parameters, not SQL text). For a deployment, give the
    URL a user whose profile holds the same limits; these then only narrow them."""

    def __init__(self, url: str, database: str, limits: QueryLimits) -> None:
        import clickhouse_connect  # noqa: PLC0415

        self.database = database
        self.limits = limits
        self._client: Any = clickhouse_connect.get_client(dsn=url, autogenerate_session_id=False)

    def select(
        self, sql: str, params: Mapping[str, str] | None = None, *, answer_limits: bool = True
    ) -> list[Row]:
        result = self._client.query(
            sql,
            parameters=dict(params or {}),
            settings=self.limits.settings(answer_limits=answer_limits),
        )
        names = result.column_names
        return [dict(zip(names, row, strict=True)) for row in result.result_rows]

    def stream(self, sql: str, fmt: str) -> Iterator[bytes]:
        raw = self._client.raw_stream(
            sql, fmt=fmt, settings=self.limits.settings(answer_limits=False)
        )
        with contextlib.closing(raw):
            while data := raw.read(STREAM_CHUNK):
                yield data

    def close(self) -> None:
        self._client.close()


def open_warehouse(
    *, path: Path | None = None, url: str | None = None, database: str = DEFAULT_DATABASE
) -> Warehouse:
    """A server when `url` is given, else chDB in `path`; the schema applied either way."""
    warehouse: Warehouse
    if url:
        warehouse = ServerWarehouse(url, database)
    elif path is not None:
        warehouse = ChdbWarehouse(path, database)
    else:
        raise ValueError("the warehouse needs a chDB path or a ClickHouse URL")
    apply_schema(warehouse)
    return warehouse
