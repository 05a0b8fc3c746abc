"""The cabinet in Russian and Kazakh: the catalogue covers every text of every template and
every title the code hands to templates; the switch keeps the visitor on the page and never
sends them to another site."""

import re
from pathlib import Path

import pytest
from cabinet_support import PASSWORD, cabinet_at, client, make_shop

from cabinet import web
from cabinet.i18n import segments, translate_source
from cabinet.kazakh import KAZAKH

TEMPLATES = Path(web.__file__).parent / "templates"
# Letters Kazakh has and Russian has not: a text holding one is Kazakh already.
KAZAKH_LETTERS = re.compile(r"[ӘәҒғҚқҢңӨөҰұҮүҺһІі]")


def _untranslated(texts: list[str]) -> list[str]:
    return [t for t in texts if t not in KAZAKH and not KAZAKH_LETTERS.search(t)]


def test_every_template_text_has_its_kazakh() -> None:
    missing = {
        path.name: _untranslated(list(segments(path.read_text())))
        for path in sorted(TEMPLATES.glob("*.html"))
    }
    assert {name: texts for name, texts in missing.items() if texts} == {}


def test_every_title_and_message_the_code_hands_over_has_its_kazakh() -> None:
    titles = [
        value
        for name, table in vars(web).items()
        if name.endswith("_TITLES") and isinstance(table, dict)
        for value in table.values()
    ]
    assert titles
    assert _untranslated([*titles, *web.DONE.values()]) == []


def test_translation_touches_text_and_titles_only() -> None:
    source = (
        '<p title="Сумма">Итого: {{ "Итого" }}</p>{% if x %}Чек{% endif %}'
        '<input placeholder="{{ hint }}" value="Итого">'
    )
    assert translate_source(source, KAZAKH) == (
        '<p title="Сомасы">Итого: {{ "Итого" }}</p>{% if x %}Чек{% endif %}'
        '<input placeholder="{{ hint }}" value="Итого">'
    )  # "Итого:" has no entry (the colon), expressions and values are left as they are


async def test_a_visitor_switches_to_kazakh_and_back(tmp_path: Path, database_url: str) -> None:
    shop = await make_shop(database_url)
    async with cabinet_at(tmp_path, database_url) as running, client(running) as browser:
        page = await browser.get("/lang/kk", next="/login")
        assert page.url.endswith("/login")
        assert '<html lang="kk">' in page.text
        assert "Кабинетке кіру" in page.text
        assert "Вход в кабинет</h1>" not in page.text
        refused = await browser.login(shop.main.login, "a wrong password")
        assert refused.status == 401
        assert "Логин немесе құпиясөз қате." in refused.text
        assert (await browser.login(shop.main.login, PASSWORD)).status == 200
        home = await browser.get("/points")
        assert ">Сауда нүктелері</a>" in home.text  # the menu, from the code's titles
        assert "Сауда нүктесін қосу" in home.text
        assert shop.point.title in home.text  # the taxpayer's own data is never translated
        back = await browser.get("/lang/ru", next="/points")
        assert '<html lang="ru">' in back.text
        assert "Добавить торговую точку" in back.text
        check = await browser.get("/check")
        assert "Проверка чека" in check.text


@pytest.mark.parametrize(
    "target",
    ["//evil.example/", "https://evil.example/", "/\\evil.example", "evil", "/ok\nSet-Cookie: x"],
)
async def test_the_switch_sends_nobody_to_another_site(
    tmp_path: Path, database_url: str, target: str
) -> None:
    async with cabinet_at(tmp_path, database_url) as running, client(running) as browser:
        async with browser.http.get(
            f"{running.url}/lang/kk", params={"next": target}, allow_redirects=False
        ) as answer:
            assert answer.status == 303
            assert answer.headers["Location"] == "/"
        async with browser.http.get(f"{running.url}/lang/xx", allow_redirects=False) as answer:
            assert answer.status == 404
