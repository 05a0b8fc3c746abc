"""Transactions, reports and the public receipt check, from a real gateway's journal loaded into
the warehouse: a register registered in the cabinet, keyed with the token the cabinet shows,
sends a shift (one receipt offline); the owner finds them, downloads them as archives and sees
the register's Z beside the OFD's, and a customer checks one by the very QR URL the gateway
printed."""

import io
import json
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import asyncpg
import pytest
from cabinet_support import (
    KGD,
    PASSWORD,
    TOKEN,
    Client,
    Shop,
    Sold,
    cabinet_at,
    client,
    make_shop,
    sell,
    web_settings,
)
from warehouse_journal import loaded_warehouse

from cabinet.app import RunningCabinet, running_cabinet
from ingest.app import RunningGateway
from ingest.limits import FailureBudget
from ledger import cabinet_users, registry
from ledger.lifecycle import Action
from ledger.warehouse.backends import QueryLimits, Reader, Row
from ledger.wire import KZ_TIME


async def register_and_sell(
    tmp_path: Path, database_url: str, gateway: RunningGateway, shop: Shop
) -> Sold:
    """The shop's main user registers a register in the cabinet, the KGD accepts it, and a
    simulated register keyed with the cabinet's token sells (cabinet_support.sell)."""
    async with (
        cabinet_at(tmp_path, database_url) as running,
        client(running, shop.main.login) as browser,
    ):
        await browser.get("/kkm")
        page = await browser.post(
            "/kkm",
            {"point": str(shop.point.id), "kgd": KGD, "serial": "SN-1", "model": "KKM-1",
             "year": "2025"},
        )  # fmt: skip
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
    tmp_path: Path, database_url: str, **settings: Any
) -> AsyncIterator[RunningCabinet]:
    """The journal loaded into an in-process warehouse, and a cabinet (with `settings`) reading
    it as an analyst (the `ofd load` query service is the browser test's path)."""
    # Loads what is new (a second opening finds it all loaded).
    with loaded_warehouse(tmp_path) as warehouse:
        analyst = warehouse.analyst(QueryLimits())
        async with running_cabinet(
            web_settings(tmp_path, database_url, **settings), reader=analyst
        ) as running:
            yield running


def check_path(url: str, **changes: str) -> tuple[str, dict[str, str]]:
    """The check page's query of a printed QR URL, with `changes` (a tampered field)."""
    params = dict(parse_qsl(urlsplit(url).query))
    return "/check", {**params, **changes}


async def test_the_owner_finds_receipts_reports_and_the_customer_checks_one(
    tmp_path: Path, database_url: str, gateway: RunningGateway
) -> None:
    shop = await make_shop(database_url)
    sold = await register_and_sell(tmp_path, database_url, gateway, shop)
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
    sold = await register_and_sell(tmp_path, database_url, gateway, shop)
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


async def download(browser: Client, path: str) -> tuple[int, dict[str, str], bytes]:
    """A download's status, headers and body (a page's HTML when it is refused)."""
    async with browser.http.get(browser.base_url + path) as answer:
        return answer.status, dict(answer.headers), await answer.read()


def unzipped(body: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert archive.testzip() is None  # every entry's CRC holds
        return {name: archive.read(name) for name in archive.namelist()}


async def test_receipts_and_reports_download_as_archives_and_the_zs_stand_side_by_side(
    tmp_path: Path, database_url: str, gateway: RunningGateway
) -> None:
    shop = await make_shop(database_url)
    sold = await register_and_sell(tmp_path, database_url, gateway, shop)
    # Two receipts a batch: the period's archive is read in two batches.
    async with (
        loaded(tmp_path, database_url, archive_batch=2) as running,
        client(running, shop.main.login) as browser,
    ):
        base, offline_sign = f"/kkm/{sold.system_id}", sold.signs[2]
        page = await browser.get(f"{base}/receipts/{offline_sign}")
        assert f'href="{base}/receipts/{offline_sign}.zip"' in page.text
        status, headers, body = await download(browser, f"{base}/receipts/{offline_sign}.zip")
        assert status == 200
        assert headers["Content-Type"] == "application/zip"
        assert headers["Content-Disposition"] == (
            f'attachment; filename="receipt-{sold.system_id}-{offline_sign}.zip"'
        )
        assert headers["Cache-Control"] == "no-store"
        files = unzipped(body)
        assert sorted(files) == [f"{offline_sign}.json", f"{offline_sign}.txt"]
        document = json.loads(files[f"{offline_sign}.json"])
        held = document["receipt"]
        assert (held["fiscal_sign"], held["total"], held["offline_number"]) == (
            offline_sign, 130_000, 7
        )  # fmt: skip
        assert [line["name"] for line in held["lines"]] == ["Нан <b>ақ</b>", "Сүт"]
        assert [(line["quantity"], line["price"]) for line in held["lines"]] == [
            (2000, 45_000), (1000, 40_000)
        ]  # fmt: skip
        assert held["payments"] == [[0, 130_000]]
        assert document["offline_mark"] == "А"
        assert document["kgd_registration_number"] == KGD
        assert document["trade_point"]["title"] == shop.point.title
        # The QR URL names what the printed one does (this cabinet's own check page).
        assert urlsplit(document["qr_url"]).query == urlsplit(sold.qr_urls[2]).query
        text = files[f"{offline_sign}.txt"].decode()
        assert "Чек: Продажа А (автономный режим)" in text
        assert "Нан <b>ақ</b>: 2 × 450,00 ₸ = 900,00 ₸" in text  # text: nothing escaped
        assert "Итого: 1 300,00 ₸" in text
        assert "Номер чека: 3 (автономный № 7)" in text
        assert f"Фискальный признак: {offline_sign}" in text
        assert f"QR-код: {document['qr_url']}" in text
        assert (await download(browser, f"{base}/receipts/1234567890.zip"))[0] == 404

        page = await browser.get(f"{base}/receipts", shift="1")
        assert f'href="{base}/receipts.zip?shift=1"' in page.text
        status, headers, body = await download(browser, f"{base}/receipts.zip?shift=1")
        assert status == 200
        assert headers["Content-Disposition"] == (
            f'attachment; filename="receipts-{sold.system_id}-shift-1.zip"'
        )
        files = unzipped(body)
        _, _, listed = await download(browser, f"{base}/receipts.csv?shift=1")
        assert files[f"receipts-{sold.system_id}-shift-1.csv"] == listed
        for sign in sold.signs:
            assert json.loads(files[f"{sign}.json"])["receipt"]["fiscal_sign"] == sign
            assert f"Фискальный признак: {sign}" in files[f"{sign}.txt"].decode()
        assert len(files) == 1 + 2 * len(sold.signs)
        period = "from=2026-11-25&to=2026-11-25"
        files = unzipped((await download(browser, f"{base}/receipts.zip?{period}"))[2])
        assert f"receipts-{sold.system_id}-2026-11-25-2026-11-25.csv" in files
        assert all(f"{sign}.json" in files for sign in sold.signs)
        # The lists' own limits hold: a period too long is refused, nothing sent.
        too_long = "from=2026-01-01&to=2026-11-25"
        for path in (f"receipts.zip?{too_long}", f"reports.zip?{too_long}", "receipts.zip?shift=x"):
            status, headers, _ = await download(browser, f"{base}/{path}")
            assert status == 400, path
            assert headers["Content-Type"].startswith("text/html")

        # The simulated register closed its shift with a zero Z: every count and sum it left at
        # zero differs from the OFD's tally of three receipts, and each row says so.
        page = await browser.get(f"{base}/reports", **{"from": "2026-11-25"})
        assert page.status == 200
        assert '<details class="beside" open>' in page.text
        assert (
            '<tr class="differs"><td>≠</td><td>cash_sum</td>\n'
            '<td class="num">0,00 ₸</td>\n<td class="num">3 000,00 ₸</td></tr>'
        ) in page.text
        # What the register's report leaves out is shown as such, and counts as zero.
        assert (
            '<tr class="differs"><td>≠</td><td>ticket_operations[SELL].tickets_count</td>\n'
            '<td class="num">—</td>\n<td class="num">3</td></tr>'
        ) in page.text
        assert "<tr><td></td><td>shift_number</td>" in page.text  # agreeing rows unmarked
        assert f'href="{base}/reports.zip?from=2026-11-25&amp;to=2026-11-25"' in page.text
        status, headers, body = await download(browser, f"{base}/reports.zip?from=2026-11-25")
        assert status == 200
        assert headers["Content-Disposition"] == (
            f'attachment; filename="reports-{sold.system_id}-2026-11-25-2026-11-25.zip"'
        )
        files = unzipped(body)
        _, _, listed = await download(browser, f"{base}/reports.csv?from=2026-11-25")
        assert files[f"reports-{sold.system_id}-2026-11-25-2026-11-25.csv"] == listed
        report = json.loads(files["00001-z-shift-1.json"])
        assert (report["kind"], report["shift_number"], report["differs"]) == ("Z", 1, True)
        fields = {pair["name"]: pair for pair in report["fields"]}
        assert fields["cash_sum"] == {
            "name": "cash_sum", "device": 0, "ofd": 300_000, "differs": True, "money": True
        }  # fmt: skip
        assert fields["ticket_operations[SELL].tickets_sum"]["device"] is None
        assert fields["shift_number"]["differs"] is False
        text = files["00001-z-shift-1.txt"].decode()
        assert text.startswith("Отчёт Z, смена 1, 2026-11-25 09:10:00")
        assert "≠  ticket_operations[SELL].tickets_count" in text


def leaked(body: bytes, shop: Shop, sold: Sold, path: str) -> list[str]:
    """What of the shop a refusal of `path` shows: its title, point, register's KGD number or
    a receipt's sign (but what the asker typed in the path)."""
    secrets = [shop.organization.title, shop.point.title, KGD, *sold.signs]
    return [text for text in secrets if text not in path and text.encode() in body]


@pytest.mark.adversity
async def test_archives_refuse_another_organization_and_an_ungranted_section(
    tmp_path: Path, database_url: str, gateway: RunningGateway
) -> None:
    shop, other = await make_shop(database_url), await make_shop(database_url, "ТОО Басқа")
    sold = await register_and_sell(tmp_path, database_url, gateway, shop)
    conn = await asyncpg.connect(database_url)
    try:
        for login, section in (("reporter", "reports"), ("cashier", "transactions")):
            group = await cabinet_users.add_group(
                conn, shop.organization.id, name=login, sections={"devices", section},
                all_points=True, point_ids=set(),
            )  # fmt: skip
            user = await cabinet_users.add_user(
                conn, shop.organization.id, login=login, password=PASSWORD
            )
            await cabinet_users.set_user_groups(conn, shop.organization.id, user.id, {group.id})
    finally:
        await conn.close()
    base, sign = f"/kkm/{sold.system_id}", sold.signs[0]
    receipts = (f"{base}/receipts/{sign}.zip", f"{base}/receipts.zip?shift=1")
    reports = (f"{base}/reports.zip?from=2026-11-25",)
    async with loaded(tmp_path, database_url) as running:
        async with client(running, other.main.login) as stranger:
            for path in (*receipts, *reports):
                status, headers, body = await download(stranger, path)
                assert status == 404, path
                assert "Content-Disposition" not in headers
                assert not leaked(body, shop, sold, path)
        async with client(running, "reporter") as reporter:
            for path in receipts:
                status, headers, body = await download(reporter, path)
                assert status == 403, path
                assert not leaked(body, shop, sold, path)
            assert (await download(reporter, reports[0]))[0] == 200
        async with client(running, "cashier") as cashier:
            assert (await download(cashier, reports[0]))[0] == 403
            assert (await download(cashier, receipts[0]))[0] == 200


class FailingAfter:
    """A reader whose reads of receipts in full fail after the first `reads` of them."""

    def __init__(self, reader: Reader, reads: int) -> None:
        self.database = reader.database
        self._reader, self._left = reader, reads

    def select(self, sql: str) -> list[Row]:
        if "fiscal_sign IN" in sql:
            if self._left == 0:
                raise RuntimeError("the warehouse went away")
            self._left -= 1
        return self._reader.select(sql)


@pytest.mark.adversity
async def test_an_archive_cut_short_fails_instead_of_looking_whole(
    tmp_path: Path, database_url: str, gateway: RunningGateway
) -> None:
    shop = await make_shop(database_url)
    sold = await register_and_sell(tmp_path, database_url, gateway, shop)
    with loaded_warehouse(tmp_path) as warehouse:
        settings = web_settings(tmp_path, database_url, archive_batch=1)
        # The first batch is read before answering: the warehouse failing then is a page.
        reader = FailingAfter(warehouse.analyst(QueryLimits()), reads=0)
        async with (
            running_cabinet(settings, reader=reader) as running,
            client(running, shop.main.login) as browser,
        ):
            status, headers, _ = await download(
                browser, f"/kkm/{sold.system_id}/receipts.zip?shift=1"
            )
            assert status == 503
            assert "Content-Disposition" not in headers
        # Failing later, once the archive is under way: the download fails, never ends whole.
        reader = FailingAfter(warehouse.analyst(QueryLimits()), reads=1)
        async with (
            running_cabinet(settings, reader=reader) as running,
            client(running, shop.main.login) as browser,
        ):
            url = f"{running.url}/kkm/{sold.system_id}/receipts.zip?shift=1"
            async with browser.http.get(url) as answer:
                assert answer.status == 200
                with pytest.raises(aiohttp.ClientPayloadError):
                    await answer.read()
