"""Exports: an analyst's query written out whole as CSV, streamed, without the row cap
of `ofd query` (its answer is held in memory; an export's never is). The query is checked as
every analyst's is (reports.analyst_statement) and runs under the same engine restrictions and
the same time and memory limits; only the answer's size is not capped.

Through the running `ofd load` (POST /export, the analyst key) the answer comes in HTTP/1.1
chunks, the last one sent only when the query finished: an export cut short by a failure ends
without it, and the client reports the failure rather than a short file. Without a service the
warehouse is opened directly, as `ofd query` does.
"""

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from ledger.errors import OfdError
from ledger.warehouse.backends import Analyst, QueryLimits, open_warehouse
from ledger.warehouse.reports import QueryRefused, analyst_statement

log = structlog.get_logger(__name__)

# CSV only: chDB streams an answer block by block, each block formatted on its own, which CSV
# survives (the repeated header line is dropped below) and Parquet does not (each block would be
# a file of its own, and a file of files is no Parquet file).
FORMATS = {"csv": "CSVWithNames"}
READ_CHUNK = 1 << 20


class ExportFailed(OfdError):
    """The export stopped before its end; what was written is not the whole answer."""


def stream_export(analyst: Analyst, sql: str, fmt: str) -> Iterator[bytes]:
    """The checked statement's answer in `fmt` (a key of FORMATS), chunk by chunk."""
    if fmt not in FORMATS:
        raise QueryRefused(f"export format {fmt!r}: one of {', '.join(FORMATS)}")
    return _one_header(analyst.stream(analyst_statement(analyst, sql), FORMATS[fmt]))


def _one_header(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The CSV header once: chDB starts every streamed block with it again. (A row spelling out
    the quoted column names at a block's start would go too: a price not worth a buffer.)"""
    header = b""
    for chunk in chunks:
        if not header:
            header = chunk.split(b"\n", 1)[0] + b"\n"
            yield chunk
        else:
            yield chunk.removeprefix(header)


def serve_export(handler: Any, analyst: Analyst, request: dict[str, Any]) -> None:
    """POST /export on the query service's handler: 400 when refused before the first byte,
    else 200 and chunked transfer, closed without the last chunk when the query fails."""
    chunks = stream_export(analyst, str(request.get("sql", "")), str(request.get("format")))
    first = next(chunks, b"")  # a refusal or an engine error surfaces here, before the headers
    handler.protocol_version = "HTTP/1.1"  # chunked transfer: this response only
    handler.close_connection = True
    handler.send_response(200)
    handler.send_header("Content-Type", "application/octet-stream")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    try:
        _write_chunk(handler.wfile, first)
        for data in chunks:
            _write_chunk(handler.wfile, data)
        handler.wfile.write(b"0\r\n\r\n")
    except Exception as err:  # mid-stream: the missing last chunk tells the client
        log.warning("warehouse_export_failed", error=str(err))


def _write_chunk(out: BinaryIO, data: bytes) -> None:
    if data:  # an empty chunk would be the last one
        out.write(b"%x\r\n%s\r\n" % (len(data), data))


def export_to(
    out: BinaryIO,
    *,
    chdb_dir: Path,
    sql: str,
    fmt: str,
    service: tuple[str, int] | None,
    key: str | None,
    clickhouse_url: str | None,
    query_limits: QueryLimits,
    progress: Callable[[int], None],
) -> int:
    """Writes the export to `out`; returns its bytes. Through `service` when given."""
    written = 0
    chunks = _chunks(
        chdb_dir=chdb_dir,
        sql=sql,
        fmt=fmt,
        service=service,
        key=key,
        clickhouse_url=clickhouse_url,
        query_limits=query_limits,
    )
    for data in chunks:
        out.write(data)
        written += len(data)
        progress(written)
    return written


def _chunks(
    *,
    chdb_dir: Path,
    sql: str,
    fmt: str,
    service: tuple[str, int] | None,
    key: str | None,
    clickhouse_url: str | None,
    query_limits: QueryLimits,
) -> Iterator[bytes]:
    if service is not None:
        yield from _from_service(service, sql, fmt, key, query_limits)
        return
    warehouse = open_warehouse(path=chdb_dir, url=clickhouse_url)
    analyst = warehouse.analyst(query_limits)
    try:
        yield from stream_export(analyst, sql, fmt)
    finally:
        analyst.close()
        warehouse.close()


def _from_service(
    address: tuple[str, int], sql: str, fmt: str, key: str | None, limits: QueryLimits
) -> Iterator[bytes]:
    host, port = address
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(
        f"http://{host}:{port}/export",
        data=json.dumps({"sql": sql, "format": fmt}).encode(),
        headers=headers,
        method="POST",
    )
    try:
        # A read waits at most one query's time between chunks, not for the whole export.
        with urllib.request.urlopen(request, timeout=limits.timeout + 10) as answer:  # noqa: S310
            while data := answer.read(READ_CHUNK):
                yield data
    except urllib.error.HTTPError as err:
        detail = json.loads(err.read() or b"{}").get("error", str(err))
        raise QueryRefused(detail) from err
    except http.client.IncompleteRead as err:
        raise ExportFailed(
            "the export stopped before its end (the query failed on the way: see the loader's"
            " log, warehouse_export_failed); the file is incomplete"
        ) from err
    except OSError as err:
        raise ExportFailed(f"warehouse service at {host}:{port}: {err}") from err
