"""The warehouse service: the one process that owns the embedded chDB directory.

chDB admits one process per data directory, so the loader process also answers analysts: a
small HTTP endpoint on loopback only takes SQL and named reports and serves the loader's
Prometheus metrics. It announces its port in `<data_dir>/warehouse/service.json`; `ofd query`
reads that file, and opens the directory itself only when no service is running.

Callers of /query and /report present the analyst key (`Authorization: Bearer <key>`): the
service creates it at first start in `<data_dir>/analyst.key`, mode 0600, so only the data
directory's owner (and whom they give it to) may query; the service keeps its SHA-256 only and
compares in constant time. A caller without it gets 401, logged and counted. Queries run in
sessions of their own under the engine's restrictions (backends.QueryLimits, reports.run_query),
at most `QueryLimits.concurrency` at once, beside the loader, never holding its connection.

POST /query  {"sql": "..."}                         -> {"rows": [...]}
POST /report {"name": "receipts", "params": {...}}  -> {"rows": [...]}
POST /export {"sql": "...", "format": "csv"}        -> the answer as CSV, chunked
                                                       (ledger/warehouse/export.py)
GET  /metrics                                       -> Prometheus text (no key: loopback only)
Errors answer 400 (refused or failed query), 401 (no or wrong key), 503 (too many at once) with
{"error": "..."}. Connections are kept between requests (HTTP/1.1; the client is
service_client.py), except after an answer sent before the request's body was read.
"""

import contextlib
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from ledger.journal.kafka import DEFAULT_TOPIC, PLAINTEXT, KafkaSecurity
from ledger.warehouse.backends import Analyst, QueryLimits, Row, Warehouse, open_warehouse
from ledger.warehouse.export import serve_export
from ledger.warehouse.kafka_source import DEFAULT_GROUP, KafkaGroupMember
from ledger.warehouse.loader import Loader, LoaderSettings, Source, local_sources, read_position
from ledger.warehouse.reports import KEY_READS, ReportLimits, run_query, run_report
from ledger.warehouse.service_client import ServiceError, ask_service

log = structlog.get_logger(__name__)

SERVICE_FILE = "service.json"
KEY_FILE = "analyst.key"
KEY_ENV = "OFD_ANALYST_KEY"
KEY_BYTES = 32
MAX_REQUEST_BYTES = 1024 * 1024
# Seconds a caller may take to send its request, and a kept connection may stay idle.
REQUEST_READ_TIMEOUT = 10.0
QUERIES = Counter(
    "ofd_warehouse_queries_total",
    "Analysts' requests to the query service, by outcome",
    ["outcome"],  # ok, refused (400), unauthorized (401), busy (503)
)
# `ofd load --once` on Kafka: a group join takes about a second (a production broker's
# group.initial.rebalance.delay.ms adds 3 s), up to a session timeout more while a member that
# died is still listed (kafka_source.py); loaded once no record came for ONCE_QUIET seconds.
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
    query: QueryLimits = field(default_factory=QueryLimits)
    load: bool = True  # False: answer queries only (e.g. while another loader feeds a server)
    kafka_bootstrap: str | None = None  # read the Kafka journal instead of the local ones
    kafka_security: KafkaSecurity = PLAINTEXT  # TLS / SASL toward the brokers
    kafka_topic: str = DEFAULT_TOPIC
    kafka_group: str = DEFAULT_GROUP  # the loaders' consumer group: they split the partitions

    def __post_init__(self) -> None:
        if not _loopback(self.host):
            raise ValueError(f"the query service binds loopback only, not {self.host!r}")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ensure_analyst_key(data_dir: Path) -> str:
    """The analyst key of DATA_DIR/analyst.key, created (mode 0600) when there is none; a key
    file others may read is narrowed to 0600 first."""
    path = data_dir / KEY_FILE
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
            log.warning("analyst_key_mode_narrowed", path=str(path))
        key = path.read_text().strip()
        if key:
            return key
    data_dir.mkdir(parents=True, exist_ok=True)
    key = "ofd_analyst_" + secrets.token_urlsafe(KEY_BYTES)
    tmp = path.with_suffix(".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a key
    log.info("analyst_key_created", path=str(path))
    return key


def read_analyst_key(data_dir: Path) -> str | None:
    """The key a client presents: OFD_ANALYST_KEY, else DATA_DIR/analyst.key when readable."""
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV].strip()
    try:
        return (data_dir / KEY_FILE).read_text().strip() or None
    except OSError:  # missing, or not ours to read: the service will answer 401
        return None


def _key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


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
        security=settings.kafka_security,
    )


class _Server(ThreadingHTTPServer):
    """A thread per connection, as ThreadingHTTPServer; connections are kept (HTTP/1.1), so
    closing the server also ends the open ones: their threads would otherwise go on answering
    with the analyst the service closes next."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open.discard(request)

    def server_close(self) -> None:
        super().server_close()
        with self._open_lock:
            for connection in self._open:
                with contextlib.suppress(OSError):  # its peer may have closed it already
                    connection.shutdown(socket.SHUT_RDWR)


def _handler(
    analyst: Analyst, limits: ReportLimits, key_hash: bytes, key_reads: Analyst | None = None
) -> type[BaseHTTPRequestHandler]:
    """`key_reads` runs reports.KEY_READS (`analyst` when None): the same limits, one engine
    thread."""
    slots = threading.BoundedSemaphore(analyst.limits.concurrency)

    class Handler(BaseHTTPRequestHandler):
        # Kept connections: a caller asking often (the cabinet) pays no handshake and no
        # thread start per query. Every answer says its length (or is chunked, /export).
        protocol_version = "HTTP/1.1"
        # An answer is written as its headers, then its body: on a kept connection, Nagle's
        # algorithm held the body until the client's delayed ACK of the headers (40 ms).
        disable_nagle_algorithm = True
        timeout = REQUEST_READ_TIMEOUT  # a half-sent request or an idle connection ends

        def log_message(self, format: str, *args: Any) -> None:
            pass  # structlog only: one line per query would drown the loader's log

        def _answer(
            self, status: int, body: bytes, kind: str = "application/json", *, close: bool = False
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            if close:  # sets close_connection too
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, message: str, *, close: bool = False) -> None:
            self._answer(status, json.dumps({"error": message}).encode(), close=close)

        def _authorized(self) -> bool:
            scheme, _, key = (self.headers.get("Authorization") or "").partition(" ")
            presented = key.strip() if scheme.lower() == "bearer" else ""
            # Hashes of equal length compared in constant time: timing tells nothing of the key.
            if presented and hmac.compare_digest(_key_hash(presented), key_hash):
                return True
            QUERIES.labels("unauthorized").inc()
            log.warning(
                "warehouse_query_unauthorized",
                path=self.path,
                peer=self.client_address[0],
                key_presented=bool(presented),
            )
            return False

        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._answer(200, generate_latest(), CONTENT_TYPE_LATEST)
            else:
                self._answer(404, b'{"error": "not found"}')

        def do_POST(self) -> None:
            # Refused before its body is read: the connection closes, or the body's bytes would
            # be read as the next request.
            if self.path not in ("/query", "/report", "/export"):
                self._answer(404, b'{"error": "not found"}', close=True)
                return
            if not self._authorized():
                self._error(
                    401, "the analyst key is missing or wrong (DATA_DIR/analyst.key)", close=True
                )
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_REQUEST_BYTES:
                self._answer(413, b'{"error": "request too large"}', close=True)
                return
            # Queries past the cap wait up to one query's time for a slot, then are turned away.
            if not slots.acquire(timeout=analyst.limits.timeout):
                QUERIES.labels("busy").inc()
                self._error(
                    503, f"{analyst.limits.concurrency} queries running; try again", close=True
                )
                return
            rows: list[Row] | None = None
            try:
                request = json.loads(self.rfile.read(length) or b"{}")
                if self.path == "/export":  # streamed while it holds its slot (export.py)
                    serve_export(self, analyst, request)
                elif self.path == "/query":
                    rows = run_query(analyst, str(request.get("sql", "")))
                else:
                    name, params = str(request.get("name")), request.get("params") or {}
                    reader = key_reads if key_reads is not None and name in KEY_READS else analyst
                    rows = run_report(reader, name, params, limits)
            except Exception as err:  # refused, or ClickHouse's own error: the analyst's to fix
                QUERIES.labels("refused").inc()
                self._error(400, str(err))
                return
            finally:
                slots.release()
            QUERIES.labels("ok").inc()
            if rows is not None:
                self._answer(200, json.dumps({"rows": rows}, default=str).encode())

    return Handler


def run_service(
    settings: ServiceSettings,
    stop: threading.Event,
    *,
    once: bool = False,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Owns the warehouse until `stop` is set; `once`: load what is there, then return, telling
    `progress` the documents loaded so far after every batch."""
    directory = warehouse_dir(settings.data_dir)
    warehouse = open_warehouse(path=directory, url=settings.clickhouse_url)
    sources = _sources(settings, warehouse)
    try:
        loader = Loader(warehouse, sources, settings.loader)
        if once:
            return _load_once(loader, sources, progress or (lambda _: None))
        key_hash = _key_hash(ensure_analyst_key(settings.data_dir))
        analyst = warehouse.analyst(settings.query)
        key_reads = warehouse.analyst(replace(settings.query, threads=1))
        server = _Server(
            (settings.host, settings.port),
            _handler(analyst, settings.limits, key_hash, key_reads),
        )
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
            analyst.close()
            key_reads.close()
            with contextlib.suppress(FileNotFoundError):
                service_file.unlink()
        return loader.loaded
    finally:
        if isinstance(sources, KafkaGroupMember):
            sources.close()  # leaves the group: the others take its partitions at once
        warehouse.close()


def _load_once(
    loader: Loader, sources: Callable[[], list[Source]], progress: Callable[[int], None]
) -> int:
    """Loads what is there. A local journal is read to its end; a consumer group first has to
    give this loader its partitions (a join takes seconds), and the records then arrive over
    several polls, so Kafka counts as loaded once nothing has come for ONCE_QUIET seconds."""
    if not isinstance(sources, KafkaGroupMember):
        loaded = 0
        for count in loader.drain():
            loaded += count
            progress(loaded)
        return loaded
    deadline = time.monotonic() + ONCE_JOIN_TIMEOUT
    loaded, quiet_since = 0, time.monotonic()
    while True:
        count = loader.step()
        loaded += count
        if count:
            progress(loaded)
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


def query(
    data_dir: Path,
    payload: dict[str, Any],
    *,
    clickhouse_url: str | None = None,
    limits: ReportLimits | None = None,
    query_limits: QueryLimits | None = None,
    key: str | None = None,
) -> list[Row]:
    """Through the running service when there is one (with `key`, else OFD_ANALYST_KEY or
    DATA_DIR/analyst.key), else straight from the warehouse, under the same restrictions.

    `payload` is {"sql": ...} or {"name": ..., "params": {...}}."""
    path = "/query" if "sql" in payload else "/report"
    query_limits = query_limits or QueryLimits()
    address = None if clickhouse_url else service_address(data_dir)
    if address is not None:
        return ask_service(
            address,
            path,
            payload,
            key=key or read_analyst_key(data_dir),
            timeout=query_limits.timeout,
        )
    warehouse = open_warehouse(path=warehouse_dir(data_dir), url=clickhouse_url)
    analyst = warehouse.analyst(query_limits)
    try:
        if "sql" in payload:
            return run_query(analyst, str(payload["sql"]))
        return run_report(analyst, str(payload["name"]), payload.get("params") or {}, limits)
    finally:
        analyst.close()
        warehouse.close()
