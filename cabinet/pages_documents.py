"""Transactions and reports of one cash register, from the warehouse: its receipts by shift or
period (offline ones marked, reports.OFFLINE_MARK), one receipt in full, its X and Z reports
each beside the OFD's, and their downloads (CSV lists; ZIP archives of one receipt or a period,
cabinet/zip_stream.py, sent as they are read a batch at a time). The lists are the very reports
`ofd report` prints (ledger/warehouse/reports.py), with their limits; an archive holds what its
list holds."""

import csv
import io
from collections.abc import AsyncIterator
from datetime import date, datetime
from functools import partial
from typing import Any
from urllib.parse import urlencode

import structlog
from aiohttp import web

from cabinet.document_files import receipt_json, receipt_text, report_json, report_text
from cabinet.web import access, cabinet, path_id, render
from cabinet.zip_stream import Entry, zipped
from ledger import cabinet_scope as scope
from ledger import registry
from ledger.fiscal import qr_url
from ledger.warehouse.cabinet_reads import (
    Receipt,
    ReportBeside,
    receipt,
    receipts_by_sign,
    reports_beside,
)
from ledger.warehouse.reports import QueryRefused, receipts_report, zx_report
from ledger.wire import KZ_TIME

log = structlog.get_logger(__name__)

RECEIPT_COLUMNS = ("mark", "time", "shift", "number", "operation", "total", "fiscal_sign")
REPORT_COLUMNS = ("time", "kind", "shift", "offline", "reconciled", "differences")
# X/Z reports shown beside the OFD's on one page (some hundred rows each): a register closes a
# shift a day, so a month's page shows them all; the archive holds every one.
REPORTS_SHOWN = 100
# An archive entry's name for a report kind (reports.zx_report's names hold spaces).
REPORT_FILE_KINDS = {"Z": "z", "Z (request)": "z-request", "X": "x"}


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
        device = await scope.device(conn, found, path_id(request), "transactions")
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
        download=f"/kkm/{device.system_id}/receipts.csv?{_filter(shown)}",
        archive=f"/kkm/{device.system_id}/receipts.zip?{_filter(shown)}",
        error=error,
    )


def _filter(shown: dict[str, str]) -> str:
    return urlencode({k: v for k, v in shown.items() if v})


def _receipts_name(device: registry.Device, shown: dict[str, str]) -> str:
    """Digits and dates only: nothing a user typed reaches Content-Disposition."""
    period = f"shift-{shown['shift']}" if shown["shift"] else f"{shown['from']}-{shown['to']}"
    return f"receipts-{device.system_id}-{period}"


async def receipts_csv(request: web.Request) -> web.Response:
    """The same receipts as a CSV file (UTF-8 with a BOM, which spreadsheets need to read it)."""
    device, shown, rows, error = await _receipts(request)
    if error:
        return render(request, "error.html", status=400, message=error)
    name = f"{_receipts_name(device, shown)}.csv"
    return _download(name, _csv(RECEIPT_COLUMNS, rows), "text/csv")


def _csv(columns: tuple[str, ...], rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    writer.writerows([_cell(row.get(c, "")) for c in columns] for row in rows)
    return ("\ufeff" + out.getvalue()).encode()


def _download(name: str, body: bytes | AsyncIterator[bytes], content_type: str) -> web.Response:
    """A file the browser saves as `name` (digits, dates and fixed words only)."""
    response = web.Response(
        body=body,
        content_type=content_type,
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
    if content_type.startswith("text/"):
        response.charset = "utf-8"
    return response


def _cell(value: Any) -> str:
    """A cell no spreadsheet runs as a formula."""
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "@", "\t", "\r") else text


async def _points(
    request: web.Request, device: registry.Device, ids: set[int]
) -> dict[int, registry.TradePoint]:
    """The register's organization's trade points among `ids`: where it stood for a receipt.
    The register's, not the viewer's: a service centre's user sees a client's receipts."""
    async with cabinet(request).pool.acquire() as conn:
        owner = await registry.organization_of_point(conn, device.trade_point_id)
        points = await registry.list_trade_points(
            conn, organization_id=owner or 0, point_ids=frozenset(ids)
        )
    return {point.id: point for point in points if point.organization_id == owner}


def _qr(request: web.Request, device: registry.Device, held: Receipt) -> str:
    return qr_url(
        cabinet(request).check_url,
        held.fiscal_sign,
        device.kgd_registration_number,
        held.total,
        datetime.fromisoformat(held.time),
    )


async def _one_receipt(
    request: web.Request,
) -> tuple[registry.Device, Receipt | None, registry.TradePoint | None]:
    context = cabinet(request)
    async with context.pool.acquire() as conn:
        device = await scope.device(conn, access(request), path_id(request), "transactions")
    held = await context.documents.run(receipt, device.system_id, request.match_info["sign"])
    if held is None:
        return device, None, None
    points = await _points(request, device, {held.trade_point_id})
    return device, held, points.get(held.trade_point_id)


async def one_receipt(request: web.Request) -> web.Response:
    device, held, point = await _one_receipt(request)
    if held is None:
        return render(request, "error.html", status=404, message="Чек не найден.")
    return render(
        request,
        "receipt.html",
        device=device,
        receipt=held,
        point=point,
        qr=_qr(request, device, held),
    )


def _receipt_entries(
    request: web.Request,
    device: registry.Device,
    held: Receipt,
    point: registry.TradePoint | None,
) -> list[Entry]:
    qr, when = _qr(request, device, held), datetime.fromisoformat(held.time)
    return [
        (f"{held.fiscal_sign}.txt", receipt_text(held, device, point, qr), when),
        (f"{held.fiscal_sign}.json", receipt_json(held, device, point, qr), when),
    ]


async def _entries(entries: list[Entry]) -> AsyncIterator[Entry]:
    for entry in entries:
        yield entry


async def receipt_zip(request: web.Request) -> web.Response:
    """One receipt as an archive: its text and its JSON."""
    device, held, point = await _one_receipt(request)
    if held is None:
        return render(request, "error.html", status=404, message="Чек не найден.")
    return _download(
        f"receipt-{device.system_id}-{held.fiscal_sign}.zip",
        zipped(_entries(_receipt_entries(request, device, held, point))),
        "application/zip",
    )


async def receipts_zip(request: web.Request) -> web.Response:
    """A shift's or a period's receipts as an archive: the CSV list, then each receipt's text
    and JSON, read settings.archive_batch at a time. The first batch is read before answering,
    so a warehouse that is down is a page; one failing later cuts the download short (the
    browser reports it failed) rather than leaving a short archive that looks whole."""
    device, shown, rows, error = await _receipts(request)
    if error:
        return render(request, "error.html", status=400, message=error)
    name = _receipts_name(device, shown)
    batch = cabinet(request).settings.archive_batch
    first = await _receipt_batch(request, device, rows[:batch])

    async def entries() -> AsyncIterator[Entry]:
        yield f"{name}.csv", _csv(RECEIPT_COLUMNS, rows), datetime.now(KZ_TIME)
        for entry in first:
            yield entry
        for start in range(batch, len(rows), batch):
            for entry in await _receipt_batch(request, device, rows[start : start + batch]):
                yield entry

    return _download(f"{name}.zip", zipped(_cut_short(entries(), name)), "application/zip")


async def _receipt_batch(
    request: web.Request, device: registry.Device, rows: list[dict[str, Any]]
) -> list[Entry]:
    if not rows:
        return []
    signs = [str(row["fiscal_sign"]) for row in rows]
    found = await cabinet(request).documents.run(
        receipts_by_sign, device.system_id, signs, str(rows[0]["time"]), str(rows[-1]["time"])
    )
    points = await _points(request, device, {held.trade_point_id for held in found})
    return [
        entry
        for held in found
        for entry in _receipt_entries(request, device, held, points.get(held.trade_point_id))
    ]


async def _cut_short(entries: AsyncIterator[Entry], name: str) -> AsyncIterator[Entry]:
    """`entries`, logging a failure that ends an archive already under way (its answer was
    sent: the connection is dropped, never an archive that looks whole)."""
    try:
        async for entry in entries:
            yield entry
    except Exception as err:
        log.warning("cabinet_archive_cut_short", archive=name, error=str(err))
        raise


async def _reports(
    request: web.Request,
) -> tuple[registry.Device, dict[str, str], list[dict[str, Any]], str]:
    """The register, the period as shown, its X/Z reports and the refusal of the period."""
    found = access(request)
    context = cabinet(request)
    async with context.pool.acquire() as conn:
        device = await scope.device(conn, found, path_id(request), "reports")
    shown = {"from": "", "to": ""}
    try:
        shown["from"] = _day(request.query.get("from") or _today())
        shown["to"] = _day(request.query.get("to") or shown["from"])
        params = {"device": device.system_id, "from": shown["from"], "to": shown["to"]}
        rows = await context.documents.run(zx_report, params, context.settings.report_limits)
    except QueryRefused as err:
        return device, shown, [], str(err)
    return device, shown, rows, ""


async def _reports_beside(
    request: web.Request,
    device: registry.Device,
    shown: dict[str, str],
    limit: int,
    after: tuple[str, str] | None = None,
) -> list[ReportBeside]:
    """The period's X/Z reports beside the OFD's: `limit` of them after `after`."""
    return await cabinet(request).documents.run(
        partial(reports_beside, limit=limit, after=after),
        device.system_id,
        date.fromisoformat(shown["from"]),
        date.fromisoformat(shown["to"]),
    )


async def reports(request: web.Request) -> web.Response:
    device, shown, rows, error = await _reports(request)
    # One more than shown: whether the page must say that it shows only the first ones.
    beside = [] if error else await _reports_beside(request, device, shown, REPORTS_SHOWN + 1)
    return render(
        request,
        "reports.html",
        status=400 if error else 200,
        device=device,
        rows=rows,
        shown=shown,
        beside=beside[:REPORTS_SHOWN],
        beside_cut=len(beside) > REPORTS_SHOWN,
        download=f"/kkm/{device.system_id}/reports.csv?" + urlencode(shown),
        archive=f"/kkm/{device.system_id}/reports.zip?" + urlencode(shown),
        error=error,
    )


def _reports_name(device: registry.Device, shown: dict[str, str]) -> str:
    return f"reports-{device.system_id}-{shown['from']}-{shown['to']}"


async def reports_csv(request: web.Request) -> web.Response:
    device, shown, rows, error = await _reports(request)
    if error:
        return render(request, "error.html", status=400, message=error)
    return _download(f"{_reports_name(device, shown)}.csv", _csv(REPORT_COLUMNS, rows), "text/csv")


async def reports_zip(request: web.Request) -> web.Response:
    """A period's X/Z reports as an archive: the CSV list, then each report beside the OFD's as
    text and JSON, read settings.archive_batch at a time (as receipts_zip)."""
    device, shown, rows, error = await _reports(request)
    if error:
        return render(request, "error.html", status=400, message=error)
    name = _reports_name(device, shown)
    batch = cabinet(request).settings.archive_batch
    first = await _reports_beside(request, device, shown, batch)

    async def entries() -> AsyncIterator[Entry]:
        yield f"{name}.csv", _csv(REPORT_COLUMNS, rows), datetime.now(KZ_TIME)
        held, index = first, 0
        while held:
            for report in held:
                index += 1
                stem = (
                    f"{index:05d}-{REPORT_FILE_KINDS.get(report.kind, 'report')}"
                    f"-shift-{report.shift_number}"
                )
                when = datetime.fromisoformat(report.time)
                yield f"{stem}.txt", report_text(report), when
                yield f"{stem}.json", report_json(report), when
            last = held[-1]
            held = (
                await _reports_beside(request, device, shown, batch, (last.time, last.document_id))
                if len(held) == batch
                else []
            )

    return _download(f"{name}.zip", zipped(_cut_short(entries(), name)), "application/zip")
