"""Service centres (ЦТО): the taxpayer's page granting a centre access to chosen registers and
sections, editing and stopping it; the centre's page of the registers granted to it. The rules
are ledger.cabinet_scope's; a centre's user opens a granted register through the same register,
token, receipt and report pages as the taxpayer's own users."""

from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from cabinet.web import access, cabinet, error_status, ids, path_id, redirect, render, text
from ledger import cabinet_centres as centres
from ledger import cabinet_scope as scope
from ledger.errors import RegistryError


def _sections(form: MultiDictProxy[Any]) -> set[str]:
    return {s for s in form.getall("section", []) if isinstance(s, str)}


async def _page(
    request: web.Request, *, status: int = 200, error: str = "", values: Any = None
) -> web.Response:
    found = access(request)
    async with cabinet(request).pool.acquire() as conn:
        grants = await scope.centre_grants(conn, found)
        devices = await scope.devices(conn, found, centres.CENTRES_SECTION)
    return render(
        request,
        "centres.html",
        status=status,
        grants=grants,
        devices=devices,
        grantable=centres.GRANTABLE,
        error=error,
        values=values or {},
    )


async def show_centres(request: web.Request) -> web.Response:
    return await _page(request)


async def grant_centre(request: web.Request) -> web.Response:
    form = await request.post()
    try:
        async with cabinet(request).pool.acquire() as conn:
            await scope.grant_centre(
                conn,
                access(request),
                centre_bin=text(form, "bin", required=True),
                sections=_sections(form),
                system_ids=ids(form, "device"),
            )
    except RegistryError as err:
        values = {"bin": form.get("bin", "")}
        return await _page(request, status=error_status(err), error=str(err), values=values)
    return redirect("/centres?done=added")


async def change_grant(request: web.Request) -> web.Response:
    form = await request.post()
    try:
        async with cabinet(request).pool.acquire() as conn:
            await scope.change_centre_grant(
                conn,
                access(request),
                path_id(request),
                sections=_sections(form),
                system_ids=ids(form, "device"),
            )
    except RegistryError as err:
        return await _page(request, status=error_status(err), error=str(err))
    return redirect("/centres?done=saved")


async def stop_grant(request: web.Request) -> web.Response:
    try:
        async with cabinet(request).pool.acquire() as conn:
            await scope.stop_centre_grant(conn, access(request), path_id(request))
    except RegistryError as err:
        return await _page(request, status=error_status(err), error=str(err))
    return redirect("/centres?done=stopped")


async def show_clients(request: web.Request) -> web.Response:
    async with cabinet(request).pool.acquire() as conn:
        registers = await scope.clients(conn, access(request))
    return render(request, "clients.html", registers=registers)
