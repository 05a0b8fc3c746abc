"""The local durable append-only journal: the embedded default behind the `Journal` interface.

Records live in segment files named by the global byte position of their first byte, so a
position (base + offset in file) names one record boundary across all segments. A record is a
`<IIQ` header (payload length, crc32 of key + payload, key) followed by the payload.

Recovery never throws acknowledged records away on its own. Only the last segment can end in a
torn tail (a segment is closed, rolled away from, only after a batch in it was fsynced), and a
torn tail is only this: one incomplete record (header or payload shorter than declared) running
to the end of the file, as a crash during a write leaves it. That is cut, logged and counted.
Anything else (a complete record whose checksum fails, a length no record can have, valid
records after a bad one, a closed segment whose size disagrees with the next one's name) is
corruption: opening the journal raises `JournalCorrupt` and truncates nothing, and readers raise
it rather than pretend the journal ended there. A complete last record with a bad checksum is
corruption too: a crash leaves a prefix of what was written, not a whole record with wrong bytes,
and that record's batch may well have been acknowledged. (What cannot be told from a torn write
is bytes missing at the very end of the file, which is also what a crash leaves: cut, and the
cut logged and counted.) Recovery scans the last segment and checks the sizes of the closed
ones; `verify` (`ofd journal verify`) checks every record of every segment.
"""

import asyncio
import bisect
import contextlib
import errno
import fcntl
import itertools
import os
import re
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import structlog

from ledger.errors import SinkError
from ledger.journal import MAX_RECORD_BYTES, JournalCorrupt, JournalEntry, check_record_size

log = structlog.get_logger(__name__)

SEGMENT_BYTES = 64 * 1024 * 1024
HEADER = struct.Struct("<IIQ")  # payload length, crc32(key LE u64 + payload), key
SEGMENT_SUFFIX = ".seg"
LOCK_NAME = "LOCK"

# What stops a segment's records short of its end (Damage.kind).
TORN_TAIL = "torn tail"  # one incomplete record running to the end of the file
CHECKSUM_MISMATCH = "checksum mismatch"  # a complete record whose crc fails
BAD_LENGTH = "bad length"  # over MAX_RECORD_BYTES, or contradicted by what follows it
SIZE_MISMATCH = "size mismatch"  # a closed segment does not end where the next one begins

_LENGTH = struct.Struct("<I")
RESYNC_HOPS = 3  # record headers that must line up where a scan past damage resumes reading

# Where a record may begin, for the scan that looks for intact records past damage: the length's
# top byte is 0 and its third at most MAX_RECORD_BYTES >> 16; 16 zero bytes are never a header
# (crc32 of a zero key is not 0). It lets the regex engine, not Python, skip most positions.
assert MAX_RECORD_BYTES < 1 << 24
_HEADER_START = re.compile(
    rb"(?=..[\x00-" + re.escape(bytes([MAX_RECORD_BYTES >> 16])) + rb"]\x00)(?!\x00{16})",
    re.DOTALL,
)


def _segment_name(base: int) -> str:
    return f"{base:020d}{SEGMENT_SUFFIX}"


def _segment_bases(directory: Path) -> list[int]:
    names = (p.name for p in directory.glob(f"*{SEGMENT_SUFFIX}"))
    return sorted(int(n[:20]) for n in names if len(n) == 24 and n[:20].isdigit())


def _scan(f: BinaryIO, offset: int) -> Iterator[tuple[int, JournalEntry]]:
    """Yield (offset after record, entry) from `offset` up to the first record that is not
    intact; callers ask `_damage_at` what lies there (nothing, a torn tail, or damage)."""
    f.seek(offset)
    while True:
        header = f.read(HEADER.size)
        if len(header) < HEADER.size:
            return
        length, crc, key = HEADER.unpack(header)
        if length > MAX_RECORD_BYTES:
            return
        payload = f.read(length)
        if len(payload) < length or zlib.crc32(payload, zlib.crc32(header[8:])) != crc:
            return
        offset += HEADER.size + length
        yield offset, JournalEntry(key, payload)


@dataclass(frozen=True, slots=True)
class Damage:
    """What stops a segment's records short of its end."""

    offset: int  # in the segment: the first byte that is not part of an intact record
    kind: str  # TORN_TAIL, CHECKSUM_MISMATCH, BAD_LENGTH or SIZE_MISMATCH
    bytes_after: int  # from `offset` to the end of the segment
    # Intact records found past `offset`, resynchronising past damage (a lower bound where a
    # record lies just before more damage: see _leads_on).
    records_after: int
    detail: str = ""  # for SIZE_MISMATCH: where the next segment begins

    def describe(self) -> str:
        return f"{self.kind} ({self.detail})" if self.detail else self.kind


def _intact_end(data: bytes, pos: int) -> int | None:
    """The end of the intact record starting at data[pos], or None."""
    if len(data) - pos < HEADER.size:
        return None
    length, crc, _ = HEADER.unpack_from(data, pos)
    end: int = pos + HEADER.size + length
    if length > MAX_RECORD_BYTES or end > len(data):
        return None
    view = memoryview(data)
    if zlib.crc32(view[pos + HEADER.size : end], zlib.crc32(view[pos + 8 : pos + 16])) != crc:
        return None
    return end


def _leads_on(data: bytes, pos: int) -> bool:
    """Whether a record at data[pos] fits, and the two lengths after it do too (or reach the
    end): a cheap test before the checksum, which random bytes seldom pass (records follow one
    another; an intact record before damage or a torn tail still passes)."""
    first = True
    for _ in range(RESYNC_HOPS):
        if len(data) - pos < HEADER.size:
            return not first
        (length,) = _LENGTH.unpack_from(data, pos)
        pos += HEADER.size + length
        if length > MAX_RECORD_BYTES or (first and pos > len(data)):
            return False
        if pos >= len(data):
            return True
        first = False
    return True


def _next_intact(data: bytes, start: int) -> int | None:
    """The first offset from `start` where an intact record begins (and two plausible record
    headers follow it, or the end), or None."""
    for match in _HEADER_START.finditer(data, start):
        pos = match.start()
        if _leads_on(data, pos) and _intact_end(data, pos) is not None:
            return pos
    return None


def _count_intact(data: bytes, pos: int | None) -> int:
    """Intact records from `pos` (where one begins) on, each run of them followed to its end and
    the scan resumed one byte past wherever it broke."""
    count = 0
    while pos is not None:
        while (end := _intact_end(data, pos)) is not None:
            count += 1
            pos = end
        pos = _next_intact(data, pos + 1) if pos < len(data) else None
    return count


def _classify(rest: bytes, offset: int) -> Damage | None:
    """What the bytes `rest` (from `offset` to the end of the segment) hold, where the last scan
    found no intact record: None if one is there now (a writer finished it meanwhile)."""
    if _intact_end(rest, 0) is not None:
        return None
    if len(rest) < HEADER.size:  # a header cut short: nothing can follow it
        return Damage(offset, TORN_TAIL, len(rest), 0)
    length, crc, _ = HEADER.unpack_from(rest)
    if length > MAX_RECORD_BYTES:
        return Damage(offset, BAD_LENGTH, len(rest), _count_intact(rest, _next_intact(rest, 1)))
    if HEADER.size + length <= len(rest):
        # Complete, and its checksum fails. The next record, if this length is right, follows.
        following = HEADER.size + length
        start = following if _intact_end(rest, following) is not None else _next_intact(rest, 1)
        return Damage(offset, CHECKSUM_MISMATCH, len(rest), _count_intact(rest, start))
    # It claims more than the file holds: a torn write, unless its length is what is damaged,
    # which shows when the bytes there are one whole record or hold intact records.
    after = _count_intact(rest, _next_intact(rest, 1))
    view = memoryview(rest)
    whole = zlib.crc32(view[HEADER.size :], zlib.crc32(view[8:16])) == crc
    if after or whole:
        return Damage(offset, BAD_LENGTH, len(rest), after)
    return Damage(offset, TORN_TAIL, len(rest), 0)


def _damage_at(f: BinaryIO, offset: int) -> Damage | None:
    """Classifies what lies at `offset` of the open segment, where `_scan` stopped."""
    f.seek(offset)
    rest = f.read()
    return _classify(rest, offset) if rest else None


def _size_damage(base: int, size: int, following: int) -> Damage | None:
    """A closed segment ends exactly where the next one begins (names are byte positions)."""
    if base + size == following:
        return None
    return Damage(
        size, SIZE_MISMATCH, 0, 0, f"the next segment begins at offset {following - base}"
    )


def _refuse_if_damaged(path: Path, damage: Damage | None) -> None:
    """Opening a damaged journal fails, loudly, and cuts nothing. Refused rather than
    quarantined: moving the damaged segment aside would need the records after the damage
    re-appended and every reader's positions (the warehouse loader's among them) re-mapped;
    refusing keeps every byte where it is for a person to look at (`ofd journal verify`)."""
    if damage is None:
        return
    log.error(
        "journal_corrupt",
        segment=str(path),
        offset=damage.offset,
        kind=damage.describe(),
        records_after=damage.records_after,
    )
    raise JournalCorrupt(str(path), damage.offset, damage.describe(), damage.records_after)


def _check_closed_size(directory: Path, base: int, following: int) -> None:
    path = directory / _segment_name(base)
    damage = _size_damage(base, path.stat().st_size, following)
    if damage is not None:
        raise JournalCorrupt(str(path), damage.offset, damage.describe(), 0)


def _encode(entries: Sequence[JournalEntry]) -> bytes:
    parts: list[bytes] = []
    for entry in entries:
        check_record_size(entry)
        try:
            key = entry.key.to_bytes(8, "little")
        except OverflowError as err:
            raise SinkError(f"journal key {entry.key} is not a u64", retriable=False) from err
        crc = zlib.crc32(entry.payload, zlib.crc32(key))
        parts += (HEADER.pack(len(entry.payload), crc, entry.key), entry.payload)
    return b"".join(parts)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written == 0:  # never loop forever on a device that stopped taking bytes
            raise OSError(errno.EIO, "journal write made no progress")
        view, offset = view[written:], offset + written


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class JournalHeld(SinkError):
    """Another process writes this journal directory (it holds the flock on LOCK)."""

    def __init__(self, directory: Path, pid: int | None) -> None:
        holder = "another process" if pid is None else f"process {pid}"
        super().__init__(f"journal {directory} is held by {holder}", retriable=False)
        self.directory = directory
        self.pid = pid


def _lock(fd: int, directory: Path) -> None:
    """The writer's flock on LOCK, and its pid written there for the one it keeps out."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        raise JournalHeld(directory, int(text) if text.isdigit() else None) from err
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


class LocalJournal:
    """The single writer of a journal directory (an flock on LOCK keeps out a second one)."""

    def __init__(self, directory: Path, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self._directory = directory
        self._segment_bytes = segment_bytes
        self._lock = threading.Lock()  # appends run in worker threads; batches must not interleave
        self._needs_trim = False  # a failed batch could not be cut off yet
        self._fd = -1
        self.recovered_bytes_cut = 0
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise SinkError(f"cannot open journal {directory}: {err}", retriable=False) from err
        try:
            _lock(self._lock_fd, directory)
            self._open_last_segment()
        except (OSError, SinkError) as err:
            if self._fd >= 0:
                os.close(self._fd)
            os.close(self._lock_fd)
            if isinstance(err, SinkError):
                raise
            raise SinkError(f"cannot open journal {directory}: {err}", retriable=False) from err

    def _open_last_segment(self) -> None:
        bases = _segment_bases(self._directory)
        for base, following in itertools.pairwise(bases):  # a stat each: reading them is verify's
            path = self._directory / _segment_name(base)
            _refuse_if_damaged(path, _size_damage(base, path.stat().st_size, following))
        self._base = bases[-1] if bases else 0
        path = self._directory / _segment_name(self._base)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not bases:
            _fsync_dir(self._directory)
        size = os.fstat(self._fd).st_size
        with open(path, "rb") as f:
            good = max((offset for offset, _ in _scan(f, 0)), default=0)
            damage = _damage_at(f, good) if good < size else None
        if good < size:
            if damage is None:  # we hold the lock: nobody else writes here
                raise SinkError(f"journal segment {path} changed during recovery", retriable=False)
            if damage.kind != TORN_TAIL:
                _refuse_if_damaged(path, damage)
            os.ftruncate(self._fd, good)
            os.fdatasync(self._fd)
            self.recovered_bytes_cut = size - good
            log.warning(
                "journal_torn_tail_cut", segment=str(path), offset=good, bytes_cut=size - good
            )
        self._end = self._base + good  # one attribute, so end_position reads it atomically

    @property
    def end_position(self) -> int:
        """The position the next record will be written at."""
        return self._end

    async def append(self, entries: Sequence[JournalEntry]) -> None:
        # fsync takes milliseconds; the event loop keeps serving devices meanwhile.
        await asyncio.to_thread(self.append_sync, entries)

    def append_sync(self, entries: Sequence[JournalEntry]) -> None:
        """Write the batch and fsync once (group commit); on failure nothing of it remains."""
        if not entries:
            return
        data = _encode(entries)  # refusals happen here, before any byte is written
        with self._lock:
            if self._fd < 0:
                raise SinkError("journal is closed", retriable=False)
            try:
                if self._needs_trim:
                    self._trim()
                if self._end - self._base >= self._segment_bytes:
                    self._roll()
                _pwrite_all(self._fd, data, self._end - self._base)
                os.fdatasync(self._fd)
            except OSError as err:
                # Cut the batch off so a retry does not follow a half-written copy of it.
                self._needs_trim = True
                with contextlib.suppress(OSError):
                    self._trim()
                raise SinkError(f"journal append failed: {err}", retriable=True) from err
            self._end += len(data)

    def _trim(self) -> None:
        os.ftruncate(self._fd, self._end - self._base)
        os.fdatasync(self._fd)
        self._needs_trim = False

    def _roll(self) -> None:
        # A whole batch stays in one segment, so one fsync covers it; the segment it leaves was
        # fsynced by its last batch, which is why recovery may trust every segment but the last.
        fd = os.open(self._directory / _segment_name(self._end), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _fsync_dir(self._directory)  # the new name must survive a crash before its records do
        except OSError:
            os.close(fd)
            raise
        os.close(self._fd)
        self._fd, self._base = fd, self._end

    async def close(self) -> None:
        await asyncio.to_thread(self._close)  # may wait on an fsync holding the lock

    def _close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                os.close(self._lock_fd)
                self._fd = -1


@dataclass(frozen=True, slots=True)
class SegmentCheck:
    path: Path
    records: int  # intact records before any damage (all of them when there is none)
    damage: Damage | None
    last: bool  # the segment being written: only it may end in a torn tail

    @property
    def corrupt(self) -> bool:
        return self.damage is not None and not (self.last and self.damage.kind == TORN_TAIL)


def verify(directory: Path) -> list[SegmentCheck]:
    """Every record of every segment of a journal checked (recovery scans the last one only).
    Read-only, so it may run beside the writer (whose tail may then look torn)."""
    bases = _segment_bases(directory)
    checks: list[SegmentCheck] = []
    for i, base in enumerate(bases):
        path = directory / _segment_name(base)
        last = i == len(bases) - 1
        records = offset = 0
        with open(path, "rb") as f:
            for end, _ in _scan(f, 0):
                records, offset = records + 1, end
            damage = _damage_at(f, offset)
            size = os.fstat(f.fileno()).st_size
        if damage is None and not last:
            damage = _size_damage(base, size, bases[i + 1])
        checks.append(SegmentCheck(path, records, damage, last))
    return checks


class JournalReader:
    """Reads a journal, possibly while its writer appends (its tail is then not there yet).

    A torn tail of the last segment ends the reading quietly (it may be a record being written);
    any other damage raises `JournalCorrupt` once the records before it were yielded."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def read(self, position: int = 0) -> Iterator[tuple[int, JournalEntry]]:
        """Yield (position after the record, entry) from `position`; pass one back to resume."""
        bases = _segment_bases(self._directory)
        if position < 0 or (bases and position < bases[0]):
            raise ValueError(f"position {position} is before the start of the journal")
        first = max(bisect.bisect_right(bases, position) - 1, 0)
        for i in range(first, len(bases)):
            base = bases[i]
            offset = position - base if i == first else 0
            path = self._directory / _segment_name(base)
            last = i == len(bases) - 1
            try:
                with open(path, "rb") as f:
                    for after, entry in _scan(f, offset):
                        offset = after
                        yield base + after, entry
                    damage = _damage_at(f, offset)
                # The last segment may end in a record being written (or one recovery will cut);
                # a closed segment was complete when it was closed: a bad record there is damage.
                if damage is not None and (damage.kind != TORN_TAIL or not last):
                    raise JournalCorrupt(
                        str(path), damage.offset, damage.describe(), damage.records_after
                    )
                if not last:
                    _check_closed_size(self._directory, base, bases[i + 1])
            except OSError as err:
                raise SinkError(
                    f"cannot read journal segment {base}: {err}", retriable=True
                ) from err
