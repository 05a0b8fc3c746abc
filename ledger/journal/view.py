"""Reading the local journals back: every record decoded, and a summary for people.

Used by `ofd journal show`, the demo and the tests to show that every acknowledged document is
in the journal, and how often.
"""

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from ledger.journal.local import JournalReader
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
