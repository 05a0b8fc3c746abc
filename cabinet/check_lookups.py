"""The public check's warehouse reads, gathered: checks that arrive while others are being read
go to the warehouse together, in one engine call (reports.receipt_checks_report).

A chDB query costs about a millisecond of the engine's before it reads anything, as much as
the point read a check needs, and through the query service a round trip more; gathered, a
busy cabinet pays them once for several checks. Nobody waits for a batch to fill: a reader takes
whatever is waiting the moment it is free, so a lone check goes at once, and under load the
batches grow by themselves. Each check is handed the row of its own key only, so a batch tells
none of them anything of another's; a failed read fails each check of its batch as it would
have failed alone.
"""

import asyncio
from dataclasses import dataclass
from typing import Any

from cabinet.warehouse import Documents, named_report
from ledger.warehouse.backends import Row
from ledger.warehouse.reports import MAX_CHECKS, check_key

# Batches read at once: the query service answers two queries at a time (QueryLimits), and
# the other one is the cabinet's pages'.
READERS = 1
MAX_WAITING = 1024  # checks queued for a reader; past it a check waits for room


@dataclass(frozen=True, slots=True)
class _Waiting:
    params: dict[str, Any]
    key: str
    answer: asyncio.Future[list[Row]]


class CheckLookups:
    """`receipt(params)`: what reports.receipt_check_report answers for `params`, read
    together with the checks waiting beside it; `run()` reads them until cancelled."""

    def __init__(
        self, documents: Documents, *, readers: int = READERS, max_batch: int = MAX_CHECKS
    ) -> None:
        self._documents = documents
        self._readers = readers
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Waiting] = asyncio.Queue(MAX_WAITING)

    async def receipt(self, params: dict[str, Any]) -> list[Row]:
        """The receipt a QR code's `params` name (a list of one), or no row; raises as the
        warehouse read does (cabinet.warehouse.WarehouseUnavailable)."""
        answer: asyncio.Future[list[Row]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Waiting(params, check_key(params), answer))
        return await answer

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for n in range(self._readers):
                group.create_task(self._read(), name=f"check-lookups-{n}")

    async def _read(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            checks = {"checks": [waiting.params for waiting in batch]}
            try:
                rows = await self._documents.run(named_report, "receipt_checks", checks)
            except Exception as err:  # the warehouse's failure is each check's answer
                for waiting in batch:
                    if not waiting.answer.done():  # its request may be gone
                        waiting.answer.set_exception(err)
                continue
            found = {str(row["key"]): row["receipt"] for row in rows}
            for waiting in batch:
                if not waiting.answer.done():
                    mine = found.get(waiting.key)
                    waiting.answer.set_result([] if mine is None else [mine])
