"""Sign-up: an organization and its main user, confirmed by a one-time code (ledger/cabinet_signup).

Both steps are public forms (double-submit CSRF, no session). Starting a sign-up costs a scrypt
hash and a message to a phone, so each address may start SIGNUP budget's worth per window; a
ticket allows ledger/cabinet_codes.MAX_ATTEMPTS wrong codes. The ticket travels in the form, never
in a URL.
"""

from typing import Any

import structlog
from aiohttp import web
from multidict import MultiDictProxy

from cabinet.client_address import client_of
from cabinet.security import public_form, public_form_posted
from cabinet.web import cabinet, kdf_turn, redirect, text, ticket_and_code
from ledger import cabinet_signup
from ledger.errors import InvalidRequest, NotFound, RegistryError

log = structlog.get_logger(__name__)

CLOSED = "Регистрация закрыта: оператор ОФД не настроил канал для кодов подтверждения."
STALE = "Форма устарела: откройте страницу снова."


def _closed(request: web.Request) -> web.Response | None:
    if cabinet(request).codes is None:
        return public_form(request, "signup.html", status=503, error=CLOSED, closed=True, form={})
    return None


async def show_signup(request: web.Request) -> web.Response:
    return _closed(request) or public_form(request, "signup.html", closed=False, form={})


def _signup_form(form: MultiDictProxy[Any]) -> cabinet_signup.SignUp:
    return cabinet_signup.SignUp(
        iin=text(form, "iin", required=True),
        title=text(form, "title", required=True),
        address=text(form, "address"),
        login=text(form, "login", required=True),
        name=text(form, "name"),
        email=text(form, "email"),
        phone=text(form, "phone"),
    )


async def start_signup(request: web.Request) -> web.Response:
    if (closed := _closed(request)) is not None:
        return closed
    context = cabinet(request)
    form = await request.post()
    shown = {k: v for k, v in form.items() if k != "password" and isinstance(v, str)}
    if not public_form_posted(request, form):
        return public_form(request, "signup.html", status=403, error=STALE, closed=False, form={})
    peer = client_of(request)
    if context.signup_starts.over_budget(peer):
        log.warning("cabinet_signup_limited", peer=peer)
        return public_form(
            request, "signup.html", status=429, closed=False, form=shown,
            error="Слишком много регистраций с вашего адреса. Попробуйте позже.",
        )  # fmt: skip
    password = form.get("password", "")
    try:
        wanted = _signup_form(form)
        if not isinstance(password, str):
            raise InvalidRequest("password: text expected")
        async with kdf_turn(context), context.pool.acquire() as conn:
            started = await cabinet_signup.start(conn, wanted, password)
    except RegistryError as err:
        return public_form(
            request, "signup.html", status=400 if isinstance(err, InvalidRequest) else 409,
            closed=False, form=shown, error=str(err),
        )  # fmt: skip
    context.signup_starts.failed(peer)  # every start counts, not only failed ones
    assert context.codes is not None
    context.codes.send(
        cabinet_signup.PURPOSE, phone=wanted.phone, email=wanted.email, code=started.code,
        lifetime=cabinet_signup.CODE_LIFETIME,
    )  # fmt: skip
    log.info("cabinet_signup_started", login=wanted.login, peer=peer)
    return public_form(request, "signup_confirm.html", ticket=started.ticket, error="")


async def confirm_signup(request: web.Request) -> web.Response:
    form = await request.post()
    ticket, code = ticket_and_code(form)
    if not public_form_posted(request, form):
        return public_form(request, "signup_confirm.html", status=403, ticket=ticket, error=STALE)
    try:
        async with cabinet(request).pool.acquire() as conn:
            user = await cabinet_signup.confirm(conn, ticket, code)
    except InvalidRequest as err:  # a wrong code: the same ticket, fewer attempts
        return public_form(
            request, "signup_confirm.html", status=400, ticket=ticket, error=str(err)
        )
    except RegistryError as err:  # spent or expired (410), or taken meanwhile (409): start again
        return public_form(
            request, "signup.html", status=410 if isinstance(err, NotFound) else 409,
            closed=False, form={}, error=str(err),
        )  # fmt: skip
    log.info("cabinet_signup", login=user.login, organization=user.organization_id)
    return redirect("/login?done=signed_up")
