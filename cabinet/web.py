"""What every page of the cabinet shares: the process's context, templates, form fields and the
answers to the domain's errors."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import asyncpg
import jinja2
from aiohttp import web
from multidict import MultiDictProxy, MultiMapping

from cabinet.check_facts import CheckFacts
from cabinet.check_lookups import CheckLookups
from cabinet.codes import CodeChannel
from cabinet.i18n import (
    CATALOGUES,
    LANGUAGE_COOKIE,
    TranslatingLoader,
    language_of,
    translate,
)
from cabinet.settings import WebSettings
from cabinet.warehouse import Documents
from ingest.limits import FailureLimiter
from ledger.cabinet_centres import CENTRES_SECTION, CLIENTS_SECTION
from ledger.cabinet_sessions import Session
from ledger.cabinet_users import SECTIONS, USERS_SECTION, Access
from ledger.errors import (
    AlreadyExists,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    RegistryError,
)
from ledger.lifecycle import DeviceStatus
from ledger.notices import Kind, local_time

COOKIE = "ofd_session"
LOGIN_COOKIE = "ofd_login"  # the login form's CSRF value (double submit: no session yet)
MAX_TEXT = 500  # characters of any text field the cabinet takes
MAX_CODE = 20  # characters of a typed one-time code kept (a code has 6; spaces around are cut)
MICRO = Decimal(1_000_000)  # coordinates: degrees times a million, as devices carry them

SECTION_TITLES = {
    "organization": "Организация",
    "points": "Торговые точки",
    "devices": "ККМ",
    "token": "Токен",
    "transactions": "Транзакции",
    "reports": "Отчёты",
    "analytics": "Аналитика",
    CENTRES_SECTION: "Сервисные центры (ЦТО)",
    CLIENTS_SECTION: "Клиенты",
    "notifications": "Уведомления",
    "subscriptions": "Подписки",
    USERS_SECTION: "Пользователи и группы",
}
STATUS_TITLES = {
    DeviceStatus.AWAITING_REGISTRATION: "Ожидает регистрации в КГД",
    DeviceStatus.REGISTERED: "Зарегистрирована",
    DeviceStatus.AWAITING_DEREGISTRATION: "Ожидает снятия с учёта",
    DeviceStatus.DEREGISTERED: "Снята с учёта",
}
OPERATION_TITLES = {
    "BUY": "Покупка",
    "BUY_RETURN": "Возврат покупки",
    "SELL": "Продажа",
    "SELL_RETURN": "Возврат продажи",
}
APPLICATION_TITLES = {
    "registration": "регистрация",
    "deregistration": "снятие с учёта",
    "reregistration": "перерегистрация",
}
APPLICATION_STATUS_TITLES = {
    "pending": "ожидает отправки в КГД",
    "sent": "на рассмотрении в КГД",
    "accepted": "принята КГД",
    "refused": "отклонена КГД",
    "overridden": "решена оператором ОФД",
}
PAYMENT_TITLES = {0: "Наличные", 1: "Банковская карта", 4: "Мобильный платёж"}
# A notification's title (ledger/notices.Kind); its text, when it has one, follows a colon.
NOTICE_TITLES = {
    Kind.OFFLINE: "ККМ давно не на связи: после 72 часов без связи она заблокируется."
    " Последняя связь",
    Kind.Z_MISMATCH: "Z-отчёт ККМ не сходится с данными ОФД, смена",
    Kind.BLOCKED: "ККМ заблокирована",
    Kind.UNBLOCKED: "ККМ разблокирована",
    Kind.KGD_REFUSED: "КГД отклонил заявку по ККМ",
    Kind.SUBSCRIPTION_ENDING: "Подписка ККМ заканчивается, оплачена по",
    Kind.SUBSCRIPTION_LAPSED: "Подписка ККМ закончилась и отключена, была оплачена по",
    Kind.SUBSCRIPTION_RENEWED: "Подписка ККМ продлена автоматически, теперь по",
    Kind.ANNOUNCEMENT: "Сообщение ОФД",
}
# Fixed texts a redirect may name (?done=...): a URL never carries text that the page shows.
DONE = {
    "saved": "Сохранено.",
    "added": "Добавлено.",
    "deleted": "Удалено.",
    "registered": "Заявка на регистрацию подана: ККМ ожидает регистрации в КГД.",
    "moved": "Статус ККМ изменён.",
    "stopped": "Доступ остановлен.",
    "signed_up": "Организация зарегистрирована. Войдите как её главный пользователь.",
}


@dataclass(slots=True)
class Cabinet:
    """One cabinet process: its settings, database pool, warehouse, templates and limiters."""

    settings: WebSettings
    pool: asyncpg.Pool
    documents: Documents
    templates: Mapping[str, jinja2.Environment]  # by language (cabinet/i18n.LANGUAGES)
    login_failures: FailureLimiter
    check_misses: FailureLimiter
    check_facts: CheckFacts
    check_lookups: CheckLookups
    kdf: asyncio.Semaphore
    check_url: str
    # Where one-time codes go; None: nothing can be sent, and sign-up is closed.
    codes: CodeChannel | None
    signup_starts: FailureLimiter
    kdf_waiting: int = 0


CABINET = web.AppKey("cabinet", Cabinet)
# Set by the session middleware on every request: None when no live session came with it.
SESSION: web.RequestKey[Session | None] = web.RequestKey("session")
ACCESS: web.RequestKey[Access | None] = web.RequestKey("access")
# Set by cabinet/pages_notices.unread_middleware for a page's menu: how many notifications
# are unread, as the menu shows it ("" for none).
UNREAD: web.RequestKey[str] = web.RequestKey("unread")


class ServerBusy(Exception):
    """Too many password hashes waiting: the answer is 503, before any is started."""


@contextlib.asynccontextmanager
async def kdf_turn(context: Cabinet) -> AsyncIterator[None]:
    """A turn at scrypt (a password checked or hashed: 16 MiB and tens of ms each): a few at
    once, a bounded queue behind them, ServerBusy past it, so a flood of logins or sign-ups
    costs queued requests, not memory."""
    if context.kdf_waiting >= context.settings.kdf_queue:
        raise ServerBusy
    context.kdf_waiting += 1
    try:
        async with context.kdf:
            yield
    finally:
        context.kdf_waiting -= 1


def cabinet(request: web.Request) -> Cabinet:
    found: Cabinet = request.app[CABINET]
    return found


def access(request: web.Request) -> Access:
    """The signed-in user's access (the session middleware let the request through)."""
    found: Access | None = request.get(ACCESS)
    if found is None:  # a public page asked for it: a bug, not the caller's doing
        raise PermissionDenied("not signed in")
    return found


def tenge(tiyn: int) -> str:
    sign = "-" if tiyn < 0 else ""
    whole, part = divmod(abs(int(tiyn)), 100)
    return f"{sign}{whole:,}".replace(",", " ") + f",{part:02d} ₸"


def quantity(thousandths: int) -> str:
    whole, part = divmod(int(thousandths), 1000)
    return f"{whole}" if not part else f"{whole},{part:03d}".rstrip("0")


def percent(hundredths: int) -> str:
    whole, part = divmod(int(hundredths), 100)
    return f"{whole}%" if not part else f"{whole},{part:02d}".rstrip("0") + "%"


def degrees(micro: int) -> str:
    return f"{Decimal(micro) / MICRO:.6f}"


def make_templates(language: str) -> jinja2.Environment:
    """The templates in `language` (cabinet/i18n.py): Russian as written, Kazakh translated as
    each template is compiled, with the titles handed to templates translated alike."""
    catalogue = CATALOGUES[language]
    loader: jinja2.BaseLoader = jinja2.PackageLoader("cabinet", "templates")
    env = jinja2.Environment(
        loader=TranslatingLoader(loader, catalogue) if catalogue else loader,
        autoescape=True,  # every value is escaped unless a template says otherwise (none does)
        # Templates are the package's files, changed by a new release (a restart): looking
        # for a newer file cost a stat of each template a page uses, on every page.
        auto_reload=False,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        tenge=tenge, quantity=quantity, degrees=degrees, percent=percent, local_time=local_time
    )
    env.globals.update(
        SECTIONS=SECTIONS,
        SECTION_TITLES=SECTION_TITLES,
        STATUS_TITLES=STATUS_TITLES,
        OPERATION_TITLES=OPERATION_TITLES,
        PAYMENT_TITLES=PAYMENT_TITLES,
        APPLICATION_TITLES=APPLICATION_TITLES,
        APPLICATION_STATUS_TITLES=APPLICATION_STATUS_TITLES,
        NOTICE_TITLES=NOTICE_TITLES,
    )
    for name, value in list(env.globals.items()):
        if name.endswith("_TITLES") and isinstance(value, dict):
            env.globals[name] = {key: catalogue.get(v, v) for key, v in value.items()}
    env.globals["language"] = language
    return env


def render(
    request: web.Request, template: str, *, status: int = 200, **context: Any
) -> web.Response:
    session = request.get(SESSION)
    found = request.get(ACCESS)
    sections = [] if found is None else [s for s in (*SECTIONS, USERS_SECTION) if found.may(s)]
    language = language_of(request.cookies.get(LANGUAGE_COOKIE))
    done = translate(language, DONE.get(request.query.get("done", ""), ""))
    if isinstance(context.get("error"), str):  # the pages' own refusals are in Russian
        context["error"] = translate(language, context["error"])
    text = (
        cabinet(request)
        .templates[language]
        .get_template(template)
        .render(
            here=request.path_qs,
            user=None if found is None else found.user,
            csrf="" if session is None else session.csrf_token,
            nav=sections,
            unread=request.get(UNREAD, ""),
            done=done,
            **context,
        )
    )
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def redirect(location: str) -> web.Response:
    """303 See Other: after a POST, the browser GETs the page (a reload does not resend)."""
    return web.Response(status=303, headers={"Location": location})


STATUS_OF_ERROR: dict[type[RegistryError], int] = {
    NotFound: 404,
    PermissionDenied: 403,
    PreconditionFailed: 409,
    AlreadyExists: 409,
    InvalidRequest: 400,
}


def error_status(err: RegistryError) -> int:
    for kind, status in STATUS_OF_ERROR.items():
        if isinstance(err, kind):
            return status
    return 400


def error_page(request: web.Request, status: int, message: str) -> web.Response:
    """An error page; `message` in Russian is shown in the visitor's language."""
    language = language_of(request.cookies.get(LANGUAGE_COOKIE))
    return render(request, "error.html", status=status, message=translate(language, message))


def text(form: MultiDictProxy[Any], name: str, *, required: bool = False) -> str:
    value = form.get(name, "")
    if not isinstance(value, str):
        raise InvalidRequest(f"{name}: text expected")
    value = value.strip()
    if len(value) > MAX_TEXT:
        raise InvalidRequest(f"{name}: longer than {MAX_TEXT} characters")
    if required and not value:
        raise InvalidRequest(f"{name}: required")
    return value


def number(form: MultiDictProxy[Any], name: str, *, low: int = 0, high: int = 2**31 - 1) -> int:
    raw = text(form, name, required=True)
    if not raw.isdigit() or len(raw) > 12:
        raise InvalidRequest(f"{name}: a whole number expected")
    value = int(raw)
    if not low <= value <= high:
        raise InvalidRequest(f"{name}: between {low} and {high}")
    return value


def coordinate(form: MultiDictProxy[Any], name: str) -> int:
    """Degrees (e.g. 43.238949) as the registry keeps them: times a million, 0..2147.483647."""
    raw = text(form, name) or "0"
    try:
        value = (Decimal(raw.replace(",", ".")) * MICRO).to_integral_value()
    except InvalidOperation as err:
        raise InvalidRequest(f"{name}: degrees expected, such as 43.238949") from err
    if not 0 <= value <= 2**31 - 1:
        raise InvalidRequest(f"{name}: out of range")
    return int(value)


def path_id(request: web.Request) -> int:
    """The page's {id}: digits only, as the route admits (app.ID), so never a bad number."""
    return int(request.match_info["id"])


def ticket_and_code(form: MultiDictProxy[Any]) -> tuple[str, str]:
    """A one-time code's form (ledger/cabinet_codes): the ticket it carries and the code typed,
    both "" when not text; the code cut to a length no code exceeds."""
    ticket, code = form.get("ticket", ""), form.get("code", "")
    if not isinstance(ticket, str) or not isinstance(code, str):
        return "", ""
    return ticket, code[:MAX_CODE]


def ids(form: MultiMapping[Any], name: str) -> set[int]:
    found: set[int] = set()
    for value in form.getall(name, []):
        if not isinstance(value, str) or not value.isdigit() or len(value) > 12:
            raise InvalidRequest(f"{name}: ids expected")
        found.add(int(value))
    return found
