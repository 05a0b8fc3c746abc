"""The journal family: every accepted document is appended here before its answer leaves.

`Journal` is the interface the group commit writes through; `local` is the embedded default
(segment files), `kafka` the production journal, `spool` Kafka with a local spool for outages,
`view` reads a local journal back for people and tests. Every implementation refuses a record over
MAX_RECORD_BYTES the same way.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ledger.errors import SinkError

MAX_RECORD_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class JournalEntry:
    key: int  # device system id (u32); Kafka will partition by it, the local journal stores it
    payload: bytes  # an opaque serialized record envelope


class JournalCorrupt(SinkError):
    """A local journal segment is damaged in a way a crash cannot explain (not a torn tail):
    acknowledged records may lie behind the damage, so nothing may cut it away or read past it
    as if the journal ended there. Not retriable: a person has to look (`ofd journal verify`)."""

    def __init__(self, segment: str, offset: int, kind: str, records_after: int) -> None:
        super().__init__(
            f"journal segment {segment}: {kind} at offset {offset},"
            f" {records_after} intact records after it",
            retriable=False,
        )
        self.segment = segment
        self.offset = offset
        self.kind = kind
        self.records_after = records_after


class Journal(Protocol):
    async def append(self, entries: Sequence[JournalEntry]) -> None:
        """Make the entries durable, in order, or raise SinkError having written none of them."""

    async def close(self) -> None: ...


def check_record_size(entry: JournalEntry) -> None:
    """Refuses a record over MAX_RECORD_BYTES before anything of its batch is written; every
    journal implementation applies the same limit."""
    if len(entry.payload) > MAX_RECORD_BYTES:
        raise SinkError(
            f"journal record of {len(entry.payload)} bytes exceeds {MAX_RECORD_BYTES}",
            retriable=False,
        )
