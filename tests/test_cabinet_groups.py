"""Users and groups: a user sees only what its groups grant (sections and trade points); the
main user alone manages them; turning a user off ends its session."""

import re
from pathlib import Path

import asyncpg
import pytest
from cabinet_support import PASSWORD, Client, cabinet_at, client, make_shop

from ledger import cabinet_users, registry

REGISTER = {"serial": "SN", "model": "KKM-1", "year": "2025"}


async def _register(browser: Client, point_id: int, kgd: str) -> int:
    await browser.get("/kkm")
    page = await browser.post("/kkm", {**REGISTER, "point": str(point_id), "kgd": kgd})
    assert page.status == 200, page.text
    return int(page.url.rsplit("/", 1)[1].split("?")[0])


@pytest.mark.adversity
async def test_a_user_sees_only_the_points_and_sections_its_groups_grant(
    tmp_path: Path, database_url: str
) -> None:
    shop = await make_shop(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        second = await registry.add_trade_point(
            conn,
            registry.TradePoint(0, shop.organization.id, "Дүкен №2 құпия", "", "", 0, 0),
        )
    finally:
        await conn.close()
    async with cabinet_at(tmp_path, database_url) as running:
        async with client(running, shop.main.login) as main:
            mine = await _register(main, shop.point.id, "111000000001")
            theirs = await _register(main, second.id, "222000000002")
            await main.get("/users")
            page = await main.post(
                "/groups",
                [("group_name", "Касса 1"), ("section", "devices"), ("section", "transactions"),
                 ("point", str(shop.point.id))],
            )  # fmt: skip
            assert page.status == 200
            [group] = re.findall(r'name="group" value="(\d+)"', page.text)[:1]
            page = await main.post(
                "/users",
                {"login": "cashier", "password": PASSWORD, "name": "Айгүл", "group": group},
            )
            assert page.status == 200
            assert "Айгүл" in page.text
            page = await main.post("/users", {"login": "nobody", "password": PASSWORD})
            assert page.status == 200

        async with client(running, "cashier") as cashier:
            home = await cashier.get("/")
            assert f'href="/kkm/{mine}"' in home.text
            assert str(theirs) not in home.text
            page = await cashier.get("/kkm")
            assert page.status == 200
            assert "111000000001" in page.text
            assert "222000000002" not in page.text
            assert "Дүкен №2 құпия" not in page.text  # not even in the register form's points
            for path in (f"/kkm/{theirs}", f"/kkm/{theirs}/receipts", f"/points/{second.id}"):
                page = await cashier.get(path)
                assert page.status in (403, 404), path
                assert "222000000002" not in page.text
            # Sections not granted: 403, and absent from the menu.
            for path in (
                "/organization",
                "/points",
                "/users",
                f"/kkm/{mine}/reports",
                "/analytics",
            ):
                assert (await cashier.get(path)).status == 403, path
            assert 'href="/users"' not in home.text
            assert (await cashier.get(f"/kkm/{mine}")).status == 200
            assert (await cashier.post(f"/kkm/{mine}/token")).status == 403
            page = await cashier.post("/groups", {"group_name": "Бәрі", "all_points": "yes"})
            assert page.status == 403
            page = await cashier.post(
                "/kkm", {**REGISTER, "point": str(second.id), "kgd": "333000000003"}
            )
            assert page.status == 404

        async with client(running, "nobody") as nobody:
            assert (await nobody.get("/kkm")).status == 403
            assert "111000000001" not in (await nobody.get("/")).text

        async with client(running, "cashier") as cashier, client(running, shop.main.login) as main:
            await cashier.get("/")
            conn = await asyncpg.connect(database_url)
            try:
                [user] = [
                    u
                    for u in await cabinet_users.list_users(conn, shop.organization.id)
                    if u.login == "cashier"
                ]
            finally:
                await conn.close()
            await main.get("/users")
            page = await main.post(f"/users/{user.id}", {"group": group})  # "active" unticked
            assert page.status == 200
            assert (await cashier.get("/kkm")).url.endswith("/login")
            assert (await cashier.login("cashier")).status == 401


async def test_groups_name_only_known_sections(tmp_path: Path, database_url: str) -> None:
    shop = await make_shop(database_url)
    async with (
        cabinet_at(tmp_path, database_url) as running,
        client(running, shop.main.login) as main,
    ):
        await main.get("/users")
        page = await main.post("/groups", {"group_name": "Все", "section": "users"})
        assert page.status == 400  # managing users is the main user's alone, never granted
        page = await main.post("/users", {"login": "short", "password": "1234567"})
        assert page.status == 400
        page = await main.post("/users", {"login": shop.main.login, "password": PASSWORD})
        assert page.status == 409
