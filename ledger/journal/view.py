"""Reading the local journals back: every record decoded, and a summary for people.

Used by `ofd journal show`, the demo and the tests to show that every acknowledged document is
in the journal, and how often; `ofd journal verify` checks every record of every segment.
"""

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from ledger.journal.local import TORN_TAIL, JournalReader, SegmentCheck, verify
from ofdproto.journal.v1.record_pb2 import JournalRecord


def journal_records(journal_root: Path) -> Iterator[JournalRecord]:
    """Every record of every gateway's journal under `journal_root` (one directory each)."""
    for directory in sorted(p for p in journal_root.iterdir() if p.is_dir()):
        for _, entry in JournalReader(directory).read():
            yield JournalRecord.FromString(entry.payload)


def summarize_journal(journal_root: Path) -> dict[str, object]:
    per_document = Counter(r.document_id for r in journal_records(journal_root))
    per_device = Counter(doc.split("/", 1)[0] for doc in per_document)
    return {
        "records": sum(per_document.values()),
        "documents": len(per_document),
        "documents_journaled_more_than_once": sorted(d for d, n in per_document.items() if n > 1),
        "documents_per_device": dict(sorted(per_device.items())),
    }


def journal_directories(data_dir: Path) -> list[Path]:
    """Every local journal under a data directory: each gateway's, and its Kafka outage spool."""
    roots = (data_dir / "journal", data_dir / "spool")
    return [d for root in roots if root.is_dir() for d in sorted(root.iterdir()) if d.is_dir()]


def _segment_line(check: SegmentCheck) -> str:
    damage = check.damage
    if damage is None:
        return f"{check.path}: {check.records} records, intact"
    head = (
        f"{check.path}: {check.records} records, then {damage.describe()} at offset {damage.offset}"
    )
    if not check.corrupt:
        return f"{head} ({damage.bytes_after} bytes of an incomplete last record): recoverable"
    if damage.kind == TORN_TAIL:
        return f"{head}: CORRUPT (a closed segment was complete when it was closed)"
    return f"{head}, {damage.records_after} valid records after it: CORRUPT"


def _segments(n: int) -> str:
    return f"{n} segment" if n == 1 else f"{n} segments"


def verify_report(data_dir: Path) -> tuple[list[str], bool]:
    """`ofd journal verify`: one line per segment and a verdict; True when nothing is corrupt
    (a torn tail is: the gateway cuts it when it starts, logging and counting it)."""
    checks = [c for directory in journal_directories(data_dir) for c in verify(directory)]
    lines = [_segment_line(c) for c in checks]
    records = sum(c.records for c in checks)
    corrupt = [c for c in checks if c.corrupt]
    torn = [c for c in checks if c.damage is not None and not c.corrupt]
    if corrupt:
        lines.append(
            f"journal CORRUPT: damage in {_segments(len(corrupt))} (of {len(checks)}); the"
            " gateway refuses to start on it and cuts nothing (see README, journal recovery)"
        )
    elif torn:
        lines.append(
            f"journal recoverable: {records} intact records in {_segments(len(checks))}; a torn"
            " tail (one incomplete last record) is cut, logged and counted when the gateway starts"
        )
    else:
        lines.append(f"journal intact: {records} records in {_segments(len(checks))}")
    return lines, not corrupt
