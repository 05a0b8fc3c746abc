"""What the cabinet's operator commands share: the database options and a run against it.

`ofd web-user`, `ofd web-notice` and `ofd web-subscription` each connect to the gateway's
PostgreSQL (a DSN, or the embedded server of DATA_DIR), migrate it, act, and print one line:
the result, or the domain's refusal as `error: ...` with exit code EXIT_FAILED.
"""

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg

from ingest.cli_options import EXIT_FAILED, add_data_dir, add_database_url
from ledger.embedded_pg import database_url
from ledger.errors import RegistryError
from ledger.migrate import migrate


def add_database_options(p: argparse.ArgumentParser) -> None:
    add_data_dir(p, "its embedded PostgreSQL, the loader's query service")
    add_database_url(p)


def run_with_database(
    args: argparse.Namespace, act: Callable[[asyncpg.Connection], Awaitable[str]]
) -> int:
    """Runs `act` on a migrated connection and prints what it returns."""

    async def connected() -> str:
        conn = await asyncpg.connect(
            await database_url(Path(args.data_dir), args.database_url or None)
        )
        try:
            await migrate(conn)
            return await act(conn)
        finally:
            await conn.close()

    try:
        print(asyncio.run(connected()))
    except RegistryError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    return 0
