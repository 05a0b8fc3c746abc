"""How the cabinet reaches the warehouse: through the `ofd load` query service (chDB admits one
process per data directory, and that process is the loader), or a ClickHouse server directly.
Either way as an analyst (readonly, limits); every read runs in a worker thread, a bounded
number at once."""

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ledger.warehouse.backends import DEFAULT_DATABASE, QueryLimits, Reader, Row, ServerAnalyst
from ledger.warehouse.reports import QueryRefused, run_report
from ledger.warehouse.service import read_analyst_key, service_address
from ledger.warehouse.service_client import (
    ServiceClient,
    ServiceError,
    ServiceTarget,
    ServiceUnauthorized,
    ServiceUnreachable,
)

T = TypeVar("T")


class WarehouseUnavailable(RuntimeError):
    """No warehouse answered (no `ofd load` running, or it failed): pages say so, nothing else
    fails."""


class ServiceReader:
    """Reads through the running `ofd load` of `data_dir`, presenting its analyst key.

    The service's address and key are read from `data_dir` once and kept, with one connection
    per worker thread (service_client.py): a check costs no file read and no handshake. They
    are read again when the service does not answer or refuses the key, as after a restart
    (a new port, and a new key if the file was replaced), and the request sent once more."""

    def __init__(self, data_dir: Path, limits: QueryLimits | None = None) -> None:
        self.database = DEFAULT_DATABASE
        self._data_dir = data_dir
        self._client = ServiceClient((limits or QueryLimits()).timeout)
        self._target: ServiceTarget | None = None

    def select(self, sql: str) -> list[Row]:
        return self._ask("/query", {"sql": sql})

    def report(self, name: str, params: dict[str, Any]) -> list[Row]:
        """A named report (reports.REPORTS): the service runs it as one engine call, with no SQL
        of ours to vet first (four calls for /query)."""
        return self._ask("/report", {"name": name, "params": params})

    def _ask(self, path: str, payload: dict[str, Any]) -> list[Row]:
        kept = self._target
        try:
            try:
                return self._client.ask(kept or self._located(), path, payload)
            except (ServiceUnreachable, ServiceUnauthorized):
                if kept is None:
                    raise  # read just now: the service's answer stands
                located = self._located()
                if located == kept:
                    raise  # nothing changed: the service's answer stands
            return self._client.ask(located, path, payload)
        except ServiceError as err:
            raise WarehouseUnavailable(str(err)) from err

    def _located(self) -> ServiceTarget:
        """The service's address and key as `data_dir` announces them now, kept for next time."""
        address = service_address(self._data_dir)
        if address is None:
            self._target = None
            raise WarehouseUnavailable(
                f"no warehouse service runs for {self._data_dir} (start `ofd load`)"
            )
        self._target = ServiceTarget(*address, read_analyst_key(self._data_dir))
        return self._target


def named_report(reader: Reader, name: str, params: dict[str, Any]) -> list[Row]:
    """A named report, run by the query service when reading through it, else here."""
    if isinstance(reader, ServiceReader):
        return reader.report(name, params)
    return run_report(reader, name, params)


def reader_for(data_dir: Path, clickhouse_url: str | None) -> Reader:
    if clickhouse_url:
        return ServerAnalyst(clickhouse_url, DEFAULT_DATABASE, QueryLimits())
    return ServiceReader(data_dir)


class Documents:
    """The cabinet's warehouse: `run(read, *args)` calls a sync read with the reader, in a
    worker thread, at most `concurrency` at once."""

    def __init__(self, reader: Reader, concurrency: int) -> None:
        self.reader = reader
        self._slots = asyncio.Semaphore(concurrency)

    async def run(self, read: Callable[..., T], *args: object) -> T:
        async with self._slots:
            try:
                return await asyncio.to_thread(read, self.reader, *args)
            except (WarehouseUnavailable, QueryRefused):
                raise  # QueryRefused: the caller's parameters (a period too long, ...)
            except Exception as err:  # the engine's own errors: the page says it is unavailable
                raise WarehouseUnavailable(f"the warehouse failed: {err}") from err
