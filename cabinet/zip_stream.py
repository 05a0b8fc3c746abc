"""A ZIP archive sent as it is written: each entry's bytes leave as soon as it is added, so an
archive of any length holds one entry in memory. zipfile writes to a sink it cannot seek by
putting each entry's sizes after its data (data descriptors), which every unzip reads."""

import zipfile
from collections.abc import AsyncIterator
from datetime import datetime


class _Sink:
    """What zipfile writes to: bytes kept until the response takes them. No tell() or seek():
    zipfile then writes as a stream."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes, /) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        """Nothing to do: take() hands the bytes on."""

    def close(self) -> None:
        """Nothing to do: the response ends the archive."""

    def take(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


Entry = tuple[str, bytes, datetime]  # name, content, the time the entry carries


async def zipped(entries: AsyncIterator[Entry]) -> AsyncIterator[bytes]:
    """The archive of `entries`, in pieces as they come."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        async for name, content, when in entries:
            info = zipfile.ZipInfo(name, date_time=when.timetuple()[:6])
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, content)
            yield sink.take()
    yield sink.take()  # the central directory, written when the archive closes
