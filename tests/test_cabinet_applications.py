"""A registration application confirmed by the one-time code sent to the organization's main
user, over a real Mosquitto: filed by a clerk, confirmed with the code the main user received;
a wrong code, another user's ticket, a main user without contacts and a forged form refused."""

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
from cabinet_support import PASSWORD, Client, Shop, cabinet_at, client, make_shop

from ingest.notifications import MqttSettings
from ledger import cabinet_users
from ledger.lifecycle import DeviceStatus

TICKET = re.compile(r'name="ticket" value="([^"]+)"')
TOPIC = "ofd/web/cabinet/codes/registration"
FORM = {"kgd": "640300014538", "serial": "SN-77", "model": "KKM-1", "year": "2025"}


async def _clerk(database_url: str, shop: Shop, *, main_phone: str = "+77010000001") -> str:
    """A user whose group grants registers on the shop's point; the main user gets a phone."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE cabinet_users SET phone = $1 WHERE id = $2", main_phone, shop.main.id
        )
        group = await cabinet_users.add_group(
            conn, shop.organization.id, name="Кассиры", sections={"devices"},
            all_points=False, point_ids={shop.point.id},
        )  # fmt: skip
        clerk = await cabinet_users.add_user(
            conn, shop.organization.id, login=f"clerk{shop.organization.id}", password=PASSWORD
        )
        await cabinet_users.set_user_groups(conn, shop.organization.id, clerk.id, {group.id})
        return clerk.login
    finally:
        await conn.close()


async def _file(browser: Client, point_id: int) -> tuple[int, str]:
    await browser.get("/kkm")
    page = await browser.post("/kkm", {**FORM, "point": str(point_id)})
    found = TICKET.search(page.text)
    return page.status, found[1] if found else ""


async def _devices(database_url: str, organization_id: int) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(
            await conn.fetch(
                "SELECT d.system_id, d.status FROM devices d JOIN trade_points p"
                " ON p.id = d.trade_point_id WHERE p.organization_id = $1",
                organization_id,
            )
        )
    finally:
        await conn.close()


async def _code(subscriber: aiomqtt.Client) -> dict[str, Any]:
    message = await asyncio.wait_for(anext(subscriber.messages), 10.0)
    assert isinstance(message.payload, bytes)
    body: dict[str, Any] = json.loads(message.payload)
    return body


async def test_a_clerks_application_is_filed_with_the_main_users_code(
    tmp_path: Path, database_url: str, mqtt_url: str
) -> None:
    shop = await make_shop(database_url)
    clerk = await _clerk(database_url, shop)
    mqtt = MqttSettings.from_url(mqtt_url, "test")
    async with (
        aiomqtt.Client(mqtt.host, mqtt.port, timeout=5.0) as subscriber,
        cabinet_at(tmp_path, database_url, mqtt_url=mqtt_url) as running,
        client(running, clerk) as browser,
        client(running, shop.main.login) as main,
    ):
        await subscriber.subscribe(TOPIC, qos=1)
        status, ticket = await _file(browser, shop.point.id)
        assert status == 200
        assert ticket
        sent = await _code(subscriber)
        assert sent["phone"] == "+77010000001"  # the main user's, not the clerk's
        assert not await _devices(database_url, shop.organization.id)  # nothing filed yet

        wrong = f"{(int(sent['code']) + 1) % 10**6:06d}"
        refused = await browser.post("/kkm/confirm", {"ticket": ticket, "code": wrong})
        assert refused.status == 400
        assert "4 attempts left" in refused.text
        # The ticket is its filer's: the main user holding it (and the code) files nothing.
        await main.get("/kkm")
        stolen = await main.post("/kkm/confirm", {"ticket": ticket, "code": sent["code"]})
        assert stolen.status == 404
        assert not await _devices(database_url, shop.organization.id)

        status, ticket = await _file(browser, shop.point.id)
        sent = await _code(subscriber)
        forged = await browser.post(
            "/kkm/confirm", {"ticket": ticket, "code": sent["code"]}, csrf=""
        )
        assert forged.status == 403
        done = await browser.post("/kkm/confirm", {"ticket": ticket, "code": sent["code"]})
        assert done.status == 200
        assert "Ожидает регистрации в КГД" in done.text
        filed = await _devices(database_url, shop.organization.id)
        assert [DeviceStatus(row["status"]) for row in filed] == [
            DeviceStatus.AWAITING_REGISTRATION
        ]
        again = await browser.post("/kkm/confirm", {"ticket": ticket, "code": sent["code"]})
        assert again.status == 404  # a code files once
    assert len(await _devices(database_url, shop.organization.id)) == 1


async def test_no_code_goes_out_for_a_point_out_of_reach_or_a_main_user_without_contacts(
    tmp_path: Path, database_url: str, mqtt_url: str
) -> None:
    shop = await make_shop(database_url)
    other = await make_shop(database_url, title="ТОО Басқа")
    clerk = await _clerk(database_url, shop, main_phone="")
    async with (
        cabinet_at(tmp_path, database_url, mqtt_url=mqtt_url) as running,
        client(running, clerk) as browser,
    ):
        status, ticket = await _file(browser, other.point.id)
        assert status == 404
        assert not ticket
        status, ticket = await _file(browser, shop.point.id)
        assert status == 409  # the main user has no phone or e-mail to confirm with
        assert not ticket
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM cabinet_codes") == 0
    finally:
        await conn.close()
