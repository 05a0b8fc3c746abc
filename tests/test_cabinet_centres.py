"""Service centres (ЦТО) in the cabinet: a taxpayer grants a centre, by its BIN, chosen sections on
chosen registers, edits the grant and stops it; the centre's users reach those registers through
the register's own pages, in the granted sections only, and nothing else of the taxpayer's."""

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from cabinet_support import PASSWORD, TOKEN, Client, Shop, cabinet_at, client, make_shop

from cabinet.app import RunningCabinet
from ledger import cabinet_users, registry
from ledger.lifecycle import DeviceStatus
from ledger.warehouse.backends import QueryLimits, open_warehouse

TAXPAYER = "ТОО Салық төлеуші"
SECRET_SERIAL = "SN-НЕ-ВЫДАНА"  # the taxpayer's register no grant names
ACTIVE_GRANT = re.compile(r'action="/centres/(\d+)"')  # an active grant's edit form


@dataclass(frozen=True, slots=True)
class Parties:
    taxpayer: Shop
    centre: Shop
    stranger: Shop  # a third organization, neither granting nor granted
    granted: int  # the taxpayer's register the centre is granted
    second: int  # another register of the taxpayer's, granted by the edit only
    kept: int  # the taxpayer's register never granted
    strangers: int  # the third organization's register


async def _device(conn: asyncpg.Connection, shop: Shop, kgd: str, serial: str) -> int:
    added = await registry.add_device(
        conn,
        registry.Device(0, kgd, serial, "KKM-1", 2025, shop.point.id,
                        DeviceStatus.AWAITING_REGISTRATION),
    )  # fmt: skip
    await registry.issue_token(conn, added.system_id)
    return added.system_id


async def _parties(database_url: str) -> Parties:
    taxpayer = await make_shop(database_url, TAXPAYER)
    centre = await make_shop(database_url, "ТОО Сервис ЦТО")
    stranger = await make_shop(database_url, "ТОО Бөгде")
    conn = await asyncpg.connect(database_url)
    try:
        return Parties(
            taxpayer,
            centre,
            stranger,
            await _device(conn, taxpayer, "100000000001", "SN-GRANTED"),
            await _device(conn, taxpayer, "100000000002", "SN-SECOND"),
            await _device(conn, taxpayer, "100000000003", SECRET_SERIAL),
            await _device(conn, stranger, "300000000001", "SN-STRANGER"),
        )
    finally:
        await conn.close()


@asynccontextmanager
async def _cabinet(tmp_path: Path, database_url: str) -> AsyncIterator[RunningCabinet]:
    """A cabinet reading an empty in-process warehouse (receipt pages answer, with no rows)."""
    warehouse = open_warehouse(path=tmp_path / "warehouse")
    try:
        analyst = warehouse.analyst(QueryLimits())
        async with cabinet_at(tmp_path, database_url, reader=analyst) as running:
            yield running
    finally:
        warehouse.close()


async def _grant(owner: Client, centre: Shop, *sections: str, devices: tuple[int, ...]) -> int:
    """Grants `centre` through the form; the id of its grant, as the edit form names it."""
    await owner.get("/centres")
    page = await owner.post(
        "/centres",
        [("bin", centre.organization.iin), *(("section", s) for s in sections),
         *(("device", str(d)) for d in devices)],
    )  # fmt: skip
    assert page.status == 200, page.text
    assert "ТОО Сервис ЦТО" in page.text
    return int(ACTIVE_GRANT.findall(page.text)[0])


async def _query(database_url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def _token(database_url: str, system_id: int) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return await registry.current_token(conn, system_id)
    finally:
        await conn.close()


async def _user(
    database_url: str, shop: Shop, login: str, *sections: str, points: set[int] | None = None
) -> None:
    """A user of `shop` in a group granting `sections` on `points` (None: all its points)."""
    conn = await asyncpg.connect(database_url)
    try:
        user = await cabinet_users.add_user(
            conn, shop.organization.id, login=login, password=PASSWORD
        )
        group = await cabinet_users.add_group(
            conn, shop.organization.id, name=login, sections=set(sections),
            all_points=points is None, point_ids=points or set(),
        )  # fmt: skip
        await cabinet_users.set_user_groups(conn, shop.organization.id, user.id, {group.id})
    finally:
        await conn.close()


async def test_a_centre_reaches_the_granted_register_in_the_granted_sections(
    tmp_path: Path, database_url: str
) -> None:
    p = await _parties(database_url)
    async with _cabinet(tmp_path, database_url) as running:
        async with client(running, p.taxpayer.main.login) as owner:
            await _grant(owner, p.centre, "devices", "token", "transactions", devices=(p.granted,))
        async with client(running, p.centre.main.login) as centre:
            page = await centre.get("/clients")
            assert page.status == 200
            assert 'href="/clients"' in page.text
            assert TAXPAYER in page.text
            assert "SN-GRANTED" in page.text
            assert f'href="/kkm/{p.granted}/receipts"' in page.text
            assert f'href="/kkm/{p.granted}/reports"' not in page.text
            assert SECRET_SERIAL not in page.text
            assert "SN-SECOND" not in page.text

            page = await centre.get(f"/kkm/{p.granted}")
            assert page.status == 200
            assert "SN-GRANTED" in page.text
            assert "Получить токен" in page.text
            assert 'action="/kkm/' + str(p.granted) + '/lifecycle"' not in page.text
            page = await centre.post(f"/kkm/{p.granted}/token")
            found = TOKEN.search(page.text)
            assert found
            assert int(found[1]) == await _token(database_url, p.granted)
            page = await centre.post(f"/kkm/{p.granted}/token/new", {"confirm": "yes"})
            found = TOKEN.search(page.text)
            assert found
            assert int(found[1]) == await _token(database_url, p.granted)
            page = await centre.get(f"/kkm/{p.granted}/receipts")
            assert page.status == 200
            assert "Чеков нет." in page.text
            assert (await centre.get(f"/kkm/{p.granted}/receipts.csv")).status == 200

            # Not granted: the reports section, lifecycle, and the analytics of the register.
            for path in (f"/kkm/{p.granted}/reports", f"/kkm/{p.granted}/reports.csv"):
                assert (await centre.get(path)).status == 403, path
            page = await centre.post(
                f"/kkm/{p.granted}/lifecycle", {"action": "request_deregistration"}
            )
            assert page.status == 403
            page = await centre.get("/analytics", device=str(p.granted))
            assert TAXPAYER not in page.text
            assert "SN-GRANTED" not in page.text

            # The taxpayer's register not granted, its organization and points: nothing.
            for path in (f"/kkm/{p.kept}", f"/kkm/{p.kept}/receipts", f"/kkm/{p.kept}/reports",
                         f"/points/{p.taxpayer.point.id}", "/organization", "/points",
                         "/kkm", "/users", "/centres", "/"):  # fmt: skip
                page = await centre.get(path)
                assert page.status in (200, 403, 404), path
                assert SECRET_SERIAL not in page.text, path
                assert TAXPAYER not in page.text, path
                assert f'href="/points/{p.taxpayer.point.id}"' not in page.text, path
            page = await centre.post(f"/kkm/{p.kept}/token")
            assert page.status == 404
            assert str(await _token(database_url, p.kept)) not in page.text

    audit = await _query(
        database_url,
        "SELECT actor, action FROM control_audit WHERE system_id = $1 ORDER BY id",
        p.granted,
    )
    actor = f"cabinet:{p.centre.main.login}"
    assert [tuple(r) for r in audit][-2:] == [(actor, "GetToken"), (actor, "IssueToken")]
    status = await _query(
        database_url, "SELECT status FROM devices WHERE system_id = $1", p.granted
    )
    assert status[0]["status"] == DeviceStatus.AWAITING_REGISTRATION.value


async def test_a_grant_is_edited_and_stopped_and_audited(tmp_path: Path, database_url: str) -> None:
    p = await _parties(database_url)
    async with _cabinet(tmp_path, database_url) as running:
        async with client(running, p.taxpayer.main.login) as owner:
            grant = await _grant(owner, p.centre, "devices", "token", devices=(p.granted,))
            page = await owner.post(
                "/centres",
                {"bin": p.centre.organization.iin, "section": "devices",
                 "device": str(p.granted)},
            )  # fmt: skip
            assert page.status == 409  # one active grant per centre: edit it instead
            page = await owner.post(
                f"/centres/{grant}",
                [("section", "devices"), ("section", "reports"), ("device", str(p.granted)),
                 ("device", str(p.second))],
            )  # fmt: skip
            assert page.status == 200, page.text
            assert page.url.endswith("/centres?done=saved")

        async with client(running, p.centre.main.login) as centre:
            page = await centre.get("/clients")
            assert "SN-GRANTED" in page.text
            assert "SN-SECOND" in page.text
            assert (await centre.get(f"/kkm/{p.second}/reports")).status == 200
            assert (await centre.get(f"/kkm/{p.second}/receipts")).status == 403
            assert (await centre.post(f"/kkm/{p.granted}/token")).status == 403

            async with client(running, p.taxpayer.main.login) as owner:
                await owner.get("/centres")
                page = await owner.post(f"/centres/{grant}/stop")
                assert page.status == 200
                assert "остановлен" in page.text
                assert not ACTIVE_GRANT.findall(page.text)
                narrower = {"section": "devices", "device": str(p.granted)}
                page = await owner.post(f"/centres/{grant}", narrower)
                assert page.status == 409  # a stopped grant stays as it was
                assert (await owner.post(f"/centres/{grant}/stop")).status == 409

            # The centre's session goes on, but the registers are gone at once.
            for path in (f"/kkm/{p.granted}", f"/kkm/{p.second}", f"/kkm/{p.second}/reports"):
                page = await centre.get(path)
                assert page.status == 404, path
                assert TAXPAYER not in page.text
                assert "SN-SECOND" not in page.text
            page = await centre.get("/clients")
            assert page.status == 200
            assert TAXPAYER not in page.text

        async with client(running, p.taxpayer.main.login) as owner:
            again = await _grant(owner, p.centre, "transactions", devices=(p.granted,))
            assert again != grant
        async with client(running, p.centre.main.login) as centre:
            assert (await centre.get(f"/kkm/{p.granted}/receipts")).status == 200
            assert (await centre.get(f"/kkm/{p.granted}")).status == 403

    rows = await _query(
        database_url,
        "SELECT actor, action FROM control_audit WHERE action LIKE '%ServiceCentre%' ORDER BY id",
    )
    owner_actor = f"cabinet:{p.taxpayer.main.login}"
    assert [tuple(r) for r in rows] == [
        (owner_actor, "GrantServiceCentre"),
        (owner_actor, "ChangeServiceCentreGrant"),
        (owner_actor, "StopServiceCentreGrant"),
        (owner_actor, "GrantServiceCentre"),
    ]


async def _grant_rows(database_url: str) -> list[tuple[object, ...]]:
    rows = await _query(
        database_url,
        "SELECT g.id, g.centre_id, g.sections, g.stopped_at,"
        " array(SELECT system_id FROM cabinet_centre_grant_devices WHERE grant_id = g.id"
        " ORDER BY system_id) FROM cabinet_centre_grants g ORDER BY g.id",
    )
    return [tuple(r) for r in rows]


@pytest.mark.adversity
async def test_bad_grants_are_refused_and_change_nothing(tmp_path: Path, database_url: str) -> None:
    p = await _parties(database_url)
    async with _cabinet(tmp_path, database_url) as running:
        async with client(running, p.taxpayer.main.login) as owner:
            grant = await _grant(owner, p.centre, "devices", devices=(p.granted,))
            before = await _grant_rows(database_url)
            centre_bin = p.centre.organization.iin
            for status, form in [
                (400, {"bin": "000000000000", "section": "devices", "device": str(p.granted)}),
                (400, {"bin": p.taxpayer.organization.iin, "section": "devices",
                       "device": str(p.granted)}),
                (400, {"bin": "12ab", "section": "devices", "device": str(p.granted)}),
                (400, {"bin": "", "section": "devices", "device": str(p.granted)}),
                (400, {"bin": p.stranger.organization.iin, "device": str(p.granted)}),
                (400, {"bin": p.stranger.organization.iin, "section": "token",
                       "device": str(p.granted)}),
                (400, {"bin": p.stranger.organization.iin, "section": "organization",
                       "device": str(p.granted)}),
                (400, {"bin": p.stranger.organization.iin, "section": "devices"}),
                (400, {"bin": p.stranger.organization.iin, "section": "devices",
                       "device": "x1"}),
                (404, {"bin": p.stranger.organization.iin, "section": "devices",
                       "device": str(p.strangers)}),
                (404, {"bin": p.stranger.organization.iin, "section": "devices",
                       "device": "4000000000"}),
                (409, {"bin": centre_bin, "section": "devices", "device": str(p.granted)}),
            ]:  # fmt: skip
                page = await owner.post("/centres", form)
                assert page.status == status, (form, page.status)
                assert "SN-STRANGER" not in page.text
                assert "300000000001" not in page.text
            page = await owner.post(
                f"/centres/{grant}", {"section": "devices", "device": str(p.strangers)}
            )
            assert page.status == 404
            assert (await owner.post(f"/centres/{grant}", {"section": "devices"})).status == 400
            assert (await owner.post("/centres/999999/stop")).status == 404
            # Without the session's CSRF token, nothing happens.
            for path, data in (
                ("/centres", {"bin": p.stranger.organization.iin, "section": "devices",
                              "device": str(p.granted)}),
                (f"/centres/{grant}", {"section": "reports", "device": str(p.second)}),
                (f"/centres/{grant}/stop", {}),
            ):  # fmt: skip
                assert (await owner.post(path, data, csrf="")).status == 403, path
                assert (await owner.post(path, data, csrf="forged")).status == 403, path
        assert await _grant_rows(database_url) == before


@pytest.mark.adversity
async def test_only_the_granting_taxpayer_and_the_granted_centre_reach_a_grant(
    tmp_path: Path, database_url: str
) -> None:
    p = await _parties(database_url)
    await _user(database_url, p.taxpayer, "cashier", "devices", "token", "transactions")
    await _user(database_url, p.taxpayer, "deputy", "centres")
    await _user(database_url, p.taxpayer, "manager", "centres", points={p.taxpayer.point.id})
    await _user(database_url, p.centre, "fitter", "clients")
    await _user(database_url, p.centre, "accountant", "devices", "transactions")
    async with _cabinet(tmp_path, database_url) as running:
        async with client(running, p.taxpayer.main.login) as owner:
            grant = await _grant(owner, p.centre, "devices", "transactions", devices=(p.granted,))
        before = await _grant_rows(database_url)

        # A user of the taxpayer without the section manages no centre.
        async with client(running, "cashier") as cashier:
            assert 'href="/centres"' not in (await cashier.get("/")).text
            assert (await cashier.get("/centres")).status == 403
            page = await cashier.post(
                "/centres", {"bin": p.stranger.organization.iin, "section": "devices",
                             "device": str(p.granted)},
            )  # fmt: skip
            assert page.status == 403
            assert (await cashier.post(f"/centres/{grant}/stop")).status == 403
            assert (await cashier.get("/clients")).status == 403
        # Nor one who reaches some trade points only: a grant is the whole organization's act.
        async with client(running, "manager") as manager:
            assert (await manager.get("/centres")).status == 403
            assert (await manager.post(f"/centres/{grant}/stop")).status == 403
        # One whose group grants it does.
        async with client(running, "deputy") as deputy:
            page = await deputy.get("/centres")
            assert page.status == 200
            assert "ТОО Сервис ЦТО" in page.text

        # A third organization sees none of it and changes none of it.
        async with client(running, p.stranger.main.login) as stranger:
            page = await stranger.get("/centres")
            assert page.status == 200
            assert "ТОО Сервис ЦТО" not in page.text
            theirs = {"section": "devices", "device": str(p.strangers)}
            page = await stranger.post(f"/centres/{grant}", theirs)
            assert page.status == 404
            assert (await stranger.post(f"/centres/{grant}/stop")).status == 404
            for path in ("/clients", f"/kkm/{p.granted}", f"/kkm/{p.granted}/receipts"):
                page = await stranger.get(path)
                assert page.status in (200, 404), path
                assert TAXPAYER not in page.text, path
                assert "SN-GRANTED" not in page.text, path

        # The centre's users: with "clients", the grant; without it, not even the granted one.
        async with client(running, "fitter") as fitter:
            page = await fitter.get("/clients")
            assert page.status == 200
            assert "SN-GRANTED" in page.text
            assert (await fitter.get(f"/kkm/{p.granted}")).status == 200
            assert (await fitter.get(f"/kkm/{p.granted}/receipts")).status == 200
            assert (await fitter.get(f"/kkm/{p.kept}")).status in (403, 404)
            assert (await fitter.get("/centres")).status == 403
        async with client(running, "accountant") as accountant:
            assert (await accountant.get("/clients")).status == 403
            for path in (f"/kkm/{p.granted}", f"/kkm/{p.granted}/receipts"):
                page = await accountant.get(path)
                assert page.status == 404, path
                assert "SN-GRANTED" not in page.text
        assert await _grant_rows(database_url) == before
