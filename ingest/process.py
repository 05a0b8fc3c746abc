"""What every long-running ofd process (gateway, loader) does first about its own privileges.

Files it creates (journal segments, the secret, keys, the warehouse, spools) are private to its
user: journal records are what devices were answered, the secret signs every fiscal sign. Run as
root it still works (the embedded PostgreSQL then runs as a user of its own), but says so: an
operator should give it a user of its own.
"""

import os

import structlog

from ingest.logs import configure_logging

PRIVATE_UMASK = 0o077

log = structlog.get_logger(__name__)


def make_files_private() -> None:
    """Every file and folder created from now on is readable by this user only."""
    os.umask(PRIVATE_UMASK)


def warn_if_root(process: str) -> None:
    if os.geteuid() == 0:
        log.warning(
            "running as root",
            process=process,
            advice="run as an unprivileged user of its own; see README, Security",
        )


def start_process(process: str, log_level: str) -> None:
    """What `ofd serve`, `ofd load`, `ofd forward` and `ofd web` do first: private files, JSON
    logs, and a word when run as root."""
    make_files_private()
    configure_logging(log_level)
    warn_if_root(process)
