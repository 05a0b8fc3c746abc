"""Subscriptions: each register the user reaches, with its subscription (switched on or off,
paid until, its period) and auto-renewal, which the user may turn on or off. The rules are
ledger/subscriptions.py's."""

from aiohttp import web

from cabinet.web import access, cabinet, path_id, redirect, render, text
from ledger import cabinet_scope as scope
from ledger import subscriptions
from ledger.errors import InvalidRequest

AUTO_RENEW = {"on": True, "off": False}


async def show_subscriptions(request: web.Request) -> web.Response:
    async with cabinet(request).pool.acquire() as conn:
        devices = await scope.devices(conn, access(request), subscriptions.SECTION)
        terms = await subscriptions.terms_of(conn, [d.system_id for d in devices])
    return render(request, "subscriptions.html", devices=devices, terms=terms)


async def set_auto_renew(request: web.Request) -> web.Response:
    form = await request.post()
    on = AUTO_RENEW.get(text(form, "auto_renew"))
    if on is None:
        raise InvalidRequest("auto_renew: on or off")
    async with cabinet(request).pool.acquire() as conn:
        await subscriptions.set_auto_renew(conn, access(request), path_id(request), on)
    return redirect("/subscriptions?done=saved")
