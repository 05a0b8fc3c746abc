"""Group commit: the documents and state changes of concurrent requests become durable together.

One batch is one PostgreSQL transaction and one journal sync. Inside the transaction the
conditional state update runs first (it tells which changes won and takes their row locks), then
the winners' documents are appended to the journal and synced, then the transaction commits.
Only then are the waiting requests released, so a response never leaves before both its document
and the device's new state are durable. If anything fails the transaction rolls back and every
request of the batch is told so (the device gets 254 and retries); a document that reached the
journal of a batch that then failed carries the identity its resend will carry, so the two
collapse downstream.

While one batch is being made durable the next one fills up: no timer is needed for batching.

Each batch loop keeps one pooled connection for as long as it works: taking one from the pool and
giving it back per batch costs a reset round trip (asyncpg runs RESET ALL and more on release)
and a task for the acquire timeout, every batch. After any failure the connection is dropped and
the next batch takes a fresh one, so a broken connection or a half-done transaction never
outlives its batch.
"""

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from ledger.device_state import DeviceState
from ledger.errors import SinkError, StateConflict
from ledger.journal import Journal, JournalEntry
from ledger.state_store import DATABASE_ERRORS, write_states

# Bounds: a batch bigger than this waits for the next round; a queue longer than this sheds load
# (the device is answered 254 at once rather than waiting past its 5 s transaction time).
MAX_BATCH = 1024
MAX_QUEUED = 8192
COMMIT_WORKERS = 2


@dataclass(frozen=True, slots=True)
class CommitSettings:
    max_batch: int = MAX_BATCH
    max_queued: int = MAX_QUEUED
    # Every database call is bounded: a device gives up after 5 s, we answer 254 before that.
    db_timeout: float = 3.0
    # Batches in flight at once; each batch loop holds one pooled connection while it runs.
    workers: int = COMMIT_WORKERS


@dataclass(slots=True)
class _Pending:
    expected_version: int
    state: DeviceState
    entry: JournalEntry | None
    done: asyncio.Future[None]
    queued_at: float  # time.monotonic(), for the journal-lag gauge


class _Lease:
    """The pooled connection a batch loop keeps across its batches."""

    __slots__ = ("_conn", "_pool")

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._conn: PoolConnectionProxy | None = None

    async def connection(self, timeout: float) -> PoolConnectionProxy:
        """The kept connection, or a fresh one from the pool when there is none or asyncpg
        gave it back to the pool itself (it does so when the server ends a connection), as
        acquiring per batch would."""
        if self._conn is not None and not _attached(self._conn):
            self._conn = None
        if self._conn is None:
            self._conn = await self._pool.acquire(timeout=timeout)
        return self._conn

    def close(self) -> None:
        """Closes the connection after a failed batch: whatever state the batch left it in (a
        broken socket, a transaction the rollback could not end) goes with it."""
        conn, self._conn = self._conn, None
        if conn is not None and _attached(conn):
            conn.terminate()

    async def give_back(self, timeout: float) -> None:
        """Returns the connection as the loop stops; one cut off inside a batch (cancelled
        mid-transaction) is closed rather than reset."""
        conn = self._conn
        if conn is None or not _attached(conn) or conn.is_in_transaction():
            self.close()
            return
        self._conn = None
        with contextlib.suppress(*DATABASE_ERRORS):
            # A reset that fails closes the connection itself: nothing is left to do.
            await self._pool.release(conn, timeout=timeout)


def _attached(conn: PoolConnectionProxy) -> bool:
    """Whether `conn` still lends a connection: asyncpg detaches the proxy and takes the holder
    back when the connection is lost, after which every call on it raises InterfaceError."""
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:
        return False


@dataclass(slots=True)
class CommitStats:
    batches: int = 0
    changes: int = 0
    conflicts: int = 0
    failures: int = 0
    shed: int = 0
    last_batch_size: int = 0
    # time.monotonic() of the last batch that failed and of the last that was made durable
    # (0: none yet): a gateway whose writes fail tells its balancer (ingest/metrics.health).
    last_failure_at: float = 0.0
    last_success_at: float = 0.0


class GroupCommitter:
    """Owns the write path of one gateway process; `run` is its task."""

    def __init__(self, pool: asyncpg.Pool, journal: Journal, settings: CommitSettings) -> None:
        self._pool = pool
        self._journal = journal
        self._settings = settings
        # Changes waiting for a batch, bounded by max_queued, and the batch loops waiting for a
        # change: a deque and futures rather than asyncio.Queue, whose put and get are Python
        # code with an Event each, on every request.
        self._waiting: deque[_Pending] = deque()
        self._idle: deque[asyncio.Future[None]] = deque()
        self.stats = CommitStats()
        # Called with (changes, seconds) after every batch: the metrics' histograms.
        # Called after every batch with (changes, seconds to make it durable, each change's
        # seconds in the queue before the batch began): the metrics' stage histograms.
        self.on_batch: Callable[[int, float, list[float]], None] | None = None
        # Batches being made durable, by id: what the lag gauges read at scrape time.
        self._in_flight: dict[int, list[_Pending]] = {}

    async def commit(
        self, expected_version: int, state: DeviceState, entry: JournalEntry | None
    ) -> None:
        """Returns once `state` (and `entry`, if any) are durable.

        Raises StateConflict when the device's state is no longer `expected_version`, and
        SinkError when the batch could not be made durable or the queue is full.
        """
        # Without default factories (a lambda call each): one is made per request.
        done = asyncio.get_running_loop().create_future()
        pending = _Pending(expected_version, state, entry, done, time.monotonic())
        if len(self._waiting) >= self._settings.max_queued:
            self.stats.shed += 1
            raise SinkError("commit queue full: shedding load", retriable=True)
        self._waiting.append(pending)
        while self._idle:  # wake one batch loop (one that was cancelled is skipped)
            wakeup = self._idle.popleft()
            if not wakeup.done():
                wakeup.set_result(None)
                break
        await pending.done

    def backlog(self) -> tuple[int, float]:
        """Changes received but not yet durable (queued or being written), and how long the
        oldest of them has waited, in seconds: the journal's lag behind the devices. Batches
        are taken from the queue in order, so the oldest waiting change heads an in-flight
        batch; with none in flight, the queue is only what arrived since the last batch left."""
        # Read by the metrics thread: list() copies the dict's values in one step under the GIL.
        in_flight = list(self._in_flight.values())
        waiting = len(self._waiting) + sum(len(batch) for batch in in_flight)
        heads = [batch[0].queued_at for batch in in_flight]
        age = time.monotonic() - min(heads) if heads else 0.0
        return waiting, age

    async def run(self) -> None:
        """Runs `settings.workers` batch loops: while one batch waits for its fsync and commit,
        the next is already being written. A device is never in two batches at once (the
        pipeline holds its lock until its commit returns), so concurrent batches touch
        disjoint rows."""
        async with asyncio.TaskGroup() as workers:
            for number in range(self._settings.workers):
                workers.create_task(self._batch_loop(), name=f"group-commit-{number}")

    async def _batch_loop(self) -> None:
        batch: list[_Pending] = []
        lease = _Lease(self._pool)
        try:
            while True:
                waiting = self._waiting
                if not waiting:
                    wakeup = asyncio.get_running_loop().create_future()
                    self._idle.append(wakeup)
                    await wakeup
                    continue  # another loop may have taken what woke this one
                batch = [
                    waiting.popleft() for _ in range(min(len(waiting), self._settings.max_batch))
                ]
                started = time.monotonic()  # the clock of `queued_at`
                self._in_flight[id(batch)] = batch
                try:
                    await self._commit_batch(lease, batch)
                finally:
                    del self._in_flight[id(batch)]
                if self.on_batch is not None:
                    waits = [started - pending.queued_at for pending in batch]
                    self.on_batch(len(batch), time.monotonic() - started, waits)
                batch = []
        except asyncio.CancelledError:
            # Shutting down: nobody may wait forever. A batch cut short rolled back.
            batch += self._waiting
            self._waiting.clear()
            self._fail(batch, SinkError("gateway shutting down", retriable=True))
            raise
        finally:
            await lease.give_back(self._settings.db_timeout)

    async def _commit_batch(self, lease: _Lease, batch: Sequence[_Pending]) -> None:
        self.stats.batches += 1
        self.stats.last_batch_size = len(batch)
        try:
            conn = await lease.connection(self._settings.db_timeout)
            won = await self._write(conn, batch)
        except DATABASE_ERRORS as err:
            failure = SinkError(f"state store: {err!r}", retriable=True)
            failure.__cause__ = err
            self._fail(batch, failure)
            lease.close()
            self.stats.last_failure_at = time.monotonic()
            return
        except SinkError as err:
            self._fail(batch, err)
            lease.close()
            self.stats.last_failure_at = time.monotonic()
            return
        self.stats.last_success_at = time.monotonic()
        for pending in batch:
            if pending.done.done():  # the waiter was cancelled; the write stands regardless
                continue
            if pending.state.system_id in won:
                self.stats.changes += 1
                pending.done.set_result(None)
            else:
                self.stats.conflicts += 1
                pending.done.set_exception(StateConflict(f"device {pending.state.system_id}"))

    async def _write(self, conn: PoolConnectionProxy, batch: Sequence[_Pending]) -> set[int]:
        timeout = self._settings.db_timeout
        async with conn.transaction():
            won = await write_states(
                conn, [(p.expected_version, p.state) for p in batch], timeout=timeout
            )
            entries = [p.entry for p in batch if p.entry is not None and p.state.system_id in won]
            if entries:
                await self._journal.append(entries)
        return won

    def _fail(self, batch: Sequence[_Pending], error: SinkError) -> None:
        self.stats.failures += 1
        for pending in batch:
            if not pending.done.done():
                pending.done.set_exception(error)
