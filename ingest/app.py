"""Assembles one gateway process: state store, journal, group commit, TCP and control servers."""

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import grpc.aio

from ingest.control import ControlService
from ingest.logs import configure_logging
from ingest.pipeline import Pipeline, PipelineSettings
from ingest.settings import Settings
from ingest.tcp_server import TcpServer
from ledger.embedded_pg import start_embedded_postgres
from ledger.group_commit import GroupCommitter
from ledger.journal import LocalJournal
from ledger.migrate import migrate

POOL_SIZE = 8
# On shutdown, requests already in the pipeline get this long to be made durable and answered.
DRAIN_SECONDS = 5.0


@dataclass(slots=True)
class RunningGateway:
    tcp: TcpServer
    control_port: int
    pipeline: Pipeline
    committer: GroupCommitter
    database_url: str


async def database_url_for(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    return await asyncio.to_thread(start_embedded_postgres, settings.data_dir / "pg")


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings) -> AsyncIterator[RunningGateway]:
    """A started gateway; leaving the block drains in-flight requests and shuts it down."""
    dsn = await database_url_for(settings)
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=POOL_SIZE)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        journal = LocalJournal(settings.journal_dir)
        committer = GroupCommitter(pool, journal, settings.commit)
        pipeline = Pipeline(
            pool,
            committer,
            PipelineSettings(settings.gateway_id, settings.fiscal, settings.commit.db_timeout),
        )
        tcp = TcpServer(settings.server, pipeline.handle)
        control = grpc.aio.server()
        control.add_generic_rpc_handlers([ControlService(pool, pipeline.forget).generic_handler()])
        control_port = control.add_insecure_port(f"{settings.control_host}:{settings.control_port}")
        async with asyncio.TaskGroup() as tasks:
            commit_task = tasks.create_task(committer.run(), name="group-commit")
            await control.start()
            await tcp.start()
            try:
                yield RunningGateway(tcp, control_port, pipeline, committer, dsn)
            finally:
                await tcp.stop()
                await _drain(tcp)
                await control.stop(grace=1.0)
                commit_task.cancel()
        await journal.close()
    finally:
        await pool.close()


async def _drain(tcp: TcpServer) -> None:
    """Waits (bounded) for open connections to finish the requests they started."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_SECONDS
    # Polling is deliberate: connections close on their own schedule and the wait is bounded.
    while tcp.stats.active and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


async def serve(settings: Settings) -> None:
    """`ofd serve`: runs until SIGINT or SIGTERM, printing one ready line for scripts."""
    configure_logging()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with running_gateway(settings) as gateway:
        print(
            f"ofd gateway ready tcp={settings.server.host}:{gateway.tcp.port}"
            f" control={settings.control_host}:{gateway.control_port}"
            f" gateway_id={settings.gateway_id} data_dir={settings.data_dir}",
            flush=True,
        )
        await stop.wait()
    print("ofd gateway stopped", flush=True)
