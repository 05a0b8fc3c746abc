"""PostgreSQL failover under load: a primary with a synchronous streaming replica (Debian's
binaries, on loopback), the gateway on a multi-host DSN that follows the writable server
(`target_session_attrs=read-write`). The primary is crashed mid-stream and the replica promoted:
devices get 254 during the switch, then carry on with the tokens they were last given, and
nothing that was acknowledged is lost.

Synchronous replication is what makes that hold: an acknowledged state change (a rotated token)
is on the replica before the gateway answers, so the promoted replica knows every token a device
was told. With asynchronous replication a crash can lose the last rotations, and those devices
would get INVALID_TOKEN (the README's "Running it at scale" says so).
"""

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import gateway_settings, register_device
from wire import numbered_ticket

from ingest.app import running_gateway
from ledger.journal.view import journal_records
from ledger.wire import ResultCode
from simulators.kkm import SimulatedKkm
from simulators.stage.postgres import PostgresServer

pytestmark = pytest.mark.topology

DEVICES = 4
BEFORE_FAILOVER = 40  # receipts acknowledged (all devices) before the primary is crashed
AFTER_FAILOVER = 5  # receipts each device must have acknowledged after the promotion
DEADLINE = 120.0  # seconds the whole exchange may take (liveness, not a timing assertion)
VERSION = 203
START = datetime(2026, 12, 1, 9, 0, 0)


@pytest.fixture
def pg_pair() -> Iterator[tuple[PostgresServer, PostgresServer]]:
    """A primary that waits for its replica's flush on every commit, and the replica."""
    primary = PostgresServer.create(fast=False, settings=("synchronous_standby_names=*",))
    try:
        replica = PostgresServer.replica_of(primary)
        try:
            yield primary, replica
        finally:
            replica.remove()
    finally:
        primary.remove()


@dataclasses.dataclass
class Till:
    kkm: SimulatedKkm
    acknowledged: list[int] = dataclasses.field(default_factory=list)  # document numbers
    unavailable: int = 0  # 254 answers seen
    last_ok_at: float = 0.0


def receipt(number: int) -> Any:
    return numbered_ticket(VERSION, number, START)


async def sell(till: Till, stop: asyncio.Event, progress: asyncio.Condition) -> None:
    """Receipts one after another; a 254 is resent (the same frame) until it is answered."""
    number = 0
    while not stop.is_set():
        number += 1
        response = await till.kkm.send(receipt(number))
        while response.result.result_code == ResultCode.SERVICE_TEMPORARILY_UNAVAILABLE:
            till.unavailable += 1
            await asyncio.sleep(0.05)
            response = await till.kkm.retransmit()
        assert response.result.result_code == ResultCode.OK, response.result.result_text
        till.acknowledged.append(number)
        till.last_ok_at = time.monotonic()
        async with progress:
            progress.notify_all()


async def test_promoting_the_replica_loses_nothing_acknowledged(
    pg_pair: tuple[PostgresServer, PostgresServer], tmp_path: Path
) -> None:
    primary, replica = pg_pair
    admin = await asyncpg.connect(f"{primary.url}/postgres")
    try:
        await admin.execute("CREATE DATABASE ofd")
    finally:
        await admin.close()
    hosts = f"127.0.0.1:{primary.port},127.0.0.1:{replica.port}"
    dsn = f"postgresql://postgres@{hosts}/ofd?target_session_attrs=read-write"
    devices = [await register_device(dsn) for _ in range(DEVICES)]
    settings = gateway_settings(tmp_path, dsn)
    stop = asyncio.Event()
    progress = asyncio.Condition()
    async with asyncio.timeout(DEADLINE), running_gateway(settings) as gateway:
        tills = [
            Till(
                SimulatedKkm(
                    "127.0.0.1",
                    gateway.tcp.port,
                    version=VERSION,
                    system_id=d.system_id,
                    token=d.token,
                    retries=0,
                )
            )
            for d in devices
        ]
        selling = [asyncio.create_task(sell(till, stop, progress)) for till in tills]
        try:
            async with progress:
                await progress.wait_for(
                    lambda: sum(len(t.acknowledged) for t in tills) >= BEFORE_FAILOVER
                )
            crashed_at = time.monotonic()
            await asyncio.to_thread(primary.stop, "immediate")
            at_crash = {t.kkm.system_id: len(t.acknowledged) for t in tills}
            await asyncio.to_thread(replica.promote)
            async with progress:
                await progress.wait_for(
                    lambda: all(
                        len(t.acknowledged) >= at_crash[t.kkm.system_id] + AFTER_FAILOVER
                        for t in tills
                    )
                )
        finally:
            stop.set()
            for task in selling:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        recovered = max(t.last_ok_at for t in tills) - crashed_at
        print(
            f"failover: {sum(t.unavailable for t in tills)} answers 254 across {DEVICES} devices;"
            f" every device served again within {recovered:.1f} s of the crash"
        )
        # Every device's last token works on the promoted server.
        for till in tills:
            number = till.acknowledged[-1] + 1
            response = await till.kkm.send(receipt(number))
            assert response.result.result_code == ResultCode.OK, response.result.result_text
            till.acknowledged.append(number)
        assert sum(t.unavailable for t in tills) > 0, "the switch was seen by the devices"

    # The promoted server counts exactly what the devices were told was accepted...
    conn = await asyncpg.connect(f"{replica.url}/ofd")
    try:
        for till in tills:
            accepted = await conn.fetchval(
                "SELECT documents_accepted FROM device_state WHERE system_id = $1",
                till.kkm.system_id,
            )
            assert accepted == len(till.acknowledged)
            assert till.acknowledged == list(range(1, len(till.acknowledged) + 1))
    finally:
        await conn.close()
    # ...and the journal holds every acknowledged document.
    journaled = {r.document_id for r in journal_records(tmp_path / "journal")}
    for till in tills:
        sid = till.kkm.system_id
        assert {f"{sid}/s1/d{number}" for number in till.acknowledged} <= journaled
