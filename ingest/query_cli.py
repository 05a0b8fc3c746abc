"""`ofd load`, `ofd query` and `ofd report`: the warehouse from the command line.

ofd load [--data-dir D] [--clickhouse-url URL]   own the warehouse: load the journal, answer queries
ofd query "select ..." [--format table|csv|json] read-only SQL
ofd report receipts --device ID (--shift N | --from DAY [--to DAY])
ofd report zx --device ID --from DAY [--to DAY]
ofd report summary --device ID [--device ID ...] --from DAY [--to DAY]

Queries and reports go through the running `ofd load` when there is one (it owns the embedded
chDB directory, which no second process can open), presenting the analyst key (--analyst-key,
OFD_ANALYST_KEY or DATA_DIR/analyst.key), and open the warehouse directly otherwise. Either way
they run under the engine's restrictions and the --query-* limits (ledger/warehouse/reports.py).
"""

import argparse
import csv
import io
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import start_http_server

from ingest.settings import DEFAULT_DATA_DIR
from ledger.journal.kafka import DEFAULT_TOPIC
from ledger.warehouse.backends import QueryLimits
from ledger.warehouse.kafka_source import DEFAULT_GROUP
from ledger.warehouse.loader import DEFAULT_BATCH_RECORDS, LoaderSettings
from ledger.warehouse.reports import QueryRefused, ReportLimits
from ledger.warehouse.service import ServiceError, ServiceSettings, query, run_service

FORMATS = ("table", "csv", "json")
EXIT_FAILED = 1
MAX_CELL = 60  # characters of a cell a table shows; csv and json show everything


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def render(rows: Sequence[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(list(rows), ensure_ascii=False, default=str, indent=1)
    columns = list(rows[0]) if rows else []
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().rstrip("\n")
    if not rows:
        return "(no rows)"
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, list | dict) else str(value)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _limits(args: argparse.Namespace) -> ReportLimits:
    return ReportLimits(
        one_device_days=args.one_device_days,
        many_devices=args.many_devices,
        many_devices_days=args.many_devices_days,
    )


def _query_limits(args: argparse.Namespace) -> QueryLimits:
    return QueryLimits(
        timeout=args.query_timeout,
        max_memory=args.query_max_memory,
        max_rows=args.query_max_rows,
        max_bytes=args.query_max_bytes,
        concurrency=args.query_concurrency,
    )


def _run_load(args: argparse.Namespace) -> int:
    settings = ServiceSettings(
        data_dir=Path(args.data_dir),
        clickhouse_url=args.clickhouse_url or None,
        port=args.port,
        loader=LoaderSettings(batch_records=args.batch),
        limits=_limits(args),
        query=_query_limits(args),
        kafka_bootstrap=args.kafka_bootstrap or None,
        kafka_topic=args.kafka_topic,
        kafka_group=args.kafka_group,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    if args.metrics_port and not args.once:
        # /metrics alone, apart from the query endpoint (which stays on loopback), for a
        # Prometheus on another machine; the loader's metrics live in the default registry.
        start_http_server(args.metrics_port, args.metrics_host)
    loaded = run_service(settings, stop, once=args.once)
    print(f"loaded {loaded} documents", file=sys.stderr)
    return 0


def _ask(args: argparse.Namespace, payload: dict[str, Any]) -> int:
    try:
        rows = query(
            Path(args.data_dir),
            payload,
            clickhouse_url=args.clickhouse_url or None,
            limits=_limits(args),
            query_limits=_query_limits(args),
            key=args.analyst_key or None,
        )
    except (QueryRefused, ServiceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as err:  # ClickHouse's own (bad SQL, unknown table): the analyst's to fix
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(render(rows, args.format))
    return 0


def _run_query(args: argparse.Namespace) -> int:
    return _ask(args, {"sql": args.sql})


def _run_report(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"devices": args.device, "device": args.device[0]}
    if getattr(args, "shift", None) is not None:
        params["shift"] = args.shift
    if args.start:
        params["from"] = args.start
    if args.end:
        params["to"] = args.end
    return _ask(args, {"name": args.report, "params": params})


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=_env("OFD_DATA_DIR", str(DEFAULT_DATA_DIR)))
    p.add_argument(
        "--clickhouse-url",
        default=_env("CLICKHOUSE_URL", ""),
        help="a ClickHouse server instead of chDB in the data directory",
    )
    limits = ReportLimits()
    p.add_argument("--one-device-days", type=int, default=limits.one_device_days)
    p.add_argument("--many-devices", type=int, default=limits.many_devices)
    p.add_argument("--many-devices-days", type=int, default=limits.many_devices_days)
    query = QueryLimits()
    p.add_argument(
        "--query-timeout",
        type=float,
        default=query.timeout,
        help=f"seconds an analyst's query may run (default {query.timeout:g})",
    )
    p.add_argument(
        "--query-max-memory",
        type=int,
        default=query.max_memory,
        help=f"bytes of memory per query (default {query.max_memory}, 1 GiB)",
    )
    p.add_argument(
        "--query-max-rows",
        type=int,
        default=query.max_rows,
        help=f"rows in an answer; more is an error (default {query.max_rows})",
    )
    p.add_argument(
        "--query-max-bytes",
        type=int,
        default=query.max_bytes,
        help=f"bytes in an answer; more is an error (default {query.max_bytes}, 64 MiB)",
    )
    p.add_argument(
        "--query-concurrency",
        type=int,
        default=query.concurrency,
        help=f"queries the service runs at once; the rest wait (default {query.concurrency})",
    )


def _analyst_key(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--analyst-key",
        default="",
        help="the query service's key (default: OFD_ANALYST_KEY, else DATA_DIR/analyst.key)",
    )


def add_warehouse_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    load = sub.add_parser("load", help="load the journal into the warehouse and answer queries")
    _common(load)
    load.add_argument("--port", type=int, default=0, help="query endpoint port on 127.0.0.1")
    load.add_argument("--batch", type=int, default=DEFAULT_BATCH_RECORDS)
    load.add_argument(
        "--metrics-host",
        default=_env("OFD_METRICS_HOST", "127.0.0.1"),
        help="address of the loader's Prometheus /metrics alone (default: loopback)",
    )
    load.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("OFD_LOADER_METRICS_PORT", "0")),
        help="port of /metrics on --metrics-host, e.g. 7782; 0 (default): on the query port only",
    )
    load.add_argument("--once", action="store_true", help="load what is there, then exit")
    load.add_argument(
        "--kafka-bootstrap",
        default=_env("OFD_KAFKA_BOOTSTRAP", ""),
        help="read the journal from Kafka (host:port) instead of DATA_DIR/journal",
    )
    load.add_argument("--kafka-topic", default=_env("OFD_KAFKA_TOPIC", DEFAULT_TOPIC))
    load.add_argument(
        "--kafka-group",
        default=_env("OFD_KAFKA_GROUP", DEFAULT_GROUP),
        help="the loaders' consumer group: loaders of one group split the topic's partitions",
    )
    load.set_defaults(run=_run_load)

    q = sub.add_parser("query", help="read-only SQL over the warehouse")
    _common(q)
    _analyst_key(q)
    q.add_argument("sql")
    q.add_argument("--format", choices=FORMATS, default="table")
    q.set_defaults(run=_run_query)

    report = sub.add_parser("report", help="named reports").add_subparsers(
        dest="report", required=True
    )
    for name, text in (
        ("receipts", "a device's receipts for a shift or a period (offline ones marked А)"),
        ("zx", "a device's X and Z reports in a period"),
        ("summary", "per device and day: receipts, offline, revenue"),
    ):
        p = report.add_parser(name, help=text)
        _common(p)
        _analyst_key(p)
        p.add_argument("--device", type=int, action="append", required=True)
        if name == "receipts":
            p.add_argument("--shift", type=int)
        p.add_argument("--from", dest="start", help="first day, YYYY-MM-DD")
        p.add_argument("--to", dest="end", help="last day, YYYY-MM-DD (default: --from)")
        p.add_argument("--format", choices=FORMATS, default="table")
        p.set_defaults(run=_run_report)
