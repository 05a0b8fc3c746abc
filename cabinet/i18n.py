"""Russian and Kazakh: the cabinet's two languages, chosen by the visitor (a cookie).

The templates are written in Russian and stay free of translation markup: for Kazakh, the
template loader replaces each Russian text segment (the text between tags) and each titled
attribute (title, placeholder, aria-label) by its entry in cabinet/kazakh.py as the template is
compiled, so a page costs the same in both languages. The titles the code hands to templates
(sections, statuses, operations...) and the page messages go through `translate`. A segment
without an entry stays Russian; tests/test_cabinet_language.py keeps the catalogue complete.
The domain's refusals (ledger's English messages) are shown as they are in both languages.
"""

import re
from collections.abc import Callable, Iterator, Mapping

import jinja2

from cabinet.kazakh import KAZAKH

RUSSIAN, KAZAKH_CODE = "ru", "kk"
LANGUAGES = (RUSSIAN, KAZAKH_CODE)
LANGUAGE_COOKIE = "ofd_lang"
CATALOGUES: Mapping[str, Mapping[str, str]] = {RUSSIAN: {}, KAZAKH_CODE: KAZAKH}

# Jinja statements, expressions and comments, and HTML tags: what is not text.
_MARKUP = re.compile(r"(\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}|<[^>]*>)", re.DOTALL)
_ATTRIBUTE = re.compile(r'\b(title|placeholder|aria-label)="([^"{}]*)"')
_CYRILLIC = re.compile(r"[А-Яа-яЁёӘәҒғҚқҢңӨөҰұҮүҺһІі]")


def translate(language: str, text: str) -> str:
    return CATALOGUES.get(language, {}).get(text, text)


def segments(source: str) -> Iterator[str]:
    """The translatable strings of a template: text segments and titled attributes that hold
    Cyrillic, stripped."""
    for piece in _MARKUP.split(source):
        if piece.startswith("<"):
            for _, value in _ATTRIBUTE.findall(piece):
                if _CYRILLIC.search(value):
                    yield value.strip()
        elif not piece.startswith(("{{", "{%", "{#")) and _CYRILLIC.search(piece):
            yield piece.strip()


def translate_source(source: str, catalogue: Mapping[str, str]) -> str:
    def attribute(found: re.Match[str]) -> str:
        name, value = found[1], found[2]
        return f'{name}="{catalogue.get(value.strip(), value)}"'

    def piece(text: str) -> str:
        if text.startswith("<"):
            return _ATTRIBUTE.sub(attribute, text)
        if text.startswith(("{{", "{%", "{#")) or not _CYRILLIC.search(text):
            return text
        core = text.strip()
        return text.replace(core, catalogue.get(core, core), 1)

    return "".join(piece(text) for text in _MARKUP.split(source))


class TranslatingLoader(jinja2.BaseLoader):
    """Another loader's templates, with their Russian text replaced from `catalogue`."""

    def __init__(self, inner: jinja2.BaseLoader, catalogue: Mapping[str, str]) -> None:
        self._inner = inner
        self._catalogue = catalogue

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        source, filename, uptodate = self._inner.get_source(environment, template)
        return translate_source(source, self._catalogue), filename, uptodate


def language_of(cookie: str | None) -> str:
    return cookie if cookie in LANGUAGES else RUSSIAN
