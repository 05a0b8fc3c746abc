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

from ingest.cli_options import option
from ingest.settings import DEFAULT_DATA_DIR
from ledger.embedded_pg import database_url
from ledger.errors import RegistryError
from ledger.migrate import migrate

EXIT_FAILED = 1


def add_database_options(p: argparse.ArgumentParser) -> None:
    option(
        p,
        "--data-dir",
        env="OFD_DATA_DIR",
        default=str(DEFAULT_DATA_DIR),
        help="the gateway's data directory (its embedded PostgreSQL, the loader's service)",
    )
    option(
        p,
        "--database-url",
        env="OFD_DATABASE_URL",
        default="",
        help="PostgreSQL DSN; empty joins the embedded server in DATA_DIR/pg",
    )


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
