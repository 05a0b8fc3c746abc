"""Notifications and subscriptions: each producer in the ledger writes its notice once; the
cabinet shows a user its organization's notices of the points it reaches, with the unread count,
a period, marking read; a subscription past its term is switched off (and the gateway answers
the register so) or, with auto-renewal, extended."""

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from cabinet_support import PASSWORD, Client, Shop, cabinet_at, client, make_shop
from conftest import register_device

from ingest.app import RunningGateway
from ingest.cli import main
from ledger import alerts, cabinet_users, notices, registry, subscriptions
from ledger.kgd.applications import ApplicationSettings, ApplicationWorker
from ledger.kgd.http import HttpKgd, KgdSettings
from ledger.kgd.retry import Backoff
from ledger.lifecycle import DeviceStatus
from ledger.notices import Kind
from ledger.schemas import SCHEMAS
from ledger.wire import KZ_TIME, ResultCode
from simulators.kgd import SimulatedKgd
from simulators.kkm import SimulatedKkm
from simulators.receipts import Line, Request, build_ticket

TODAY = date(2026, 11, 25)
TIMEOUT = 5.0
WAIT = 10.0  # seconds the KGD's refusal may take to be carried out
REFUSAL = "серийный номер <b>не найден</b>"


@asynccontextmanager
async def connected(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


async def _device(conn: asyncpg.Connection, point_id: int, serial: str = "SN-1") -> int:
    kgd = f"{secrets.randbelow(10**12):012d}"
    device = await registry.add_device(
        conn,
        registry.Device(
            0, kgd, serial, "KKM-1", 2025, point_id, DeviceStatus.AWAITING_REGISTRATION
        ),
    )
    await registry.set_status(conn, device.system_id, DeviceStatus.REGISTERED)
    return device.system_id


async def _notices(conn: asyncpg.Connection, system_id: int) -> list[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT kind, text FROM cabinet_notices WHERE system_id = $1 ORDER BY id", system_id
    )
    return [(row["kind"], row["text"]) for row in rows]


async def _term(conn: asyncpg.Connection, system_id: int, days: int, *, renew: bool) -> None:
    """A term that ends `days` after TODAY (negative: already past), set as the operator does
    while it is current; a past one is written as it stands after its end."""
    await subscriptions.set_term(
        conn, system_id, paid_until=TODAY + timedelta(days=max(days, 0)), period_months=1,
        auto_renew=renew, today=TODAY, by="test",
    )  # fmt: skip
    if days < 0:
        await conn.execute(
            "UPDATE devices SET paid_until = $2 WHERE system_id = $1",
            system_id,
            TODAY + timedelta(days=days),
        )


async def test_each_producer_writes_its_notice_once(database_url: str) -> None:
    shop = await make_shop(database_url)
    async with connected(database_url) as conn:
        system_id = await _device(conn, shop.point.id)

        await registry.set_blocked(conn, system_id, False)  # not blocked: nothing to tell
        await registry.set_blocked(conn, system_id, True, "Оплатите <b>долг</b>")
        await registry.set_blocked(conn, system_id, False)
        await registry.set_blocked(conn, system_id, False)

        await conn.execute(
            "UPDATE device_state SET last_contact = now() - interval '7 hours'"
            " WHERE system_id = $1",
            system_id,
        )
        for _ in range(2):
            await alerts.scan(conn, 6 * 3600.0, timeout=TIMEOUT)

        await conn.execute(
            "INSERT INTO shift_reports (system_id, shift_number, protocol_version, is_offline,"
            " ofd_z, differences) VALUES ($1, 3, 204, false, '', $2)",
            system_id,
            '["total sell: device 100, OFD 90"]',
        )
        for _ in range(2):
            await notices.notice_z_mismatches(conn, timeout=TIMEOUT)

        await _term(conn, system_id, 3, renew=False)
        for _ in range(2):
            await subscriptions.scan(conn, TODAY, 7, timeout=TIMEOUT)

        assert await _notices(conn, system_id) == [
            (Kind.BLOCKED, "Оплатите <b>долг</b>"),
            (Kind.UNBLOCKED, ""),
            (Kind.OFFLINE, await _last_contact(conn, system_id)),
            (Kind.Z_MISMATCH, "№3: total sell: device 100, OFD 90"),
            (Kind.SUBSCRIPTION_ENDING, (TODAY + timedelta(days=3)).isoformat()),
        ]
        # Another silence after contact is another window: told again.
        await conn.execute(
            "UPDATE device_state SET last_contact = now() WHERE system_id = $1", system_id
        )
        await alerts.scan(conn, 6 * 3600.0, timeout=TIMEOUT)
        await conn.execute(
            "UPDATE device_state SET last_contact = now() - interval '8 hours'"
            " WHERE system_id = $1",
            system_id,
        )
        await alerts.scan(conn, 6 * 3600.0, timeout=TIMEOUT)
        kinds = [kind for kind, _ in await _notices(conn, system_id)]
        assert kinds.count(Kind.OFFLINE) == 2


async def _last_contact(conn: asyncpg.Connection, system_id: int) -> str:
    at: datetime = await conn.fetchval(
        "SELECT last_contact FROM device_state WHERE system_id = $1", system_id
    )
    return notices.local_time(at)


async def test_a_kgd_refusal_is_noticed_with_its_reason(database_url: str) -> None:
    shop = await make_shop(database_url)
    kgd = SimulatedKgd()
    url = await kgd.start()
    http = HttpKgd(KgdSettings(url, timeout=2.0))
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    fast = ApplicationSettings(
        poll_interval=0.05, idle_interval=0.05, lease=5.0, backoff=Backoff(base=0.01, cap=0.05)
    )
    worker = ApplicationWorker(pool, http, fast)
    try:
        async with connected(database_url) as conn:
            kgd.refuse_serials["SN-REFUSED"] = REFUSAL
            refused = (
                await registry.add_device(
                    conn,
                    registry.Device(0, "KGD-2", "SN-REFUSED", "KKM-1", 2025, shop.point.id,
                                    DeviceStatus.AWAITING_REGISTRATION),
                )
            ).system_id  # fmt: skip
            async with asyncio.timeout(WAIT):
                while not await _notices(conn, refused):
                    await worker.step()
                    await asyncio.sleep(0.02)
            for _ in range(3):
                await worker.step()
            assert await _notices(conn, refused) == [(Kind.KGD_REFUSED, REFUSAL)]
    finally:
        await pool.close()
        await http.close()
        await kgd.stop()


async def test_a_lapsed_subscription_is_switched_off_and_the_register_refused(
    gateway: RunningGateway,
) -> None:
    device = await register_device(gateway.database_url)
    kkm = SimulatedKkm(
        "127.0.0.1", gateway.tcp.port, version=204, system_id=device.system_id, token=device.token
    )
    try:
        assert (await kkm.send(_ticket(1))).result.result_code == ResultCode.OK
        async with connected(gateway.database_url) as conn:
            await _term(conn, device.system_id, -1, renew=False)
            scanned = await subscriptions.scan(conn, TODAY, 7, timeout=TIMEOUT)
            assert scanned.lapsed == 1
            assert not (await registry.get_device(conn, device.system_id)).subscription_active
            assert await _notices(conn, device.system_id) == [
                (Kind.SUBSCRIPTION_LAPSED, (TODAY - timedelta(days=1)).isoformat())
            ]
            entries = await registry.list_audit(conn, device.system_id)
            assert ("subscriptions", "SubscriptionLapsed") in [(e.actor, e.action) for e in entries]
            answer = await kkm.send(_ticket(2))
            assert answer.result.result_code == ResultCode.DISCONNECTED

            # Switched on by hand without a new term, the next scan switches it off again; a
            # new term paid from today on switches it on.
            await registry.set_subscription(conn, device.system_id, True)
            assert (await subscriptions.scan(conn, TODAY, 7, timeout=TIMEOUT)).lapsed == 1
            await _term(conn, device.system_id, 30, renew=False)
            assert (await registry.get_device(conn, device.system_id)).subscription_active
        assert (await kkm.send(_ticket(2))).result.result_code == ResultCode.OK
    finally:
        await kkm.close()


def _ticket(number: int) -> Request:
    return build_ticket(
        SCHEMAS[204], when=datetime(2026, 11, 25, 9, number), shift_number=1,
        document_number=number, payment="cash", lines=[Line("Нан", "1", 1000, 15_000)],
    )  # fmt: skip


async def test_auto_renewal_extends_the_term_instead(database_url: str) -> None:
    shop = await make_shop(database_url)
    async with connected(database_url) as conn:
        system_id = await _device(conn, shop.point.id)
        await _term(conn, system_id, -40, renew=True)  # two monthly periods behind
        scanned = await subscriptions.scan(conn, TODAY, 7, timeout=TIMEOUT)
        assert (scanned.renewed, scanned.lapsed) == (1, 0)
        [term] = (await subscriptions.terms_of(conn, [system_id])).values()
        assert term.active
        assert term.paid_until == subscriptions.add_months(TODAY - timedelta(days=40), 2)
        assert term.paid_until >= TODAY
        assert (await subscriptions.scan(conn, TODAY, 0, timeout=TIMEOUT)).renewed == 0
        assert await _notices(conn, system_id) == [
            (Kind.SUBSCRIPTION_RENEWED, term.paid_until.isoformat())
        ]


def test_a_term_renews_to_the_same_day_or_the_month_end() -> None:
    assert subscriptions.add_months(date(2026, 1, 31), 1) == date(2026, 2, 28)
    assert subscriptions.add_months(date(2026, 11, 30), 3) == date(2027, 2, 28)
    assert subscriptions.renewed_until(date(2026, 1, 31), 1, date(2026, 3, 1)) == date(2026, 3, 31)
    assert subscriptions.renewed_until(date(2026, 1, 10), 12, date(2026, 1, 11)) == date(
        2027, 1, 10
    )


# --- the cabinet's pages ---


async def _cashier(database_url: str, shop: Shop, sections: set[str], point_ids: set[int]) -> str:
    """A user of the shop in one group granting `sections` on `point_ids`; its login."""
    async with connected(database_url) as conn:
        group = await cabinet_users.add_group(
            conn, shop.organization.id, name="Касса", sections=sections, all_points=False,
            point_ids=point_ids,
        )  # fmt: skip
        user = await cabinet_users.add_user(
            conn, shop.organization.id, login=f"cashier{shop.organization.id}", password=PASSWORD
        )
        await cabinet_users.set_user_groups(conn, shop.organization.id, user.id, {group.id})
    return user.login


async def _two_shops(database_url: str) -> tuple[Shop, Shop, tuple[int, int, int]]:
    """A shop with a register in each of its two points, and another organization's shop with
    one: the registers (the first point's, the second point's, the other organization's)."""
    shop = await make_shop(database_url)
    other = await make_shop(database_url, "ТОО Бөтен")
    async with connected(database_url) as conn:
        second = await registry.add_trade_point(
            conn, registry.TradePoint(0, shop.organization.id, "Дүкен №2", "", "", 0, 0)
        )
        registers = (
            await _device(conn, shop.point.id),
            await _device(conn, second.id),
            await _device(conn, other.point.id),
        )
    return shop, other, registers


async def _unread(browser: Client) -> str:
    page = await browser.get("/")
    assert page.status == 200
    found = page.text.split('<span class="unread">', 1)
    return found[1].split("<", 1)[0] if len(found) > 1 else ""


@pytest.mark.adversity
async def test_the_notifications_page(tmp_path: Path, database_url: str) -> None:
    shop, other, (mine, theirs, foreign) = await _two_shops(database_url)
    async with connected(database_url) as conn:
        await registry.set_blocked(conn, mine, True, "блок первой точки")
        await registry.set_blocked(conn, theirs, True, "блок второй точки")
        await registry.set_blocked(conn, foreign, True, "чужой блок")
        await notices.announce(conn, "Работы в <script>ночь</script>", shop.organization.id)
        await notices.announce(conn, "Всем организациям", None)
        # An old one, outside the default period of a month.
        await conn.execute(
            "UPDATE cabinet_notices SET created_at = now() - interval '60 days'"
            " WHERE system_id = $1",
            theirs,
        )
        foreign_id = await conn.fetchval(
            "SELECT id FROM cabinet_notices WHERE system_id = $1", foreign
        )
        mine_id = await conn.fetchval("SELECT id FROM cabinet_notices WHERE system_id = $1", mine)
    cashier = await _cashier(database_url, shop, {"notifications"}, {shop.point.id})

    async with cabinet_at(tmp_path, database_url) as running:
        async with client(running, shop.main.login) as main:
            assert await _unread(main) == "4"  # the old block is unread too, out of the period
            page = await main.get("/notifications")
            assert page.status == 200
            assert "блок первой точки" in page.text
            assert "Работы в &lt;script&gt;ночь&lt;/script&gt;" in page.text
            assert "Всем организациям" in page.text
            assert "блок второй точки" not in page.text
            assert "чужой" not in page.text
            old = (datetime.now(KZ_TIME) - timedelta(days=61)).date().isoformat()
            page = await main.get("/notifications", to=old)  # ends before it begins
            assert page.status == 400
            page = await main.get("/notifications", **{"from": old})
            assert "блок второй точки" in page.text
            assert (await main.get("/notifications", **{"from": "yesterday"})).status == 400

            # Another organization's notice: no such notice, nothing marked.
            page = await main.post(f"/notifications/{foreign_id}/read")
            assert page.status == 404
            assert "чужой" not in page.text
            page = await main.post(f"/notifications/{mine_id}/read", csrf="")
            assert page.status == 403
            assert await _unread(main) == "4"
            page = await main.post(f"/notifications/{mine_id}/read", {"from": old})
            assert page.status == 200
            assert "блок второй точки" in page.text  # back on the period it was posted from
            assert await _unread(main) == "3"
            assert (await main.post("/notifications/read", csrf="")).status == 403
            assert (await main.post("/notifications/read")).status == 200
            assert await _unread(main) == ""

        async with client(running, cashier) as limited:
            assert await _unread(limited) == "3"  # its point's block and both announcements
            page = await limited.get("/notifications", **{"from": old})
            assert "блок первой точки" in page.text
            assert "блок второй точки" not in page.text
            theirs_id = await _notice_id(database_url, theirs)
            page = await limited.post(f"/notifications/{theirs_id}/read")
            assert page.status == 404
            assert "блок второй точки" not in page.text
            assert (await limited.get("/subscriptions")).status == 403

        async with client(running, other.main.login) as stranger:
            page = await stranger.get("/notifications")
            assert "чужой блок" in page.text
            assert "блок первой точки" not in page.text
            assert "Работы в" not in page.text
            assert "Всем организациям" in page.text


async def _notice_id(database_url: str, system_id: int) -> int:
    async with connected(database_url) as conn:
        found: int = await conn.fetchval(
            "SELECT id FROM cabinet_notices WHERE system_id = $1", system_id
        )
    return found


@pytest.mark.adversity
async def test_the_subscriptions_page(tmp_path: Path, database_url: str) -> None:
    shop, _, (mine, theirs, foreign) = await _two_shops(database_url)
    async with connected(database_url) as conn:
        await subscriptions.set_term(
            conn, mine, paid_until=date(2099, 1, 31), period_months=3, auto_renew=False,
            today=TODAY, by="test",
        )  # fmt: skip
    cashier = await _cashier(database_url, shop, {"subscriptions"}, {shop.point.id})

    async with cabinet_at(tmp_path, database_url) as running:
        async with client(running, shop.main.login) as main:
            page = await main.get("/subscriptions")
            assert page.status == 200
            assert "2099-01-31" in page.text
            assert "3 мес." in page.text
            assert str(theirs) in page.text
            assert str(foreign) not in page.text
            assert (
                await main.post(f"/subscriptions/{mine}", {"auto_renew": "on"}, csrf="")
            ).status == 403
            assert (await main.post(f"/subscriptions/{mine}", {"auto_renew": "yes"})).status == 400
            page = await main.post(f"/subscriptions/{foreign}", {"auto_renew": "on"})
            assert page.status == 404
            page = await main.post(f"/subscriptions/{mine}", {"auto_renew": "on"})
            assert page.status == 200
            assert "Сохранено." in page.text

        async with client(running, cashier) as limited:
            page = await limited.get("/subscriptions")
            assert str(mine) in page.text
            assert str(theirs) not in page.text
            page = await limited.post(f"/subscriptions/{theirs}", {"auto_renew": "on"})
            assert page.status == 404
            assert (await limited.get("/notifications")).status == 403

    async with connected(database_url) as conn:
        terms = await subscriptions.terms_of(conn, [mine, theirs, foreign])
        audit = await registry.list_audit(conn, mine)
    assert terms[mine].auto_renew
    assert not terms[theirs].auto_renew
    assert not terms[foreign].auto_renew
    assert (f"cabinet:{shop.main.login}", "SetAutoRenew") in [(e.actor, e.action) for e in audit]


async def test_the_operator_announces_and_sets_a_term_from_the_cli(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    shop = await make_shop(database_url)
    async with connected(database_url) as conn:
        system_id = await _device(conn, shop.point.id)
        await registry.set_subscription(conn, system_id, False)
    db = ["--database-url", database_url]
    argv = ["web-notice", "add", "--org", str(shop.organization.id), "--text", "Работы", *db]
    assert await asyncio.to_thread(main, argv) == 0
    argv = ["web-notice", "add", "--org", "999999999", "--text", "Работы", *db]
    assert await asyncio.to_thread(main, argv) == 1
    argv = ["web-subscription", "set", "--kkm", str(system_id), "--paid-until", "2099-01-31",
            "--months", "1", "--auto-renew", *db]  # fmt: skip
    assert await asyncio.to_thread(main, argv) == 0
    out = capsys.readouterr()
    assert "announced to 1 organization(s)" in out.out
    assert "paid until 2099-01-31, 1 months, auto-renewal on, subscription on" in out.out
    assert "no organization 999999999" in out.err
    async with connected(database_url) as conn:
        assert [text for _, text in await _org_notices(conn, shop.organization.id)] == ["Работы"]


async def _org_notices(conn: asyncpg.Connection, organization_id: int) -> list[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT kind, text FROM cabinet_notices WHERE organization_id = $1 AND system_id IS NULL",
        organization_id,
    )
    return [(row["kind"], row["text"]) for row in rows]
