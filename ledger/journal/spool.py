"""Kafka with a local spool: a broker outage does not stop the gateway acknowledging documents.

`ofd serve --journal kafka --kafka-outage spool`. Each batch goes to Kafka as usual; when Kafka
fails it (no acknowledgement within the delivery timeout, a produce error), the batch is made
durable in a local journal instead (DATA_DIR/spool/<gateway id>, segment files with checksums
and an fsync per batch), and the answer goes out. From then on every batch goes to the spool,
not to Kafka, until a background task has replayed the whole spool to Kafka in order: so no
device's later document can reach the topic before an earlier one, and the answers never wait
for a broker that is down (only the batch that found it down waited its delivery timeout).

Draining ends under the lock spool appends take: the replayer copies what is left while appends
wait, then switches back to Kafka and empties the spool, so nothing is appended to a spool that
nobody will replay. Where the replay has got to is kept in a file beside the spool, written
after each replayed chunk without fsync: a lost position replays a chunk twice, and a document
journaled twice has one identity, so the warehouse keeps it once (ledger/warehouse/loader.py).
A gateway stopped while spooling replays the rest when it starts again.
"""

import asyncio
import contextlib
import itertools
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from ledger.errors import SinkError
from ledger.journal import Journal, JournalEntry
from ledger.journal.local import SEGMENT_SUFFIX, JournalReader, LocalJournal

log = structlog.get_logger(__name__)

REPLAY_CHUNK = 1024  # records per replayed Kafka batch: one acknowledgement wait each
RETRY_MIN = 0.5  # seconds before the first replay retry of a broker still down
RETRY_MAX = 10.0  # capped exponential backoff, with jitter
POSITION_FILE = "REPLAYED"


@dataclass(slots=True)
class SpoolStats:
    spooled: int = 0  # records made durable in the spool instead of Kafka
    replayed: int = 0  # records copied from the spool to Kafka
    outages: int = 0  # times Kafka failed a batch and spooling began


class SpoolingJournal:
    """A `Journal` that is `kafka` while it answers and its local spool while it does not."""

    def __init__(self, kafka: Journal, spool_dir: Path) -> None:
        self._kafka = kafka
        self._dir = spool_dir
        self._spool = LocalJournal(spool_dir)  # takes the directory's lock: one writer
        self.recovered_bytes_cut = self._spool.recovered_bytes_cut  # a torn tail, for the metrics
        self._replayed = _read_position(spool_dir / POSITION_FILE)
        self._lock = asyncio.Lock()  # spool appends, and the last steps of a drain
        self._closed = False
        self.stats = SpoolStats()
        # A spool left by a previous run is replayed first, before anything new reaches Kafka.
        self._spooling = self._spool.end_position > self._replayed
        self._wake = asyncio.Event()
        if self._spooling:
            log.warning("kafka_spool_found", backlog_bytes=self.backlog_bytes)
            self._wake.set()
        self._replayer = asyncio.get_running_loop().create_task(
            self._replay_loop(), name="journal-spool-replay"
        )

    @property
    def backlog_bytes(self) -> int:
        """Spooled bytes not yet replayed to Kafka."""
        return self._spool.end_position - self._replayed

    @property
    def spooling(self) -> bool:
        return self._spooling

    async def append(self, entries: Sequence[JournalEntry]) -> None:
        if self._closed:
            raise SinkError("journal is closed", retriable=False)
        while True:
            if not self._spooling:
                try:
                    await self._kafka.append(entries)
                except SinkError as err:
                    if not err.retriable:
                        raise  # the batch itself is bad: a spool would not take it either
                    self._begin_spooling(err)
                else:
                    return
            async with self._lock:
                if self._spooling:
                    await self._spool.append(entries)
                    self.stats.spooled += len(entries)
                    self._wake.set()
                    return
            # The spool was drained while this batch waited for the lock: Kafka again.

    def _begin_spooling(self, err: SinkError) -> None:
        if not self._spooling:
            self._spooling = True
            self.stats.outages += 1
            log.warning("kafka_unavailable_spooling", error=str(err), spool=str(self._dir))

    async def _replay_loop(self) -> None:
        failures = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._spooling:
                try:
                    await self._drain()
                    failures = 0
                except SinkError as err:
                    if not err.retriable:
                        # Kafka closed under it (shutting down): the next start replays the rest.
                        log.exception("kafka_spool_replay_stopped", backlog=self.backlog_bytes)
                        return
                    failures += 1
                    delay = min(RETRY_MAX, RETRY_MIN * 2 ** (failures - 1))
                    log.warning(
                        "kafka_spool_replay_failed", error=str(err), retry_in=round(delay, 2)
                    )
                    await asyncio.sleep(delay * (0.5 + random.random()))  # jitter

    async def _drain(self) -> None:
        """Replays the spool: outside the lock while whole chunks remain (appends go on), then
        the rest under it, so the switch back to Kafka leaves nothing behind."""
        while not await self._replay_chunk():
            pass
        async with self._lock:
            while not await self._replay_chunk():
                pass
            self._spooling = False
            await self._reset()
        log.info("kafka_spool_drained", replayed=self.stats.replayed)

    async def _replay_chunk(self) -> bool:
        """Copies the next chunk to Kafka; True when it reached the spool's end."""
        start = self._replayed
        chunk = await asyncio.to_thread(_read_chunk, self._dir, start)
        if chunk:
            await self._kafka.append([entry for _, entry in chunk])
            self._replayed = chunk[-1][0]
            self.stats.replayed += len(chunk)
            await asyncio.to_thread(_write_position, self._dir / POSITION_FILE, self._replayed)
        return len(chunk) < REPLAY_CHUNK

    async def _reset(self) -> None:
        """Empties a drained spool (called under the lock): its segments would only grow."""
        await self._spool.close()
        await asyncio.to_thread(_remove_segments, self._dir)
        self._spool = LocalJournal(self._dir)
        self._replayed = 0

    async def close(self) -> None:
        self._closed = True
        self._replayer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._replayer
        await self._spool.close()
        await self._kafka.close()


def _read_chunk(directory: Path, position: int) -> list[tuple[int, JournalEntry]]:
    return list(itertools.islice(JournalReader(directory).read(position), REPLAY_CHUNK))


def _read_position(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except FileNotFoundError:
        return 0
    except ValueError:
        return 0  # unreadable: replay all of it again, duplicates collapse downstream


def _write_position(path: Path, position: int) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(f"{position}\n")
    os.replace(temporary, path)


def _remove_segments(directory: Path) -> None:
    """Deletes the spool's segments and position (the journal's lock file stays): the position
    first, then the segments from the last, so a crash here leaves segments that still follow one
    another (a gap would be corruption to the next start) and replays them again."""
    for path in sorted(directory.iterdir(), reverse=True):
        if path.suffix == SEGMENT_SUFFIX or path.name == POSITION_FILE:
            path.unlink()
