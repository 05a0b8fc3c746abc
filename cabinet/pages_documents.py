"""Transactions and reports of one cash register, from the warehouse: its receipts by shift or
period (offline ones marked, reports.OFFLINE_MARK), one receipt in full, its X and Z reports.
The lists are the very reports `ofd report` prints (ledger/warehouse/reports.py), with their
limits."""

from datetime import date, datetime
from typing import Any

from aiohttp import web

from cabinet.web import access, cabinet, render
from ledger import cabinet_scope as scope
from ledger import registry
from ledger.fiscal import qr_url
from ledger.warehouse.cabinet_reads import receipt
from ledger.warehouse.reports import QueryRefused, receipts_report, zx_report
from ledger.wire import KZ_TIME


def _today() -> str:
    return datetime.now(KZ_TIME).date().isoformat()


def _day(value: str) -> str:
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError as err:
        raise QueryRefused(f"{value!r} is not a date (YYYY-MM-DD)") from err


def _shift(value: str) -> str:
    value = value.strip()
    if not value.isdigit() or len(value) > 9:
        raise QueryRefused("shift: a number expected")
    return value


async def receipts(request: web.Request) -> web.Response:
    found = access(request)
    system_id = int(request.match_info["id"])
    async with cabinet(request).pool.acquire() as conn:
        device = await scope.device(conn, found, system_id, "transactions")
    query = request.query
    params: dict[str, Any] = {"device": device.system_id}
    shown: dict[str, str] = {"shift": "", "from": "", "to": ""}
    rows: list[dict[str, Any]] = []
    error = ""
    try:
        if query.get("shift", "").strip():
            params["shift"] = shown["shift"] = _shift(query["shift"])
        else:
            params["from"] = shown["from"] = _day(query.get("from") or _today())
            params["to"] = shown["to"] = _day(query.get("to") or shown["from"])
        context = cabinet(request)
        rows = await context.documents.run(receipts_report, params, context.settings.report_limits)
    except QueryRefused as err:
        error = str(err)
    return render(
        request,
        "receipts.html",
        status=400 if error else 200,
        device=device,
        rows=rows,
        shown=shown,
        error=error,
    )


async def one_receipt(request: web.Request) -> web.Response:
    found = access(request)
    system_id = int(request.match_info["id"])
    context = cabinet(request)
    async with context.pool.acquire() as conn:
        device = await scope.device(conn, found, system_id, "transactions")
    held = await context.documents.run(receipt, device.system_id, request.match_info["sign"])
    if held is None:
        return render(request, "error.html", status=404, message="Чек не найден.")
    async with context.pool.acquire() as conn:
        points = await registry.list_trade_points(
            conn, organization_id=found.organization_id, point_ids=frozenset({held.trade_point_id})
        )
    when = datetime.fromisoformat(held.time)
    return render(
        request,
        "receipt.html",
        device=device,
        receipt=held,
        point=points[0] if points else None,
        qr=qr_url(context.check_url, held.fiscal_sign, device.kgd_registration_number,
                  held.total, when),
    )  # fmt: skip


async def reports(request: web.Request) -> web.Response:
    found = access(request)
    system_id = int(request.match_info["id"])
    context = cabinet(request)
    async with context.pool.acquire() as conn:
        device = await scope.device(conn, found, system_id, "reports")
    rows: list[dict[str, Any]] = []
    error = ""
    shown = {"from": "", "to": ""}
    try:
        shown["from"] = _day(request.query.get("from") or _today())
        shown["to"] = _day(request.query.get("to") or shown["from"])
        params = {"device": device.system_id, "from": shown["from"], "to": shown["to"]}
        rows = await context.documents.run(zx_report, params, context.settings.report_limits)
    except QueryRefused as err:
        error = str(err)
    return render(
        request,
        "reports.html",
        status=400 if error else 200,
        device=device,
        rows=rows,
        shown=shown,
        error=error,
    )
