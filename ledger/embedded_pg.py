"""The embedded default for device state: PostgreSQL from the `pgserver` wheel, in the data dir.

pgserver ships the PostgreSQL binaries, runs initdb on first use and listens on a Unix socket
in the data directory only, so nothing else on the machine is touched. As root it runs the server
as a system user of its own, since PostgreSQL refuses to run as root.
"""

import asyncio
import warnings
from pathlib import Path

# A Unix socket path must fit in 107 bytes; pgserver puts the socket in the data directory.
MAX_SOCKET_DIR_LENGTH = 90


def start_embedded_postgres(directory: Path) -> str:
    """Starts (or joins) the server in `directory`; returns its DSN. Blocking: seconds at first
    start (initdb), milliseconds afterwards."""
    directory = directory.resolve()
    if len(str(directory)) > MAX_SOCKET_DIR_LENGTH:
        raise ValueError(
            f"data directory path too long for a Unix socket ({len(str(directory))} > "
            f"{MAX_SOCKET_DIR_LENGTH} characters): choose a shorter --data-dir"
        )
    directory.mkdir(parents=True, exist_ok=True)
    # cleanup_mode="stop": the server stops when the last process using it exits cleanly; after
    # a crash it is still running and the restarted gateway joins it.
    with warnings.catch_warnings():
        # pgserver's import probes XDG_RUNTIME_DIR and warns when unset; imported here so that
        # only the embedded mode pays for it (and prints nothing).
        warnings.simplefilter("ignore")
        from pgserver import get_server  # type: ignore[attr-defined]  # noqa: PLC0415

        server = get_server(directory, cleanup_mode="stop")
    uri: str = server.get_uri()
    return uri


async def database_url(data_dir: Path, url: str | None) -> str:
    """The DSN every process of a data directory uses: `url` when given (a PostgreSQL of the
    operator's), else the embedded server in DATA_DIR/pg, started or joined in a worker thread."""
    if url:
        return url
    return await asyncio.to_thread(start_embedded_postgres, data_dir / "pg")
