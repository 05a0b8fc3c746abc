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
import re
import signal
import sys
import threading
from importlib import resources
from pathlib import Path
from typing import Any

from prometheus_client import start_http_server

from ingest.cli_options import CliError, add_data_dir, add_log_level, option
from ingest.kafka_options import add_kafka_security, kafka_security_from
from ingest.process import start_process
from ingest.progress import Progress
from ingest.tables import FORMATS, render
from ledger.errors import OfdError
from ledger.journal.kafka import DEFAULT_TOPIC
from ledger.warehouse.backends import QueryLimits
from ledger.warehouse.export import FORMATS as EXPORT_FORMATS
from ledger.warehouse.export import ExportFailed, export_to
from ledger.warehouse.kafka_source import DEFAULT_GROUP
from ledger.warehouse.loader import (
    DEFAULT_BATCH_RECORDS,
    POSITIONS_SQL,
    LoaderSettings,
    not_loaded,
)
from ledger.warehouse.reports import QueryRefused, ReportLimits
from ledger.warehouse.service import (
    ServiceSettings,
    query,
    read_analyst_key,
    run_service,
    service_address,
    warehouse_dir,
)
from ledger.warehouse.service_client import ServiceError

EXIT_FAILED = 1
UNLOADED_CAP = 100_000  # records counted past the warehouse's position at most


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
        kafka_security=kafka_security_from(args),
    )
    start_process("loader", args.log_level)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    if args.metrics_port and not args.once:
        # /metrics alone, apart from the query endpoint (which stays on loopback), for a
        # Prometheus on another machine; the loader's metrics live in the default registry.
        start_http_server(args.metrics_port, args.metrics_host)
    progress = Progress("load", "documents") if args.once else None
    loaded = run_service(settings, stop, once=args.once, progress=progress)
    if progress is not None:
        progress.finish()
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
        print(f"error: {err}{_lifted_by(str(err))}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as err:  # ClickHouse's own (bad SQL, unknown table): the analyst's to fix
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(render(rows, args.format))
    return 0


# A report refused for its size names the option that lifts the limit (the cabinet shows the same
# refusal without it: its users have no options).
LIMIT_OPTIONS = (
    (re.compile(r"period of \d+ days exceeds \d+"), "--one-device-days (one device) or"
     " --many-devices-days (several)"),
    (re.compile(r"\d+ devices exceed \d+"), "--many-devices"),
)  # fmt: skip


def _lifted_by(message: str) -> str:
    for pattern, options in LIMIT_OPTIONS:
        if pattern.search(message):
            return (
                f": ask for less, or lift the limit with {options} (on `ofd load` when it"
                " answers the queries)"
            )
    return ""


SCHEMA_NOTE = """\
-- Units: money is in tiyn (Int64; 100 tiyn = 1 tenge: divide by 100 for tenge, as `ofd report`
-- does); quantities in thousandths (1000 = one piece); times are the device's wall clock
-- (Kazakhstan, UTC+5) stored as DateTime('UTC'); received_at and loaded_at are the gateway's and
-- the loader's clocks in UTC. Revenue is signed by direction (a sale return is negative).
-- Aggregation: the daily_* tables are SummingMergeTree: a day's row may still be several rows
-- until ClickHouse merges them, so always read them with sum(...) GROUP BY their key
-- (e.g. the revenue of a day: sum(revenue) of ofd.daily_device by day). Every other table holds
-- one row per document or line and is read as it is; documents is ReplacingMergeTree, a
-- backstop only (the loader inserts a document once).
"""


def schema_text() -> str:
    """schema.sql's tables and their comments, with the units and aggregation rules first (the
    materialized views that fill them, and the loader's own tables, left out)."""
    text = resources.files("ledger.warehouse").joinpath("schema.sql").read_text(encoding="utf-8")
    kept = []
    for statement in text.split("\n;\n"):
        body = statement.strip()
        if "MATERIALIZED VIEW" in body or "loader_" in body or "CREATE DATABASE" in body:
            continue
        kept.append(body.replace("{db}", "ofd"))
    return SCHEMA_NOTE + "\n" + "\n\n".join(kept)


def _run_query(args: argparse.Namespace) -> int:
    if args.schema:
        print(schema_text())
        return 0
    if not args.sql:
        raise CliError("ofd query needs SQL, or --schema to list the tables", 2)
    code = _ask(args, {"sql": args.sql})
    if code == 0:
        _warn_unloaded(args)
    return code


def _warn_unloaded(args: argparse.Namespace) -> None:
    """A warning on stderr when the local journal holds records the warehouse has not loaded:
    an answer of 0 rows before the first `ofd load` is not the truth about the receipts."""
    data_dir = Path(args.data_dir)
    if not (data_dir / "journal").is_dir():
        return
    try:
        rows = query(
            data_dir,
            {"sql": POSITIONS_SQL},
            clickhouse_url=args.clickhouse_url or None,
            key=args.analyst_key or None,
        )
        positions = {str(r["source"]): int(r["position"]) for r in rows}
        missing = not_loaded(data_dir / "journal", positions, UNLOADED_CAP)
    except (OfdError, OSError, ValueError):  # a warning is best effort: the answer stands
        return
    if missing:
        more = "more than " if missing >= UNLOADED_CAP else ""
        records = "record" if missing == 1 else "records"
        print(
            f"warning: the journal holds {more}{missing} {records} the warehouse has not loaded"
            f" yet: run `ofd load --once --data-dir {data_dir}`, or keep `ofd load` running",
            file=sys.stderr,
        )


def _run_export(args: argparse.Namespace) -> int:
    """`ofd export`: the answer written out whole, streamed; progress on stderr."""
    data_dir = Path(args.data_dir)
    target = Path(args.output)
    progress = Progress("export", "bytes")
    service = None if args.clickhouse_url else service_address(data_dir)
    part = target.with_name(target.name + ".part")  # renamed once whole: no short file left
    try:
        with part.open("wb") as out:
            written = export_to(
                out,
                chdb_dir=warehouse_dir(data_dir),
                sql=args.sql,
                fmt=args.format,
                service=service,
                key=args.analyst_key or (read_analyst_key(data_dir) if service else None),
                clickhouse_url=args.clickhouse_url or None,
                query_limits=_query_limits(args),
                progress=progress,
            )
        part.replace(target)
    except (QueryRefused, ServiceError, ExportFailed) as err:
        raise CliError(f"{err}{_lifted_by(str(err))}") from err
    except Exception as err:  # ClickHouse's own (bad SQL, unknown table): the analyst's to fix
        raise CliError(str(err).strip().splitlines()[0]) from err
    finally:
        part.unlink(missing_ok=True)
    progress.finish()
    print(f"exported {written:,} bytes of CSV to {target}", file=sys.stderr)
    _warn_unloaded(args)
    return 0


def _run_report(args: argparse.Namespace) -> int:
    params: dict[str, Any]
    if getattr(args, "org", None) is not None:
        params = {"organization": args.org, "points": getattr(args, "point", [])}
    else:
        params = {"devices": args.device, "device": args.device[0]}
    if getattr(args, "shift", None) is not None:
        params["shift"] = args.shift
    if args.start:
        params["from"] = args.start
    if args.end:
        params["to"] = args.end
    code = _ask(args, {"name": args.report, "params": params})
    if code == 0:
        _warn_unloaded(args)
    return code


def _common(p: argparse.ArgumentParser) -> None:
    add_data_dir(p, "its journal, and the warehouse in DATA_DIR/warehouse")
    option(
        p,
        "--clickhouse-url",
        env="CLICKHOUSE_URL",
        default="",
        help="a ClickHouse server instead of chDB in the data directory",
    )
    limits = ReportLimits()
    option(
        p,
        "--one-device-days",
        type=int,
        default=limits.one_device_days,
        help="the longest period of a one-device report, in days",
    )
    option(
        p,
        "--many-devices",
        type=int,
        default=limits.many_devices,
        help="the most devices one report may cover",
    )
    option(
        p,
        "--many-devices-days",
        type=int,
        default=limits.many_devices_days,
        help="the longest period of a report on several devices, in days",
    )
    query = QueryLimits()
    option(
        p,
        "--query-timeout",
        type=float,
        default=query.timeout,
        help="seconds an analyst's query may run",
    )
    option(
        p,
        "--query-max-memory",
        type=int,
        default=query.max_memory,
        help="bytes of memory per query (1 GiB)",
    )
    option(
        p,
        "--query-max-rows",
        type=int,
        default=query.max_rows,
        help="rows in an answer; more is an error",
    )
    option(
        p,
        "--query-max-bytes",
        type=int,
        default=query.max_bytes,
        help="bytes in an answer; more is an error (64 MiB)",
    )
    option(
        p,
        "--query-concurrency",
        type=int,
        default=query.concurrency,
        help="queries the service runs at once; the rest wait",
    )


def _analyst_key(p: argparse.ArgumentParser) -> None:
    option(
        p,
        "--analyst-key",
        default="",
        help="the query service's key (default: OFD_ANALYST_KEY, else DATA_DIR/analyst.key)",
    )


def _format(p: argparse.ArgumentParser) -> None:
    option(p, "--format", choices=FORMATS, default="table", help="how rows are printed")


def add_warehouse_commands(sub: "argparse._SubParsersAction[Any]") -> None:
    load = sub.add_parser("load", help="load the journal into the warehouse and answer queries")
    _common(load)
    option(
        load,
        "--port",
        type=int,
        default=0,
        help="query endpoint port on 127.0.0.1 (0: one the kernel picks)",
    )
    option(load, "--batch", type=int, default=DEFAULT_BATCH_RECORDS, help="records per insert")
    option(
        load,
        "--metrics-host",
        env="OFD_METRICS_HOST",
        default="127.0.0.1",
        help="address of the loader's Prometheus /metrics alone",
    )
    option(
        load,
        "--metrics-port",
        type=int,
        env="OFD_LOADER_METRICS_PORT",
        default=0,
        help="port of /metrics on --metrics-host, e.g. 7782; 0: on the query port only",
    )
    option(load, "--once", action="store_true", help="load what is there, then exit")
    option(
        load,
        "--kafka-bootstrap",
        env="OFD_KAFKA_BOOTSTRAP",
        default="",
        help="read the journal from Kafka (host:port) instead of DATA_DIR/journal",
    )
    option(
        load,
        "--kafka-topic",
        env="OFD_KAFKA_TOPIC",
        default=DEFAULT_TOPIC,
        help="the journal topic",
    )
    option(
        load,
        "--kafka-group",
        env="OFD_KAFKA_GROUP",
        default=DEFAULT_GROUP,
        help="the loaders' consumer group: loaders of one group split the topic's partitions",
    )
    add_kafka_security(load)
    add_log_level(load)
    load.set_defaults(run=_run_load)

    q = sub.add_parser("query", help="read-only SQL over the warehouse")
    _common(q)
    _analyst_key(q)
    q.add_argument(
        "sql", nargs="?", default="", help="one read-only statement (--schema lists the tables)"
    )
    option(
        q,
        "--schema",
        action="store_true",
        help="print the tables, their units and how to aggregate them, instead of a query",
    )
    _format(q)
    q.set_defaults(run=_run_query)

    export = sub.add_parser(
        "export", help="a query's whole answer to a CSV file, streamed (no row cap)"
    )
    _common(export)
    _analyst_key(export)
    export.add_argument("sql", help="one read-only statement (ofd query --schema: the tables)")
    option(export, "--output", "-o", required=True, help="the file to write")
    option(
        export, "--format", choices=sorted(EXPORT_FORMATS), default="csv", help="the file's format"
    )
    export.set_defaults(run=_run_export)

    report = sub.add_parser("report", help="named reports").add_subparsers(
        dest="report", required=True
    )
    for name, text in (
        ("receipts", "a device's receipts for a shift or a period (offline ones marked А)"),
        ("zx", "a device's X and Z reports in a period"),
        ("summary", "per device and day: receipts, offline, revenue"),
        ("points", "per trade point and day of one organization: receipts, revenue, sales"),
        ("organization", "per day, one organization's trade points together"),
    ):
        p = report.add_parser(name, help=text)
        _common(p)
        _analyst_key(p)
        if name in ("points", "organization"):
            option(p, "--org", type=int, required=True, help="the organization's id")
        else:
            option(
                p, "--device", type=int, action="append", required=True, help="system id (repeat)"
            )
        if name == "points":
            option(
                p,
                "--point",
                type=int,
                action="append",
                default=[],
                help="only this trade point (repeat; default: all of the organization's)",
            )
        if name == "receipts":
            option(p, "--shift", type=int, help="the shift's number")
        option(p, "--from", dest="start", help="first day, YYYY-MM-DD")
        option(p, "--to", dest="end", help="last day, YYYY-MM-DD (default: --from)")
        _format(p)
        p.set_defaults(run=_run_report)
