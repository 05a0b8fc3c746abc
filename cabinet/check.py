"""The public receipt check (GET /check?i=&f=&s=&t=), the page behind every printed QR code.

Public and read-only: it shows a receipt's facts only when sign, KGD number, total and time all
match one receipt (ledger/receipt_check.py says what each answer reveals). Misses are counted
per address; past the budget the address gets 429 until the window ends, so guessing signs
costs a minute per few dozen tries while a customer scanning real receipts never meets it.
The device and the seller come through check_facts.py (kept a minute), the receipt through
check_lookups.py (read in one engine call with the checks arriving beside it).
"""

from datetime import datetime

import structlog
from aiohttp import web

from cabinet.client_address import client_of
from cabinet.warehouse import WarehouseUnavailable
from cabinet.web import cabinet, render
from ledger import registry
from ledger.receipt_check import Verdict, parse_check, verdict
from ledger.warehouse.cabinet_reads import Receipt, check_params, checked_receipt
from ledger.wire import KZ_TIME

log = structlog.get_logger(__name__)


async def check(request: web.Request) -> web.Response:
    context = cabinet(request)
    peer = client_of(request)
    if context.check_misses.over_budget(peer):
        return render(request, "check.html", status=429, verdict="limited", receipt=None)
    query = parse_check(request.query)
    if query is None and not request.query:
        return render(request, "check.html", verdict="form", receipt=None)
    found: Receipt | None = None
    seller: registry.Organization | None = None
    point: registry.TradePoint | None = None
    if query is not None:
        device_id = await context.check_facts.device_id(query.kgd_number)
        if device_id is not None:
            try:
                rows = await context.check_lookups.receipt(
                    check_params(device_id, query.fiscal_sign, query.total, query.when)
                )
            except WarehouseUnavailable as err:
                log.warning("check_warehouse_unavailable", error=str(err))
                return render(request, "check.html", status=503, verdict="down", receipt=None)
            found = checked_receipt(rows)
        # 0: a record from before the journal named the point; nothing to show then.
        if found is not None and found.organization_id and found.trade_point_id:
            seller, point = await context.check_facts.seller(
                found.organization_id, found.trade_point_id
            )
    now = datetime.now(KZ_TIME).replace(tzinfo=None)
    answer = verdict(query, found is not None, now, context.settings.check_pending)
    if answer is not Verdict.FOUND:
        context.check_misses.failed(peer)
    return render(
        request,
        "check.html",
        status=200,
        verdict=answer.value,
        receipt=found,
        seller=seller,
        point=point,
    )
