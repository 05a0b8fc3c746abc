"""Transactions, reports and the public receipt check, from a real gateway's journal loaded into
the warehouse: a register registered in the cabinet, keyed with the token the cabinet shows,
sends a shift (one receipt offline); the owner finds them, and a customer checks one by the
very QR URL the gateway printed."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import asyncpg
import pytest
from cabinet_support import KGD, TOKEN, Client, Sold, cabinet_at, client, make_shop, sell

from cabinet.app import RunningCabinet
from ingest.app import RunningGateway
from ingest.limits import FailureBudget
from ledger import registry
from ledger.lifecycle import Action
from ledger.warehouse.backends import QueryLimits, open_warehouse
from ledger.warehouse.loader import Loader, local_sources
from ledger.wire import KZ_TIME


async def register_and_sell(
    browser: Client, gateway: RunningGateway, database_url: str, point_id: int
) -> Sold:
    """Registers a register in the cabinet, has the KGD accept it, types the cabinet's token
    into a simulated register, and sells (cabinet_support.sell)."""
    await browser.get("/kkm")
    page = await browser.post(
        "/kkm",
        {"point": str(point_id), "kgd": KGD, "serial": "SN-1", "model": "KKM-1", "year": "2025"},
    )
    system_id = int(page.url.rsplit("/", 1)[1].split("?")[0])
    conn = await asyncpg.connect(database_url)
    try:
        await registry.transition(conn, system_id, Action.ACTIVATE)  # the KGD's acceptance
    finally:
        await conn.close()
    found = TOKEN.search((await browser.post(f"/kkm/{system_id}/token")).text)
    assert found
    return await sell(gateway, system_id, int(found[1]))


@asynccontextmanager
async def loaded(
    tmp_path: Path, database_url: str, **limits: FailureBudget
) -> AsyncIterator[RunningCabinet]:
    """The journal loaded into an in-process warehouse, and a cabinet reading it as an
    analyst (the `ofd load` query service is the browser test's path)."""
    warehouse = open_warehouse(path=tmp_path / "warehouse")
    try:
        # Loads what is new (a second opening finds it all loaded).
        sum(Loader(warehouse, lambda: local_sources(tmp_path / "journal")).drain())
        analyst = warehouse.analyst(QueryLimits())
        async with cabinet_at(tmp_path, database_url, reader=analyst, **limits) as running:
            yield running
    finally:
        warehouse.close()


def check_path(url: str, **changes: str) -> tuple[str, dict[str, str]]:
    """The check page's query of a printed QR URL, with `changes` (a tampered field)."""
    params = dict(parse_qsl(urlsplit(url).query))
    return "/check", {**params, **changes}


async def test_the_owner_finds_receipts_reports_and_the_customer_checks_one(
    tmp_path: Path, database_url: str, gateway: RunningGateway
) -> None:
    shop = await make_shop(database_url)
    async with (
        cabinet_at(tmp_path, database_url) as running,
        client(running, shop.main.login) as browser,
    ):
        sold = await register_and_sell(browser, gateway, database_url, shop.point.id)
    # The gateway printed its default: this deployment's own check page.
    assert sold.qr_urls[0].startswith("http://127.0.0.1:7781/check?i=")

    async with (
        loaded(tmp_path, database_url) as running,
        client(running, shop.main.login) as browser,
    ):
        base = f"/kkm/{sold.system_id}"
        page = await browser.get(f"{base}/receipts", shift="1")
        assert page.status == 200
        for sign in sold.signs:
            assert f"{base}/receipts/{sign}" in page.text
        assert page.text.count('<td class="mark" title="автономный режим">А</td>') == 1
        page = await browser.get(f"{base}/receipts", **{"from": "2026-11-25", "to": "2026-11-25"})
        assert all(sign in page.text for sign in sold.signs)
        assert "Чеков нет" in (await browser.get(f"{base}/receipts", shift="2")).text
        # A period longer than the limit (31 days for one register) is refused, not run.
        page = await browser.get(f"{base}/receipts", **{"from": "2026-01-01", "to": "2026-11-25"})
        assert page.status == 400

        async with browser.http.get(f"{running.url}{base}/receipts.csv?shift=1") as answer:
            assert answer.status == 200
            assert answer.content_type == "text/csv"
            assert "receipts-" in answer.headers["Content-Disposition"]
            lines = (await answer.text()).lstrip("\ufeff").splitlines()
        assert lines[0] == "mark,time,shift,number,operation,total,fiscal_sign"
        assert lines[3] == f"А,2026-11-25 09:03:00,1,3,SELL,1300.00,{sold.signs[2]}"
        page = await browser.get(f"{base}/receipts/{sold.signs[2]}")
        assert page.status == 200
        assert "Нан &lt;b&gt;ақ&lt;/b&gt;" in page.text  # the item's name, as text
        assert 'id="total">1 300,00 ₸' in page.text  # 2 x 450 + 400 tenge
        assert 'title="автономный режим">А</span>' in page.text
        assert "автономный № 7" in page.text
        assert f"i={sold.signs[2]}&amp;f={KGD}&amp;s=1300.00&amp;t=20261125T090300" in page.text
        assert (await browser.get(f"{base}/receipts/1234567890")).status == 404

        page = await browser.get(f"{base}/reports", **{"from": "2026-11-25"})
        assert page.status == 200
        assert "<td>Z</td>" in page.text
        page = await browser.get(
            "/analytics", device=str(sold.system_id), **{"from": "2026-11-25", "to": "2026-11-25"}
        )
        assert page.status == 200
        assert '<svg id="revenue-chart"' in page.text
        assert "Выручка по дням: 3 000,00 ₸" in page.text
        assert '<td class="num">3</td><td class="num">1</td>' in page.text  # one of 3 offline
        assert '<td>Наличные</td><td class="num">3 000,00 ₸</td>' in page.text
        assert "<td>12%</td>" in page.text
        assert "Возвраты продаж: 0" in page.text
        page = await browser.get(
            "/analytics", device=str(sold.system_id), **{"from": "2026-10-01", "to": "2026-11-25"}
        )
        assert page.status == 400  # one register: 31 days at most
        assert (await browser.get("/analytics", device="4000000000")).status == 404
        async with browser.http.get(f"{running.url}{base}/reports.csv?from=2026-11-25") as answer:
            assert answer.status == 200
            assert ",Z,1," in await answer.text()

    async with loaded(tmp_path, database_url) as running, client(running) as customer:
        path, params = check_path(sold.qr_urls[0])
        page = await customer.get(path, **params)
        assert page.status == 200
        assert "Чек получен ОФД" in page.text
        assert shop.organization.title in page.text
        assert 'id="total">700,00 ₸' in page.text  # 2 x 150 + 400 tenge
        tampered_fields = [
            {"s": "701.00"}, {"i": str(int(sold.signs[0]) + 1)}, {"t": "20261125T090200"},
            {"f": "640300014539"}, {"s": "abc"},
        ]  # fmt: skip
        for tampered in tampered_fields:
            path, params = check_path(sold.qr_urls[0], **tampered)
            page = await customer.get(path, **params)
            assert page.status == 200
            assert 'id="verdict">Такого чека нет' in page.text, tampered
            assert shop.organization.title not in page.text
        # The offline receipt, checked by its own QR code, is found and marked.
        path, params = check_path(sold.qr_urls[2])
        page = await customer.get(path, **params)
        assert "Чек получен ОФД" in page.text
        assert 'title="автономный режим">А</span>' in page.text
        # A receipt printed minutes ago and not (yet) in the warehouse: "not yet received",
        # whatever the rest says, so the answer tells nothing of what exists.
        now = datetime.now(KZ_TIME).replace(tzinfo=None) - timedelta(minutes=2)
        path, params = check_path(sold.qr_urls[0], t=now.strftime("%Y%m%dT%H%M%S"))
        page = await customer.get(path, **params)
        assert 'id="verdict">Чек ещё не поступил' in page.text
        assert shop.organization.title not in page.text


@pytest.mark.adversity
async def test_guessing_receipts_is_limited_per_address(
    tmp_path: Path, database_url: str, gateway: RunningGateway
) -> None:
    shop = await make_shop(database_url)
    async with (
        cabinet_at(tmp_path, database_url) as running,
        client(running, shop.main.login) as browser,
    ):
        sold = await register_and_sell(browser, gateway, database_url, shop.point.id)
    budget = FailureBudget(failures=3, window_seconds=60.0)
    async with (
        loaded(tmp_path, database_url, check_misses=budget) as running,
        client(running) as guesser,
    ):
        path, real = check_path(sold.qr_urls[0])
        # A customer's real checks are never counted.
        for _ in range(5):
            assert "Чек получен ОФД" in (await guesser.get(path, **real)).text
        for guess in range(3):
            page = await guesser.get(path, **{**real, "i": str(1_000_000_000 + guess)})
            assert page.status == 200
        page = await guesser.get(path, **real)
        assert page.status == 429  # spent: even a real receipt waits for the window's end
        assert running.cabinet.check_misses.refused == 1
