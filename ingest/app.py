"""Assembles one gateway process: state store, journal, group commit, the TCP server, the gRPC
servers (control API; device ingest on its own port), health, reflection and the metrics."""

import asyncio
import contextlib
import gc
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc.aio

from ingest import grpc_ingest, notice_scan
from ingest.control.methods import SERVICE as CONTROL_SERVICE
from ingest.control.service import ControlService
from ingest.grpc_ingest import GrpcIngest
from ingest.journals import open_journal
from ingest.metrics import GatewayMetrics
from ingest.notifications import Notifier, no_notify, scan_forever
from ingest.pipeline import Pipeline, PipelineSettings
from ingest.process import start_process
from ingest.settings import Settings
from ingest.tcp_server import TcpServer
from ingest.tls import ServerTls
from ledger.access import ensure_bootstrap_key
from ledger.embedded_pg import database_url
from ledger.group_commit import GroupCommitter
from ledger.migrate import migrate

POOL_SIZE = 8
# Against the default (700), 5 A/B pairs of `benchmarks.run --modes persistent`: p99 11.6-14.1 ms
# against 17.1-20.3 ms (fewer collector pauses in the tail), gateway CPU 3% less per receipt.
GC_YOUNG_THRESHOLD = 10_000
# On shutdown, requests already in the pipeline get this long to be made durable and answered.
DRAIN_SECONDS = 5.0


@dataclass(slots=True)
class RunningGateway:
    tcp: TcpServer
    control_port: int
    pipeline: Pipeline
    committer: GroupCommitter
    database_url: str
    metrics: GatewayMetrics
    metrics_port: int | None = None  # None: /metrics not served
    grpc_port: int | None = None  # None: no gRPC device ingest
    notifier: Notifier | None = None  # None: no MQTT notifications


class GrpcServer:
    """One gRPC server with a service, the standard health service and reflection."""

    def __init__(
        self,
        address: str,
        handler: grpc.GenericRpcHandler,
        service: str,
        *,
        tls: ServerTls | None = None,
        **options: Any,
    ) -> None:
        self._server = grpc.aio.server(**options)
        self._server.add_generic_rpc_handlers([handler])
        self._services = (service,)
        self._health = grpc_ingest.add_health_and_reflection(self._server, self._services)
        if tls is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, tls.credentials())

    async def start(self) -> None:
        await self._server.start()
        await grpc_ingest.mark_serving(self._health, self._services)

    async def mark_stopping(self) -> None:
        await self._health.enter_graceful_shutdown()

    async def stop(self) -> None:
        await self._server.stop(grace=1.0)


def _tcp_server(settings: Settings, pipeline: Pipeline, metrics: GatewayMetrics) -> TcpServer:
    """The device TCP server, its limits and the refusal log cap watched by the metrics."""
    tcp = TcpServer(settings.server, metrics.timed(pipeline.handle, "tcp"))
    metrics.watch_tcp(tcp.stats)
    metrics.watch_guessing(tcp.guard)
    metrics.watch_refusal_logs(pipeline.refusal_logs)
    return tcp


def _grpc_servers(
    settings: Settings,
    pool: asyncpg.Pool,
    pipeline: Pipeline,
    ingest: GrpcIngest,
    metrics: GatewayMetrics,
) -> tuple[GrpcServer, GrpcServer | None]:
    """Two gRPC servers: the control API for operators (control_host; no device may reach it)
    and, when configured, device ingest beside the TCP port."""
    control_service = ControlService(
        pool,
        pipeline.forget,
        require_auth=settings.control_auth,
        notify=pipeline.on_event,
        auth_failures=settings.control_auth_failures,
    )
    metrics.watch_failures("control_key", control_service.auth_failures)
    # gRPC binds with SO_REUSEPORT unless told not to: a second gateway on the same ports would
    # silently share them. Shared only when asked (--reuse-port, several processes per host).
    reuse = (("grpc.so_reuseport", int(settings.server.reuse_port)),)
    control = GrpcServer(
        f"{settings.control_host}:{settings.control_port}",
        control_service.generic_handler(),
        CONTROL_SERVICE,
        tls=settings.control_tls,
        options=reuse,
    )
    if settings.grpc_port is None:
        return control, None
    return control, GrpcServer(
        f"{settings.server.host}:{settings.grpc_port}",
        ingest.generic_handler(),
        grpc_ingest.SERVICE,
        tls=settings.grpc_tls,
        options=grpc_ingest.SERVER_OPTIONS + reuse,
        maximum_concurrent_rpcs=grpc_ingest.MAX_CONCURRENT_RPCS,
    )


def _pipeline(
    settings: Settings, pool: asyncpg.Pool, committer: GroupCommitter, metrics: GatewayMetrics
) -> tuple[Pipeline, Notifier | None]:
    """The request pipeline and, with an MQTT URL, the notifier it hands events to."""
    pipeline = Pipeline(
        pool,
        committer,
        PipelineSettings(
            settings.gateway_id,
            settings.fiscal,
            settings.commit.db_timeout,
            settings.refusal_logs_per_device,
        ),
    )
    metrics.watch_shifts(pipeline.shift_stats)
    metrics.watch_offline(pool)
    mqtt = settings.mqtt()
    notifier = None if mqtt is None else Notifier(mqtt)
    if notifier is not None:
        pipeline.on_event = notifier.publish
        metrics.watch_notifier(notifier.stats)
    return pipeline, notifier


def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings) -> AsyncIterator[RunningGateway]:
    """A started gateway; leaving the block drains in-flight requests and shuts it down."""
    dsn = await database_url(settings.data_dir, settings.database_url)
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=POOL_SIZE)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
            if settings.control_auth:
                await ensure_bootstrap_key(conn, settings.data_dir)
        journal = await open_journal(settings)
        metrics = GatewayMetrics(settings.gateway_id)
        committer = GroupCommitter(pool, metrics.counting(journal), settings.commit)
        metrics.watch_commits(committer)
        pipeline, notifier = _pipeline(settings, pool, committer, metrics)
        tcp = _tcp_server(settings, pipeline, metrics)
        ingest = GrpcIngest(metrics.timed(pipeline.handle, "grpc"), tcp.guard)
        metrics.watch_frame_errors("grpc", lambda: ingest.stats.bad_metadata)
        control, grpc_ingest_server = _grpc_servers(settings, pool, pipeline, ingest, metrics)
        grpc_servers = [control] if grpc_ingest_server is None else [control, grpc_ingest_server]
        async with asyncio.TaskGroup() as tasks:
            commit_task = tasks.create_task(committer.run(), name="group-commit")
            background = _background_tasks(tasks, settings, pool, metrics, notifier)
            try:
                for server in grpc_servers:
                    await server.start()
                await tcp.start()
            except BaseException:
                # E.g. the TCP port is taken: the started servers stop on this loop, not in a
                # finalizer after it closed, and the task group ends with the error alone.
                for server in grpc_servers:
                    await server.stop()
                _cancel([commit_task, *background])
                raise
            metrics_port: int | None = None
            try:
                if settings.metrics_port is not None:
                    metrics_port = metrics.start_http(settings.metrics_host, settings.metrics_port)
                yield RunningGateway(
                    tcp,
                    control.port,
                    pipeline,
                    committer,
                    dsn,
                    metrics,
                    metrics_port,
                    None if grpc_ingest_server is None else grpc_ingest_server.port,
                    notifier,
                )
            finally:
                for server in grpc_servers:
                    await server.mark_stopping()
                await tcp.stop()
                await _drain(tcp)
                for server in reversed(grpc_servers):
                    await server.stop()
                await ingest.drain(DRAIN_SECONDS)
                await metrics.stop_http()
                _cancel([commit_task, *background])
        await journal.close()
    finally:
        await pool.close()


def _background_tasks(
    tasks: asyncio.TaskGroup,
    settings: Settings,
    pool: asyncpg.Pool,
    metrics: GatewayMetrics,
    notifier: Notifier | None,
) -> list[asyncio.Task[None]]:
    """The periodic tasks beside the servers, cancelled when the gateway stops."""
    background: list[asyncio.Task[None]] = []
    if settings.metrics_port is not None:
        # The offline gauges are a database read: in the background, never on a scrape.
        background.append(
            tasks.create_task(metrics.refresh_offline_forever(), name="offline-gauges")
        )
    if notifier is not None:
        background.append(tasks.create_task(notifier.run(), name="mqtt-notifier"))
    # The scans run without MQTT too: the cabinet's notices and the subscriptions' terms
    # depend on them.
    background += [
        tasks.create_task(
            scan_forever(
                pool,
                no_notify if notifier is None else notifier.publish,
                settings.offline_alert_seconds,
                settings.alert_scan_seconds,
            ),
            name="alert-scan",
        ),
        tasks.create_task(
            notice_scan.scan_forever(
                pool, settings.subscription_ending_days, settings.alert_scan_seconds
            ),
            name="notice-scan",
        ),
    ]
    return background


async def _drain(tcp: TcpServer) -> None:
    """Waits (bounded) for open connections to finish the requests they started."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_SECONDS
    # Polling is deliberate: connections close on their own schedule and the wait is bounded.
    while tcp.stats.active and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


def _tune_garbage_collector() -> None:
    """Every request allocates a few dozen short-lived objects and frees them by reference
    counting; the cycle collector's young-generation passes (every 700 allocations by default)
    find almost nothing and cost CPU. Objects made at start-up (modules, schemas, pools) are
    frozen out of collection; a young pass runs every GC_YOUNG_THRESHOLD allocations."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def serve(settings: Settings) -> None:
    """`ofd serve`: runs until SIGINT or SIGTERM, printing one ready line for scripts."""
    start_process("gateway", settings.log_level)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with running_gateway(settings) as gateway:
        _tune_garbage_collector()
        metrics = (
            ""
            if gateway.metrics_port is None
            else f" metrics={settings.metrics_host}:{gateway.metrics_port}"
        )
        grpc = (
            "" if gateway.grpc_port is None else f" grpc={settings.server.host}:{gateway.grpc_port}"
        )
        print(
            f"ofd gateway ready tcp={settings.server.host}:{gateway.tcp.port}"
            f" control={settings.control_host}:{gateway.control_port}"
            f"{grpc}"
            f" gateway_id={settings.gateway_id} data_dir={settings.data_dir}{metrics}",
            flush=True,
        )
        await stop.wait()
    print("ofd gateway stopped", flush=True)
