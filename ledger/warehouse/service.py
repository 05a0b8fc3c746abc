"""The warehouse service: the one process that owns the embedded chDB directory.

chDB admits one process per data directory, so the loader process also answers analysts: a
small HTTP endpoint on 127.0.0.1 (no authentication: bind it nowhere else) takes read-only SQL
and named reports and serves the loader's Prometheus metrics. It announces its port in
`<data_dir>/warehouse/service.json`; `ofd query` reads that file, and opens the directory itself
only when no service is running.

POST /query  {"sql": "..."}                         -> {"rows": [...]}
POST /report {"name": "receipts", "params": {...}}  -> {"rows": [...]}
GET  /metrics                                       -> Prometheus text
Errors answer 400 with {"error": "..."}.
"""

import contextlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ledger.journal.kafka import DEFAULT_TOPIC
from ledger.warehouse.backends import Row, Warehouse, open_warehouse
from ledger.warehouse.kafka_source import DEFAULT_GROUP, KafkaGroupMember
from ledger.warehouse.loader import Loader, LoaderSettings, Source, local_sources, read_position
from ledger.warehouse.reports import QueryRefused, ReportLimits, run_query, run_report

log = structlog.get_logger(__name__)

SERVICE_FILE = "service.json"
MAX_REQUEST_BYTES = 1024 * 1024
CLIENT_TIMEOUT = 60.0  # seconds an analyst's query may take through the service
# `ofd load --once` on Kafka: a group join takes about half the session timeout on tansu, more
# after a member died (kafka_source.py); loaded once no record came for ONCE_QUIET seconds.
ONCE_JOIN_TIMEOUT = 30.0
ONCE_QUIET = 2.0


def warehouse_dir(data_dir: Path) -> Path:
    return data_dir / "warehouse"


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    data_dir: Path
    clickhouse_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 0
    loader: LoaderSettings = field(default_factory=LoaderSettings)
    limits: ReportLimits = field(default_factory=ReportLimits)
    load: bool = True  # False: answer queries only (e.g. while another loader feeds a server)
    kafka_bootstrap: str | None = None  # read the Kafka journal instead of the local ones
    kafka_topic: str = DEFAULT_TOPIC
    kafka_group: str = DEFAULT_GROUP  # the loaders' consumer group: they split the partitions


def _sources(settings: ServiceSettings, warehouse: Warehouse) -> Callable[[], list[Source]]:
    """The loader's sources: the local journals (gateways may appear later), or the partitions
    the consumer group gives this loader."""
    if settings.kafka_bootstrap is None:
        return lambda: local_sources(settings.data_dir / "journal")
    return KafkaGroupMember(
        settings.kafka_bootstrap,
        settings.kafka_topic,
        lambda name: read_position(warehouse, name),
        group=settings.kafka_group,
        batch_records=settings.loader.batch_records,
    )


def _handler(warehouse: Warehouse, limits: ReportLimits) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass  # structlog only: one line per query would drown the loader's log

        def _answer(self, status: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._answer(200, generate_latest(), CONTENT_TYPE_LATEST)
            else:
                self._answer(404, b'{"error": "not found"}')

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_REQUEST_BYTES:
                self._answer(413, b'{"error": "request too large"}')
                return
            try:
                request = json.loads(self.rfile.read(length) or b"{}")
                if self.path == "/query":
                    rows = run_query(warehouse, str(request.get("sql", "")))
                elif self.path == "/report":
                    params = request.get("params") or {}
                    rows = run_report(warehouse, str(request.get("name")), params, limits)
                else:
                    self._answer(404, b'{"error": "not found"}')
                    return
            except (QueryRefused, ValueError) as err:
                self._answer(400, json.dumps({"error": str(err)}).encode())
                return
            except Exception as err:  # ClickHouse's own errors (bad SQL) go back to the analyst
                self._answer(400, json.dumps({"error": str(err)}).encode())
                return
            self._answer(200, json.dumps({"rows": rows}, default=str).encode())

    return Handler


def run_service(settings: ServiceSettings, stop: threading.Event, *, once: bool = False) -> int:
    """Owns the warehouse until `stop` is set; `once`: load what is there, then return."""
    directory = warehouse_dir(settings.data_dir)
    warehouse = open_warehouse(path=directory, url=settings.clickhouse_url)
    sources = _sources(settings, warehouse)
    try:
        loader = Loader(warehouse, sources, settings.loader)
        if once:
            return _load_once(loader, sources)
        server = ThreadingHTTPServer(
            (settings.host, settings.port), _handler(warehouse, settings.limits)
        )
        server.daemon_threads = True
        info = {"host": settings.host, "port": server.server_address[1], "pid": os.getpid()}
        service_file = directory / SERVICE_FILE
        service_file.write_text(json.dumps(info))
        http = threading.Thread(target=server.serve_forever, name="warehouse-http", daemon=True)
        http.start()
        log.info("warehouse_service_started", **info)
        try:
            if settings.load:
                loader.run(stop)
            else:
                stop.wait()
        finally:
            server.shutdown()
            server.server_close()
            with contextlib.suppress(FileNotFoundError):
                service_file.unlink()
        return loader.loaded
    finally:
        if isinstance(sources, KafkaGroupMember):
            sources.close()  # leaves the group: the others take its partitions at once
        warehouse.close()


def _load_once(loader: Loader, sources: Callable[[], list[Source]]) -> int:
    """Loads what is there. A local journal is read to its end; a consumer group first has to
    give this loader its partitions (a join takes seconds), and the records then arrive over
    several polls, so Kafka counts as loaded once nothing has come for ONCE_QUIET seconds."""
    if not isinstance(sources, KafkaGroupMember):
        return sum(loader.drain())
    deadline = time.monotonic() + ONCE_JOIN_TIMEOUT
    loaded, quiet_since = 0, time.monotonic()
    while True:
        count = loader.step()
        loaded += count
        now = time.monotonic()
        if not sources.assigned:
            if now > deadline:
                raise ServiceError(
                    f"the consumer group gave this loader no partition in {ONCE_JOIN_TIMEOUT} s"
                )
            quiet_since = now
        elif count:
            quiet_since = now
        elif now - quiet_since >= ONCE_QUIET:
            return loaded


def service_address(data_dir: Path) -> tuple[str, int] | None:
    """The running service's address, or None when none is announced (or its process is gone)."""
    try:
        info = json.loads((warehouse_dir(data_dir) / SERVICE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return None  # a killed service leaves its file behind
    except PermissionError:
        pass  # alive, someone else's
    return str(info["host"]), int(info["port"])


class ServiceError(RuntimeError):
    pass


def ask_service(address: tuple[str, int], path: str, payload: dict[str, Any]) -> list[Row]:
    host, port = address
    request = urllib.request.Request(
        f"http://{host}:{port}{path}",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=CLIENT_TIMEOUT) as answer:  # noqa: S310
            body = json.loads(answer.read())
    except urllib.error.HTTPError as err:
        detail = json.loads(err.read() or b"{}").get("error", str(err))
        raise ServiceError(detail) from err
    except OSError as err:
        raise ServiceError(f"warehouse service at {host}:{port}: {err}") from err
    rows: list[Row] = body["rows"]
    return rows


def query(
    data_dir: Path,
    payload: dict[str, Any],
    *,
    clickhouse_url: str | None = None,
    limits: ReportLimits | None = None,
) -> list[Row]:
    """Through the running service when there is one, else straight from the warehouse.

    `payload` is {"sql": ...} or {"name": ..., "params": {...}}."""
    path = "/query" if "sql" in payload else "/report"
    address = None if clickhouse_url else service_address(data_dir)
    if address is not None:
        return ask_service(address, path, payload)
    warehouse = open_warehouse(path=warehouse_dir(data_dir), url=clickhouse_url)
    try:
        if "sql" in payload:
            return run_query(warehouse, str(payload["sql"]))
        return run_report(warehouse, str(payload["name"]), payload.get("params") or {}, limits)
    finally:
        warehouse.close()
