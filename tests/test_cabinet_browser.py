"""The cabinet in a real browser: Debian's Chromium, headless, driven by Playwright, against a
real gateway, PostgreSQL and the warehouse behind `ofd load`'s query service (the production
path: chDB owned by the loader, the cabinet reading through it with the analyst key).

A shop owner logs in, adds a trade point, registers a register there, gets its token; the
register (simulated, keyed with that token) sells; the owner finds the receipts (the offline
one marked with the Cyrillic A), opens one; a customer checks it by its printed QR URL.
Screenshots of the receipt and of the check go to OFD_SCREENSHOTS (default: the test's tmp
directory)."""

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from cabinet_support import PASSWORD, cabinet_at, chromium_page, make_shop, sell

from ingest.app import RunningGateway
from ledger import registry
from ledger.lifecycle import Action
from ledger.warehouse.service import ServiceSettings, run_service, service_address

pytestmark = pytest.mark.browser


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


async def test_a_shop_owner_registers_a_register_and_finds_its_receipts(
    tmp_path: Path,
    database_url: str,
    gateway: RunningGateway,
    warehouse_service: None,
    screenshots: Path,
) -> None:
    shop = await make_shop(database_url, "ТОО «Дүкен»")
    async with cabinet_at(tmp_path, database_url) as running, chromium_page() as page:
        await page.goto(running.url + "/")
        assert page.url.endswith("/login")
        await page.fill("input[name=login]", shop.main.login)
        await page.fill("input[name=password]", PASSWORD)
        await page.click("button[type=submit]")
        await page.wait_for_url(running.url + "/")

        await page.click("nav >> text=Торговые точки")
        form = page.locator("#add-point")
        await form.locator("input[name=title]").fill("Дүкен №2, Сәтпаев")
        await form.locator("input[name=address]").fill("Алматы, Сәтпаев 30")
        await form.locator("input[name=latitude]").fill("43.238949")
        await form.locator("input[name=longitude]").fill("76.889709")
        await form.locator("button").click()
        await page.wait_for_selector("text=Добавлено.")
        assert await page.locator("td >> text=Дүкен №2, Сәтпаев").count() == 1

        await page.click("nav >> text=ККМ")
        form = page.locator("#register-kkm")
        new_point = await form.locator("option", has_text="Сәтпаев").get_attribute("value")
        assert new_point
        await form.locator("select[name=point]").select_option(new_point)
        await form.locator("input[name=kgd]").fill("640300014538")
        await form.locator("input[name=serial]").fill("SN-2025-1")
        await form.locator("input[name=model]").fill("Webkassa KKM")
        await form.locator("input[name=year]").fill("2025")
        await form.locator("button").click()
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

        receipts = f"{running.url}/kkm/{system_id}/receipts?shift=1"
        for _ in range(100):  # the loader polls the journal: the receipts appear within seconds
            await page.goto(receipts)
            if await page.locator("#receipts a").count() == len(sold.signs):
                break
            await page.wait_for_timeout(200)
        assert await page.locator("#receipts a").count() == len(sold.signs)
        assert await page.locator("#receipts td.mark >> text=А").count() == 1
        await page.screenshot(path=str(screenshots / "cabinet-receipts.png"), full_page=True)
        await page.click(f"text={sold.signs[2]}")  # the offline one
        await page.wait_for_selector("#fiscal-sign")
        assert await page.inner_text("#fiscal-sign") == sold.signs[2]
        assert "1 300,00 ₸" in await page.inner_text("#total")
        await page.screenshot(path=str(screenshots / "cabinet-receipt.png"), full_page=True)

        await page.goto(f"{running.url}/analytics?device={system_id}&from=2026-11-25&to=2026-11-25")
        assert await page.locator("#revenue-chart rect").count() == 1
        await page.screenshot(path=str(screenshots / "cabinet-analytics.png"), full_page=True)

        qr = urlsplit(sold.qr_urls[2])
        await page.goto(f"{running.url}{qr.path}?{qr.query}")
        assert "Чек получен ОФД" in await page.inner_text("#verdict")
        assert "ТОО «Дүкен»" in await page.content()
        await page.screenshot(path=str(screenshots / "check-found.png"), full_page=True)
        await page.goto(f"{running.url}{qr.path}?{qr.query.replace('s=1300.00', 's=1301.00')}")
        assert "Такого чека нет" in await page.inner_text("#verdict")
    assert service_address(tmp_path) is not None  # the reads went through the service
