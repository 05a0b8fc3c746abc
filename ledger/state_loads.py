"""Group loads: device states read from PostgreSQL many at a time, as the group commit writes.

A gateway reads a device's state when the device first talks to it (and to re-check a refusal
or a retry). One by one that is a pooled connection and a round trip per device; after a
regional outage thousands of devices reconnect within a second and their first answers queue
behind the pool (measured: 1,024 new devices' first answers up to 2.8 s late, with a pool of 8).
Here every load that arrives while a round is running joins the next round: one query with
`system_id = ANY(...)` for up to MAX_LOAD_BATCH devices. At most LOAD_WORKERS rounds run at once,
so loads never take more connections than that from the pool the group commit also uses.
"""

import asyncio

import asyncpg

from ledger.device_state import DeviceState
from ledger.errors import SinkError
from ledger.state_store import DATABASE_ERRORS, load_states

MAX_LOAD_BATCH = 1024
LOAD_WORKERS = 2

# device -> the futures of the loads waiting for it (a device may be asked for twice)
Waiters = dict[int, list[asyncio.Future[DeviceState | None]]]


class GroupLoads:
    def __init__(self, pool: asyncpg.Pool, *, timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout
        self._waiting: Waiters = {}
        # Counted apart from the tasks: a round that found nothing left to load stops counting
        # at once, before its task is done, so a load arriving then starts a round of its own.
        self._active = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def load(self, device_id: int) -> DeviceState | None:
        """The device's state as stored now (None: no such device). Raises SinkError."""
        future: asyncio.Future[DeviceState | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(device_id, []).append(future)
        if self._active < LOAD_WORKERS:
            self._active += 1
            task = asyncio.create_task(self._run_rounds(), name="state-loads")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _run_rounds(self) -> None:
        try:
            while self._waiting:
                ids = list(self._waiting)[:MAX_LOAD_BATCH]
                waiters = {device_id: self._waiting.pop(device_id) for device_id in ids}
                try:
                    states = await self._read(ids)
                except SinkError as err:
                    _settle(waiters, error=err)
                    continue
                except BaseException as err:  # cancelled (shutting down) or a bug: none hangs
                    failure = SinkError(f"state load stopped: {err!r}", retriable=True)
                    _settle(waiters, error=failure)
                    _settle(self._waiting, error=failure)
                    self._waiting.clear()
                    raise
                _settle(waiters, states=states)
        finally:
            self._active -= 1

    async def _read(self, ids: list[int]) -> dict[int, DeviceState]:
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                return await load_states(conn, ids, timeout=self._timeout)
        except DATABASE_ERRORS as err:
            raise SinkError(f"state store: {err!r}", retriable=True) from err


def _settle(
    waiters: Waiters,
    *,
    states: dict[int, DeviceState] | None = None,
    error: SinkError | None = None,
) -> None:
    for device_id, futures in waiters.items():
        for future in futures:
            if future.done():  # its request was cancelled meanwhile
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(None if states is None else states.get(device_id))
