"""The warehouse loader: journal records into ClickHouse in batches, exactly once by identity.

A source (a local journal directory, a Kafka partition) yields records with the position after
each. One step of the loader, per source:

1. read up to `batch_records` records from the position the warehouse holds for that source,
   and store the batch's intent (its range and load time) in `loader_intents`;
2. decode them into `documents` rows, keep the first of each (device_id, document_id) in the
   batch, and drop the identities the warehouse already holds;
3. insert the rest in one INSERT (its deduplication token names the source and the range);
4. only then write the source's new position into `loader_positions`.

A crash between 3 and 4 (or inside 3, between `documents` and its materialized views) leaves the
intent ahead of the position: the next loader replays exactly that batch, rebuilding the same
rows under the same token, so ClickHouse drops them wherever they landed and adds them where the
crash cut them off; the replay adds no duplicate and loses no view row. A document journaled
twice (answered 254, resent later) has one identity, so its second copy is dropped by step 2,
wherever it arrives. The per-batch check is one indexed SELECT: the
loader, not ClickHouse merges, keeps the materialized views' aggregates exact.

Sources come and go (a consumer group moves Kafka partitions between loaders): a source missing
from one step's list is forgotten, and its position is read from the warehouse again when it
comes back, since another loader may have moved it meanwhile.

Lag is the source's end minus the loader's position, after each step: records for a Kafka
partition (its high watermark), bytes for a local journal (the end of its last segment, a record
being written included).

Freshness (acknowledgement to visibility) is observed per document once its insert returned:
now minus the gateway's receive time, which precedes the acknowledgement by the group commit
(milliseconds), so the figure is a slight over-estimate, never an under-estimate.
"""

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import structlog
from prometheus_client import Counter, Gauge, Histogram

from ledger.journal import JournalCorrupt
from ledger.journal.local import SEGMENT_SUFFIX, JournalReader
from ledger.warehouse.backends import Row, Warehouse
from ledger.warehouse.rows import decode_record, document_row, format_micros

log = structlog.get_logger(__name__)

DEFAULT_BATCH_RECORDS = 5_000
MAX_BATCH_RECORDS = 100_000
DEFAULT_POLL_INTERVAL = 0.2  # seconds between looks at an idle source
# Identities looked up per SELECT: about 40 bytes each, well inside max_query_size.
HELD_CHECK_CHUNK = 2_000
FRESHNESS_SAMPLES = 100_000  # the loader keeps this many recent freshness values (benchmarks)
# Tests set this to N: the process exits hard right after the N-th insert, before its position
# is written, exactly where a crash hurts most.
CRASH_AFTER_INSERT_ENV = "OFD_LOADER_CRASH_AFTER_INSERT"
CRASH_EXIT_CODE = 137

FRESHNESS = Histogram(
    "ofd_warehouse_freshness_seconds",
    "From the gateway receiving a document to the document being visible in ClickHouse",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
LOADED = Counter("ofd_warehouse_documents_loaded_total", "Documents inserted into the warehouse")
DUPLICATES = Counter(
    "ofd_warehouse_duplicates_dropped_total",
    "Journal records whose document identity the warehouse already held",
)
LAG = {
    "records": Gauge(
        "ofd_warehouse_lag_records",
        "Records of a Kafka partition past the loader's position (high watermark minus position)",
        ["source"],
    ),
    "bytes": Gauge(
        "ofd_warehouse_lag_bytes",
        "Bytes of a local journal past the loader's position",
        ["source"],
    ),
}


@dataclass(frozen=True, slots=True)
class LoaderSettings:
    batch_records: int = DEFAULT_BATCH_RECORDS
    poll_interval: float = DEFAULT_POLL_INTERVAL

    def __post_init__(self) -> None:
        if not 0 < self.batch_records <= MAX_BATCH_RECORDS:
            raise ValueError(f"loader batch must be 1..{MAX_BATCH_RECORDS} records")
        if not self.poll_interval > 0:
            raise ValueError("loader poll interval must be positive")


class Source(Protocol):
    """Where records come from; `name` keys the position stored in the warehouse."""

    name: str
    unit: str  # of positions, a key of LAG: "records" or "bytes"

    def read(self, position: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to `limit` (position after the record, payload) pairs from `position`."""

    def committed(self, position: int) -> None:
        """Told after the warehouse stored `position` (a Kafka source may commit its offset)."""

    def end(self) -> int | None:
        """The source's end as last seen, for the lag gauge; None when not known."""


class LocalJournalSource:
    """One gateway's local journal directory."""

    unit = "bytes"

    def __init__(self, directory: Path) -> None:
        self.name = f"local:{directory.name}"
        self._directory = directory
        self._reader = JournalReader(directory)

    def read(self, position: int, limit: int) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        try:
            for after, entry in self._reader.read(position):
                out.append((after, entry.payload))
                if len(out) >= limit:
                    break
        except JournalCorrupt:
            if not out:
                raise  # the damage is where this source stands: every step says so, loudly
            # The records before the damage are loaded; the next read starts at it and raises.
        return out

    def committed(self, position: int) -> None:
        pass

    def end(self) -> int | None:
        # Segments are named by the position of their first byte, zero-padded: the last name
        # sorts last.
        segments = sorted(self._directory.glob(f"*{SEGMENT_SUFFIX}"))
        if not segments or not segments[-1].stem.isdigit():
            return None
        try:
            return int(segments[-1].stem) + segments[-1].stat().st_size
        except FileNotFoundError:
            return None  # trimmed away under us: the next step looks again


def local_sources(journal_root: Path) -> list[Source]:
    """A source per gateway journal under `journal_root` (data_dir/journal/<gateway id>)."""
    if not journal_root.is_dir():
        return []
    return [LocalJournalSource(p) for p in sorted(journal_root.iterdir()) if p.is_dir()]


# Every source's position, as an analyst may ask it (`ofd query` compares it with the journal).
POSITIONS_SQL = (
    "SELECT source, toUInt64(argMax(position, committed_at)) AS position"
    " FROM ofd.loader_positions GROUP BY source"
)


def not_loaded(journal_root: Path, positions: dict[str, int], cap: int) -> int:
    """Records of the local journals past the warehouse's positions (counted up to `cap`)."""
    count = 0
    for source in local_sources(journal_root):
        for _ in source.read(positions.get(source.name, 0), cap - count):
            count += 1
        if count >= cap:
            break
    return count


def read_position(warehouse: Warehouse, source: str) -> int:
    rows = warehouse.select(
        f"SELECT toUInt64(argMax(position, committed_at)) AS position, count() AS n"
        f" FROM {warehouse.database}.loader_positions WHERE source = {_quote(source)}"
    )
    return int(rows[0]["position"]) if rows and int(rows[0]["n"]) else 0


def write_position(warehouse: Warehouse, source: str, position: int) -> None:
    now_us = time.time_ns() // 1000
    warehouse.insert(
        "loader_positions",
        [{"source": source, "position": position, "committed_at": format_micros(now_us)}],
        # A position can recur (a Kafka log lost and refilled): the time keeps tokens apart.
        token=f"pos-{source}-{position}-{now_us}".replace("'", ""),
    )


@dataclass(frozen=True, slots=True)
class Intent:
    """The batch [start, end) of a source about to be inserted, and its rows' load time."""

    start: int
    end: int
    loaded_at_us: int


def read_intent(warehouse: Warehouse, source: str) -> Intent | None:
    rows = warehouse.select(
        "SELECT argMax(start, committed_at) AS start, argMax(end, committed_at) AS end,"
        " argMax(loaded_at_us, committed_at) AS loaded_at_us, count() AS n"
        f" FROM {warehouse.database}.loader_intents WHERE source = {_quote(source)}"
    )
    if not rows or not int(rows[0]["n"]):
        return None
    row = rows[0]
    return Intent(int(row["start"]), int(row["end"]), int(row["loaded_at_us"]))


def write_intent(warehouse: Warehouse, source: str, intent: Intent) -> None:
    now_us = time.time_ns() // 1000
    row = {
        "source": source,
        "start": intent.start,
        "end": intent.end,
        "loaded_at_us": intent.loaded_at_us,
        "committed_at": format_micros(now_us),
    }
    warehouse.insert("loader_intents", [row], token=f"intent-{source}-{now_us}".replace("'", ""))


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def held_identities(
    warehouse: Warehouse, rows: Sequence[Row], *, except_loaded_at: str | None = None
) -> set[tuple[int, str]]:
    """The (device_id, document_id) pairs of `rows` that `documents` already holds, leaving out
    rows loaded at `except_loaded_at` (those of the batch being replayed)."""
    replayed = "" if except_loaded_at is None else f" AND loaded_at != {_quote(except_loaded_at)}"
    held: set[tuple[int, str]] = set()
    # In chunks: ClickHouse parses at most max_query_size (256 KiB) of a SELECT.
    for i in range(0, len(rows), HELD_CHECK_CHUNK):
        chunk = rows[i : i + HELD_CHECK_CHUNK]
        devices = ",".join(sorted({str(int(r["device_id"])) for r in chunk}))
        pairs = ",".join(f"({int(r['device_id'])},{_quote(r['document_id'])})" for r in chunk)
        found = warehouse.select(
            f"SELECT DISTINCT device_id, document_id FROM {warehouse.database}.documents"
            f" WHERE device_id IN ({devices}) AND (device_id, document_id) IN ({pairs}){replayed}"
        )
        held.update((int(r["device_id"]), str(r["document_id"])) for r in found)
    return held


@dataclass(slots=True)
class BatchResult:
    records: int
    inserted: int
    duplicates: int


class Loader:
    """Moves records from its sources into the warehouse; one thread calls `step` or `run`."""

    def __init__(
        self,
        warehouse: Warehouse,
        sources: Callable[[], Sequence[Source]],
        settings: LoaderSettings | None = None,
        *,
        after_insert: Callable[[], None] | None = None,
    ) -> None:
        self._warehouse = warehouse
        self._after_insert = after_insert  # tests: a crash between insert and position
        self._sources = sources  # called each step: gateways (journals) may appear later
        self._settings = settings or LoaderSettings()
        self._positions: dict[str, int] = {}
        self._intents: dict[str, Intent | None] = {}  # read once per source, then kept here
        self._lag_units: dict[str, str] = {}  # the lag gauge each source last set
        self._inserts = 0
        crash = os.environ.get(CRASH_AFTER_INSERT_ENV, "")
        self._crash_after = int(crash) if crash.isdigit() else 0
        self.freshness: deque[float] = deque(maxlen=FRESHNESS_SAMPLES)
        self.loaded = 0

    def _position(self, source: Source) -> int:
        if source.name not in self._positions:
            self._positions[source.name] = read_position(self._warehouse, source.name)
        return self._positions[source.name]

    def _replayed(
        self, source: Source, start: int, records: Sequence[tuple[int, bytes]]
    ) -> tuple[Sequence[tuple[int, bytes]], Intent | None]:
        """The records cut to the batch a crash interrupted, and its intent; else as given."""
        if source.name not in self._intents:
            self._intents[source.name] = read_intent(self._warehouse, source.name)
        intent = self._intents[source.name]
        if intent is None or intent.start != start:
            return records, None
        cut = [r for r in records if r[0] <= intent.end]
        if cut and cut[-1][0] == intent.end:
            return cut, intent
        end = source.end()
        if cut and cut[-1][0] < intent.end and (end is None or end >= intent.end):
            # The rest of the interrupted batch is there but not read yet (a Kafka partition
            # just assigned buffers what it has fetched so far). Loading this much as a new
            # batch would drop the documents the crash already put into `documents` as held,
            # and so never add them to the views the crash cut off: wait for the whole batch.
            return [], intent
        return records, None  # the log changed under it (Kafka lost it): a new batch

    def load(self, source: Source, records: Sequence[tuple[int, bytes]]) -> BatchResult:
        """Inserts what of `records` is new, then stores the position after the last one.

        The batch's intent (range and load time) is stored first. Replaying an interrupted
        batch rebuilds the very rows it tried to insert (its own earlier rows do not count as
        held) and inserts them under the same token: ClickHouse drops them from every table
        that has them and adds them to a materialized view the crash cut off.
        """
        start = self._position(source)
        records, replay = self._replayed(source, start, records)
        if not records:
            return BatchResult(0, 0, 0)  # the interrupted batch is not all readable yet
        end = records[-1][0]
        if replay is None:
            replay_of = None
            intent = Intent(start, end, time.time_ns() // 1000)
            write_intent(self._warehouse, source.name, intent)
            self._intents[source.name] = intent
        else:
            intent = replay
            replay_of = format_micros(intent.loaded_at_us)
        batch: dict[tuple[int, str], Row] = {}
        for _, payload in records:
            row = document_row(decode_record(payload), intent.loaded_at_us)
            batch.setdefault((row["device_id"], row["document_id"]), row)
        held = held_identities(self._warehouse, list(batch.values()), except_loaded_at=replay_of)
        rows = [row for key, row in batch.items() if key not in held]
        self._warehouse.insert("documents", rows, token=f"{source.name}-{start}-{end}")
        visible = time.time()
        self._inserts += 1
        if self._crash_after and self._inserts >= self._crash_after:
            os._exit(CRASH_EXIT_CODE)  # the injected crash: inserted, position not stored
        if self._after_insert is not None:
            self._after_insert()
        write_position(self._warehouse, source.name, end)
        self._positions[source.name] = end
        source.committed(end)
        for row in rows:
            age = visible - _seconds(row["received_at"])
            FRESHNESS.observe(age)
            self.freshness.append(age)
        duplicates = len(records) - len(rows)
        LOADED.inc(len(rows))
        DUPLICATES.inc(duplicates)
        self.loaded += len(rows)
        return BatchResult(len(records), len(rows), duplicates)

    def step(self) -> int:
        """One batch from each source that has records; returns how many records were read."""
        sources = self._sources()
        self._forget_all_but({source.name for source in sources})
        total = 0
        for source in sources:
            records = source.read(self._position(source), self._settings.batch_records)
            if records:
                result = self.load(source, records)
                total += result.records
            self._report_lag(source)
        return total

    def _forget_all_but(self, names: set[str]) -> None:
        for name in self._positions.keys() - names:
            del self._positions[name]
        for name in self._intents.keys() - names:
            del self._intents[name]
        for name in self._lag_units.keys() - names:
            LAG[self._lag_units.pop(name)].remove(name)  # its new holder reports it

    def _report_lag(self, source: Source) -> None:
        end = source.end()
        if end is None:
            return
        # A low end (a broker that lost its log) is no lag: the position follows it back.
        LAG[source.unit].labels(source=source.name).set(max(end - self._position(source), 0))
        self._lag_units[source.name] = source.unit

    def run(self, stop: threading.Event) -> None:
        """Steps until `stop` is set; waits `poll_interval` whenever every source was idle."""
        while not stop.is_set():
            try:
                busy = self.step()
            except Exception:
                # A warehouse or source hiccup: nothing moved past what was inserted; try again.
                log.exception("warehouse_load_failed")
                busy = 0
            if not busy:
                stop.wait(self._settings.poll_interval)

    def drain(self) -> Iterator[int]:
        """Steps until every source is idle (tests and the demo); yields each step's count."""
        while count := self.step():
            yield count


def _seconds(micros_text: str) -> float:
    parsed = datetime.strptime(micros_text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
    return parsed.timestamp()
