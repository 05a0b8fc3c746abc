"""The local journal: round trips, crash recovery, rolling, group commit, failure atomicity.
(Damage that is not a torn tail: tests/test_journal_corruption.py.)"""

import asyncio
import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.errors import SinkError
from ledger.journal import MAX_RECORD_BYTES, Journal, JournalEntry
from ledger.journal.local import HEADER, JournalReader, LocalJournal

entries = st.builds(
    JournalEntry, key=st.integers(min_value=0, max_value=2**32 - 1), payload=st.binary(max_size=200)
)
batches = st.lists(st.lists(entries, min_size=1, max_size=8), min_size=1, max_size=8)


def read_all(directory: Path, position: int = 0) -> list[JournalEntry]:
    return [entry for _, entry in JournalReader(directory).read(position)]


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def make(n: int, size: int = 10) -> list[JournalEntry]:
    return [JournalEntry(key=i, payload=bytes([i % 256]) * size) for i in range(n)]


def record_size(entry: JournalEntry) -> int:
    return HEADER.size + len(entry.payload)


async def test_round_trip(tmp_path: Path) -> None:
    journal: Journal = LocalJournal(tmp_path)  # LocalJournal satisfies the protocol
    batch = [JournalEntry(7, b"a"), JournalEntry(2**32 - 1, b""), JournalEntry(0, b"x" * 1000)]
    await journal.append(batch)
    await journal.append([JournalEntry(8, b"b")])
    await journal.close()
    assert read_all(tmp_path) == [*batch, JournalEntry(8, b"b")]


async def test_reopen_keeps_everything_and_appends_after(tmp_path: Path) -> None:
    journal = LocalJournal(tmp_path)
    await journal.append(make(3))
    end = journal.end_position
    await journal.close()
    reopened = LocalJournal(tmp_path)
    assert reopened.recovered_bytes_cut == 0
    assert reopened.end_position == end
    await reopened.append(make(2, size=3))
    await reopened.close()
    assert read_all(tmp_path) == make(3) + make(2, size=3)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=batches, segment_bytes=st.integers(min_value=16, max_value=600), data=st.data())
def test_recovery_after_torn_tail(
    tmp_path: Path, batches: list[list[JournalEntry]], segment_bytes: int, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory(dir=tmp_path) as name:
        directory = Path(name)
        journal = LocalJournal(directory, segment_bytes=segment_bytes)
        written: list[tuple[int, JournalEntry]] = []  # (end position, entry)
        for batch in batches:
            end = journal.end_position
            journal.append_sync(batch)
            for entry in batch:
                end += record_size(entry)
                written.append((end, entry))
        asyncio.run(journal.close())

        last = segments(directory)[-1]
        cut = data.draw(st.integers(min_value=0, max_value=last.stat().st_size), label="cut")
        os.truncate(last, cut)
        cut_position = int(last.stem) + cut

        survivors = [(end, entry) for end, entry in written if end <= cut_position]
        recovered = LocalJournal(directory, segment_bytes=segment_bytes)
        good_end = survivors[-1][0] if survivors else 0
        assert recovered.end_position == good_end
        assert recovered.recovered_bytes_cut == cut_position - good_end
        assert list(JournalReader(directory).read()) == survivors

        recovered.append_sync([JournalEntry(1, b"after")])
        asyncio.run(recovered.close())
        assert read_all(directory) == [e for _, e in survivors] + [JournalEntry(1, b"after")]


async def test_reader_resumes_from_any_yielded_position(tmp_path: Path) -> None:
    journal = LocalJournal(tmp_path)
    await journal.append(make(5))
    end = journal.end_position
    await journal.close()
    positions = [position for position, _ in JournalReader(tmp_path).read()]
    assert positions[-1] == end
    for i, position in enumerate(positions):
        assert read_all(tmp_path, position) == make(5)[i + 1 :]
    assert read_all(tmp_path, end) == []


async def test_segments_roll_and_reading_crosses_them(tmp_path: Path) -> None:
    journal = LocalJournal(tmp_path, segment_bytes=64)
    batches = [make(1, size=50), make(3, size=30), make(1, size=5), make(2, size=50)]
    for batch in batches:
        await journal.append(batch)
    await journal.close()

    # A batch stays whole in one segment, even past segment_bytes; the next one starts a new one.
    sizes = [sum(record_size(e) for e in batch) for batch in batches]
    expected_bases = [0, sizes[0], sizes[0] + sizes[1]]
    assert [p.name for p in segments(tmp_path)] == [f"{base:020d}.seg" for base in expected_bases]

    everything = [e for batch in batches for e in batch]
    read = list(JournalReader(tmp_path).read())
    assert [e for _, e in read] == everything
    for i, (position, _) in enumerate(read):  # resuming works at and across segment boundaries
        assert read_all(tmp_path, position) == everything[i + 1 :]

    reopened = LocalJournal(tmp_path, segment_bytes=64)  # recovery looks at the last one only
    assert reopened.recovered_bytes_cut == 0
    assert reopened.end_position == sum(sizes)
    await reopened.close()


def counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    return calls


async def test_one_fsync_per_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = LocalJournal(tmp_path)
    calls = counting(monkeypatch)
    await journal.append(make(50))
    await journal.append(make(1))
    journal.append_sync(make(7))
    journal.append_sync([])  # nothing to make durable
    assert len(calls) == 3
    await journal.close()


async def test_concurrent_appends_do_not_interleave(tmp_path: Path) -> None:
    journal = LocalJournal(tmp_path, segment_bytes=256)
    await asyncio.gather(
        *(journal.append([JournalEntry(b, bytes([i]) * 20) for i in range(5)]) for b in range(20))
    )
    await journal.close()
    read = read_all(tmp_path)
    assert len(read) == 100
    for start in range(0, 100, 5):  # every batch lies contiguous and in order
        batch = read[start : start + 5]
        assert {e.key for e in batch} == {batch[0].key}
        assert [e.payload[0] for e in batch] == list(range(5))
    assert sorted({e.key for e in read}) == list(range(20))


async def test_oversized_record_is_refused_and_nothing_written(tmp_path: Path) -> None:
    journal = LocalJournal(tmp_path)
    await journal.append(make(2))
    end = journal.end_position
    with pytest.raises(SinkError) as caught:
        await journal.append(
            [JournalEntry(1, b"ok"), JournalEntry(2, b"x" * (MAX_RECORD_BYTES + 1))]
        )
    assert caught.value.retriable is False
    assert journal.end_position == end
    assert segments(tmp_path)[0].stat().st_size == end
    await journal.append([JournalEntry(3, b"y" * MAX_RECORD_BYTES)])  # the limit itself is fine
    await journal.close()
    assert read_all(tmp_path) == [*make(2), JournalEntry(3, b"y" * MAX_RECORD_BYTES)]


async def test_failing_fsync_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = LocalJournal(tmp_path)
    await journal.append(make(2))
    size = segments(tmp_path)[0].stat().st_size

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "simulated disk failure")

    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(SinkError) as caught:
        await journal.append(make(4, size=99))
    assert caught.value.retriable is True
    assert isinstance(caught.value.__cause__, OSError)
    assert segments(tmp_path)[0].stat().st_size == size
    assert journal.end_position == size
    assert read_all(tmp_path) == make(2)

    monkeypatch.undo()  # the disk recovers: the journal carries on after the earlier batches
    await journal.append([JournalEntry(9, b"later")])
    await journal.close()
    assert read_all(tmp_path) == [*make(2), JournalEntry(9, b"later")]


async def test_reader_stops_quietly_at_a_tail_being_written(tmp_path: Path) -> None:
    journal = LocalJournal(tmp_path)
    await journal.append(make(2))
    (segment,) = segments(tmp_path)
    partial = HEADER.pack(100, 0, 1) + b"half"  # as a concurrent writer might have left it
    with segment.open("ab") as f:
        f.write(partial)
    assert read_all(tmp_path) == make(2)
    await journal.close()


async def test_corruption_inside_a_closed_segment_raises(tmp_path: Path) -> None:
    journal = LocalJournal(tmp_path, segment_bytes=32)
    for batch in (make(2), make(1), make(1)):
        await journal.append(batch)
    await journal.close()
    first = segments(tmp_path)[0]
    raw = bytearray(first.read_bytes())
    raw[-1] ^= 0xFF  # the payload of the second record of the first (closed) segment
    first.write_bytes(bytes(raw))

    reader = JournalReader(tmp_path).read()
    assert next(reader)[1] == make(1)[0]
    with pytest.raises(SinkError) as caught:
        next(reader)
    assert caught.value.retriable is False


async def test_one_writer_per_directory(tmp_path: Path) -> None:
    journal = LocalJournal(tmp_path)
    with pytest.raises(SinkError):
        LocalJournal(tmp_path)
    await journal.close()
    await journal.close()  # closing twice is harmless
    with pytest.raises(SinkError) as caught:
        await journal.append(make(1))
    assert caught.value.retriable is False
    await LocalJournal(tmp_path).close()


def test_empty_directory_reads_nothing(tmp_path: Path) -> None:
    assert read_all(tmp_path) == []
    with pytest.raises(ValueError, match="before the start"):
        read_all(tmp_path, -1)


_: Callable[[Path], Journal] = LocalJournal  # mypy checks the protocol is satisfied
