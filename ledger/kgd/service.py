"""`ofd forward`: the process that talks to the KGD, apart from the gateways.

It runs the forwarder (journal -> KGD) and the application worker (kgd_applications -> KGD and
back) as named tasks, and serves their metrics on its own /metrics port. A KGD that is down or
slow only makes this process wait and retry: the gateways keep answering registers, since
nothing on their path waits for it. It reads the local journals under DATA_DIR/journal, or the
Kafka topic as a member of its own consumer group; its positions and the applications live in
the registry's PostgreSQL (the embedded one in DATA_DIR/pg when no URL is given).

`status` reads what `ofd kgd status` shows: per source its position, documents forwarded, the
oldest unforwarded document's age, backlog and last error, and the applications by status.
"""

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from ledger.embedded_pg import database_url
from ledger.journal.kafka import DEFAULT_TOPIC, PLAINTEXT, KafkaSecurity
from ledger.kgd.applications import ApplicationSettings, ApplicationWorker
from ledger.kgd.filing import counts_by_status
from ledger.kgd.forwarder import DEFAULT_GROUP, Forwarder, ForwarderSettings
from ledger.kgd.http import HttpKgd, KgdSettings
from ledger.kgd.metrics import ForwarderMetrics
from ledger.migrate import migrate
from ledger.warehouse.kafka_source import KafkaGroupMember
from ledger.warehouse.loader import Source, local_sources

log = structlog.get_logger(__name__)

POOL_SIZE = 4
POSITION_TIMEOUT = 10.0  # seconds a Kafka assignment waits for a position from PostgreSQL
RECENT_PROBLEMS = 10


@dataclass(frozen=True, slots=True)
class ForwardSettings:
    data_dir: Path
    kgd: KgdSettings
    database_url: str | None = None  # None: the embedded PostgreSQL in data_dir/pg
    forwarder: ForwarderSettings = field(default_factory=ForwarderSettings)
    applications: ApplicationSettings | None = field(default_factory=ApplicationSettings)
    kafka_bootstrap: str | None = None  # read the Kafka journal instead of the local ones
    kafka_security: KafkaSecurity = PLAINTEXT  # TLS / SASL toward the brokers
    kafka_topic: str = DEFAULT_TOPIC
    kafka_group: str = DEFAULT_GROUP
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None  # None: no /metrics; 0: a port the kernel picks


@dataclass(slots=True)
class RunningForwarder:
    forwarder: Forwarder
    worker: ApplicationWorker | None
    metrics_port: int | None


def _sources(
    settings: ForwardSettings, position: Callable[[str], int]
) -> Callable[[], Sequence[Source]]:
    if settings.kafka_bootstrap is None:
        journals = settings.data_dir / "journal"
        return lambda: local_sources(journals)
    return KafkaGroupMember(
        settings.kafka_bootstrap,
        settings.kafka_topic,
        position,
        group=settings.kafka_group,
        batch_records=settings.forwarder.batch_documents,
        security=settings.kafka_security,
    )


async def run_forward(
    settings: ForwardSettings,
    stop: asyncio.Event,
    on_ready: Callable[[RunningForwarder], None] = lambda _: None,
) -> RunningForwarder:
    """Forwards (and works applications) until `stop` is set."""
    dsn = await database_url(settings.data_dir, settings.database_url)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=POOL_SIZE)
    kgd = HttpKgd(settings.kgd)
    loop = asyncio.get_running_loop()
    forwarder: Forwarder | None = None

    def position(name: str) -> int:
        # Called by the consumer group's assignment, in the thread that polls it.
        assert forwarder is not None
        future = asyncio.run_coroutine_threadsafe(forwarder.read_position(name), loop)
        return future.result(POSITION_TIMEOUT)

    sources = _sources(settings, position)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        metrics = ForwarderMetrics()
        forwarder = Forwarder(
            pool, kgd, sources, settings.forwarder, on_delivered=metrics.delay.observe
        )
        worker = (
            None
            if settings.applications is None
            else ApplicationWorker(pool, kgd, settings.applications)
        )
        metrics.watch(forwarder, worker)
        port = None
        if settings.metrics_port is not None:
            port = metrics.start_http(settings.metrics_host, settings.metrics_port)
        running = RunningForwarder(forwarder, worker, port)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(forwarder.run(stop), name="kgd-forwarder")
            work = None if worker is None else tasks.create_task(worker.run(), name="kgd-apps")
            on_ready(running)
            await stop.wait()
            if work is not None:
                work.cancel()
        return running
    finally:
        if isinstance(sources, KafkaGroupMember):
            await asyncio.to_thread(sources.close)  # leaves the group: others take over at once
        await kgd.close()
        await pool.close()


def _age(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else max((now - then).total_seconds(), 0.0)


async def status(conn: asyncpg.Connection) -> dict[str, Any]:
    """What `ofd kgd status` shows, as JSON-ready data (ages in seconds)."""
    await migrate(conn)
    now: datetime = await conn.fetchval("SELECT now()")
    rows = await conn.fetch(
        "SELECT source, position, forwarded, oldest_unforwarded_at, backlog, backlog_unit,"
        " last_error, last_error_at, updated_at FROM kgd_positions ORDER BY source"
    )
    sources = [
        {
            "source": r["source"],
            "position": r["position"],
            "forwarded": r["forwarded"],
            "oldest_unforwarded_seconds": _age(now, r["oldest_unforwarded_at"]) or 0.0,
            "backlog": r["backlog"],
            "backlog_unit": r["backlog_unit"],
            "last_error": r["last_error"],
            "last_error_seconds_ago": _age(now, r["last_error_at"]),
            "reported_seconds_ago": _age(now, r["updated_at"]),
        }
        for r in rows
    ]
    problems = await conn.fetch(
        "SELECT system_id, kind, status, reason, last_error, attempts FROM kgd_applications"
        " WHERE status = 'refused' OR last_error <> '' ORDER BY id DESC LIMIT $1",
        RECENT_PROBLEMS,
    )
    return {
        "lag_seconds": max((s["oldest_unforwarded_seconds"] for s in sources), default=0.0),
        "forwarded": sum(s["forwarded"] for s in sources),
        "sources": sources,
        "applications": await counts_by_status(conn),
        "application_problems": [dict(r) for r in problems],
    }
