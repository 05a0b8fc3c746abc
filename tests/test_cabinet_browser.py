"""The cabinet in a real browser: Debian's Chromium, headless, driven by Playwright, against a
real gateway, PostgreSQL, Mosquitto (the one-time codes) and the warehouse behind `ofd load`'s
query service (the production path: chDB owned by the loader, the cabinet reading through it
with the analyst key).

A shop owner's day, as the issue lists it: signs the organization up with the code sent to her
phone; adds two trade points and registers a register (confirmed by a code again); gets its
token; the register (simulated, keyed with that token) sells a shift; she finds the receipts
(the offline one marked with the Cyrillic A), opens one, downloads the period as an archive,
sees the Z report beside the OFD's and the analytics chart; makes a user limited to the other
point, who then cannot see the register; grants a service centre the register, whose user
finds it among its clients; reads an announcement; switches to Kazakh. A customer checks a
receipt by its printed QR URL, and a tampered total is refused. Screenshots of the main pages
go to OFD_SCREENSHOTS (default: the test's tmp directory; docs/cabinet holds the README's)."""

import asyncio
import io
import json
import os
import threading
import zipfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import asyncpg
import pytest
from cabinet_support import PASSWORD, cabinet_at, chromium, make_shop, new_page, sell

from ingest.app import RunningGateway
from ingest.notifications import MqttSettings
from ledger import notices, registry
from ledger.lifecycle import Action
from ledger.warehouse.service import ServiceSettings, run_service, service_address

pytestmark = pytest.mark.browser
IIN = "990140000385"
OWNER, OWNER_PASSWORD = "aigul", "Дүкен-2026-пароль"


@pytest.fixture
def warehouse_service(tmp_path: Path) -> Iterator[None]:
    """`ofd load` in a thread: loads tmp_path's journals and answers on loopback."""
    stop = threading.Event()
    thread = threading.Thread(
        target=run_service, args=(ServiceSettings(data_dir=tmp_path),), kwargs={"stop": stop}
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    directory = Path(os.environ.get("OFD_SCREENSHOTS") or tmp_path / "screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@asynccontextmanager
async def codes(mqtt_url: str) -> AsyncIterator[aiomqtt.Client]:
    """What the operator's SMS gateway would receive: the cabinet's one-time codes."""
    mqtt = MqttSettings.from_url(mqtt_url, "test")
    async with aiomqtt.Client(mqtt.host, mqtt.port, timeout=5.0) as subscriber:
        await subscriber.subscribe("ofd/web/cabinet/codes/#", qos=1)
        yield subscriber


async def next_code(subscriber: aiomqtt.Client, phone: str) -> str:
    message = await asyncio.wait_for(anext(subscriber.messages), 10.0)
    assert isinstance(message.payload, bytes)
    body: dict[str, Any] = json.loads(message.payload)
    assert body["phone"] == phone
    code: str = body["code"]
    return code


async def log_in(page: Any, url: str, login: str, password: str) -> None:
    await page.goto(url + "/login")
    await page.fill("input[name=login]", login)
    await page.fill("input[name=password]", password)
    await page.click("button[type=submit]")
    await page.wait_for_url(url + "/")


async def download(page: Any, selector: str) -> zipfile.ZipFile:
    async with page.expect_download() as started:
        await page.click(selector)
    saved = await (await started.value).path()
    return zipfile.ZipFile(io.BytesIO(await asyncio.to_thread(Path(saved).read_bytes)))


async def add_point(page: Any, title: str, address: str) -> str:
    await page.click("nav >> text=Торговые точки")
    form = page.locator("#add-point")
    await form.locator("input[name=title]").fill(title)
    await form.locator("input[name=address]").fill(address)
    await form.locator("input[name=latitude]").fill("43.238949")
    await form.locator("input[name=longitude]").fill("76.889709")
    await form.locator("button").click()
    await page.wait_for_selector("text=Добавлено.")
    value = await page.locator(f"tr:has-text('{title}') td").first.inner_text()
    return str(value)


async def test_a_shop_owners_day_in_the_cabinet(
    tmp_path: Path,
    database_url: str,
    *,
    mqtt_url: str,
    gateway: RunningGateway,
    warehouse_service: None,
    screenshots: Path,
) -> None:
    centre = await make_shop(database_url, "ТОО «Сервис ЦТО»")
    phone = "+77015550101"
    async with (
        codes(mqtt_url) as subscriber,
        cabinet_at(tmp_path, database_url, mqtt_url=mqtt_url) as running,
        chromium() as browser,
    ):
        url = running.url
        page = await new_page(browser)

        # Sign-up, confirmed by the code sent to the owner's phone.
        await page.goto(url + "/")
        await page.click("text=Зарегистрировать организацию")
        await page.fill("input[name=iin]", IIN)
        await page.fill("input[name=title]", "ТОО «Дүкен»")
        await page.fill("input[name=address]", "Алматы, Абай 1")
        await page.fill("input[name=name]", "Айгүл Сейітова")
        await page.fill("input[name=phone]", phone)
        await page.fill("input[name=email]", "aigul@dukan.kz")
        await page.fill("input[name=login]", OWNER)
        await page.fill("input[name=password]", OWNER_PASSWORD)
        await page.screenshot(path=str(screenshots / "cabinet-signup.png"), full_page=True)
        await page.click("button[type=submit]")
        await page.fill("input[name=code]", await next_code(subscriber, phone))
        await page.click("button[type=submit]")
        await page.wait_for_selector("text=Организация зарегистрирована")
        await log_in(page, url, OWNER, OWNER_PASSWORD)

        # Two trade points; a register in the first, its application confirmed by a code.
        first = await add_point(page, "Дүкен №1, Сәтпаев", "Алматы, Сәтпаев 30")
        second = await add_point(page, "Дүкен №2, Абай", "Алматы, Абай 10")
        await page.click("nav >> text=ККМ")
        form = page.locator("#register-kkm")
        await form.locator("select[name=point]").select_option(first)
        await form.locator("input[name=kgd]").fill("640300014538")
        await form.locator("input[name=serial]").fill("SN-2025-1")
        await form.locator("input[name=model]").fill("Webkassa KKM")
        await form.locator("input[name=year]").fill("2025")
        await form.locator("button").click()
        await page.fill("#confirm-kkm input[name=code]", await next_code(subscriber, phone))
        await page.click("#confirm-kkm button")
        await page.wait_for_selector("#status >> text=Ожидает регистрации в КГД")
        system_id = int(urlsplit(page.url).path.rsplit("/", 1)[1])
        await page.click("#get-token")
        token = int(await page.inner_text("#token"))
        await page.screenshot(path=str(screenshots / "cabinet-kkm.png"), full_page=True)
        conn = await asyncpg.connect(database_url)
        try:
            assert await registry.current_token(conn, system_id) == token
            await registry.transition(conn, system_id, Action.ACTIVATE)  # the KGD accepts it
        finally:
            await conn.close()

        sold = await sell(gateway, system_id, token)

        # The receipts (the offline one marked), one in full, the period as an archive.
        receipts = f"{url}/kkm/{system_id}/receipts?shift=1"
        for _ in range(100):  # the loader polls the journal: the receipts appear within seconds
            await page.goto(receipts)
            if await page.locator("#receipts a").count() == len(sold.signs):
                break
            await page.wait_for_timeout(200)
        assert await page.locator("#receipts a").count() == len(sold.signs)
        assert await page.locator("#receipts td.mark >> text=А").count() == 1
        await page.screenshot(path=str(screenshots / "cabinet-receipts.png"), full_page=True)
        archive = await download(page, "#archive")
        assert sum(sign in " ".join(archive.namelist()) for sign in sold.signs) == len(sold.signs)
        await page.click(f"text={sold.signs[2]}")  # the offline one
        await page.wait_for_selector("#fiscal-sign")
        assert await page.inner_text("#fiscal-sign") == sold.signs[2]
        assert "1 300,00 ₸" in await page.inner_text("#total")
        await page.screenshot(path=str(screenshots / "cabinet-receipt.png"), full_page=True)

        # The Z report beside the OFD's, and the analytics chart.
        for _ in range(100):  # the Z report was the last the register sent
            await page.goto(f"{url}/kkm/{system_id}/reports?from=2026-11-25&to=2026-11-25")
            if await page.locator("table.beside").count():
                break
            await page.wait_for_timeout(200)
        # The simulated register's Z counts nothing: every sum differs from the OFD's tally.
        assert await page.locator("summary >> text=расходится").count() == 1
        assert await page.locator("table.beside tr.differs").count() > 1
        await page.screenshot(path=str(screenshots / "cabinet-reports.png"))  # a long page: its top
        await page.goto(f"{url}/analytics?device={system_id}&from=2026-11-25&to=2026-11-25")
        assert await page.locator("#revenue-chart rect").count() == 1
        await page.screenshot(path=str(screenshots / "cabinet-analytics.png"), full_page=True)

        # A cashier limited to the second point cannot see the register of the first.
        await page.click("nav >> text=Пользователи и группы")
        group = page.locator("#add-group")
        await group.locator("input[name=group_name]").fill("Абай")
        for section in ("devices", "transactions"):
            await group.locator(f"input[name=section][value={section}]").check()
        await group.locator(f"input[name=point][value='{second}']").check()
        await group.locator("button").click()
        await page.wait_for_selector("td >> text=Абай")
        user = page.locator("#add-user")
        await user.locator("input[name=login]").fill("kassir")
        await user.locator("input[name=password]").fill(PASSWORD)
        await user.locator("input[name=name]").fill("Ерлан")
        await user.locator("label:has-text('Абай') input[name=group]").check()
        await user.locator("button").click()
        await page.wait_for_selector("td >> text=kassir")
        await page.screenshot(path=str(screenshots / "cabinet-users.png"), full_page=True)
        cashier = await new_page(browser)
        await log_in(cashier, url, "kassir", PASSWORD)
        await cashier.goto(url + "/kkm")
        assert await cashier.locator(f"a >> text='{system_id}'").count() == 0
        refused = await cashier.goto(f"{url}/kkm/{system_id}/receipts")
        assert refused.status == 404
        assert sold.signs[0] not in await cashier.content()

        # A service centre granted the register (its card and receipts) finds it.
        await page.click("nav >> text=Сервисные центры (ЦТО)")
        grant = page.locator("#grant-centre")
        await grant.locator("input[name=bin]").fill(centre.organization.iin)
        for section in ("devices", "transactions"):
            await grant.locator(f"input[name=section][value={section}]").check()
        await grant.locator(f"input[name=device][value='{system_id}']").check()
        await grant.locator("button").click()
        await page.wait_for_selector("#grants >> text=ТОО «Сервис ЦТО»")
        await page.screenshot(path=str(screenshots / "cabinet-centres.png"), full_page=True)
        service = await new_page(browser)
        await log_in(service, url, centre.main.login, PASSWORD)
        await service.click("nav >> text=Клиенты")
        assert await service.locator("text=ТОО «Дүкен»").count() >= 1
        await service.click(f"a >> text='{system_id}'")
        await service.wait_for_selector("#status")
        await service.goto(f"{url}/kkm/{system_id}/receipts/{sold.signs[0]}")
        assert await service.inner_text("#fiscal-sign") == sold.signs[0]
        assert "Дүкен №1, Сәтпаев" in await service.content()  # the client's point, named

        # An announcement from the OFD: unread in the menu until she reads it.
        conn = await asyncpg.connect(database_url)
        try:
            await notices.announce(conn, "Плановые работы 7 декабря с 02:00 до 03:00", None)
        finally:
            await conn.close()
        await page.goto(url + "/notifications")
        assert await page.locator("nav .unread").count() == 1
        assert "Плановые работы" in await page.inner_text("#notices")
        await page.screenshot(path=str(screenshots / "cabinet-notifications.png"), full_page=True)
        await page.click("#notices button")
        await page.wait_for_load_state()
        assert await page.locator("nav .unread").count() == 0

        # In Kazakh.
        await page.click("#languages >> text=Қазақша")
        await page.wait_for_selector("nav >> text=Сауда нүктелері")
        assert await page.get_attribute("html", "lang") == "kk"
        await page.screenshot(path=str(screenshots / "cabinet-kazakh.png"), full_page=True)

        # A customer scans the offline receipt's QR code; a tampered total finds nothing.
        customer = await new_page(browser)
        qr = urlsplit(sold.qr_urls[2])
        await customer.goto(f"{url}{qr.path}?{qr.query}")
        assert "Чек получен ОФД" in await customer.inner_text("#verdict")
        assert "ТОО «Дүкен»" in await customer.content()
        await customer.screenshot(path=str(screenshots / "check-found.png"), full_page=True)
        await customer.goto(f"{url}{qr.path}?{qr.query.replace('s=1300.00', 's=1301.00')}")
        assert "Такого чека нет" in await customer.inner_text("#verdict")
    assert service_address(tmp_path) is not None  # the reads went through the service
