"""Users and groups: the main user's section. Every act goes through ledger.cabinet_users,
which keeps users, groups and trade points within the main user's own organization."""

from typing import Any

from aiohttp import web

from cabinet.web import (
    access,
    cabinet,
    error_status,
    ids,
    kdf_turn,
    path_id,
    redirect,
    render,
    text,
)
from ledger import cabinet_scope as scope
from ledger import cabinet_users as users
from ledger.errors import InvalidRequest, RegistryError


def _main(request: web.Request) -> users.Access:
    found = access(request)
    scope.require(found, users.USERS_SECTION)
    return found


async def _page(
    request: web.Request, *, status: int = 200, error: str = "", values: Any = None
) -> web.Response:
    found = _main(request)
    async with cabinet(request).pool.acquire() as conn:
        people = await users.list_users(conn, found.organization_id)
        groups = await users.list_groups(conn, found.organization_id)
        points = await scope.points(conn, found, users.USERS_SECTION)
        membership = {u.id: await users.user_group_ids(conn, u.id) for u in people}
    return render(
        request,
        "users.html",
        status=status,
        people=people,
        groups=groups,
        points=points,
        membership=membership,
        error=error,
        values=values or {},
    )


async def show_users(request: web.Request) -> web.Response:
    return await _page(request)


async def add_user(request: web.Request) -> web.Response:
    found = _main(request)
    form = await request.post()
    password = form.get("password", "")
    try:
        if not isinstance(password, str):
            raise InvalidRequest("password: text expected")
        login = text(form, "login", required=True)
        groups = ids(form, "group")
        context = cabinet(request)
        async with kdf_turn(context), context.pool.acquire() as conn, conn.transaction():
            user = await users.add_user(
                conn,
                found.organization_id,
                login=login,
                password=password,
                name=text(form, "name"),
                email=text(form, "email"),
                phone=text(form, "phone"),
                position=text(form, "position"),
            )
            await users.set_user_groups(conn, found.organization_id, user.id, groups)
    except RegistryError as err:
        values = {k: v for k, v in form.items() if k != "password"}
        return await _page(request, status=error_status(err), error=str(err), values=values)
    return redirect("/users?done=added")


async def change_user(request: web.Request) -> web.Response:
    found = _main(request)
    form = await request.post()
    user_id = path_id(request)
    try:
        async with cabinet(request).pool.acquire() as conn, conn.transaction():
            await users.set_user_groups(conn, found.organization_id, user_id, ids(form, "group"))
            wanted = form.get("active") == "yes"
            current = await users.get_user(conn, found.organization_id, user_id)
            if current.active != wanted:
                await users.set_active(conn, found.organization_id, user_id, wanted)
    except RegistryError as err:
        return await _page(request, status=error_status(err), error=str(err))
    return redirect("/users?done=saved")


async def add_group(request: web.Request) -> web.Response:
    found = _main(request)
    form = await request.post()
    try:
        sections = {s for s in form.getall("section", []) if isinstance(s, str)}
        async with cabinet(request).pool.acquire() as conn:
            await users.add_group(
                conn,
                found.organization_id,
                name=text(form, "group_name", required=True),
                sections=sections,
                all_points=form.get("all_points") == "yes",
                point_ids=ids(form, "point"),
            )
    except RegistryError as err:
        return await _page(request, status=error_status(err), error=str(err))
    return redirect("/users?done=added")


async def delete_group(request: web.Request) -> web.Response:
    found = _main(request)
    try:
        async with cabinet(request).pool.acquire() as conn:
            await users.delete_group(conn, found.organization_id, path_id(request))
    except RegistryError as err:
        return await _page(request, status=error_status(err), error=str(err))
    return redirect("/users?done=deleted")
