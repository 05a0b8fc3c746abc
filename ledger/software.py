"""The software a device reports (SYSTEM's service.software_information): kept for the control
API's device status, written only when it changes.

Not part of the durable per-request state: the report changes on an upgrade, not per receipt,
so a separate conditional update (and a per-process memory of what was last written) keeps it
off the group commit. A failed write is logged and tried again on the next report; it never
changes the device's answer, which is already durable when this runs.
"""

from typing import Any

import asyncpg
import structlog

from ledger.state_store import DATABASE_ERRORS

log = structlog.get_logger(__name__)

MAX_SOFTWARE_CHARS = 500  # the column's CHECK says the same
MAX_MODULES = 10  # modules named in the summary; the rest are counted
MAX_REMEMBERED = 200_000  # devices whose last written summary is kept in memory

UPDATE_SQL = (
    "UPDATE device_state SET software = $2 WHERE system_id = $1 AND software IS DISTINCT FROM $2"
)


def summary(request: Any) -> str | None:
    """`name version; ...; os os_version` of the request's software report, or None."""
    if not request.HasField("service") or not request.service.HasField("software_information"):
        return None
    info = request.service.software_information
    parts = [f"{m.name} {m.version}" for m in info.module_infos[:MAX_MODULES]]
    if len(info.module_infos) > MAX_MODULES:
        parts.append(f"+{len(info.module_infos) - MAX_MODULES} modules")
    if info.os_family or info.os_version:
        parts.append(f"os {info.os_family} {info.os_version}".strip())
    text = "; ".join(parts)
    return text[:MAX_SOFTWARE_CHARS] or None


class SoftwareSeen:
    def __init__(self, pool: asyncpg.Pool, timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout
        self._written: dict[int, str] = {}

    async def observe(self, device_id: int, request: Any) -> None:
        text = summary(request)
        if text is None or self._written.get(device_id) == text:
            return
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                await conn.execute(UPDATE_SQL, device_id, text, timeout=self._timeout)
        except DATABASE_ERRORS as err:
            log.warning("software report not stored", device_id=device_id, error=repr(err))
            return
        if len(self._written) >= MAX_REMEMBERED and device_id not in self._written:
            self._written.clear()  # only a hint: the UPDATE is conditional anyway
        self._written[device_id] = text
