"""A real PostgreSQL server from the system's binaries (Debian's postgresql package), on loopback.

The tests start their own server on a free port below the ephemeral range, in a directory of
their own, with trust authentication on loopback only: nothing of the machine's is used or
changed. A streaming replica of a running server (`replica_of`) and its promotion serve the
failover tests.

PostgreSQL refuses to run as root; as root the server runs as the system's `postgres` user, which
then owns the data directory.
"""

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from simulators.stage.ports import HOST, free_ports
from simulators.stage.processes import log_tail

PORTS = range(15432, 15632)
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
SERVER_USER = "postgres"
# Tests trade crash safety of the server for speed: the gateway's durability is what they test,
# and a test never crashes PostgreSQL's machine. Replicas and failover keep the defaults.
FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


class PostgresFailed(RuntimeError):
    """The server did not start or stop; the message carries the end of its log."""


def binaries() -> Path:
    """The newest installed PostgreSQL's bin directory (OFD_PG_BIN overrides)."""
    override = os.environ.get("OFD_PG_BIN")
    if override:
        return Path(override)
    installed = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3])
    )
    if not installed:
        raise PostgresFailed(
            "no PostgreSQL binaries in /usr/lib/postgresql: apt-get install postgresql "
            "(or set OFD_PG_BIN to a bin directory)"
        )
    return installed[-1].parent


def _server_user() -> pwd.struct_passwd | None:
    """The user to run the server as, when we are root (else None: ourselves)."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwnam(SERVER_USER)


class PostgresServer:
    """One postmaster on 127.0.0.1:port with its data in `directory` (created if absent)."""

    def __init__(
        self,
        directory: Path,
        port: int,
        *,
        fast: bool = True,
        settings: tuple[str, ...] = (),
        host: str = HOST,
    ) -> None:
        self.directory = directory
        self.port = port
        self.fast = fast
        self.settings = settings  # extra `name=value` server settings
        self.host = host  # where it listens (and is reached); loopback unless a test network
        self._bin = binaries()
        self._user = _server_user()
        self.log_path = directory.parent / f"{directory.name}.log"

    @property
    def url(self) -> str:
        """DSN of the server without a database: append `/name`."""
        return f"postgresql://postgres@{self.host}:{self.port}"

    # --- lifecycle ---

    @classmethod
    def create(
        cls,
        parent: Path | None = None,
        *,
        fast: bool = True,
        settings: tuple[str, ...] = (),
        host: str = HOST,
    ) -> Self:
        """initdb in a new directory and start on the first free port that binds. A `host`
        other than loopback is trusted from its /24 (a test network of the harness's own)."""
        directory = Path(tempfile.mkdtemp(prefix="pg-", dir=parent))
        data = directory / "data"
        for port in free_ports(PORTS, host):
            server = cls(data, port, fast=fast, settings=settings, host=host)
            if not data.exists():
                server._initdb()
            try:
                server.start()
            except PostgresFailed:
                continue
            return server
        raise PostgresFailed(f"no free port for PostgreSQL in {PORTS.start}-{PORTS.stop - 1}")

    @classmethod
    def replica_of(cls, primary: "PostgresServer", parent: Path | None = None) -> Self:
        """A streaming replica: a base backup of `primary` with standby settings, started, on
        the primary's host (so the same clients and networks reach it)."""
        directory = Path(tempfile.mkdtemp(prefix="pg-replica-", dir=parent))
        data = directory / "data"
        server = cls(data, 0, fast=False, host=primary.host)
        server._own(directory)
        server._run(
            "pg_basebackup", "-h", primary.host, "-p", str(primary.port), "-U", "postgres",
            "-D", str(data), "-R", "-X", "stream", "--checkpoint=fast",
        )  # fmt: skip
        for port in free_ports(PORTS, primary.host):
            server.port = port
            try:
                server.start()
            except PostgresFailed:
                continue
            return server
        raise PostgresFailed("no free port for the replica")

    def _own(self, directory: Path) -> None:
        if self._user is not None:
            os.chown(directory, self._user.pw_uid, self._user.pw_gid)

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run(
            [str(self._bin / tool), *args],
            capture_output=True,
            text=True,
            user=self._user.pw_uid if self._user else None,
            group=self._user.pw_gid if self._user else None,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise PostgresFailed(f"{tool} failed ({result.returncode}): {result.stderr.strip()}")

    def _initdb(self) -> None:
        self._own(self.directory.parent)
        self._run(
            "initdb", "-D", str(self.directory), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
        )  # fmt: skip
        if self.host != HOST:
            network = self.host.rsplit(".", 1)[0] + ".0/24"
            with (self.directory / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {network} trust\nhost replication all {network} trust\n")

    def start(self) -> None:
        options = [f"-p {self.port}", f"-c listen_addresses={self.host}"]
        # The socket goes in the data directory: /var/run/postgresql may not exist or be ours.
        options.append(f"-k {self.directory}")
        if self.fast:
            options += [f"-c {setting}" for setting in FAST_SETTINGS]
        options += [f"-c {setting}" for setting in self.settings]
        try:
            self._run(
                "pg_ctl", "start", "-D", str(self.directory), "-l", str(self.log_path),
                "-w", "-t", str(int(READY_TIMEOUT)), "-o", " ".join(options),
            )  # fmt: skip
        except PostgresFailed as err:
            raise PostgresFailed(f"{err}\n{log_tail(self.log_path)}") from err
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            probe = subprocess.run(
                [str(self._bin / "pg_isready"), "-h", self.host, "-p", str(self.port), "-q"],
                check=False,
            )
            if probe.returncode == 0:
                return
            time.sleep(0.1)
        raise PostgresFailed(f"PostgreSQL on port {self.port} not ready\n{log_tail(self.log_path)}")

    def promote(self) -> None:
        """Ends recovery on a replica: it becomes a writable primary."""
        self._run("pg_ctl", "promote", "-D", str(self.directory), "-w")

    def stop(self, mode: str = "fast") -> None:
        """`fast` rolls back sessions and shuts down cleanly; `immediate` is a crash."""
        if not (self.directory / "postmaster.pid").exists():
            return
        self._run("pg_ctl", "stop", "-D", str(self.directory), "-m", mode, "-w")

    def remove(self) -> None:
        """Stops the server (if running) and deletes its directory."""
        with contextlib.suppress(PostgresFailed):
            self.stop("immediate")
        shutil.rmtree(self.directory.parent, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
