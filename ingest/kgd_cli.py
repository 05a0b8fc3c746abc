"""`ofd forward` and `ofd kgd status`: the tax authority (KGD) from the command line.

ofd forward --kgd-url URL [--data-dir D] [--database-url DSN] [--kafka-bootstrap H:P]
            [--metrics-port P] [--deadline-seconds S] [--no-applications]
    forward every journaled document to the KGD and work the registration applications
ofd kgd status [--json] [--deadline-seconds S]
    lag (the oldest undelivered document's age), backlog and last error per journal source;
    the applications by status and the recent refusals and failures
"""

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import asyncpg
import uvloop

from ingest.cli_options import add_data_dir, add_database_url, add_log_level, option
from ingest.kafka_options import add_kafka_security, kafka_security_from
from ingest.process import start_process
from ledger.embedded_pg import database_url
from ledger.journal.kafka import DEFAULT_TOPIC
from ledger.kgd.applications import ApplicationSettings
from ledger.kgd.forwarder import (
    DEFAULT_BATCH_DOCUMENTS,
    DEFAULT_DEADLINE,
    DEFAULT_GROUP,
    ForwarderSettings,
)
from ledger.kgd.http import DEFAULT_TIMEOUT, KgdSettings
from ledger.kgd.retry import Backoff
from ledger.kgd.service import ForwardSettings, RunningForwarder, run_forward, status

DEFAULT_FORWARDER_METRICS_PORT = 7783  # 7781: the cabinet, 7782: the loader
EXIT_FAILED = 1


def forward_settings(args: argparse.Namespace) -> ForwardSettings:
    if not args.kgd_url:
        raise ValueError("ofd forward needs --kgd-url (or OFD_KGD_URL)")
    return ForwardSettings(
        data_dir=Path(args.data_dir),
        database_url=args.database_url or None,
        kgd=KgdSettings(
            args.kgd_url, ofd_id=args.ofd_id, token=args.kgd_token, timeout=args.timeout
        ),
        forwarder=ForwarderSettings(
            batch_documents=args.batch,
            deadline=args.deadline_seconds,
            backoff=Backoff(base=args.backoff_base, cap=args.backoff_cap),
        ),
        applications=None
        if args.no_applications
        else ApplicationSettings(poll_interval=args.application_poll_seconds),
        kafka_bootstrap=args.kafka_bootstrap or None,
        kafka_topic=args.kafka_topic,
        kafka_group=args.kafka_group,
        kafka_security=kafka_security_from(args),
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port or None,
    )


async def _forward(settings: ForwardSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    def ready(running: RunningForwarder) -> None:
        metrics = (
            ""
            if running.metrics_port is None
            else f" metrics={settings.metrics_host}:{running.metrics_port}"
        )
        source = settings.kafka_bootstrap or str(settings.data_dir / "journal")
        print(f"ofd forwarder ready kgd={settings.kgd.url} source={source}{metrics}", flush=True)

    running = await run_forward(settings, stop, ready)
    print(f"ofd forwarder stopped forwarded={running.forwarder.stats.forwarded}", flush=True)


def _run_forward(args: argparse.Namespace) -> int:
    settings = forward_settings(args)
    start_process("forwarder", args.log_level)
    uvloop.run(_forward(settings))
    return 0


async def _status(args: argparse.Namespace) -> dict[str, Any]:
    dsn = await database_url(Path(args.data_dir), args.database_url or None)
    conn = await asyncpg.connect(dsn)
    try:
        return await status(conn)
    finally:
        await conn.close()


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f}s"
    if value < 7200:
        return f"{value / 60:.1f}m"
    return f"{value / 3600:.1f}h"


def render_status(report: dict[str, Any], deadline: float) -> str:
    lag = report["lag_seconds"]
    verdict = "LATE: past the deadline" if lag > deadline else "within the deadline"
    lines = [
        f"KGD forwarding: lag {_seconds(lag)} ({verdict} of {_seconds(deadline)}),"
        f" {report['forwarded']} documents forwarded",
    ]
    for s in report["sources"]:
        error = s["last_error"] or "none"
        if s["last_error_seconds_ago"] is not None:
            error += f" ({_seconds(s['last_error_seconds_ago'])} ago)"
        lines.append(
            f"  {s['source']}: oldest unforwarded {_seconds(s['oldest_unforwarded_seconds'])},"
            f" backlog {s['backlog']} {s['backlog_unit']}, forwarded {s['forwarded']},"
            f" position {s['position']}, reported {_seconds(s['reported_seconds_ago'])} ago;"
            f" last error: {error}"
        )
    if not report["sources"]:
        lines.append("  no source forwarded yet (is `ofd forward` running?)")
    counts = ", ".join(f"{k} {v}" for k, v in report["applications"].items())
    lines.append(f"applications: {counts}")
    for p in report["application_problems"]:
        what = f"refused: {p['reason']}" if p["status"] == "refused" else p["status"]
        if p["last_error"]:
            what += f"; {p['attempts']} failed attempts, last: {p['last_error']}"
        lines.append(f"  {p['system_id']} {p['kind']} {what}")
    return "\n".join(lines)


def _run_status(args: argparse.Namespace) -> int:
    try:
        report = asyncio.run(_status(args))
    except (OSError, asyncpg.PostgresError) as err:
        print(f"error: cannot read the KGD status: {err}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(report, default=str, sort_keys=True))
    else:
        print(render_status(report, args.deadline_seconds))
    return 0


def _database(p: argparse.ArgumentParser) -> None:
    add_data_dir(p, "its journal and embedded PostgreSQL")
    add_database_url(p)
    option(
        p,
        "--deadline-seconds",
        type=float,
        env="OFD_KGD_DEADLINE_SECONDS",
        default=DEFAULT_DEADLINE,
        help="documents must reach the KGD within this long",
    )


def add_kgd_commands(sub: "argparse._SubParsersAction[Any]") -> None:
    p = sub.add_parser("forward", help="forward the journal to the KGD and work applications")
    _database(p)
    option(p, "--kgd-url", env="OFD_KGD_URL", default="", help="the KGD's base URL (required)")
    option(p, "--kgd-token", env="OFD_KGD_TOKEN", default="", help="bearer token for the KGD")
    option(
        p, "--ofd-id", env="OFD_KGD_OFD_ID", default="ofd-gateway", help="this OFD's id at the KGD"
    )
    option(p, "--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per KGD call")
    option(p, "--batch", type=int, default=DEFAULT_BATCH_DOCUMENTS, help="documents per call")
    option(p, "--backoff-base", type=float, default=0.2, help="first retry's ceiling, seconds")
    option(p, "--backoff-cap", type=float, default=30.0, help="longest retry wait, seconds")
    option(
        p,
        "--application-poll-seconds",
        type=float,
        default=30.0,
        help="how often a sent application's decision is asked for",
    )
    option(
        p,
        "--no-applications",
        action="store_true",
        help="forward only (another process works the applications)",
    )
    option(
        p,
        "--kafka-bootstrap",
        env="OFD_KAFKA_BOOTSTRAP",
        default="",
        help="read the journal from Kafka (host:port) instead of DATA_DIR/journal",
    )
    option(
        p, "--kafka-topic", env="OFD_KAFKA_TOPIC", default=DEFAULT_TOPIC, help="the journal topic"
    )
    option(
        p,
        "--kafka-group",
        env="OFD_KGD_KAFKA_GROUP",
        default=DEFAULT_GROUP,
        help="the forwarders' consumer group (apart from the warehouse loaders')",
    )
    add_kafka_security(p)
    option(
        p,
        "--metrics-host",
        env="OFD_METRICS_HOST",
        default="127.0.0.1",
        help="address of the forwarder's Prometheus /metrics",
    )
    option(
        p,
        "--metrics-port",
        type=int,
        env="OFD_KGD_METRICS_PORT",
        default=DEFAULT_FORWARDER_METRICS_PORT,
        help="Prometheus /metrics port of the forwarder; 0 disables",
    )
    add_log_level(p)
    p.set_defaults(run=_run_forward)

    kgd = sub.add_parser("kgd", help="the tax authority (KGD)").add_subparsers(
        dest="action", required=True
    )
    p = kgd.add_parser("status", help="forwarding lag, backlog, last error; applications")
    _database(p)
    p.set_defaults(run=_run_status)
