"""What some commands need read from PostgreSQL before their (I/O-free) handler runs.

Only requests that need it pay for it: an offline receipt (is its number taken?), and the
read-only commands NOMENCLATURE, AUTH, QR_GENERATE and QR_GET_STATUS. An online receipt, the hot
path, is never here. The result goes to the handler as `RequestContext.prepared`.
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from ledger.device_state import DeviceState
from ledger.errors import SinkError
from ledger.fiscal import FiscalSettings
from ledger.nomenclature import answer_for
from ledger.offline import find_offline_ticket
from ledger.operators import authenticate, find_operator
from ledger.qr_payments import QrError, find, generate, qr_code_for
from ledger.state_store import DATABASE_ERRORS
from ledger.ticket_checks import refuse, tiyn
from ledger.wire import Command

Conn = Any  # a pooled connection
Preparer = Callable[[Conn, DeviceState, Any, FiscalSettings, float], Awaitable[Any]]


async def _offline_ticket(
    conn: Conn, state: DeviceState, request: Any, fiscal: FiscalSettings, timeout: float
) -> Any:
    del fiscal
    number = request.ticket.offline_ticket_number
    return await find_offline_ticket(conn, state.system_id, number, timeout=timeout)


async def _nomenclature(
    conn: Conn, state: DeviceState, request: Any, fiscal: FiscalSettings, timeout: float
) -> Any:
    del fiscal
    asked = request.nomenclature  # absent: an empty request, the whole latest version
    return await answer_for(
        conn,
        state.system_id,
        current_version=asked.current_version,
        barcode=asked.barcode,
        timeout=timeout,
    )


async def _auth(
    conn: Conn, state: DeviceState, request: Any, fiscal: FiscalSettings, timeout: float
) -> Any:
    del fiscal
    if not request.HasField("auth"):
        raise refuse("auth: AUTH command without auth")
    return await find_operator(conn, state.system_id, request.auth.login, timeout=timeout)


async def _qr_generate(
    conn: Conn, state: DeviceState, request: Any, fiscal: FiscalSettings, timeout: float
) -> Any:
    if not request.HasField("qr"):
        raise refuse("qr: QR_GENERATE command without qr")
    qr = request.qr
    amount = tiyn(qr.amount, "qr.amount") if qr.HasField("amount") else None
    code = qr_code_for(fiscal.secret, fiscal.qr_base_url, state.system_id, qr.invoice_id, amount)
    try:
        return await generate(conn, state.system_id, qr.invoice_id, amount, code, timeout=timeout)
    except QrError as err:
        raise refuse(str(err)) from err


async def _qr_status(
    conn: Conn, state: DeviceState, request: Any, fiscal: FiscalSettings, timeout: float
) -> Any:
    del fiscal
    if not request.HasField("qr"):
        raise refuse("qr: QR_GET_STATUS command without qr")
    invoice = request.qr.invoice_id
    payment = await find(conn, state.system_id, invoice, timeout=timeout)
    if payment is None:
        raise refuse(f"qr.invoice_id: no QR was generated for invoice {invoice}")
    return payment


PREPARERS: dict[int, Preparer] = {
    Command.NOMENCLATURE: _nomenclature,
    Command.AUTH: _auth,
    Command.QR_GENERATE: _qr_generate,
    Command.QR_GET_STATUS: _qr_status,
}


def needs_preparing(command: int, request: Any) -> bool:
    """Cheap, on every request: an online receipt answers False after one field read."""
    if command == Command.TICKET:
        return bool(request.ticket.offline_ticket_number)
    return command in PREPARERS


async def prepare(
    pool: asyncpg.Pool,
    state: DeviceState,
    command: int,
    request: Any,
    *,
    fiscal: FiscalSettings,
    timeout: float,
) -> Any:
    preparer = _offline_ticket if command == Command.TICKET else PREPARERS[command]
    try:
        async with pool.acquire(timeout=timeout) as conn:
            prepared = await preparer(conn, state, request, fiscal, timeout)
    except DATABASE_ERRORS as err:
        raise SinkError(f"state store: {err!r}", retriable=True) from err
    if command == Command.AUTH:
        # scrypt is slow on purpose: in a thread (the connection already back in the pool), or
        # every device of this gateway would wait for it.
        return await asyncio.to_thread(authenticate, prepared, request.auth.password)
    return prepared
