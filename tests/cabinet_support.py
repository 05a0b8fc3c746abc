"""What the cabinet's tests share: a cabinet served in-process on a free port against the test's
own PostgreSQL database, organizations with their main users, and an HTTP client that keeps its
session cookie and finds the page's CSRF token as a browser would."""

import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from cabinet.app import RunningCabinet, running_cabinet
from cabinet.settings import WebSettings
from ingest.app import RunningGateway
from ingest.limits import FailureBudget
from ledger import cabinet_users, registry
from ledger.migrate import migrate
from ledger.schemas import SCHEMAS
from ledger.warehouse.backends import Reader
from ledger.wire import ResultCode
from simulators.documents import build_close_shift
from simulators.kkm import SimulatedKkm
from simulators.receipts import Line, build_ticket

PASSWORD = "correct horse battery"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
LOGIN_CSRF = re.compile(r'name="login_csrf" value="([^"]+)"')
TOKEN = re.compile(r'<output id="token">(\d+)</output>')
KGD = "640300014538"
SHIFT_START = datetime(2026, 11, 25, 9, 0, 0)
OFFLINE_NUMBER = 7
# Debian's Chromium, never a browser downloaded by a test tool; headless, nothing phoning home.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Shop:
    """An organization with one trade point and its main user."""

    organization: registry.Organization
    point: registry.TradePoint
    main: cabinet_users.User


async def make_shop(database_url: str, title: str = "ТОО Дүкен", login: str = "") -> Shop:
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)
        iin = f"{secrets.randbelow(10**12):012d}"
        org = await registry.add_organization(
            conn, registry.Organization(0, iin, title, "Алматы", "Алматы", "47111")
        )
        point = await registry.add_trade_point(
            conn, registry.TradePoint(0, org.id, "Дүкен №1", "Абай 1", "", 43238949, 76889709)
        )
        main = await cabinet_users.add_user(
            conn, org.id, login=login or f"owner{org.id}", password=PASSWORD, is_main=True
        )
        return Shop(org, point, main)
    finally:
        await conn.close()


def web_settings(tmp_path: Path, database_url: str, **overrides: Any) -> WebSettings:
    return WebSettings(data_dir=tmp_path, database_url=database_url, port=0, **overrides)


@asynccontextmanager
async def cabinet_at(
    tmp_path: Path,
    database_url: str,
    *,
    reader: Reader | None = None,
    login_failures: FailureBudget | None = None,
    check_misses: FailureBudget | None = None,
    **settings: Any,
) -> AsyncIterator[RunningCabinet]:
    """A cabinet served in-process; `settings` are WebSettings fields to set."""
    overrides: dict[str, Any] = dict(settings)
    if login_failures is not None:
        overrides["login_failures"] = login_failures
    if check_misses is not None:
        overrides["check_misses"] = check_misses
    async with running_cabinet(
        web_settings(tmp_path, database_url, **overrides), reader=reader
    ) as running:
        yield running


@dataclass(slots=True)
class Page:
    status: int
    text: str
    url: str

    @property
    def csrf(self) -> str:
        found = CSRF.search(self.text)
        assert found, f"no CSRF token on {self.url}"
        return found[1]


class Client:
    """A browser without a screen: cookies kept, redirects followed, forms posted."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        # unsafe: keep cookies of an IP address (the cabinet listens on 127.0.0.1).
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    async def close(self) -> None:
        await self.http.close()

    async def get(self, path: str, **params: str) -> Page:
        async with self.http.get(self.base_url + path, params=params) as answer:
            page = Page(answer.status, await answer.text(), str(answer.url))
        found = CSRF.search(page.text)
        if found:
            self.csrf = found[1]
        return page

    async def post(
        self, path: str, data: Any = None, *, csrf: str | None = None, follow: bool = True
    ) -> Page:
        """Posts `data` (a dict or a list of pairs) with this session's CSRF token, or `csrf`
        ("" for none)."""
        pairs: list[tuple[str, str]] = list(data.items() if isinstance(data, dict) else data or [])
        token = self.csrf if csrf is None else csrf
        if token:
            pairs.append(("csrf", token))
        async with self.http.post(
            self.base_url + path, data=pairs, allow_redirects=follow
        ) as answer:
            page = Page(answer.status, await answer.text(), str(answer.url))
        found = CSRF.search(page.text)
        if found:
            self.csrf = found[1]
        return page

    async def login(self, login: str, password: str = PASSWORD) -> Page:
        form = await self.get("/login")
        found = LOGIN_CSRF.search(form.text)
        assert found, "no login form"
        page = await self.post(
            "/login", {"login": login, "password": password, "login_csrf": found[1]}, csrf=""
        )
        if page.status == 200:
            await self.get("/")  # the session's CSRF token
        return page


@asynccontextmanager
async def client(running: RunningCabinet, login: str = "") -> AsyncIterator[Client]:
    browser = Client(running.url)
    try:
        if login:
            page = await browser.login(login)
            assert page.status == 200, page.text
        yield browser
    finally:
        await browser.close()


@asynccontextmanager
async def signed_in(
    tmp_path: Path, database_url: str, login: str
) -> AsyncIterator[tuple[RunningCabinet, Client]]:
    """A cabinet, and a client signed in to it as `login`."""
    async with cabinet_at(tmp_path, database_url) as running, client(running, login) as browser:
        yield running, browser


@dataclass(frozen=True, slots=True)
class Sold:
    system_id: int
    qr_urls: list[str]  # as the gateway printed them, in order of sale
    signs: list[str]


async def sell(gateway: RunningGateway, system_id: int, token: int) -> Sold:
    """A shift of a register keyed with `token`: two receipts online, the third offline (its
    number OFFLINE_NUMBER), each 2 x 150·n + 400 tenge, then its Z report."""
    kkm = SimulatedKkm("127.0.0.1", gateway.tcp.port, version=204, system_id=system_id, token=token)
    schema = SCHEMAS[204]
    urls, signs = [], []
    for number, offline in ((1, None), (2, None), (3, OFFLINE_NUMBER)):
        ticket = build_ticket(
            schema, when=SHIFT_START + timedelta(minutes=number), shift_number=1,
            document_number=number, offline_number=offline, payment="cash",
            lines=[Line("Нан <b>ақ</b>", "1", 2000, 15_000 * number),
                   Line("Сүт", "1", 1000, 40_000)],
        )  # fmt: skip
        answer = await kkm.send(ticket)
        assert answer.result.result_code == ResultCode.OK
        urls.append(answer.ticket.qr_code.decode())
        signs.append(answer.ticket.ticket_number)
    close = build_close_shift(
        schema, when=SHIFT_START + timedelta(minutes=10), shift_number=1, document_number=4
    )
    assert (await kkm.send(close)).result.result_code == ResultCode.OK
    await kkm.close()
    return Sold(system_id, urls, signs)


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """Debian's Chromium, headless, driven by Playwright (imported here: only the browser tests
    need it). Each `new_page(browser)` is a person of their own: own cookies, own session."""
    from playwright.async_api import async_playwright  # noqa: PLC0415

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def new_page(browser: Any) -> Any:
    context = await browser.new_context(
        viewport={"width": 1200, "height": 900}, locale="ru-RU", accept_downloads=True
    )
    return await context.new_page()
