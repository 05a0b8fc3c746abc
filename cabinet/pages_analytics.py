"""Analytics: revenue by day (a chart), receipts and offline ones, money by payment type, VAT
and returns, for one register over up to a month or up to 20 registers over up to a week (the
limits of `ofd report summary`, settings of ReportLimits)."""

from collections import defaultdict
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from aiohttp import web

from cabinet.charts import HEIGHT, WIDTH, bars
from cabinet.web import access, cabinet, ids, render
from ledger import cabinet_scope as scope
from ledger.errors import NotFound
from ledger.warehouse.cabinet_reads import Breakdown, breakdown
from ledger.warehouse.reports import QueryRefused, summary_report
from ledger.wire import KZ_TIME

DEFAULT_DAYS = 7


def _tiyn(tenge: Any) -> int:
    # summary_report gives revenue in tenge with two decimals (a Decimal64 as text or number).
    return int(Decimal(str(tenge)) * 100)


async def analytics(request: web.Request) -> web.Response:
    found = access(request)
    context = cabinet(request)
    async with context.pool.acquire() as conn:
        devices = await scope.devices(conn, found, "analytics")
    reachable = {d.system_id for d in devices}
    chosen = ids(request.query, "device") or set(sorted(reachable)[:1])
    if not chosen <= reachable:
        raise NotFound("no such cash register")
    today = datetime.now(KZ_TIME).date()
    shown = {
        "from": request.query.get("from") or (today - timedelta(days=DEFAULT_DAYS - 1)).isoformat(),
        "to": request.query.get("to") or today.isoformat(),
    }
    rows: list[dict[str, Any]] = []
    more: Breakdown | None = None
    error = ""
    if chosen:
        params = {"devices": sorted(chosen), "from": shown["from"], "to": shown["to"]}
        try:
            rows = await context.documents.run(
                summary_report, params, context.settings.report_limits
            )
            start, end = date.fromisoformat(shown["from"]), date.fromisoformat(shown["to"])
            more = await context.documents.run(breakdown, sorted(chosen), start, end)
        except QueryRefused as err:
            error = str(err)
    days: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for row in rows:
        day = days[str(row["day"])]
        day[0] += int(row["receipts"])
        day[1] += int(row["offline_receipts"])
        day[2] += _tiyn(row["revenue"])
    ordered = sorted(days.items())
    return render(
        request,
        "analytics.html",
        status=400 if error else 200,
        devices=devices,
        chosen=chosen,
        shown=shown,
        days=ordered,
        chart=bars([(day[5:], totals[2]) for day, totals in ordered]),
        chart_size=(WIDTH, HEIGHT),
        total=sum(t[2] for _, t in ordered),
        more=more,
        error=error,
    )
