"""Each register's subscription: the operator's switch (devices.subscription_active, which the
session rules answer: DISCONNECTED in 2.0.4, BLOCKED with a text in 2.0.3) and its term.

A term is paid through `paid_until` (a day in Kazakhstan) and renews by `period_months`. The
periodic scan (`scan`, run by every gateway beside the alert scan) carries terms out:

- ending within `ending_days` without auto-renewal: a notice, once per term;
- past its last day with auto-renewal, still switched on: extended by as many periods as reach
  today. There are no payments here: a renewal records what the operator bills elsewhere;
- past its last day without: switched off as the operator's switch does
  (registry.set_subscription: the gateways re-read the device), audited, noticed. It stays off
  (a switch-on by hand included) until the operator sets a new term (`set_term`).

A term of NULL leaves the switch to the operator alone, as before terms existed.
"""

import calendar
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from ledger import notices, registry
from ledger.cabinet_scope import actor, device
from ledger.cabinet_users import Access
from ledger.errors import InvalidRequest, NotFound
from ledger.notices import Kind
from ledger.state_store import Conn

SECTION = "subscriptions"
SCAN_ACTOR = "subscriptions"  # the audit log's actor for what the scan does
MAX_PER_SCAN = 1000  # terms of each kind one scan carries out; the next scan takes the rest
MAX_PERIOD_MONTHS = 120  # the column's CHECK says the same

TERM_COLUMNS = "system_id, subscription_active, paid_until, auto_renew, period_months"
DUE_SQL = f"""
SELECT {TERM_COLUMNS} FROM devices
WHERE paid_until < $1 AND subscription_active AND auto_renew = $2
ORDER BY system_id LIMIT $3 FOR UPDATE SKIP LOCKED
"""
ENDING_SQL = """
SELECT system_id, paid_until, once_key FROM devices d,
     LATERAL (SELECT d.system_id || ':' || d.paid_until AS once_key) term
WHERE paid_until BETWEEN $1 AND $2 AND subscription_active AND NOT auto_renew
  AND NOT EXISTS (SELECT 1 FROM cabinet_notices n
                  WHERE n.kind = 'subscription_ending' AND n.once_key = term.once_key)
ORDER BY system_id LIMIT $3
"""


@dataclass(frozen=True, slots=True)
class Subscription:
    system_id: int
    active: bool  # the switch: off, the register is refused
    paid_until: date | None  # None: no term
    auto_renew: bool
    period_months: int


@dataclass(frozen=True, slots=True)
class Scanned:
    ending: int
    renewed: int
    lapsed: int


def add_months(day: date, months: int) -> date:
    """The same day `months` later, or the month's last day when it has no such day."""
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def renewed_until(paid_until: date, period_months: int, today: date) -> date:
    """The term's new last day: whole periods after `paid_until`, the first not before today."""
    periods = 1
    while add_months(paid_until, periods * period_months) < today:
        periods += 1
    return add_months(paid_until, periods * period_months)


async def terms_of(conn: Conn, system_ids: Sequence[int]) -> dict[int, Subscription]:
    rows = await conn.fetch(
        f"SELECT {TERM_COLUMNS} FROM devices WHERE system_id = ANY($1::bigint[])",
        list(system_ids),
    )
    return {row["system_id"]: Subscription(*row) for row in rows}


async def set_term(
    conn: Conn,
    system_id: int,
    *,
    paid_until: date | None,
    period_months: int,
    auto_renew: bool,
    today: date,
    by: str,
) -> Subscription:
    """The operator's: a register's term. One paid through today or later switches the
    subscription on (that is what paying means); one already past leaves the switch to the
    next scan."""
    if not 1 <= period_months <= MAX_PERIOD_MONTHS:
        raise InvalidRequest(f"a period has 1 to {MAX_PERIOD_MONTHS} months")
    async with conn.transaction():
        done = await conn.fetchval(
            "UPDATE devices SET paid_until = $2, period_months = $3, auto_renew = $4"
            " WHERE system_id = $1 RETURNING system_id",
            system_id,
            paid_until,
            period_months,
            auto_renew,
        )
        if done is None:
            raise NotFound(f"no device with system id {system_id}")
        if paid_until is not None and paid_until >= today:
            await registry.set_subscription(conn, system_id, True)
        await registry.audit(
            conn,
            by,
            "SetSubscriptionTerm",
            system_id,
            paid_until=None if paid_until is None else paid_until.isoformat(),
            period_months=period_months,
            auto_renew=auto_renew,
        )
    return (await terms_of(conn, [system_id]))[system_id]


async def set_auto_renew(conn: Conn, access: Access, system_id: int, on: bool) -> Subscription:
    """The cabinet's: auto-renewal of a register the user reaches, audited."""
    async with conn.transaction():
        await device(conn, access, system_id, SECTION)
        await conn.execute("UPDATE devices SET auto_renew = $2 WHERE system_id = $1", system_id, on)
        await registry.audit(conn, actor(access), "SetAutoRenew", system_id, auto_renew=on)
    return (await terms_of(conn, [system_id]))[system_id]


async def scan(conn: Conn, today: date, ending_days: int, *, timeout: float) -> Scanned:
    """Notices the terms ending, renews and switches off the terms past (at most MAX_PER_SCAN
    of each); several gateways may scan at once: each term is taken by one."""
    async with conn.transaction():
        due = await conn.fetch(DUE_SQL, today, True, MAX_PER_SCAN, timeout=timeout)
        renewals = [
            (row["system_id"], renewed_until(row["paid_until"], row["period_months"], today))
            for row in due
        ]
        await conn.executemany(
            "UPDATE devices SET paid_until = $2 WHERE system_id = $1", renewals, timeout=timeout
        )
        for system_id, until in renewals:
            await registry.audit(
                conn, SCAN_ACTOR, "SubscriptionRenewed", system_id, paid_until=until.isoformat()
            )
        await notices.post(
            conn,
            Kind.SUBSCRIPTION_RENEWED,
            [(system_id, until.isoformat(), None) for system_id, until in renewals],
            timeout=timeout,
        )
    async with conn.transaction():
        lapsed = await conn.fetch(DUE_SQL, today, False, MAX_PER_SCAN, timeout=timeout)
        for row in lapsed:
            await registry.set_subscription(conn, row["system_id"], False)
            await registry.audit(
                conn,
                SCAN_ACTOR,
                "SubscriptionLapsed",
                row["system_id"],
                paid_until=row["paid_until"].isoformat(),
            )
        await notices.post(
            conn,
            Kind.SUBSCRIPTION_LAPSED,
            [(row["system_id"], row["paid_until"].isoformat(), None) for row in lapsed],
            timeout=timeout,
        )
    ending = await conn.fetch(
        ENDING_SQL, today, today + timedelta(days=ending_days), MAX_PER_SCAN, timeout=timeout
    )
    await notices.post(
        conn,
        Kind.SUBSCRIPTION_ENDING,
        [(r["system_id"], r["paid_until"].isoformat(), r["once_key"]) for r in ending],
        timeout=timeout,
    )
    return Scanned(len(ending), len(renewals), len(lapsed))
