"""A registration application confirmed by the one-time code sent to the organization's main
user (ledger/cabinet_applications), when the cabinet has a channel for codes (--mqtt-url);
without one, the signed-in user's application is filed at once (pages_registry)."""

from aiohttp import web

from cabinet.web import access, cabinet, error_status, redirect, render, ticket_and_code
from ledger import cabinet_applications, registry
from ledger.errors import InvalidRequest, RegistryError


async def hold_registration(request: web.Request, new: registry.Device) -> web.Response:
    context = cabinet(request)
    assert context.codes is not None
    async with context.pool.acquire() as conn:
        held = await cabinet_applications.hold(conn, access(request), new)
    context.codes.send(
        cabinet_applications.PURPOSE, phone=held.phone, email=held.email, code=held.code,
        lifetime=cabinet_applications.CODE_LIFETIME,
    )  # fmt: skip
    return render(request, "device_confirm.html", ticket=held.ticket, error="")


async def confirm_registration(request: web.Request) -> web.Response:
    ticket, code = ticket_and_code(await request.post())
    try:
        async with cabinet(request).pool.acquire() as conn:
            added, _ = await cabinet_applications.confirm(conn, access(request), ticket, code)
    except InvalidRequest as err:  # a wrong code: the same ticket, fewer attempts
        return render(request, "device_confirm.html", status=400, ticket=ticket, error=str(err))
    except RegistryError as err:
        status = error_status(err)
        return render(request, "device_confirm.html", status=status, ticket="", error=str(err))
    return redirect(f"/kkm/{added.system_id}?done=registered")
