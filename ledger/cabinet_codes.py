"""One-time codes: an act held until the person confirms it with a code sent to them.

`issue` keeps the act's payload under a random ticket (the browser carries it between the two
steps) and returns the ticket and a six-digit code for the caller to send over the notification
channel. `redeem` gives the payload back once, for the right code, before the code expires;
each wrong code counts, and at MAX_ATTEMPTS the ticket is gone, so a code is guessed with
probability at most MAX_ATTEMPTS in a million per ticket (and tickets are limited per address
by the cabinet). Only the ticket's SHA-256 and an HMAC of the code keyed by the ticket are
stored: a leaked table confirms nothing.
"""

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ledger.errors import InvalidRequest, NotFound
from ledger.state_store import Conn

CODE_DIGITS = 6
TICKET_BYTES = 24
MAX_TICKET = 64  # characters: a longer ticket is none of ours and is not hashed
MAX_ATTEMPTS = 5
DEFAULT_LIFETIME = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class Issued:
    ticket: str  # goes back to the browser that started the act
    code: str  # goes to the person, over the notification channel only


def _ticket_hash(ticket: str) -> bytes:
    return hashlib.sha256(ticket.encode()).digest()


def _code_mac(ticket: str, code: str) -> bytes:
    return hmac.new(ticket.encode(), code.encode(), hashlib.sha256).digest()


async def issue(
    conn: Conn, purpose: str, payload: dict[str, Any], lifetime: timedelta = DEFAULT_LIFETIME
) -> Issued:
    ticket = secrets.token_urlsafe(TICKET_BYTES)
    code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
    await conn.execute(
        "INSERT INTO cabinet_codes (ticket_hash, purpose, code_mac, payload, expires_at)"
        " VALUES ($1, $2, $3, $4::jsonb, now() + $5::interval)",
        _ticket_hash(ticket),
        purpose,
        _code_mac(ticket, code),
        json.dumps(payload, ensure_ascii=False),
        lifetime,
    )
    # Expired tickets of anyone go now and then: bounded work, no background task.
    await conn.execute(
        "DELETE FROM cabinet_codes WHERE ctid IN"
        " (SELECT ctid FROM cabinet_codes WHERE expires_at < now() LIMIT 100)"
    )
    return Issued(ticket, code)


async def redeem(conn: Conn, purpose: str, ticket: str, code: str) -> dict[str, Any]:
    """The payload of `ticket`, once, for the right code. NotFound: no such live ticket (unknown,
    expired, used or spent on wrong codes); InvalidRequest: a wrong code, with what is left."""
    if not ticket or len(ticket) > MAX_TICKET:
        raise NotFound("the code has expired or was used: start again")
    ticket_hash = _ticket_hash(ticket)
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT code_mac, payload, attempts FROM cabinet_codes WHERE ticket_hash = $1"
            " AND purpose = $2 AND expires_at > now() FOR UPDATE",
            ticket_hash,
            purpose,
        )
        if row is None:
            raise NotFound("the code has expired or was used: start again")
        if hmac.compare_digest(bytes(row["code_mac"]), _code_mac(ticket, code.strip())):
            await conn.execute("DELETE FROM cabinet_codes WHERE ticket_hash = $1", ticket_hash)
            found: dict[str, Any] = json.loads(row["payload"])
            return found
        left = MAX_ATTEMPTS - row["attempts"] - 1
        if left <= 0:
            await conn.execute("DELETE FROM cabinet_codes WHERE ticket_hash = $1", ticket_hash)
        else:
            await conn.execute(
                "UPDATE cabinet_codes SET attempts = attempts + 1 WHERE ticket_hash = $1",
                ticket_hash,
            )
    if left <= 0:
        raise NotFound("wrong code, and no attempts are left: start again")
    raise InvalidRequest(f"wrong code: {left} attempts left")
