"""The two ways to reach the warehouse, behind one small interface: chDB in-process, or a server.

chDB allows one process per data directory (a second cannot open it, not even read-only), so the
embedded backend is opened by the one process that owns the directory (the loader service) and
everyone else asks that process. A ClickHouse server is reached with clickhouse-connect and the
same SQL. Both are synchronous: callers on an event loop run them in a worker thread.
"""

import importlib
import json
import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

DEFAULT_DATABASE = "ofd"
SCHEMA_RESOURCE = "schema.sql"
# Statements of schema.sql are separated by a line holding only ';' (SQL bodies contain ';'-free
# text, but splitting on a line of its own keeps that assumption out of the parser).
STATEMENT_SEPARATOR = "\n;\n"

Row = dict[str, Any]


class Warehouse(Protocol):
    database: str

    def execute(self, sql: str) -> None:
        """Runs a statement that returns nothing (DDL, INSERT with inline data)."""

    def select(self, sql: str) -> list[Row]:
        """Runs a query; rows as dicts by column name."""

    def insert(self, table: str, rows: Sequence[Row], *, token: str) -> None:
        """Inserts the rows in one INSERT; a retry with the same token is dropped by ClickHouse."""

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
    """Creates every table and view that is missing; safe to run on every start."""
    for statement in schema_statements(warehouse.database):
        warehouse.execute(statement)


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
        self._session: Any = session_module.Session(str(path))
        # The session is shared by the loader thread and the query endpoint's threads.
        self._lock = threading.Lock()

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

    def close(self) -> None:
        with self._lock:
            self._session.close()


class ServerWarehouse:
    """A ClickHouse server over HTTP (clickhouse-connect), e.g. CLICKHOUSE_URL=http://h:8123."""

    def __init__(self, url: str, database: str = DEFAULT_DATABASE) -> None:
        import clickhouse_connect  # noqa: PLC0415

        self.database = database
        self._client = clickhouse_connect.get_client(dsn=url)
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

    def close(self) -> None:
        with self._lock:
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
