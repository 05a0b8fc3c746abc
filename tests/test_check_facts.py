"""The registry facts the public check reads (cabinet/check_facts.py), against a real PostgreSQL:
kept a minute and no longer, a KGD number naming nothing never kept, a bounded number kept,
and the seller read in one round trip (ledger/registry.seller_of_receipt)."""

from collections.abc import AsyncIterator
from dataclasses import replace

import asyncpg
import pytest

from cabinet.check_facts import CheckFacts
from ledger import registry
from ledger.lifecycle import DeviceStatus
from ledger.migrate import migrate
from ledger.state_store import Conn

TTL = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    made = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert made is not None
    async with made.acquire() as conn:
        await migrate(conn)
    try:
        yield made
    finally:
        await made.close()


async def _seller(conn: Conn, n: int) -> tuple[registry.Organization, int]:
    org = await registry.add_organization(
        conn, registry.Organization(0, f"{n:012d}", f"ТОО Чек {n}", "Алматы", "", "47111")
    )
    point = await registry.add_trade_point(
        conn, registry.TradePoint(0, org.id, f"Точка {n}", "Абай 1", "", 43, 76)
    )
    return org, point.id


async def _device(conn: Conn, system_id: int, point_id: int) -> None:
    await registry.add_device(
        conn,
        registry.Device(system_id, f"KGD{system_id}", f"SN{system_id}", "KKM", 2025, point_id,
                        DeviceStatus.AWAITING_REGISTRATION),
    )  # fmt: skip


async def test_the_seller_is_kept_a_minute_then_read_again(pool: asyncpg.Pool) -> None:
    clock = Clock()
    facts = CheckFacts(pool, ttl=TTL, clock=clock)
    async with pool.acquire() as conn:
        org, point_id = await _seller(conn, 1)
    seller, point = await facts.seller(org.id, point_id)
    assert seller == org
    assert point is not None
    assert (point.id, point.title) == (point_id, "Точка 1")
    async with pool.acquire() as conn:
        renamed = await registry.update_organization(conn, replace(org, title="ТОО Новое"))
    clock.now += TTL - 1
    assert (await facts.seller(org.id, point_id))[0] == org  # kept: the edit shows later
    clock.now += 1
    assert (await facts.seller(org.id, point_id))[0] == renamed


async def test_a_deleted_point_leaves_the_seller_alone(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        org, point_id = await _seller(conn, 2)
        await registry.delete_trade_point(conn, point_id)
        assert await registry.seller_of_receipt(conn, org.id, point_id) == (org, None)
        assert await registry.seller_of_receipt(conn, org.id + 100, point_id) == (None, None)


async def test_a_kgd_number_naming_no_device_is_not_kept(pool: asyncpg.Pool) -> None:
    facts = CheckFacts(pool, clock=Clock())
    assert await facts.device_id("KGD700") is None
    async with pool.acquire() as conn:
        _, point_id = await _seller(conn, 3)
        await _device(conn, 700, point_id)
    assert await facts.device_id("KGD700") == 700  # registered a moment ago: found at once


async def test_only_so_many_sellers_are_kept(pool: asyncpg.Pool) -> None:
    facts = CheckFacts(pool, size=2, clock=Clock())
    async with pool.acquire() as conn:
        sellers = [await _seller(conn, n) for n in (4, 5, 6)]
    for org, point_id in sellers:
        await facts.seller(org.id, point_id)
    async with pool.acquire() as conn:
        renamed = [
            await registry.update_organization(conn, replace(org, title=f"{org.title}, новое"))
            for org, _ in sellers
        ]
    # The last two are still kept; the first was dropped for the third, and is read again.
    got = [(await facts.seller(org.id, point_id))[0] for org, point_id in reversed(sellers)]
    assert got == [sellers[2][0], sellers[1][0], renamed[0]]
