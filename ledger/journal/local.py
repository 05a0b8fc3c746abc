"""The local durable append-only journal: the embedded default behind the `Journal` interface.

Records live in segment files named by the global byte position of their first byte, so a
position (base + offset in file) names one record boundary across all segments. A record is a
`<IIQ` header (payload length, crc32 of key + payload, key) followed by the payload. Only the last
segment can have a torn tail: a segment is closed (rolled away from) only after a batch in it was
fsynced, so recovery scans the last one alone and cuts it at the first record that is not intact.
"""

import asyncio
import bisect
import contextlib
import errno
import fcntl
import os
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from ledger.errors import SinkError
from ledger.journal import MAX_RECORD_BYTES, JournalEntry, check_record_size

SEGMENT_BYTES = 64 * 1024 * 1024
HEADER = struct.Struct("<IIQ")  # payload length, crc32(key LE u64 + payload), key
SEGMENT_SUFFIX = ".seg"
LOCK_NAME = "LOCK"


def _segment_name(base: int) -> str:
    return f"{base:020d}{SEGMENT_SUFFIX}"


def _segment_bases(directory: Path) -> list[int]:
    names = (p.name for p in directory.glob(f"*{SEGMENT_SUFFIX}"))
    return sorted(int(n[:20]) for n in names if len(n) == 24 and n[:20].isdigit())


def _scan(f: BinaryIO, offset: int) -> Iterator[tuple[int, JournalEntry]]:
    """Yield (offset after record, entry) from `offset`; stop silently at the first bad record.

    Callers compare the last offset with the file size to tell a clean end from a bad tail.
    """
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
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._open_last_segment()
        except OSError as err:
            if self._fd >= 0:
                os.close(self._fd)
            os.close(self._lock_fd)
            raise SinkError(f"cannot open journal {directory}: {err}", retriable=False) from err

    def _open_last_segment(self) -> None:
        bases = _segment_bases(self._directory)
        self._base = bases[-1] if bases else 0
        path = self._directory / _segment_name(self._base)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not bases:
            _fsync_dir(self._directory)
        size = os.fstat(self._fd).st_size
        with open(path, "rb") as f:
            good = max((offset for offset, _ in _scan(f, 0)), default=0)
        if good < size:
            os.ftruncate(self._fd, good)
            os.fdatasync(self._fd)
            self.recovered_bytes_cut = size - good
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


class JournalReader:
    """Reads a journal, possibly while its writer appends (its tail is then not there yet)."""

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
            try:
                with open(self._directory / _segment_name(base), "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    for after, entry in _scan(f, offset):
                        offset = after
                        yield base + after, entry
            except OSError as err:
                raise SinkError(
                    f"cannot read journal segment {base}: {err}", retriable=True
                ) from err
            # The last segment may end in a record being written (or one recovery will cut);
            # a closed segment was complete when it was closed, so a bad record there is damage.
            if i < len(bases) - 1 and offset != size:
                raise SinkError(f"journal corrupt at position {base + offset}", retriable=False)
