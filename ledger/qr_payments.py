"""Payment QRs of 2.0.4 (QR_GENERATE, QR_GET_STATUS): one per invoice of a device.

QR_GENERATE stores the invoice and answers its QR with STATUS_NEW; asked again for the same
invoice (a device that lost the answer) it answers the stored QR and status; for the same
invoice with another amount it is refused, INCORRECT_REQUEST_DATA. QR_GET_STATUS answers the
stored QR and status; an invoice never generated is refused the same way. The payment side
(the bank, the customer's app) moves the status with `set_status`, along TRANSITIONS only.

The invoice row is written when QR_GENERATE is served, before the device's state: the write is
idempotent by (device, invoice), so a request whose state write then fails and is retried
meets its own row. QR payments exist in 2.0.4 only; 2.0.3 has no such commands (UNKNOWN_COMMAND).
"""

import hashlib
from dataclasses import dataclass

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from ledger.errors import OfdError

Conn = asyncpg.Connection | PoolConnectionProxy

NEW, SCANNED, BLOCKED, AUTH, PAID, REJECTED, WAIT = range(7)  # StatusTypeEnum
STATUS_NAMES = ("NEW", "SCANNED", "BLOCKED", "AUTH", "PAID", "REJECTED", "WAIT")
# status -> the statuses it may move to; PAID, REJECTED and BLOCKED are final.
TRANSITIONS: dict[int, frozenset[int]] = {
    NEW: frozenset({SCANNED, BLOCKED, REJECTED}),
    SCANNED: frozenset({AUTH, WAIT, BLOCKED, REJECTED}),
    WAIT: frozenset({AUTH, PAID, REJECTED}),
    AUTH: frozenset({PAID, REJECTED}),
    PAID: frozenset(),
    REJECTED: frozenset(),
    BLOCKED: frozenset(),
}
MAX_AMOUNT = 10**15  # tiyn: anything above is not a purchase


class QrError(OfdError):
    """A QR request or status change that cannot be carried out."""


@dataclass(frozen=True, slots=True)
class QrPayment:
    invoice_id: int
    amount: int | None
    qr_code: str
    status: int


def qr_code_for(
    secret: bytes, base_url: str, system_id: int, invoice_id: int, amount: int | None
) -> str:
    """The payment link the QR encodes: deterministic, with a keyed check the payment side
    verifies, so a forged link for another invoice or amount is recognised."""
    text = f"qr|{system_id}|{invoice_id}|{amount}".encode()
    check = hashlib.blake2b(text, key=secret[:64], digest_size=8).hexdigest()
    shown = "" if amount is None else f"&s={amount // 100}.{amount % 100:02d}"
    return f"{base_url}/pay?d={system_id}&i={invoice_id}{shown}&c={check}"


def _payment(row: asyncpg.Record) -> QrPayment:
    return QrPayment(row["invoice_id"], row["amount"], row["qr_code"], row["status"])


async def generate(
    conn: Conn, system_id: int, invoice_id: int, amount: int | None, qr_code: str, *, timeout: float
) -> QrPayment:
    if amount is not None and amount > MAX_AMOUNT:
        raise QrError(f"qr.amount: {amount} tiyn is not a purchase")
    row = await conn.fetchrow(
        "INSERT INTO qr_payments (system_id, invoice_id, amount, qr_code) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (system_id, invoice_id) DO UPDATE SET updated_at = qr_payments.updated_at"
        " RETURNING invoice_id, amount, qr_code, status",
        system_id,
        invoice_id,
        amount,
        qr_code,
        timeout=timeout,
    )
    assert row is not None  # RETURNING after an insert or a no-op update: always a row
    payment = _payment(row)
    if payment.amount != amount:
        raise QrError(
            f"qr.invoice_id: invoice {invoice_id} has a QR for {payment.amount} tiyn, not {amount}"
        )
    return payment


async def find(conn: Conn, system_id: int, invoice_id: int, *, timeout: float) -> QrPayment | None:
    row = await conn.fetchrow(
        "SELECT invoice_id, amount, qr_code, status FROM qr_payments"
        " WHERE system_id = $1 AND invoice_id = $2",
        system_id,
        invoice_id,
        timeout=timeout,
    )
    return None if row is None else _payment(row)


async def set_status(conn: Conn, system_id: int, invoice_id: int, status: int) -> QrPayment:
    """Moves a payment to `status` (the payment side reporting); refuses moves TRANSITIONS
    does not allow, and unknown invoices."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT invoice_id, amount, qr_code, status FROM qr_payments"
            " WHERE system_id = $1 AND invoice_id = $2 FOR UPDATE",
            system_id,
            invoice_id,
        )
        if row is None:
            raise QrError(f"no QR for invoice {invoice_id} of device {system_id}")
        current = _payment(row)
        if status not in TRANSITIONS.get(current.status, frozenset()):
            raise QrError(
                f"invoice {invoice_id}: {STATUS_NAMES[current.status]} cannot become"
                f" {STATUS_NAMES[status] if 0 <= status < len(STATUS_NAMES) else status}"
            )
        await conn.execute(
            "UPDATE qr_payments SET status = $3, updated_at = now()"
            " WHERE system_id = $1 AND invoice_id = $2",
            system_id,
            invoice_id,
            status,
        )
    return QrPayment(current.invoice_id, current.amount, current.qr_code, status)
