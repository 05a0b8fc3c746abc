"""The KGD forwarder: every journaled document to the KGD, in order per register, exactly once
from the KGD's point of view.

Sources are the warehouse loader's (ledger/warehouse/loader.py `Source`): a gateway's local
journal (bytes) or a Kafka partition held through a consumer group of the forwarders' own
(`DEFAULT_GROUP`, apart from the loaders'). Each source is worked on its own, one batch at a
time, so no document of a register overtakes an earlier one (a register's documents are in one
source: one partition, keyed by device; one gateway's journal):

1. read up to `batch_documents` records from the source's durable position (kgd_positions in
   PostgreSQL) and turn each into the document the KGD gets: the body the device sent, byte for
   byte, and the OFD's answer fields (ledger/kgd `Document`), never re-encoded;
2. hand the batch to the KGD; it acknowledges every document (accepted, or duplicate: held
   already), idempotent by document identity;
3. only then move the position past the batch (and tell the source, which commits the Kafka
   group's offset for lag tools).

A forwarder killed between 2 and 3 resends the batch when it comes back: the KGD acknowledges the
resend as duplicates and stores nothing twice. A failed batch (KGD down, slow, refusing it) is
kept and resent after a capped exponential backoff with full jitter, while the other sources go
on; nothing moves past it, so nothing is lost, and nothing is skipped even when the KGD refuses
(a document must reach the state: the lag alert calls a person).

On local journals several forwarders may run (one per machine, say): each forwards only the
sources whose PostgreSQL advisory lock it holds, so a journal has one forwarder at a time.

The deadline is measured as the age of the oldest document not yet acknowledged per source (its
gateway receive time; 0 when the source is caught up) and overall; `ForwarderMetrics` exports it
with the backlog and a histogram of receipt-to-KGD delay, and the same figures are written to
kgd_positions for `ofd kgd status`.
"""

import asyncio
import contextlib
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from ledger.kgd import Ack, Acknowledgement, Document, Kgd, KgdError
from ledger.kgd.retry import Backoff
from ledger.warehouse.loader import Source
from ledger.wire import HEADER_SIZE, KNOWN_ENVELOPE_VERSIONS
from ofdproto.journal.v1.record_pb2 import JournalRecord

log = structlog.get_logger(__name__)

DEFAULT_GROUP = "ofd-kgd"
DEFAULT_BATCH_DOCUMENTS = 500
MAX_BATCH_DOCUMENTS = 5_000  # proto/kgd/openapi.yaml: the most one batch may hold
DEFAULT_DEADLINE = 15 * 60.0  # seconds: documents older than this undelivered raise the alert
MAX_ERROR = 500  # characters of an error kept for `ofd kgd status`
# An advisory lock key per local source: one project-wide prefix, the source name's crc32.
LOCK_PREFIX = 0x0FD0_0002


@dataclass(frozen=True, slots=True)
class ForwarderSettings:
    batch_documents: int = DEFAULT_BATCH_DOCUMENTS
    poll_interval: float = 0.2  # seconds between looks at idle sources
    backoff: Backoff = field(default_factory=lambda: Backoff(base=0.2, cap=30.0))
    deadline: float = DEFAULT_DEADLINE
    status_interval: float = 1.0  # seconds between writes of the status to kgd_positions
    exclusive_local: bool = True  # take each local source's advisory lock before forwarding it

    def __post_init__(self) -> None:
        if not 0 < self.batch_documents <= MAX_BATCH_DOCUMENTS:
            raise ValueError(f"forwarder batch must be 1..{MAX_BATCH_DOCUMENTS} documents")
        if not (self.poll_interval > 0 and self.deadline > 0 and self.status_interval > 0):
            raise ValueError("forwarder intervals and deadline must be positive")


class RecordRefused(ValueError):
    """A journal record the forwarder cannot read (an envelope version it does not know)."""


def document_of(payload: bytes) -> Document:
    """The KGD's document from a journal record: the request body exactly as the device sent
    it (the frame minus its header, whose token older envelopes still held), never re-encoded."""
    record = JournalRecord.FromString(payload)
    if record.envelope_version not in KNOWN_ENVELOPE_VERSIONS:
        raise RecordRefused(f"journal envelope version {record.envelope_version} is not known")
    return Document(
        document_id=record.document_id,
        device_id=record.device_id,
        protocol_version=record.protocol_version,
        command=record.command,
        received_at_us=record.received_at_us,
        fiscal_sign=record.fiscal_sign,
        offline=record.is_offline,
        body=record.request_frame[HEADER_SIZE:],
    )


@dataclass(slots=True)
class Batch:
    end: int  # the source position after its last record
    documents: list[Document]  # one per identity, in journal order
    records: int  # journal records it covers (duplicates of an identity included)


@dataclass(slots=True)
class SourceState:
    """What the forwarder holds of one source (read by the metrics thread too: each field is
    replaced whole)."""

    name: str
    unit: str
    position: int
    forwarded: int = 0
    batch: Batch | None = None
    attempts: int = 0
    retry_at: float = 0.0  # monotonic
    oldest_us: int | None = None  # receive time of the oldest document not yet acknowledged
    backlog: int = 0
    last_error: str = ""
    last_error_at: float | None = None  # unix time


@dataclass(slots=True)
class ForwarderStats:
    forwarded: int = 0  # documents acknowledged as accepted
    duplicates: int = 0  # documents acknowledged as held already
    batches: int = 0
    failures: dict[str, int] = field(default_factory=lambda: {"unavailable": 0, "refused": 0})
    delays: list[float] = field(default_factory=list)  # receipt-to-KGD seconds (benchmarks)
    keep_delays: bool = False


class Forwarder:
    """Forwards its sources' documents to the KGD; one task calls `step` or `run`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        kgd: Kgd,
        sources: Callable[[], Sequence[Source]],
        settings: ForwarderSettings | None = None,
        *,
        on_delivered: Callable[[float], None] | None = None,
    ) -> None:
        self._pool = pool
        self._kgd = kgd
        self._sources = sources  # called each step, in a thread (a Kafka member polls there)
        self._settings = settings or ForwarderSettings()
        self._on_delivered = on_delivered  # the delay histogram
        self.states: dict[str, SourceState] = {}
        self.stats = ForwarderStats()
        self._lock_conn: PoolConnectionProxy | None = None
        self._locked: set[str] = set()
        self._status_written = 0.0

    @property
    def settings(self) -> ForwarderSettings:
        return self._settings

    # --- positions (PostgreSQL) ---

    async def read_position(self, name: str) -> int:
        async with self._pool.acquire() as conn:
            position = await conn.fetchval(
                "INSERT INTO kgd_positions (source) VALUES ($1)"
                " ON CONFLICT (source) DO UPDATE SET source = EXCLUDED.source"
                " RETURNING position",
                name,
            )
        return int(position)

    async def _write_position(self, state: SourceState, end: int, forwarded: int) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(
                "UPDATE kgd_positions SET position = $2, forwarded = forwarded + $3,"
                " updated_at = now() WHERE source = $1",
                state.name,
                end,
                forwarded,
            )

    async def _lock(self, source: Source) -> bool:
        """Whether this forwarder may forward a local source: it holds its advisory lock."""
        if source.unit != "bytes" or not self._settings.exclusive_local:
            return True  # Kafka: the consumer group hands each partition to one member
        if source.name in self._locked:
            return True
        if self._lock_conn is None:
            self._lock_conn = await self._pool.acquire()
        key = (LOCK_PREFIX << 32) | zlib.crc32(source.name.encode())
        if await self._lock_conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
            self._locked.add(source.name)
            log.info("kgd_source_locked", source=source.name)
            return True
        return False

    # --- the work ---

    async def _state(self, source: Source) -> SourceState:
        state = self.states.get(source.name)
        if state is None:
            state = SourceState(source.name, source.unit, await self.read_position(source.name))
            self.states[source.name] = state
        return state

    async def step(self) -> int:
        """One batch from (or one retry of) each due source; returns documents acknowledged."""
        sources = [s for s in await asyncio.to_thread(self._sources) if await self._lock(s)]
        for name in self.states.keys() - {s.name for s in sources}:
            del self.states[name]  # revoked or gone: its position is read again if it returns
        now = time.monotonic()
        due: list[tuple[Source, SourceState]] = []
        for source in sources:
            state = await self._state(source)
            if state.retry_at > now:
                continue
            if state.batch is None:
                state.batch = await asyncio.to_thread(self._read, source, state)
            if state.batch is not None:
                due.append((source, state))
        done = await asyncio.gather(*(self._forward(s, st) for s, st in due))
        for source, state in sources_and_states(sources, self.states):
            state.backlog = _backlog(source, state)
        await self._write_status()
        return sum(done)

    def _read(self, source: Source, state: SourceState) -> Batch | None:
        records = source.read(state.position, self._settings.batch_documents)
        if not records:
            state.oldest_us = None
            return None
        seen: set[str] = set()
        documents: list[Document] = []
        for _, payload in records:
            document = document_of(payload)
            if document.document_id not in seen:  # a journaled duplicate: the first one goes
                seen.add(document.document_id)
                documents.append(document)
        state.oldest_us = min(d.received_at_us for d in documents)
        return Batch(records[-1][0], documents, len(records))

    async def _forward(self, source: Source, state: SourceState) -> int:
        batch = state.batch
        assert batch is not None
        try:
            acks = await self._kgd.forward_documents(batch.documents)
            _check_acks(batch, acks)
        except KgdError as err:
            self._failed(state, err)
            return 0
        delivered = time.time()
        await self._write_position(state, batch.end, len(batch.documents))
        await asyncio.to_thread(source.committed, batch.end)
        state.position, state.batch, state.attempts, state.retry_at = batch.end, None, 0, 0.0
        state.oldest_us = None
        state.forwarded += len(batch.documents)
        accepted = sum(1 for a in acks if a.ack is Ack.ACCEPTED)
        self.stats.forwarded += accepted
        self.stats.duplicates += len(acks) - accepted
        self.stats.batches += 1
        for document in batch.documents:
            delay = max(delivered - document.received_at_us / 1e6, 0.0)
            if self._on_delivered is not None:
                self._on_delivered(delay)
            if self.stats.keep_delays:
                self.stats.delays.append(delay)
        return len(batch.documents)

    def _failed(self, state: SourceState, err: KgdError) -> None:
        state.attempts += 1
        delay = self._settings.backoff.delay(state.attempts)
        state.retry_at = time.monotonic() + delay
        state.last_error, state.last_error_at = str(err)[:MAX_ERROR], time.time()
        self.stats.failures["unavailable" if err.retriable else "refused"] += 1
        (log.warning if err.retriable else log.error)(
            "kgd_batch_failed",
            source=state.name,
            documents=len(state.batch.documents) if state.batch else 0,
            attempts=state.attempts,
            retry_in=round(delay, 3),
            error=str(err),
        )

    async def _write_status(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._status_written < self._settings.status_interval:
            return
        self._status_written = now
        rows = [
            (
                s.name,
                None if s.oldest_us is None else s.oldest_us / 1e6,
                s.backlog,
                s.unit,
                s.last_error,
                s.last_error_at,
            )
            for s in list(self.states.values())
        ]
        if not rows:
            return
        async with self._pool.acquire() as conn:
            await conn.executemany(
                "UPDATE kgd_positions SET oldest_unforwarded_at = to_timestamp($2),"
                " backlog = $3, backlog_unit = $4,"
                " last_error = CASE WHEN $5 = '' THEN last_error ELSE $5 END,"
                " last_error_at = coalesce(to_timestamp($6), last_error_at), updated_at = now()"
                " WHERE source = $1",
                rows,
            )

    def oldest_age(self, name: str | None = None) -> float:
        """Seconds the oldest unacknowledged document (of one source, or of all) has waited;
        0 when caught up."""
        now_us = time.time_ns() // 1000
        states = list(self.states.values()) if name is None else [self.states.get(name)]
        ages = [(now_us - s.oldest_us) / 1e6 for s in states if s and s.oldest_us is not None]
        return max(max(ages, default=0.0), 0.0)

    def caught_up(self) -> bool:
        return all(s.batch is None and s.oldest_us is None for s in self.states.values())

    async def run(self, stop: asyncio.Event) -> None:
        """Steps until `stop` is set; waits `poll_interval` whenever nothing was acknowledged."""
        try:
            while not stop.is_set():
                try:
                    busy = await self.step()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                    # The database or a journal hiccup: nothing moved past what the KGD holds.
                    log.warning("kgd_forwarder_step_failed", error=repr(err))
                    busy = 0
                if not busy:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self._settings.poll_interval)
        finally:
            await self.close()

    async def close(self) -> None:
        if self._lock_conn is not None:
            conn, self._lock_conn = self._lock_conn, None
            self._locked.clear()
            await self._pool.release(conn)  # the pool resets it: advisory locks released


def sources_and_states(
    sources: Sequence[Source], states: dict[str, SourceState]
) -> list[tuple[Source, SourceState]]:
    return [(s, states[s.name]) for s in sources if s.name in states]


def _backlog(source: Source, state: SourceState) -> int:
    end = source.end()
    return max(end - state.position, 0) if end is not None else state.backlog


def _check_acks(batch: Batch, acks: Sequence[Acknowledgement]) -> None:
    """Every document of the batch acknowledged, or the batch counts as not delivered."""
    sent = {d.document_id for d in batch.documents}
    acked = {a.document_id for a in acks}
    missing = sent - acked
    if missing:
        raise KgdError(
            f"KGD acknowledged {len(sent) - len(missing)} of {len(sent)} documents"
            f" (missing e.g. {sorted(missing)[0]!r})",
            retriable=True,
        )
