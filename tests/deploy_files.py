"""Helpers for the tests of deploy/: the CLI as the manifests and units would run it."""

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

from ingest.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
# Read by libraries or tools, not by our CLI: libpq's and asyncpg's password variables, the Kafka
# command-line tools' heap.
FOREIGN_ENV = {"PGPASSWORD", "PGPASSFILE", "KAFKA_HEAP_OPTS"}
COMMANDS = (["serve"], ["load"])


def cli_args(command: Sequence[str], env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What `ofd <command>` would run with, under `env` and no other OFD_* variable."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OFD_")}
    with mock.patch.dict(os.environ, {**clean, **(env or {})}, clear=True):
        return vars(build_parser().parse_args(list(command)))


def read_by_cli(name: str, value: str) -> bool:
    """Whether `ofd serve` or `ofd load` takes the variable `name` into account: setting it
    changes what one of them would run with (a name nothing reads is a silent misconfiguration)."""
    probes = [value, str(int(value) + 1) if value.isdigit() else value + "x"]
    for command in COMMANDS:
        base = cli_args(command)
        for probe in probes:
            try:
                if cli_args(command, {name: probe}) != base:
                    return True
            except SystemExit:  # the value was refused: so it was read, and checked
                return True
    return False


def env_file(path: Path) -> dict[str, str]:
    """NAME=value lines of an EnvironmentFile= (comments and blank lines skipped)."""
    pairs = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            pairs[name] = value
    return pairs
