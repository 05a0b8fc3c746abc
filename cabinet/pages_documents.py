"""Transactions and reports of one cash register, from the warehouse: its receipts by shift or
period (offline ones marked, reports.OFFLINE_MARK), one receipt in full, its X and Z reports.
The lists are the very reports `ofd report` prints (ledger/warehouse/reports.py), with their
limits."""

import csv
import io
from datetime import date, datetime
from typing import Any
from urllib.parse import urlencode

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


async def _receipts(
    request: web.Request,
) -> tuple[registry.Device, dict[str, str], list[dict[str, Any]], str]:
    """The register, the filter as shown, its receipts and the refusal of the filter, if any."""
    found = access(request)
    context = cabinet(request)
    async with context.pool.acquire() as conn:
        device = await scope.device(conn, found, int(request.match_info["id"]), "transactions")
    query = request.query
    params: dict[str, Any] = {"device": device.system_id}
    shown: dict[str, str] = {"shift": "", "from": "", "to": ""}
    try:
        if query.get("shift", "").strip():
            params["shift"] = shown["shift"] = _shift(query["shift"])
        else:
            params["from"] = shown["from"] = _day(query.get("from") or _today())
            params["to"] = shown["to"] = _day(query.get("to") or shown["from"])
        rows = await context.documents.run(receipts_report, params, context.settings.report_limits)
    except QueryRefused as err:
        return device, shown, [], str(err)
    return device, shown, rows, ""


async def receipts(request: web.Request) -> web.Response:
    device, shown, rows, error = await _receipts(request)
    return render(
        request,
        "receipts.html",
        status=400 if error else 200,
        device=device,
        rows=rows,
        shown=shown,
        download=f"/kkm/{device.system_id}/receipts.csv?"
        + urlencode({k: v for k, v in shown.items() if v}),
        error=error,
    )


async def receipts_csv(request: web.Request) -> web.Response:
    """The same receipts as a CSV file (UTF-8 with a BOM, which spreadsheets need to read it)."""
    device, shown, rows, error = await _receipts(request)
    if error:
        return render(request, "error.html", status=400, message=error)
    columns = ("mark", "time", "shift", "number", "operation", "total", "fiscal_sign")
    period = f"shift-{shown['shift']}" if shown["shift"] else f"{shown['from']}-{shown['to']}"
    return _csv(f"receipts-{device.system_id}-{period}.csv", columns, rows)


def _csv(name: str, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> web.Response:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    writer.writerows([_cell(row.get(c, "")) for c in columns] for row in rows)
    return web.Response(
        body=("\ufeff" + out.getvalue()).encode(),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def _cell(value: Any) -> str:
    """A cell no spreadsheet runs as a formula."""
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "@", "\t", "\r") else text


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


async def _reports(
    request: web.Request,
) -> tuple[registry.Device, dict[str, str], list[dict[str, Any]], str]:
    found = access(request)
    context = cabinet(request)
    async with context.pool.acquire() as conn:
        device = await scope.device(conn, found, int(request.match_info["id"]), "reports")
    shown = {"from": "", "to": ""}
    try:
        shown["from"] = _day(request.query.get("from") or _today())
        shown["to"] = _day(request.query.get("to") or shown["from"])
        params = {"device": device.system_id, "from": shown["from"], "to": shown["to"]}
        rows = await context.documents.run(zx_report, params, context.settings.report_limits)
    except QueryRefused as err:
        return device, shown, [], str(err)
    return device, shown, rows, ""


async def reports(request: web.Request) -> web.Response:
    device, shown, rows, error = await _reports(request)
    return render(
        request,
        "reports.html",
        status=400 if error else 200,
        device=device,
        rows=rows,
        shown=shown,
        download=f"/kkm/{device.system_id}/reports.csv?" + urlencode(shown),
        error=error,
    )


async def reports_csv(request: web.Request) -> web.Response:
    device, shown, rows, error = await _reports(request)
    if error:
        return render(request, "error.html", status=400, message=error)
    columns = ("time", "kind", "shift", "offline", "reconciled", "differences")
    return _csv(f"reports-{device.system_id}-{shown['from']}-{shown['to']}.csv", columns, rows)
