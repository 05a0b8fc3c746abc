"""Forwarding the journal to the KGD, against the simulated KGD over its real HTTP wire, from a
gateway's local journal: every acknowledged document reaches the KGD exactly once, in each
register's order and unchanged; across `ofd forward` killed (SIGKILL) while a batch is in flight
and restarted; past a KGD that refuses a batch; and through a KGD outage (compressed in time)
during which the gateway keeps serving registers, the lag grows and is measured, and the
backlog drains afterwards.
"""

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
from kgd_stage import Registers, assert_exactly_once, assert_unchanged, start_forwarder, until

from ingest.app import RunningGateway
from ingest.cli import main
from ledger.kgd.forwarder import Forwarder, ForwarderSettings
from ledger.kgd.http import HttpKgd, KgdSettings
from ledger.kgd.metrics import ForwarderMetrics
from ledger.kgd.retry import Backoff
from ledger.warehouse.loader import local_sources
from simulators.kgd import KgdFaults, SimulatedKgd

DEVICES = 3
WAIT = 30.0


@dataclass
class Stage:
    gateway: RunningGateway
    data_dir: Path
    database_url: str
    kgd: SimulatedKgd
    kgd_url: str
    registers: Registers
    pool: asyncpg.Pool
    clients: list[HttpKgd] = field(default_factory=list)

    def forwarder(self, batch: int = 7) -> Forwarder:
        settings = ForwarderSettings(
            batch_documents=batch, poll_interval=0.02, backoff=Backoff(base=0.02, cap=0.2)
        )
        client = HttpKgd(KgdSettings(self.kgd_url, timeout=2.0))
        self.clients.append(client)
        return Forwarder(
            self.pool, client, lambda: local_sources(self.data_dir / "journal"), settings
        )


@pytest.fixture
async def stage(tmp_path: Path, gateway: RunningGateway, database_url: str) -> AsyncIterator[Stage]:
    kgd = SimulatedKgd()
    url = await kgd.start()
    registers = await Registers.start(database_url, gateway.tcp.port, DEVICES)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    stage = Stage(gateway, tmp_path, database_url, kgd, url, registers, pool)
    try:
        yield stage
    finally:
        for client in stage.clients:
            await client.close()
        await registers.close()
        await pool.close()
        await kgd.stop()


async def _drain(forwarder: Forwarder, stage: Stage) -> None:
    async with asyncio.timeout(WAIT):
        while len(stage.kgd.documents) < stage.registers.total or not forwarder.caught_up():
            if not await forwarder.step():
                await asyncio.sleep(0.02)


@pytest.mark.integration
async def test_every_document_reaches_the_kgd_once_in_order_and_unchanged(stage: Stage) -> None:
    await stage.registers.send(10)
    forwarder = stage.forwarder()
    metrics = ForwarderMetrics()
    metrics.watch(forwarder, None)
    try:
        await _drain(forwarder, stage)
        assert_exactly_once(stage.kgd, stage.registers)
        assert_unchanged(stage.kgd, stage.data_dir / "journal")
        assert stage.kgd.counters.duplicates == 0
        assert forwarder.oldest_age() == 0.0
        sample = metrics.registry.get_sample_value
        assert sample("ofd_kgd_lag_seconds") == 0.0
        assert sample("ofd_kgd_documents_total", {"ack": "accepted"}) == 30
        assert sample("ofd_kgd_deadline_seconds") == 900.0
        # More documents later: forwarded from the durable position, nothing again.
        await stage.registers.send(2)
        await _drain(forwarder, stage)
        assert_exactly_once(stage.kgd, stage.registers)
        assert stage.kgd.counters.duplicates == 0
    finally:
        await forwarder.close()
    async with stage.pool.acquire() as conn:
        forwarded = await conn.fetchval("SELECT sum(forwarded) FROM kgd_positions")
    assert forwarded == 36


@pytest.mark.adversity
async def test_forwarder_killed_mid_batch_resends_it_and_the_kgd_holds_each_once(
    stage: Stage,
) -> None:
    await stage.registers.send(15)
    # The KGD stores a batch, then takes its time to answer: the kill lands in that window.
    stage.kgd.faults = KgdFaults(delay=0.4)
    child = start_forwarder(stage.data_dir, stage.database_url, stage.kgd_url, batch=5)
    try:
        await until(
            lambda: stage.kgd.counters.in_flight > 0 and stage.kgd.counters.batches >= 1,
            WAIT,
            "a batch in flight after one acknowledged",
        )
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        held_at_kill = len(stage.kgd.documents)
        assert 0 < held_at_kill < stage.registers.total
        stage.kgd.faults.delay = 0.0
        await stage.registers.send(3)  # more while no forwarder runs
        child = start_forwarder(stage.data_dir, stage.database_url, stage.kgd_url, batch=5)
        await until(lambda: len(stage.kgd.documents) == stage.registers.total, WAIT, "the backlog")
        await asyncio.sleep(0.3)  # anything sent twice now would show
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
    assert_exactly_once(stage.kgd, stage.registers)
    # The batch in flight at the kill was sent again, and only that: 1..5 documents.
    assert 1 <= stage.kgd.counters.duplicates <= 5
    assert max(stage.kgd.times_received.values()) == 2


@pytest.mark.adversity
async def test_a_refused_batch_is_resent_and_recorded(stage: Stage) -> None:
    await stage.registers.send(6)
    stage.kgd.faults = KgdFaults(refuse_batches=1)
    forwarder = stage.forwarder(batch=4)
    try:
        await _drain(forwarder, stage)
    finally:
        await forwarder.close()
    assert stage.kgd.counters.refused_batches == 1
    assert forwarder.stats.failures["refused"] == 1
    assert_exactly_once(stage.kgd, stage.registers)
    assert stage.kgd.counters.duplicates == 0
    async with stage.pool.acquire() as conn:
        errors = await conn.fetch("SELECT last_error FROM kgd_positions")
    assert any("422" in r["last_error"] for r in errors)


@pytest.mark.adversity
async def test_kgd_down_for_a_stretch_the_gateway_serves_and_the_backlog_drains(
    stage: Stage, capsys: pytest.CaptureFixture[str]
) -> None:
    """An hour's outage compressed: the KGD is down while registers keep selling; every receipt
    is acknowledged all the same, the lag grows (and is reported), then the backlog drains."""
    stage.kgd.faults = KgdFaults(down=True)
    forwarder = stage.forwarder(batch=8)
    stop = asyncio.Event()
    running = asyncio.create_task(forwarder.run(stop), name="forwarder")
    try:
        for _ in range(4):
            await stage.registers.send(5)  # every receipt answered OK: asserted inside
            await asyncio.sleep(0.2)
        assert stage.kgd.documents == {}
        assert stage.kgd.counters.unavailable >= 2
        assert forwarder.oldest_age() >= 0.5
        await asyncio.sleep(1.1)  # the status row is written every second
        status = ["kgd", "status", "--database-url", stage.database_url, "--json"]
        assert await asyncio.to_thread(main, status) == 0
        report = capsys.readouterr().out
        assert '"lag_seconds": ' in report
        assert "503" in report  # the last error, for the operator

        stage.kgd.faults.down = False
        await until(lambda: len(stage.kgd.documents) == stage.registers.total, WAIT, "the backlog")
        await until(forwarder.caught_up, WAIT, "caught up")
    finally:
        stop.set()
        await running
    assert_exactly_once(stage.kgd, stage.registers)
    assert stage.kgd.counters.duplicates == 0
    assert forwarder.oldest_age() == 0.0
    assert forwarder.stats.failures["unavailable"] >= 2
