"""A journal decorator that counts what the journal behind it acknowledged (for the gateway's
metrics): the count moves only after `append` returned, so it never includes a failed batch."""

from collections.abc import Sequence

from ledger.journal import Journal, JournalEntry


class CountingJournal:
    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self.appended = 0

    async def append(self, entries: Sequence[JournalEntry]) -> None:
        await self._journal.append(entries)
        self.appended += len(entries)

    async def close(self) -> None:
        await self._journal.close()
