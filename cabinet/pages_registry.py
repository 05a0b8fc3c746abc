"""Organization, trade points, cash registers and their tokens: pages over ledger.cabinet_scope,
which checks every section and reach and carries the act out through ledger.registry."""

from typing import Any

from aiohttp import web

from cabinet import pages_applications
from cabinet.web import (
    access,
    cabinet,
    coordinate,
    error_status,
    number,
    path_id,
    redirect,
    render,
    text,
)
from ledger import cabinet_scope as scope
from ledger import registry
from ledger.errors import InvalidRequest, RegistryError
from ledger.lifecycle import TRANSITIONS, Action, DeviceStatus


async def home(request: web.Request) -> web.Response:
    found = access(request)
    devices: list[registry.Device] = []
    if found.may("devices"):
        async with cabinet(request).pool.acquire() as conn:
            devices = await scope.devices(conn, found)
    return render(request, "home.html", devices=devices)


# --- organization ---


async def _organization_page(
    request: web.Request, *, status: int = 200, error: str = "", values: Any = None
) -> web.Response:
    found = access(request)
    async with cabinet(request).pool.acquire() as conn:
        org = await scope.organization(conn, found)
    return render(
        request,
        "organization.html",
        status=status,
        org=values or org,
        iin=org.iin,
        editable=found.whole_organization,
        error=error,
    )


async def show_organization(request: web.Request) -> web.Response:
    return await _organization_page(request)


async def update_organization(request: web.Request) -> web.Response:
    form = await request.post()
    found = access(request)
    values = {
        "title": form.get("title", ""),
        "address": form.get("address", ""),
        "address_kz": form.get("address_kz", ""),
        "oked": form.get("oked", ""),
        "head": form.get("head", ""),
    }
    try:
        async with cabinet(request).pool.acquire() as conn:
            current = await scope.organization(conn, found)
            iin = text(form, "iin")
            if iin and iin != current.iin:
                raise InvalidRequest("ИИН/БИН организации не меняется")
            await scope.update_organization(
                conn,
                found,
                title=text(form, "title", required=True),
                address=text(form, "address"),
                address_kz=text(form, "address_kz"),
                oked=text(form, "oked"),
                head=text(form, "head"),
            )
    except RegistryError as err:
        return await _organization_page(
            request, status=error_status(err), error=str(err), values=values
        )
    return redirect("/organization?done=saved")


# --- trade points ---


def _point_from(form: Any, point_id: int = 0) -> registry.TradePoint:
    return registry.TradePoint(
        point_id,
        0,
        text(form, "title", required=True),
        text(form, "address"),
        text(form, "address_kz"),
        coordinate(form, "latitude"),
        coordinate(form, "longitude"),
    )


async def _points_page(
    request: web.Request, *, status: int = 200, error: str = "", values: Any = None
) -> web.Response:
    found = access(request)
    async with cabinet(request).pool.acquire() as conn:
        points = await scope.points(conn, found)
    return render(
        request,
        "points.html",
        status=status,
        points=points,
        may_add=found.whole_organization,
        error=error,
        values=values or {},
    )


async def show_points(request: web.Request) -> web.Response:
    return await _points_page(request)


async def add_point(request: web.Request) -> web.Response:
    form = await request.post()
    try:
        async with cabinet(request).pool.acquire() as conn:
            await scope.add_point(conn, access(request), _point_from(form))
    except RegistryError as err:
        return await _points_page(request, status=error_status(err), error=str(err), values=form)
    return redirect("/points?done=added")


async def _point_page(
    request: web.Request, *, status: int = 200, error: str = "", values: Any = None
) -> web.Response:
    found = access(request)
    async with cabinet(request).pool.acquire() as conn:
        point = await scope.point(conn, found, path_id(request), "points")
        devices = (
            await scope.devices(conn, found, point_id=point.id) if found.may("devices") else []
        )
    return render(
        request,
        "point.html",
        status=status,
        point=point,
        values=values,
        devices=devices,
        may_delete=found.whole_organization,
        error=error,
    )


async def show_point(request: web.Request) -> web.Response:
    return await _point_page(request)


async def update_point(request: web.Request) -> web.Response:
    form = await request.post()
    try:
        async with cabinet(request).pool.acquire() as conn:
            await scope.update_point(conn, access(request), _point_from(form, path_id(request)))
    except RegistryError as err:
        return await _point_page(request, status=error_status(err), error=str(err), values=form)
    return redirect(f"/points/{path_id(request)}?done=saved")


async def delete_point(request: web.Request) -> web.Response:
    try:
        async with cabinet(request).pool.acquire() as conn:
            await scope.delete_point(conn, access(request), path_id(request))
    except RegistryError as err:
        return await _point_page(request, status=error_status(err), error=str(err))
    return redirect("/points?done=deleted")


# --- cash registers ---


async def _devices_page(
    request: web.Request, *, status: int = 200, error: str = "", values: Any = None
) -> web.Response:
    found = access(request)
    async with cabinet(request).pool.acquire() as conn:
        devices = await scope.devices(conn, found)
        points = await scope.points(conn, found, "devices")
    return render(
        request,
        "devices.html",
        status=status,
        devices=devices,
        points=points,
        error=error,
        values=values or {},
    )


async def show_devices(request: web.Request) -> web.Response:
    return await _devices_page(request)


async def register_device(request: web.Request) -> web.Response:
    form = await request.post()
    try:
        new = registry.Device(
            0,
            text(form, "kgd", required=True),
            text(form, "serial", required=True),
            text(form, "model", required=True),
            number(form, "year", low=1990, high=2100),
            number(form, "point", low=1),
            DeviceStatus.AWAITING_REGISTRATION,
        )
        if cabinet(request).codes is not None:  # the main user confirms it with a code
            return await pages_applications.hold_registration(request, new)
        async with cabinet(request).pool.acquire() as conn:
            added, _ = await scope.register_device(conn, access(request), new)
    except RegistryError as err:
        return await _devices_page(request, status=error_status(err), error=str(err), values=form)
    return redirect(f"/kkm/{added.system_id}?done=registered")


def _actions(device: registry.Device) -> list[Action]:
    """The taxpayer's actions that the device's status allows, in lifecycle order."""
    return [
        action
        for action in Action
        if action in scope.TAXPAYER_ACTIONS and TRANSITIONS[action][0] == device.status
    ]


async def _device_page(
    request: web.Request, *, status: int = 200, error: str = "", token: int | None = None,
    new_token: bool = False,
) -> web.Response:  # fmt: skip
    found = access(request)
    async with cabinet(request).pool.acquire() as conn:
        reached = await scope.reach(conn, found, path_id(request), "devices")
        device = reached.device
        application = await scope.application(conn, found, device.system_id)
        point = await registry.get_trade_point(conn, device.trade_point_id)
        # A service centre's user moves no register: the lifecycle is the taxpayer's.
        points = await scope.points(conn, found, "devices") if reached.own else []
    return render(
        request,
        "device.html",
        status=status,
        device=device,
        application=application,
        point=point,
        points=[p for p in points if p.id != device.trade_point_id],
        actions=_actions(device) if reached.own else [],
        may_token="token" in reached.sections,
        may_documents="transactions" in reached.sections,
        may_reports="reports" in reached.sections,
        token=token,
        new_token=new_token,
        error=error,
    )


async def show_device(request: web.Request) -> web.Response:
    return await _device_page(request)


async def move_device(request: web.Request) -> web.Response:
    form = await request.post()
    try:
        action = Action(text(form, "action", required=True))
    except ValueError:
        return await _device_page(request, status=400, error="Неизвестное действие")
    try:
        point = number(form, "point", low=1) if action is Action.REREGISTER else 0
        async with cabinet(request).pool.acquire() as conn:
            await scope.lifecycle(
                conn, access(request), path_id(request), action, trade_point_id=point
            )
    except RegistryError as err:
        return await _device_page(request, status=error_status(err), error=str(err))
    return redirect(f"/kkm/{path_id(request)}?done=moved")


async def get_token(request: web.Request) -> web.Response:
    """The "get token" button: the current token, shown in this answer only (never in a URL),
    audited."""
    try:
        async with cabinet(request).pool.acquire() as conn:
            token = await scope.get_token(conn, access(request), path_id(request))
    except RegistryError as err:
        return await _device_page(request, status=error_status(err), error=str(err))
    return await _device_page(request, token=token)


async def issue_token(request: web.Request) -> web.Response:
    """The "new token" button: only with the confirmation ticked, since the register stops
    working until the new token is typed into it."""
    form = await request.post()
    if form.get("confirm") != "yes":
        return await _device_page(
            request,
            status=400,
            error="Подтвердите выпуск нового токена: ККМ нужно будет перенастроить.",
        )
    try:
        async with cabinet(request).pool.acquire() as conn:
            token = await scope.new_token(conn, access(request), path_id(request))
    except RegistryError as err:
        return await _device_page(request, status=error_status(err), error=str(err))
    return await _device_page(request, token=token, new_token=True)
