"""The local journal never throws acknowledged records away on its own (issue 11, "Trust").

An attacker test flipped one byte in the middle of the live segment and the restart cut the
segment there, silently. Now only a torn tail (one incomplete last record, as a crash during a
write leaves it) is cut, logged and counted; any other damage refuses to open, truncating
nothing, and readers raise `JournalCorrupt` instead of pretending the journal ended.
"""

import asyncio
import itertools
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.metrics import GatewayMetrics
from ledger.errors import OfdError, SinkError
from ledger.journal import JournalCorrupt, JournalEntry, local
from ledger.journal.local import (
    BAD_LENGTH,
    CHECKSUM_MISMATCH,
    HEADER,
    SIZE_MISMATCH,
    TORN_TAIL,
    JournalReader,
    LocalJournal,
    verify,
)
from ledger.warehouse.loader import LocalJournalSource
from ofdproto.journal.v1.record_pb2 import JournalRecord

pytestmark = pytest.mark.adversity

GATEWAY = "gw-1"
RECORDS = 400
BATCH = 20


def entry(i: int) -> JournalEntry:
    """A record as the gateway journals it (`ofd journal show` decodes them), sizes varying."""
    device = 1000 + i % 37
    record = JournalRecord(
        device_id=device, document_id=f"{device}/s1/d{i}", fiscal_sign=f"{i:08d}" * (1 + i % 5)
    )
    return JournalEntry(key=device, payload=record.SerializeToString())


def record_size(e: JournalEntry) -> int:
    return HEADER.size + len(e.payload)


@pytest.fixture
def journal_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[MutableMapping[str, Any]]]:
    """What the journal logs, as dicts (a fresh logger: another test may have cached one)."""
    with structlog.testing.capture_logs() as logs:
        monkeypatch.setattr(local, "log", structlog.get_logger(local.__name__))
        yield logs


def write(directory: Path, n: int = RECORDS, *, segment_bytes: int = 64 * 1024 * 1024) -> None:
    journal = LocalJournal(directory, segment_bytes=segment_bytes)
    for start in range(0, n, BATCH):
        journal.append_sync([entry(i) for i in range(start, min(n, start + BATCH))])
    asyncio.run(journal.close())


def starts(n: int = RECORDS) -> list[int]:
    """The offset of each record in a single-segment journal written by `write`."""
    offsets, offset = [], 0
    for i in range(n):
        offsets.append(offset)
        offset += record_size(entry(i))
    return offsets


def segment(directory: Path) -> Path:
    (only,) = sorted(directory.glob("*.seg"))
    return only


def flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def read_all(directory: Path) -> list[JournalEntry]:
    return [e for _, e in JournalReader(directory).read()]


# Byte offsets inside a record: the length (low and high byte), the crc, the key, the payload.
FIELDS = {"length low": 0, "length high": 3, "crc": 5, "key": 9, "payload": HEADER.size + 2}


@pytest.mark.parametrize("field", FIELDS)
def test_flipped_byte_mid_segment_refuses_to_open_and_truncates_nothing(
    tmp_path: Path, field: str, journal_logs: list[MutableMapping[str, Any]]
) -> None:
    write(tmp_path)
    victim = RECORDS // 2
    offset = starts()[victim]
    path = segment(tmp_path)
    flip(path, offset + FIELDS[field])
    before = path.read_bytes()

    with pytest.raises(JournalCorrupt) as caught:
        LocalJournal(tmp_path)

    err = caught.value
    assert isinstance(err, SinkError)
    assert isinstance(err, OfdError)
    assert err.retriable is False
    assert (err.segment, err.offset) == (str(path), offset)
    assert err.kind in (CHECKSUM_MISMATCH, BAD_LENGTH)
    assert err.records_after == RECORDS - victim - 1
    assert str(err) == (
        f"journal segment {path}: {err.kind} at offset {offset},"
        f" {RECORDS - victim - 1} intact records after it"
    )
    assert path.read_bytes() == before, "nothing was truncated or rewritten"
    assert [(log["event"], log["segment"], log["offset"]) for log in journal_logs] == [
        ("journal_corrupt", str(path), offset)
    ]

    flip(path, offset + FIELDS[field])  # the byte restored: it opens (the refusal let go of
    journal = LocalJournal(tmp_path)  # the lock) with every record there
    assert journal.end_position == len(before)
    asyncio.run(journal.close())
    assert read_all(tmp_path) == [entry(i) for i in range(RECORDS)]

    # The reader yields what precedes the damage, then raises instead of ending quietly.
    flip(path, offset + FIELDS[field])
    reader = JournalReader(tmp_path).read()
    assert [e for _, e in itertools.islice(reader, victim)] == [entry(i) for i in range(victim)]
    with pytest.raises(JournalCorrupt):
        next(reader)


def test_length_over_the_limit_is_bad_length(tmp_path: Path) -> None:
    write(tmp_path)
    offset = starts()[RECORDS // 2]
    flip(segment(tmp_path), offset + FIELDS["length high"])  # + 0xFF << 24: over 4 MiB
    with pytest.raises(JournalCorrupt) as caught:
        LocalJournal(tmp_path)
    assert caught.value.kind == BAD_LENGTH


def counted_torn_bytes(journal: LocalJournal) -> tuple[float | None, float | None]:
    metrics = GatewayMetrics("gw-test")
    metrics.counting(journal)
    return (
        metrics.registry.get_sample_value("ofd_journal_torn_tail_bytes_total"),
        metrics.registry.get_sample_value("ofd_journal_torn_tails_total"),
    )


@pytest.mark.parametrize("missing", [1, 5, HEADER.size + 1])  # payload, payload, header cut short
def test_torn_tail_is_cut_logged_and_counted(
    tmp_path: Path, missing: int, journal_logs: list[MutableMapping[str, Any]]
) -> None:
    write(tmp_path)
    path = segment(tmp_path)
    size = path.stat().st_size
    os.truncate(path, size - missing)  # the last record loses its last bytes
    last_start = starts()[-1]

    journal = LocalJournal(tmp_path)

    cut = size - missing - last_start
    assert journal.recovered_bytes_cut == cut
    assert journal.end_position == last_start
    assert path.stat().st_size == last_start
    assert journal_logs == [
        {
            "event": "journal_torn_tail_cut",
            "log_level": "warning",
            "segment": str(path),
            "offset": last_start,
            "bytes_cut": cut,
        }
    ]
    assert counted_torn_bytes(journal) == (cut, 1)
    asyncio.run(journal.close())
    assert read_all(tmp_path) == [entry(i) for i in range(RECORDS - 1)], "every complete record"


def test_intact_journal_counts_nothing(
    tmp_path: Path, journal_logs: list[MutableMapping[str, Any]]
) -> None:
    write(tmp_path)
    journal = LocalJournal(tmp_path)
    assert journal_logs == []
    assert counted_torn_bytes(journal) == (0, 0)
    asyncio.run(journal.close())


# The last record, complete, with one flipped byte and nothing after it. A crash leaves a prefix
# of what was written (a torn tail), not a whole record with a wrong byte; and that record's batch
# was fsynced and very likely acknowledged: so it is corruption, not something to cut. A flipped
# length byte that makes it claim more than the file holds would look torn, but the bytes there
# are one whole record whose checksum matches: the length is what is damaged (bad length).
@pytest.mark.parametrize("at", [0, 1, 3, 4, 8, 15, HEADER.size, -1])
def test_flipped_byte_in_the_complete_last_record_is_corruption(tmp_path: Path, at: int) -> None:
    write(tmp_path)
    path = segment(tmp_path)
    last_start = starts()[-1]
    flip(path, last_start + at if at >= 0 else path.stat().st_size + at)
    before = path.read_bytes()
    with pytest.raises(JournalCorrupt) as caught:
        LocalJournal(tmp_path)
    assert caught.value.offset == last_start
    assert caught.value.records_after == 0
    assert caught.value.kind in (CHECKSUM_MISMATCH, BAD_LENGTH)
    assert path.read_bytes() == before
    with pytest.raises(JournalCorrupt):
        read_all(tmp_path)


def test_flipped_length_near_the_end_is_not_taken_for_a_torn_tail(tmp_path: Path) -> None:
    """A length made to claim past the end of the file, with intact records inside what it
    claims: not a torn write (a torn write is the end of the file), so not cut."""
    write(tmp_path)
    path = segment(tmp_path)
    victim = RECORDS - 3
    offset = starts()[victim]
    raw = bytearray(path.read_bytes())
    raw[offset + 2] = 0x01  # + 64 KiB: past the end, within the record limit
    path.write_bytes(bytes(raw))
    with pytest.raises(JournalCorrupt) as caught:
        LocalJournal(tmp_path)
    assert (caught.value.kind, caught.value.records_after) == (BAD_LENGTH, 2)
    assert path.read_bytes() == bytes(raw)


def test_zero_filled_tail_is_not_a_torn_tail(tmp_path: Path) -> None:
    """A file extended with zeros (a filesystem that kept the new size but not the data) is not
    one incomplete record: refused, for a person to judge, rather than guessed at."""
    write(tmp_path)
    path = segment(tmp_path)
    size = path.stat().st_size
    with path.open("ab") as f:
        f.write(bytes(4096))
    with pytest.raises(JournalCorrupt) as caught:
        LocalJournal(tmp_path)
    assert (caught.value.offset, caught.value.kind) == (size, CHECKSUM_MISMATCH)
    assert path.stat().st_size == size + 4096


def test_closed_segment_cut_at_a_record_boundary_is_corruption(tmp_path: Path) -> None:
    """Only the last segment is scanned on opening; the closed ones must end exactly where the
    next one begins (names are byte positions), which a stat shows without reading them."""
    write(tmp_path, segment_bytes=2000)
    first, *_ = sorted(tmp_path.glob("*.seg"))
    size = first.stat().st_size
    in_first = verify(tmp_path)[0].records
    os.truncate(first, size - record_size(entry(in_first - 1)))  # its last record, cleanly
    with pytest.raises(JournalCorrupt) as caught:
        LocalJournal(tmp_path)
    assert caught.value.kind == f"{SIZE_MISMATCH} (the next segment begins at offset {size})"
    with pytest.raises(JournalCorrupt):
        read_all(tmp_path)
    damaged = [c for c in verify(tmp_path) if c.corrupt]
    assert [(c.path, c.damage.kind if c.damage else None) for c in damaged] == [
        (first, SIZE_MISMATCH)
    ]


def test_torn_tail_in_a_closed_segment_is_corruption(tmp_path: Path) -> None:
    write(tmp_path, segment_bytes=2000)
    first, *_ = sorted(tmp_path.glob("*.seg"))
    os.truncate(first, first.stat().st_size - 3)
    (check, *_) = verify(tmp_path)
    assert check.damage is not None
    assert check.damage.kind == TORN_TAIL
    assert check.corrupt
    with pytest.raises(JournalCorrupt):
        read_all(tmp_path)


def test_reader_stops_quietly_at_a_torn_tail(tmp_path: Path) -> None:
    write(tmp_path)
    path = segment(tmp_path)
    os.truncate(path, path.stat().st_size - 2)
    assert read_all(tmp_path) == [entry(i) for i in range(RECORDS - 1)]


def test_loader_loads_what_precedes_the_damage_then_raises(tmp_path: Path) -> None:
    write(tmp_path)
    victim = 30
    flip(segment(tmp_path), starts()[victim] + FIELDS["payload"])
    source = LocalJournalSource(tmp_path)
    got = source.read(0, 1000)
    assert [payload for _, payload in got] == [entry(i).payload for i in range(victim)]
    with pytest.raises(JournalCorrupt):
        source.read(got[-1][0], 1000)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=120), min_size=1, max_size=40),
    data=st.data(),
)
def test_any_flipped_byte_refuses_and_counts_what_follows(
    tmp_path: Path, sizes: list[int], data: st.DataObject
) -> None:
    """One flipped byte anywhere in the live segment: refused, nothing cut, and every intact
    record after the damaged one is found (verify reports that count)."""
    with tempfile.TemporaryDirectory(dir=tmp_path) as name:
        directory = Path(name)
        entries = [
            JournalEntry(i, data.draw(st.binary(min_size=n, max_size=n), label="payload"))
            for i, n in enumerate(sizes)
        ]
        journal = LocalJournal(directory)
        journal.append_sync(entries)
        asyncio.run(journal.close())
        path = segment(directory)
        at = data.draw(st.integers(min_value=0, max_value=path.stat().st_size - 1), label="at")
        flip(path, at)
        before = path.read_bytes()

        victim, offset = 0, 0
        while offset + record_size(entries[victim]) <= at:
            offset += record_size(entries[victim])
            victim += 1
        with pytest.raises(JournalCorrupt) as caught:
            LocalJournal(directory)
        assert (caught.value.offset, caught.value.records_after) == (
            offset,
            len(entries) - victim - 1,
        )
        assert path.read_bytes() == before


# `ofd journal verify` (and `ofd journal show`) as a person runs them.
OFD = Path(sys.executable).with_name("ofd")


def ofd(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(OFD), "journal", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    return result


def journal_dir(data_dir: Path) -> Path:
    return data_dir / "journal" / GATEWAY


def test_verify_intact(tmp_path: Path) -> None:
    write(journal_dir(tmp_path), segment_bytes=4000)
    result = ofd("verify", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(line.endswith("records, intact") for line in lines[:-1])
    assert sum(int(line.split(": ")[1].split()[0]) for line in lines[:-1]) == RECORDS
    assert len(lines) > 2
    assert lines[-1] == f"journal intact: {RECORDS} records in {len(lines) - 1} segments"


def test_verify_torn_tail_is_recoverable(tmp_path: Path) -> None:
    write(journal_dir(tmp_path))
    path = segment(journal_dir(tmp_path))
    os.truncate(path, path.stat().st_size - 4)
    result = ofd("verify", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    first, verdict = result.stdout.splitlines()
    tail = record_size(entry(RECORDS - 1)) - 4
    assert first == (
        f"{path}: {RECORDS - 1} records, then torn tail at offset {starts()[-1]}"
        f" ({tail} bytes of an incomplete last record): recoverable"
    )
    assert verdict.startswith("journal recoverable:")


def test_verify_corrupt_names_segment_offset_kind_and_what_follows(tmp_path: Path) -> None:
    write(journal_dir(tmp_path))
    path = segment(journal_dir(tmp_path))
    victim = RECORDS // 2
    flip(path, starts()[victim] + FIELDS["payload"])
    result = ofd("verify", "--data-dir", str(tmp_path))
    assert result.returncode == 1
    first, verdict = result.stdout.splitlines()
    assert first == (
        f"{path}: {victim} records, then checksum mismatch at offset {starts()[victim]},"
        f" {RECORDS - victim - 1} valid records after it: CORRUPT"
    )
    assert verdict.startswith("journal CORRUPT: damage in 1 segment (of 1); the gateway refuses")

    shown = ofd("show", "--data-dir", str(tmp_path))  # reads it: stops with the same news
    assert shown.returncode == 1
    assert shown.stdout == ""
    assert shown.stderr.count("\n") == 1
    assert f"checksum mismatch at offset {starts()[victim]}" in shown.stderr
    assert f"ofd journal verify --data-dir {tmp_path}" in shown.stderr


def test_verify_without_a_journal(tmp_path: Path) -> None:
    result = ofd("verify", "--data-dir", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr == (
        f"error: no journal under {tmp_path / 'journal'}: is --data-dir the gateway's?\n"
    )
