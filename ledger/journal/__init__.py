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
