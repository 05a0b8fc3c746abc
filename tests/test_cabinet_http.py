"""The cabinet over HTTP: a real server on a free port, a real PostgreSQL database; every form,
and what it refuses (no session, a missing or foreign CSRF token, another organization's ids,
markup and SQL in text fields, a brute-forced login)."""

import re
from pathlib import Path

import asyncpg
import pytest
from cabinet_support import PASSWORD, TOKEN, Client, cabinet_at, client, make_shop, signed_in

from ingest.limits import FailureBudget
from ledger import cabinet_users, registry
from ledger.lifecycle import DeviceStatus


async def _audit(database_url: str, system_id: int) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(database_url)
    try:
        entries = await registry.list_audit(conn, system_id)
    finally:
        await conn.close()
    return [(e.actor, e.action) for e in entries]


async def _register(browser: Client, point_id: int, kgd: str = "640300014538") -> int:
    await browser.get("/kkm")
    page = await browser.post(
        "/kkm",
        {"point": str(point_id), "kgd": kgd, "serial": "SN-1", "model": "KKM-1", "year": "2025"},
    )
    assert page.status == 200, page.text
    assert "Ожидает регистрации в КГД" in page.text
    # The registration application (ledger/kgd) is filed with it, and shown.
    assert 'id="application">регистрация: ожидает отправки в КГД' in page.text
    return int(page.url.rsplit("/", 1)[1].split("?")[0])


async def test_login_opens_a_session_and_logout_ends_it(tmp_path: Path, database_url: str) -> None:
    shop = await make_shop(database_url)
    async with cabinet_at(tmp_path, database_url) as running, client(running) as browser:
        page = await browser.get("/organization")
        assert page.url.endswith("/login")  # no session: to the login page
        assert (await browser.login(shop.main.login, "wrong password")).status == 401
        assert (await browser.login("nobody-here", PASSWORD)).status == 401
        page = await browser.login(shop.main.login)
        assert page.status == 200
        [cookie] = [c for c in browser.http.cookie_jar if c.key == "ofd_session"]
        assert cookie["httponly"]
        assert cookie["samesite"] == "Strict"
        assert len(cookie.value) >= 40  # 32 random bytes
        page = await browser.get("/organization")
        assert shop.organization.iin in page.text
        assert page.status == 200
        assert (await browser.post("/logout")).url.endswith("/login")
        assert (await browser.get("/organization")).url.endswith("/login")


async def test_every_page_forbids_framing_and_caching(tmp_path: Path, database_url: str) -> None:
    shop = await make_shop(database_url)
    async with (
        signed_in(tmp_path, database_url, shop.main.login) as (running, _),
        Client(running.url).http as http,
        http.get(running.url + "/login") as answer,
    ):
        assert answer.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
        assert answer.headers["Cache-Control"] == "no-store"


async def test_forms_without_their_csrf_token_change_nothing(
    tmp_path: Path, database_url: str
) -> None:
    shop = await make_shop(database_url)
    other = await make_shop(database_url, "ТОО Басқа")
    async with cabinet_at(tmp_path, database_url) as running:
        async with client(running, other.main.login) as stranger:
            foreign_token = (await stranger.get("/points")).csrf
        async with client(running, shop.main.login) as browser:
            await browser.get("/points")
            for token in ("", "forged", foreign_token):
                page = await browser.post("/points", {"title": "Лишняя"}, csrf=token)
                assert page.status == 403, token
                page = await browser.post(
                    "/organization", {"title": "Захвачено"}, csrf=token, follow=False
                )
                assert page.status == 403
            assert "Лишняя" not in (await browser.get("/points")).text
            assert "Захвачено" not in (await browser.get("/organization")).text
            # The login form's own token: a login posted without it is refused too.
            page = await browser.post(
                "/login", {"login": shop.main.login, "password": PASSWORD}, csrf=""
            )
            assert page.status == 403


@pytest.mark.adversity
async def test_login_brute_force_is_slowed_per_address(tmp_path: Path, database_url: str) -> None:
    shop = await make_shop(database_url)
    budget = FailureBudget(failures=3, window_seconds=60.0)
    async with cabinet_at(tmp_path, database_url, login_failures=budget) as running:
        async with client(running) as browser:
            for _ in range(3):
                assert (await browser.login(shop.main.login, "guess")).status == 401
            # Over the budget: refused before any password is checked, even the right one.
            page = await browser.login(shop.main.login)
            assert page.status == 429
            assert "Слишком много" in page.text
        assert running.cabinet.login_failures.refused == 1


async def test_organization_is_edited_but_its_iin_never_changes(
    tmp_path: Path, database_url: str
) -> None:
    shop = await make_shop(database_url)
    async with signed_in(tmp_path, database_url, shop.main.login) as (_, browser):
        await browser.get("/organization")
        fields = {"title": "ТОО Жаңа", "address": "Астана", "address_kz": "Астана қ.",
                  "oked": "47190", "head": "Айгүл Сейітова"}  # fmt: skip
        page = await browser.post("/organization", fields)
        assert page.status == 200
        assert "Сохранено" in page.text
        assert "ТОО Жаңа" in page.text
        assert 'name="head" value="Айгүл Сейітова"' in page.text
        page = await browser.post("/organization", {**fields, "iin": "999999999999"})
        assert page.status == 400
        page = await browser.post("/organization", {**fields, "head": "Ә" * 201})
        assert page.status == 400  # the head's name is bounded: refused, the form kept
        assert "at most 200 characters" in page.text
        conn = await asyncpg.connect(database_url)
        try:
            [org] = await registry.list_organizations(conn, organization_id=shop.organization.id)
        finally:
            await conn.close()
        assert (org.iin, org.title, org.oked) == (shop.organization.iin, "ТОО Жаңа", "47190")
        assert org.head == "Айгүл Сейітова"


async def test_trade_points_are_added_edited_and_deleted_when_empty(
    tmp_path: Path, database_url: str
) -> None:
    shop = await make_shop(database_url)
    async with signed_in(tmp_path, database_url, shop.main.login) as (_, browser):
        await browser.get("/points")
        page = await browser.post(
            "/points",
            {"title": "Дүкен №2", "address": "Сәтпаев 5", "latitude": "43.25",
             "longitude": "76.95"},
        )  # fmt: skip
        assert page.status == 200
        assert "Дүкен №2" in page.text
        conn = await asyncpg.connect(database_url)
        try:
            points = await registry.list_trade_points(conn, organization_id=shop.organization.id)
        finally:
            await conn.close()
        second = next(p for p in points if p.title == "Дүкен №2")
        assert (second.latitude, second.longitude) == (43_250_000, 76_950_000)
        base = f"/points/{second.id}"
        shown = await browser.get(base)
        # Its place on a map, in degrees (the registry's micro-degrees never reach a URL).
        assert "openstreetmap.org/?mlat=43.250000&amp;mlon=76.950000" in shown.text
        moved = {"title": "Дүкен №2", "latitude": "43.26", "longitude": "76.95"}
        assert (await browser.post(base, moved)).status == 200
        # Coordinates change at most once a day (registry.update_trade_point's rule).
        page = await browser.post(base, {**moved, "latitude": "43.27"})
        assert page.status == 409
        assert "once a day" in page.text
        # A title alone may change.
        assert (await browser.post(base, {**moved, "title": "Дүкен Б"})).status == 200
        # Not while a register stands in it.
        await _register(browser, second.id)
        await browser.get(base)
        page = await browser.post(f"{base}/delete")
        assert page.status == 409
        await browser.get("/points")
        page = await browser.post("/points", {"title": "Бос"})
        empty = max(int(i) for i in re.findall(r'href="/points/(\d+)"', page.text))
        await browser.get(f"/points/{empty}")
        page = await browser.post(f"/points/{empty}/delete")
        assert page.status == 200
        assert "Удалено" in page.text
        assert (await browser.get(f"/points/{empty}")).status == 404


async def test_a_register_is_registered_and_its_token_read_and_renewed(
    tmp_path: Path, database_url: str
) -> None:
    shop = await make_shop(database_url)
    async with signed_in(tmp_path, database_url, shop.main.login) as (_, browser):
        system_id = await _register(browser, shop.point.id)
        conn = await asyncpg.connect(database_url)
        try:
            device = await registry.get_device(conn, system_id)
            first = await registry.current_token(conn, system_id)
        finally:
            await conn.close()
        assert device.status is DeviceStatus.AWAITING_REGISTRATION
        page = await browser.post(f"/kkm/{system_id}/token")
        found = TOKEN.search(page.text)
        assert found
        assert int(found[1]) == first
        assert ("cabinet:" + shop.main.login, "GetToken") in await _audit(database_url, system_id)
        # A new token only when confirmed; the page says the register must be re-keyed.
        page = await browser.post(f"/kkm/{system_id}/token/new")
        assert page.status == 400
        assert not TOKEN.search(page.text)
        page = await browser.post(f"/kkm/{system_id}/token/new", {"confirm": "yes"})
        found = TOKEN.search(page.text)
        assert found
        assert int(found[1]) != first
        assert 'id="rekey"' in page.text
        conn = await asyncpg.connect(database_url)
        try:
            assert await registry.current_token(conn, system_id) == int(found[1])
        finally:
            await conn.close()


async def test_lifecycle_actions_are_the_taxpayers_only(tmp_path: Path, database_url: str) -> None:
    shop = await make_shop(database_url)
    async with signed_in(tmp_path, database_url, shop.main.login) as (_, browser):
        system_id = await _register(browser, shop.point.id)
        base = f"/kkm/{system_id}"
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "UPDATE kgd_applications SET status = 'refused', reason = $2 WHERE system_id = $1",
                system_id,
                "serial <already> registered elsewhere",
            )
        finally:
            await conn.close()
        page = await browser.get(base)
        assert "отклонена КГД — serial &lt;already&gt; registered elsewhere" in page.text
        # Activation is the KGD's confirmation, not the taxpayer's.
        page = await browser.post(f"{base}/lifecycle", {"action": "activate"})
        assert page.status == 403
        conn = await asyncpg.connect(database_url)
        try:
            await registry.set_status(conn, system_id, DeviceStatus.REGISTERED)
            await conn.execute(
                "UPDATE device_state SET shift_open = true WHERE system_id = $1", system_id
            )
            await registry.set_blocked(conn, system_id, True, "Оплатите услуги")
        finally:
            await conn.close()
        page = await browser.get(base)
        assert "Заблокирована: Оплатите услуги" in page.text  # the block's reason is shown
        page = await browser.post(f"{base}/lifecycle", {"action": "request_deregistration"})
        assert page.status == 409
        assert "close it" in page.text
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "UPDATE device_state SET shift_open = false WHERE system_id = $1", system_id
            )
        finally:
            await conn.close()
        page = await browser.post(f"{base}/lifecycle", {"action": "request_deregistration"})
        assert page.status == 200
        assert "Ожидает снятия с учёта" in page.text
        page = await browser.post(f"{base}/lifecycle", {"action": "cancel_deregistration"})
        assert page.status == 200
        assert "Зарегистрирована" in page.text
        page = await browser.post(f"{base}/lifecycle", {"action": "no-such-action"})
        assert page.status == 400


@pytest.mark.adversity
async def test_another_organizations_ids_reach_nothing(tmp_path: Path, database_url: str) -> None:
    """Every URL and form field naming another organization's point, register, user or group
    answers 404 or 403, changes nothing and shows none of its data."""
    shop = await make_shop(database_url)
    other = await make_shop(database_url, "ТОО Бөтен құпия")
    async with cabinet_at(tmp_path, database_url) as running:
        async with client(running, other.main.login) as owner:
            their_device = await _register(owner, other.point.id, kgd="777000111222")
            await owner.get("/users")
            await owner.post("/groups", {"group_name": "Бөтен топ", "section": "devices"})
        conn = await asyncpg.connect(database_url)
        try:
            their_user = await cabinet_users.add_user(
                conn, other.organization.id, login="their-cashier", password=PASSWORD
            )
            [their_group] = await cabinet_users.list_groups(conn, other.organization.id)
            their_token = await registry.current_token(conn, their_device)
        finally:
            await conn.close()
        secrets_of_theirs = ("ТОО Бөтен құпия", "777000111222", str(their_token), "Бөтен топ")
        async with client(running, shop.main.login) as browser:
            await browser.get("/")
            point, device = other.point.id, their_device
            gets = [f"/points/{point}", f"/kkm/{device}", f"/kkm/{device}/receipts",
                    f"/kkm/{device}/reports", f"/kkm/{device}/receipts/1234567890",
                f"/kkm/{device}/receipts.csv", f"/kkm/{device}/reports.csv"]  # fmt: skip
            for path in gets:
                page = await browser.get(path)
                assert page.status in (403, 404), path
                assert not any(s in page.text for s in secrets_of_theirs), path
            posts = [
                (f"/points/{point}", {"title": "Чужая"}),
                (f"/points/{point}/delete", {}),
                (f"/kkm/{device}/token", {}),
                (f"/kkm/{device}/token/new", {"confirm": "yes"}),
                (f"/kkm/{device}/lifecycle", {"action": "request_deregistration"}),
                ("/kkm", {"point": str(point), "kgd": "1", "serial": "S", "model": "M",
                          "year": "2025"}),
                (f"/users/{their_user.id}", {"group": str(their_group.id), "active": "yes"}),
                ("/users", {"login": "mine-in-theirs", "password": PASSWORD,
                            "group": str(their_group.id)}),
                ("/groups", {"group_name": "Моя", "point": str(point)}),
                (f"/groups/{their_group.id}/delete", {}),
            ]  # fmt: skip
            for path, data in posts:
                page = await browser.post(path, data)
                assert page.status in (403, 404), (path, page.status)
                assert not any(s in page.text for s in secrets_of_theirs), path
        conn = await asyncpg.connect(database_url)
        try:
            assert (await registry.get_trade_point(conn, point)).title == "Дүкен №1"
            assert await registry.current_token(conn, device) == their_token
            assert (await registry.get_device(conn, device)).status is (
                DeviceStatus.AWAITING_REGISTRATION
            )
            assert await cabinet_users.user_group_ids(conn, their_user.id) == frozenset()
            assert [g.id for g in await cabinet_users.list_groups(conn, other.organization.id)] == [
                their_group.id
            ]
            assert not await registry.list_devices(conn, organization_id=shop.organization.id)
            logins = [u.login for u in await cabinet_users.list_users(conn, shop.organization.id)]
            assert "mine-in-theirs" not in logins
        finally:
            await conn.close()


HOSTILE = "<script>alert(1)</script>' OR '1'='1\"; DROP TABLE devices; --"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


@pytest.mark.adversity
async def test_markup_and_sql_in_every_text_field_are_shown_as_text(
    tmp_path: Path, database_url: str
) -> None:
    shop = await make_shop(database_url)
    async with signed_in(tmp_path, database_url, shop.main.login) as (_, browser):
        pages = []
        await browser.get("/organization")
        fields = dict.fromkeys(("title", "address", "address_kz", "oked", "head"), HOSTILE)
        pages.append(await browser.post("/organization", fields))
        await browser.get("/points")
        point_fields = dict.fromkeys(("title", "address", "address_kz"), HOSTILE)
        pages.append(await browser.post("/points", point_fields))
        pages.append(await browser.get(f"/points/{shop.point.id}"))
        pages.append(
            await browser.post(
                f"/points/{shop.point.id}",
                {"title": HOSTILE, "address": HOSTILE, "latitude": HOSTILE},
            )
        )  # a refused form shows what was typed, escaped
        await browser.get("/kkm")
        page = await browser.post(
            "/kkm",
            {"point": str(shop.point.id), "kgd": HOSTILE, "serial": HOSTILE,
             "model": HOSTILE, "year": "2025"},
        )  # fmt: skip
        assert page.status == 200, page.text
        pages.append(page)
        pages.append(await browser.get("/kkm"))
        await browser.get("/users")
        pages.append(
            await browser.post(
                "/users",
                {"login": "cashier1", "password": PASSWORD, "name": HOSTILE,
                 "email": HOSTILE, "phone": HOSTILE[:50], "position": HOSTILE},
            )
        )  # fmt: skip
        pages.append(await browser.post("/users", {"login": HOSTILE, "password": PASSWORD}))
        pages.append(await browser.post("/groups", {"group_name": HOSTILE}))
        pages.append(await browser.get("/kkm", shift=HOSTILE))
        pages.append(await browser.get("/check", i=HOSTILE, f=HOSTILE, s=HOSTILE, t=HOSTILE))
        for page in pages:
            assert "<script>alert" not in page.text, page.url
        shown = "".join(p.text for p in pages)
        assert shown.count(ESCAPED) >= 10
        conn = await asyncpg.connect(database_url)
        try:
            [org] = await registry.list_organizations(conn, organization_id=shop.organization.id)
            assert org.title == HOSTILE  # stored as typed: text, never SQL
            assert await conn.fetchval("SELECT count(*) FROM devices") == 1
        finally:
            await conn.close()
