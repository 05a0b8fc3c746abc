"""Sign-up in the cabinet: an organization and its main user, confirmed by a one-time code that
goes out over a real Mosquitto; and what it refuses (no channel, a forged form, a taken IIN or
login, wrong codes, a spent ticket, too many starts from one address)."""

import asyncio
import json
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
import pytest
from cabinet_support import LOGIN_CSRF, Client, Page, cabinet_at, client, make_shop

from ingest.limits import FailureBudget
from ingest.notifications import MqttSettings
from ledger import cabinet_codes
from ledger.errors import NotFound
from ledger.migrate import migrate

TICKET = re.compile(r'name="ticket" value="([^"]+)"')
TOPIC = "ofd/web/cabinet/codes/signup"


def _form(**fields: str) -> dict[str, str]:
    defaults = {
        "iin": f"{secrets.randbelow(10**12):012d}",
        "title": "ТОО <b>Жаңа</b> дүкен",
        "address": "Астана",
        "name": "Әлия",
        "phone": "+77010000000",
        "email": "aliya@example.kz",
        "login": f"aliya{secrets.randbelow(10**6)}",
        "password": "a long password",
    }
    return {**defaults, **fields}


async def _start(browser: Client, form: dict[str, str]) -> Page:
    page = await browser.get("/signup")
    found = LOGIN_CSRF.search(page.text)
    assert found, page.text
    return await browser.post("/signup", {**form, "login_csrf": found[1]}, csrf="")


async def _confirm(browser: Client, page: Page, ticket: str, code: str) -> Page:
    found = LOGIN_CSRF.search(page.text)
    assert found, page.text
    return await browser.post(
        "/signup/confirm", {"ticket": ticket, "code": code, "login_csrf": found[1]}, csrf=""
    )


@asynccontextmanager
async def _codes(mqtt_url: str) -> AsyncIterator[aiomqtt.Client]:
    mqtt = MqttSettings.from_url(mqtt_url, "test")
    async with aiomqtt.Client(mqtt.host, mqtt.port, timeout=5.0) as subscriber:
        await subscriber.subscribe(TOPIC, qos=1)
        yield subscriber


async def _next_code(subscriber: aiomqtt.Client) -> dict[str, Any]:
    message = await asyncio.wait_for(anext(subscriber.messages), 10.0)
    assert str(message.topic) == TOPIC
    assert isinstance(message.payload, bytes)
    body: dict[str, Any] = json.loads(message.payload)
    return body


async def _rows(database_url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def test_an_organization_signs_up_with_the_code_sent_to_its_phone(
    tmp_path: Path, database_url: str, mqtt_url: str
) -> None:
    form = _form()
    async with (
        _codes(mqtt_url) as subscriber,
        cabinet_at(tmp_path, database_url, mqtt_url=mqtt_url) as running,
        client(running) as browser,
    ):
        page = await _start(browser, form)
        assert page.status == 200, page.text
        ticket = TICKET.search(page.text)
        assert ticket, page.text
        sent = await _next_code(subscriber)
        assert (sent["purpose"], sent["phone"], sent["email"]) == (
            "signup", form["phone"], form["email"]
        )  # fmt: skip
        assert re.fullmatch(r"[0-9]{6}", sent["code"])
        # The code is nowhere in the page, and the password nowhere in the database.
        assert sent["code"] not in page.text
        held = await _rows(database_url, "SELECT payload::text FROM cabinet_codes")
        assert len(held) == 1
        assert form["password"] not in held[0][0]

        wrong = f"{(int(sent['code']) + 1) % 10**6:06d}"
        refused = await _confirm(browser, page, ticket[1], wrong)
        assert refused.status == 400
        assert "4 attempts left" in refused.text
        assert not await _rows(
            database_url, "SELECT 1 FROM organizations WHERE iin = $1", form["iin"]
        )

        done = await _confirm(browser, refused, ticket[1], sent["code"])
        assert done.status == 200
        assert "Организация зарегистрирована" in done.text
        again = await _confirm(browser, done, ticket[1], sent["code"])
        assert again.status == 410  # a ticket confirms once

    async with cabinet_at(tmp_path, database_url) as running, client(running) as owner:
        assert (await owner.login(form["login"], form["password"])).status == 200
        organization = await owner.get("/organization")
        assert organization.status == 200
        assert "ТОО &lt;b&gt;Жаңа&lt;/b&gt; дүкен" in organization.text  # stored as typed
        assert form["iin"] in organization.text
        users = await owner.get("/users")
        assert users.status == 200  # the main user: it manages users and groups
    audit = await _rows(database_url, "SELECT actor FROM control_audit WHERE action = 'SignUp'")
    assert [row[0] for row in audit] == [f"cabinet-signup:{form['login']}"]


async def test_wrong_codes_spend_the_ticket(
    tmp_path: Path, database_url: str, mqtt_url: str
) -> None:
    async with (
        _codes(mqtt_url) as subscriber,
        cabinet_at(tmp_path, database_url, mqtt_url=mqtt_url) as running,
        client(running) as browser,
    ):
        page = await _start(browser, _form())
        ticket = TICKET.search(page.text)
        assert ticket
        code = (await _next_code(subscriber))["code"]
        wrong = f"{(int(code) + 1) % 10**6:06d}"
        for _ in range(cabinet_codes.MAX_ATTEMPTS):
            page = await _confirm(browser, page, ticket[1], wrong)
        assert page.status == 410, page.text
        late = await _confirm(browser, page, ticket[1], code)
        assert late.status == 410  # the right code, too late
        assert not await _rows(database_url, "SELECT 1 FROM cabinet_codes")
        forged = await _confirm(browser, page, "x" * 32, code)
        assert forged.status == 410
    assert not await _rows(database_url, "SELECT 1 FROM organizations")


async def test_a_taken_iin_or_login_and_bad_fields_send_no_code(
    tmp_path: Path, database_url: str, mqtt_url: str
) -> None:
    shop = await make_shop(database_url)
    async with (
        _codes(mqtt_url) as subscriber,
        cabinet_at(tmp_path, database_url, mqtt_url=mqtt_url) as running,
        client(running) as browser,
    ):
        for fields, status in (
            ({"iin": shop.organization.iin}, 409),
            ({"login": shop.main.login}, 409),
            ({"iin": "12345"}, 400),
            ({"iin": "1234567890ab"}, 400),
            ({"login": "a b"}, 400),
            ({"password": "short"}, 400),
            ({"title": "x" * 501}, 400),
            ({"phone": "", "email": ""}, 400),
        ):
            page = await _start(browser, _form(**fields))
            assert page.status == status, (fields, page.text)
            assert shop.organization.title not in page.text
        assert not await _rows(database_url, "SELECT 1 FROM cabinet_codes")
        # Not one code went out: the first to arrive is the one for a sign-up that was taken.
        accepted = await _start(browser, _form(phone="+77019999999"))
        assert accepted.status == 200
        assert (await _next_code(subscriber))["phone"] == "+77019999999"


async def test_a_forged_form_and_too_many_starts_are_refused(
    tmp_path: Path, database_url: str, mqtt_url: str
) -> None:
    async with (
        cabinet_at(
            tmp_path, database_url, mqtt_url=mqtt_url,
            signup_starts=FailureBudget(failures=2, window_seconds=3600.0),
        ) as running,
        client(running) as browser,
    ):  # fmt: skip
        # Posted without the form's own value (another site's form): nothing held.
        forged = await browser.post("/signup", _form(), csrf="")
        assert forged.status == 403
        assert not await _rows(database_url, "SELECT 1 FROM cabinet_codes")
        for _ in range(2):
            assert (await _start(browser, _form())).status == 200
        limited = await _start(browser, _form())
        assert limited.status == 429
    assert len(await _rows(database_url, "SELECT 1 FROM cabinet_codes")) == 2


async def test_sign_up_is_closed_without_a_channel_for_codes(
    tmp_path: Path, database_url: str
) -> None:
    async with cabinet_at(tmp_path, database_url) as running, client(running) as browser:
        page = await browser.get("/signup")
        assert page.status == 503
        assert "Регистрация закрыта" in page.text
        posted = await browser.post("/signup", {**_form(), "login_csrf": "x" * 32}, csrf="")
        assert posted.status == 503
    assert not await _rows(database_url, "SELECT 1 FROM cabinet_codes")


async def test_an_expired_code_confirms_nothing(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)
        issued = await cabinet_codes.issue(conn, "signup", {"x": 1}, timedelta(0))
        with pytest.raises(NotFound):
            await cabinet_codes.redeem(conn, "signup", issued.ticket, issued.code)
        live = await cabinet_codes.issue(conn, "signup", {"x": 2})
        with pytest.raises(NotFound):  # a ticket is for its own purpose only
            await cabinet_codes.redeem(conn, "other", live.ticket, live.code)
        assert await cabinet_codes.redeem(conn, "signup", live.ticket, live.code) == {"x": 2}
    finally:
        await conn.close()


async def test_a_full_password_queue_answers_busy_before_hashing(
    tmp_path: Path, database_url: str, mqtt_url: str
) -> None:
    shop = await make_shop(database_url)
    async with (
        cabinet_at(tmp_path, database_url, mqtt_url=mqtt_url) as running,
        client(running) as browser,
    ):
        context = running.cabinet
        context.kdf_waiting = context.settings.kdf_queue  # as if that many were hashing
        assert (await _start(browser, _form())).status == 503
        assert (await browser.login(shop.main.login)).status == 503
        assert context.kdf_waiting == context.settings.kdf_queue  # nothing taken, nothing left
        context.kdf_waiting = 0
        assert (await browser.login(shop.main.login)).status == 200
    assert not await _rows(database_url, "SELECT 1 FROM cabinet_codes")
