"""Notifications: a period's notices, the unread ones marked, marked read one by one or all at
once, and the unread count in every page's menu. The rules are ledger/cabinet_notices.py's."""

from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiDictProxy

from cabinet.security import Handler
from cabinet.web import ACCESS, UNREAD, access, cabinet, path_id, redirect, render, text
from ledger import cabinet_notices
from ledger.errors import InvalidRequest
from ledger.wire import KZ_TIME

DEFAULT_DAYS = 30  # the period shown when none is asked for: the last month


@web.middleware
async def unread_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Counts the unread notices for the menu of a page a signed-in user GETs (one query)."""
    found = request.get(ACCESS)
    if found is not None and request.method == "GET" and found.may(cabinet_notices.SECTION):
        async with cabinet(request).pool.acquire() as conn:
            count = await cabinet_notices.unread_count(conn, found)
        if count >= cabinet_notices.MAX_COUNTED:
            request[UNREAD] = f"{cabinet_notices.MAX_COUNTED - 1}+"
        elif count:
            request[UNREAD] = str(count)
    return await handler(request)


def _day(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as err:
        raise InvalidRequest(f"{name}: a date (YYYY-MM-DD) expected") from err


def _period(first: str, last: str) -> tuple[date, date]:
    """The period a query or form names (dates in Kazakhstan); the last month by default."""
    first, last = first.strip(), last.strip()
    today = datetime.now(KZ_TIME).date()
    return (
        _day(first, "from") if first else today - timedelta(days=DEFAULT_DAYS),
        _day(last, "to") if last else today,
    )


def _back(form: MultiDictProxy[Any]) -> str:
    """The list again, on the period the form was posted from."""
    first, last = _period(text(form, "from"), text(form, "to"))
    return "/notifications?" + urlencode({"from": first.isoformat(), "to": last.isoformat()})


async def show_notices(request: web.Request) -> web.Response:
    first, last = _period(request.query.get("from", ""), request.query.get("to", ""))
    async with cabinet(request).pool.acquire() as conn:
        notices = await cabinet_notices.listed(conn, access(request), first, last)
    return render(
        request,
        "notices.html",
        notices=notices,
        shown={"from": first.isoformat(), "to": last.isoformat()},
        listed_at_most=cabinet_notices.MAX_LISTED,
    )


async def mark_read(request: web.Request) -> web.Response:
    form = await request.post()
    async with cabinet(request).pool.acquire() as conn:
        await cabinet_notices.mark_read(conn, access(request), path_id(request))
    return redirect(_back(form))


async def mark_all_read(request: web.Request) -> web.Response:
    form = await request.post()
    async with cabinet(request).pool.acquire() as conn:
        await cabinet_notices.mark_all_read(conn, access(request))
    return redirect(_back(form))
