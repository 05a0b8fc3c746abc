"""The cabinet's periodic scan, run by every gateway beside the alert scan: subscription terms
carried out (ledger/subscriptions.py: renewed, lapsed, noticed when ending) and the Z report
mismatches of closed shifts noticed (ledger/notices.py), off the request path."""

import asyncio
from datetime import datetime

import asyncpg
import structlog

from ledger import notices, subscriptions
from ledger.state_store import DATABASE_ERRORS
from ledger.wire import KZ_TIME

log = structlog.get_logger(__name__)

SCAN_TIMEOUT = 10.0  # seconds one statement of a scan may take


async def scan_once(pool: asyncpg.Pool, ending_days: int) -> subscriptions.Scanned:
    # A term's days are Kazakhstan's, wherever the gateway runs.
    today = datetime.now(KZ_TIME).date()
    async with pool.acquire(timeout=SCAN_TIMEOUT) as conn:
        scanned = await subscriptions.scan(conn, today, ending_days, timeout=SCAN_TIMEOUT)
        await notices.notice_z_mismatches(conn, timeout=SCAN_TIMEOUT)
    if scanned.renewed or scanned.lapsed:
        log.info("subscriptions_scanned", renewed=scanned.renewed, lapsed=scanned.lapsed)
    return scanned


async def scan_forever(pool: asyncpg.Pool, ending_days: int, interval: float) -> None:
    """Runs `scan_once` every `interval` seconds until cancelled; a failed scan is logged and
    the next one tries again."""
    while True:
        try:
            await scan_once(pool, ending_days)
        except DATABASE_ERRORS as err:
            log.warning("notice scan failed", error=repr(err))
        await asyncio.sleep(interval)
