"""Group loads against the real PostgreSQL: concurrent first requests of many devices are read
in a few rounds, each request gets its own device's state (None for an unknown one), and a
database that fails fails every waiting load with a retriable SinkError instead of hanging."""

import asyncio
from collections.abc import Sequence

import asyncpg
import pytest
from conftest import register_device

from ledger import state_loads
from ledger.device_state import DeviceState
from ledger.errors import SinkError
from ledger.state_loads import LOAD_WORKERS, GroupLoads
from ledger.state_store import Conn, load_states

DEVICES = 40
UNKNOWN = 4_000_000_000
TIMEOUT = 10.0


async def test_concurrent_loads_share_rounds_and_each_gets_its_own_state(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    devices = [await register_device(database_url) for _ in range(DEVICES)]
    rounds: list[int] = []

    async def counted(conn: Conn, ids: Sequence[int], *, timeout: float) -> dict[int, DeviceState]:
        rounds.append(len(ids))
        return await load_states(conn, ids, timeout=timeout)

    monkeypatch.setattr(state_loads, "load_states", counted)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    try:
        loads = GroupLoads(pool, timeout=TIMEOUT)
        wanted = [d.system_id for d in devices] + [UNKNOWN, devices[0].system_id]
        async with asyncio.timeout(TIMEOUT):
            states = await asyncio.gather(*(loads.load(sid) for sid in wanted))
    finally:
        await pool.close()
    for sid, state in zip(wanted, states, strict=True):
        if sid == UNKNOWN:
            assert state is None
        else:
            assert state is not None
            assert state.system_id == sid
    by_id = {d.system_id: d.token for d in devices}
    assert all(s.token == by_id[s.system_id] for s in states if s is not None)
    # Asked all at once: the first round takes the first device, the rest wait for the next.
    assert len(rounds) <= 1 + LOAD_WORKERS
    assert sum(rounds) == DEVICES + 1  # the device asked twice is read once


async def test_a_failing_database_fails_every_waiting_load_and_the_next_ones_work(
    database_url: str,
) -> None:
    device = await register_device(database_url)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    loads = GroupLoads(pool, timeout=TIMEOUT)
    await pool.close()
    async with asyncio.timeout(TIMEOUT):
        results = await asyncio.gather(
            *(loads.load(device.system_id + n) for n in range(5)), return_exceptions=True
        )
    assert all(isinstance(r, SinkError) and r.retriable for r in results), results
    fresh = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        loads = GroupLoads(fresh, timeout=TIMEOUT)
        async with asyncio.timeout(TIMEOUT):
            state = await loads.load(device.system_id)
        assert state is not None
        assert state.token == device.token
    finally:
        await fresh.close()
