"""Who is asking, and whether the form is theirs: sessions, CSRF, login and its limit, headers.

- The session cookie is HttpOnly and SameSite=Strict (Secure with --secure-cookie); its value
  is 32 random bytes, of which PostgreSQL keeps the SHA-256 (ledger/cabinet_sessions.py).
- Every POST but the login's carries the session's CSRF token; the login form carries a value
  that must equal its own cookie's (double submit), so no other site can log a browser in.
- Failed logins are counted per address (ingest/limits.FailureLimiter; behind a trusted proxy
  the address cabinet/client_address.py finds); past the budget the address is refused with
  429 before any password is checked. Checks run scrypt in a worker thread, a few at once,
  and a bounded queue behind them (503 past it).
- Every answer forbids framing, sniffing, any script, and the referrer to other sites.
"""

import asyncio
import hmac
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from multidict import MultiDictProxy

from cabinet.client_address import client_of
from cabinet.web import (
    ACCESS,
    COOKIE,
    LOGIN_COOKIE,
    SESSION,
    cabinet,
    error_page,
    kdf_turn,
    redirect,
    render,
)
from ledger.cabinet_sessions import close_session, open_session, resume_session
from ledger.cabinet_users import MAX_FIELD, access_of, authenticate, find_login
from ledger.receipt_check import CHECK_PATH

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LOGIN_BYTES = 24
LOGIN_VALUE = re.compile(r"[A-Za-z0-9_-]{32}")  # what token_urlsafe(LOGIN_BYTES) makes
PUBLIC_PATHS = frozenset({"/login", "/signup", "/signup/confirm", CHECK_PATH, "/healthz"})
PUBLIC_PREFIXES = ("/static/", "/lang/")
# Served without even looking for a session: the check is the busiest page an OFD has, and
# shows the same to everyone.
SESSIONLESS = frozenset({CHECK_PATH, "/healthz"})
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self';"
        " frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Not no-referrer: with it Chromium posts forms with "Origin: null", a cross-site request
    # to which SameSite=Strict cookies are not sent. same-origin keeps URLs (which name
    # receipts) from other sites just the same.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _headers(response: web.StreamResponse, path: str) -> None:
    response.headers.update(HEADERS)
    if not path.startswith(PUBLIC_PREFIXES):
        # Tokens and receipts must not stay in a shared browser's cache.
        response.headers["Cache-Control"] = "no-store"


@web.middleware
async def headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _headers(exc, request.path)
        raise
    _headers(response, request.path)
    return response


@web.middleware
async def session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Finds the session; refuses a private page without one and a POST without its CSRF."""
    context = cabinet(request)
    token = request.cookies.get(COOKIE, "")
    session = None
    request[SESSION] = request[ACCESS] = None
    if request.path in SESSIONLESS or request.path.startswith(PUBLIC_PREFIXES):
        return await handler(request)
    if token:
        async with context.pool.acquire() as conn:
            session = await resume_session(conn, token, context.settings.sessions)
            if session is not None:
                request[SESSION] = session
                request[ACCESS] = await access_of(conn, session.user)
    if _public(request.path):
        return await handler(request)
    if session is None:
        if request.method in ("GET", "HEAD"):
            return redirect("/login")
        return error_page(request, 403, "Войдите в кабинет.")
    if request.method not in ("GET", "HEAD"):
        form = await request.post()
        presented = form.get("csrf", "")
        expected = session.csrf_token
        if not isinstance(presented, str) or not hmac.compare_digest(
            presented.encode(), expected.encode()
        ):
            log.warning("cabinet_csrf_refused", path=request.path, peer=client_of(request))
            return error_page(request, 403, "Форма устарела или не ваша: откройте страницу снова.")
    return await handler(request)


def _set_cookie(request: web.Request, response: web.StreamResponse, name: str, value: str) -> None:
    response.set_cookie(
        name,
        value,
        httponly=True,
        samesite="Strict",
        secure=cabinet(request).settings.secure_cookie,
        path="/",
    )


def public_form(
    request: web.Request, template: str, *, status: int = 200, **context: Any
) -> web.Response:
    """A form posted without a session (login, sign-up): it carries a value that must equal its
    own cookie's (double submit), so no other site can post it from a visitor's browser."""
    # The browser's value when it has one: a second tab (or a browser loading the page twice)
    # must not turn the first tab's form stale.
    value = request.cookies.get(LOGIN_COOKIE, "")
    if not LOGIN_VALUE.fullmatch(value):
        value = secrets.token_urlsafe(LOGIN_BYTES)
    response = render(request, template, status=status, login_csrf=value, **context)
    _set_cookie(request, response, LOGIN_COOKIE, value)
    return response


def public_form_posted(request: web.Request, form: MultiDictProxy[Any]) -> bool:
    """Whether a posted public form carries its own cookie's value."""
    presented, expected = form.get("login_csrf", ""), request.cookies.get(LOGIN_COOKIE, "")
    return (
        isinstance(presented, str)
        and bool(expected)
        and hmac.compare_digest(presented.encode(), expected.encode())
    )


async def login_form(request: web.Request, *, status: int = 200, error: str = "") -> web.Response:
    return public_form(request, "login.html", status=status, error=error)


async def show_login(request: web.Request) -> web.Response:
    if request.get(SESSION) is not None:
        return redirect("/")
    return await login_form(request)


async def login(request: web.Request) -> web.Response:
    context = cabinet(request)
    form = await request.post()
    if not public_form_posted(request, form):
        return await login_form(request, status=403, error="Форма устарела: войдите снова.")
    peer = client_of(request)
    if context.login_failures.over_budget(peer):
        log.warning("cabinet_login_limited", peer=peer)
        return await login_form(
            request, status=429, error="Слишком много неудачных попыток. Подождите минуту."
        )
    name, password = form.get("login", ""), form.get("password", "")
    if not isinstance(name, str) or not isinstance(password, str) or len(name) > MAX_FIELD:
        name, password = "", ""
    async with context.pool.acquire() as conn:
        found = await find_login(conn, name)
    async with kdf_turn(context):
        user = await asyncio.to_thread(authenticate, found, password)
    if user is None:
        failures = context.login_failures.failed(peer)
        log.info("cabinet_login_failed", peer=peer, failures=failures)
        return await login_form(request, status=401, error="Неверный логин или пароль.")
    async with context.pool.acquire() as conn:
        token, _ = await open_session(conn, user, context.settings.sessions)
    log.info("cabinet_login", user=user.login, peer=peer)
    response = redirect("/")
    _set_cookie(request, response, COOKIE, token)
    response.del_cookie(LOGIN_COOKIE, path="/")
    return response


async def logout(request: web.Request) -> web.Response:
    async with cabinet(request).pool.acquire() as conn:
        await close_session(conn, request.cookies.get(COOKIE, ""))
    response = redirect("/login")
    response.del_cookie(COOKIE, path="/")
    return response
