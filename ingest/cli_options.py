"""The conventions every `ofd` command shares, on argparse.

argparse is kept (no click or typer): with the few pieces here it does all the CLI needs.

- `option()` declares an option with its help text, its default and its environment variable;
  the help shows both, `(default 7777; env OFD_PORT)`.
- A variable's value is converted and checked after parsing, by the command that uses it: a bad
  one (OFD_PORT=abc) is a one-line error naming the variable, and never breaks `ofd --help` or
  a command that does not read it.
- The global options (`--control`, `--key`, `--key-file`, `--json`, `--debug`) are accepted
  before or after the subcommand: each subcommand has copies whose default is SUPPRESS, so a
  copy sets the value only when given.
- A usage mistake is one line on stderr (exit 2), naming `--help`; `CliError` is a mistake found
  later (exit 1 unless it says otherwise), printed as one line by `ingest.cli.main`.
"""

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

from ingest.settings import DEFAULT_CONTROL_PORT, DEFAULT_DATA_DIR, LOG_LEVELS

EXIT_FAILED = 1
EXIT_USAGE = 2
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")
GLOBAL_TITLE = "global options (before or after the subcommand)"


class CliError(Exception):
    """A mistake the person at the terminal can fix: printed as one line, no traceback."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class FromEnv:
    """A default taken from an environment variable, converted once the command is known."""

    variable: str
    raw: str
    convert: Callable[[str], Any]
    choices: tuple[Any, ...] | None = None

    def resolve(self) -> Any:
        """The converted value; ValueError naming the variable when it cannot be."""
        try:
            value = self.convert(self.raw)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as err:
            kind = KINDS.get(self.convert, "valid")
            detail = str(err) if isinstance(err, argparse.ArgumentTypeError) else f"not {kind}"
            raise ValueError(
                f"environment variable {self.variable}={self.raw!r} is invalid ({detail}):"
                f" fix or unset {self.variable}"
            ) from err
        if self.choices is not None and value not in self.choices:
            raise ValueError(
                f"environment variable {self.variable}={self.raw!r} is invalid: choose from"
                f" {', '.join(map(str, self.choices))}, or unset {self.variable}"
            )
        return value


def boolean(text: str) -> bool:
    """An on/off environment variable: 1/true/yes/on or 0/false/no/off (empty is off)."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError("say 1, true, yes or on; 0, false, no or off")


KINDS: dict[Callable[[str], Any], str] = {int: "an integer", float: "a number"}


def option(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *flags: str,
    help: str,
    env: str | None = None,
    default: Any = None,
    shown: str | None = None,
    **kwargs: Any,
) -> argparse.Action:
    """One option: its help, its default (`shown` replaces how it is printed) and `env`, the
    variable that replaces the default. `type`, `choices`, `action` and the rest go to argparse."""
    convert = kwargs.get("type") or str
    if kwargs.get("action") == "store_true":
        convert = boolean
        default = bool(default)
    if env is not None and env in os.environ:
        choices = kwargs.get("choices")
        value: Any = FromEnv(env, os.environ[env], convert, tuple(choices) if choices else None)
    else:
        value = default
    action = parser.add_argument(*flags, help=help, default=value, **kwargs)
    action.env = env  # type: ignore[attr-defined]
    action.shown_default = default if shown is None else shown  # type: ignore[attr-defined]
    return action


def positional(parser: argparse.ArgumentParser, name: str, *, help: str, **kwargs: Any) -> None:
    """A positional argument; every one has help text too."""
    parser.add_argument(name, help=help, **kwargs)


def _nothing(value: Any) -> bool:
    """A default not worth showing: none, off, empty (0 is shown: it often means something)."""
    return value is None or value is False or value in ("", [], argparse.SUPPRESS)


def described(action: argparse.Action) -> str:
    """`(default X; env Y)` for an option: what the help appends to its text."""
    parts = []
    shown = getattr(action, "shown_default", action.default)
    if action.required:
        parts.append("required")
    elif not _nothing(shown):
        parts.append(f"default {shown}")
    env = getattr(action, "env", None)
    if env:
        parts.append(f"env {env}")
    return f" ({'; '.join(parts)})" if parts else ""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's help with each option's default and environment variable appended."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.option_strings and action.help is not argparse.SUPPRESS:
            text += described(action).replace("%", "%%")
        return text


class OfdParser(argparse.ArgumentParser):
    """argparse with one-line usage errors and environment defaults resolved after parsing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, rest = super().parse_known_args(args, namespace)
        for name, value in vars(parsed).items():
            if isinstance(value, FromEnv):
                try:
                    setattr(parsed, name, value.resolve())
                except ValueError as err:
                    self.exit(EXIT_USAGE, f"{self.prog}: error: {err}\n")
        return parsed, rest


def version() -> str:
    try:
        return metadata.version("ofd-gateway")
    except metadata.PackageNotFoundError:
        return "unknown"


def default_key_file() -> str:
    return str(Path(os.environ.get("OFD_DATA_DIR") or DEFAULT_DATA_DIR) / "operator.key")


def _add_globals(group: argparse._ArgumentGroup, copy: bool) -> None:
    """The global options; on a subcommand (`copy`) they set a value only when given."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if copy else value

    taken = getattr(group, "_option_string_actions", {})
    for flags, env, value, text, extra in (
        (
            ("--control",),
            "OFD_CONTROL",
            f"127.0.0.1:{DEFAULT_CONTROL_PORT}",
            "control API address, HOST:PORT",
            {"metavar": "HOST:PORT"},
        ),
        (
            ("--key",),
            "OFD_CONTROL_KEY",
            "",
            "control API key (else the --key-file)",
            {},
        ),
        (
            ("--key-file",),
            None,
            default_key_file(),
            "read the control API key from this file when neither --key nor OFD_CONTROL_KEY is"
            " set (`ofd serve` writes DATA_DIR/operator.key; the default follows OFD_DATA_DIR)",
            {"metavar": "PATH"},
        ),
        (
            ("--control-ca",),
            "OFD_CONTROL_CA",
            "",
            "speak TLS to the control API, trusting this CA's PEM file (a gateway started with"
            " --control-tls-cert)",
            {"metavar": "PATH"},
        ),
        (
            ("--control-cert",),
            "OFD_CONTROL_CERT",
            "",
            "this client's certificate (PEM), for a control API that requires one",
            {"metavar": "PATH"},
        ),
        (
            ("--control-cert-key",),
            "OFD_CONTROL_CERT_KEY",
            "",
            "the private key (PEM) of --control-cert",
            {"metavar": "PATH"},
        ),
        (("--json",), None, False, "print JSON instead of a table", {"action": "store_true"}),
        (
            ("--debug",),
            "OFD_DEBUG",
            False,
            "show the traceback of an error",
            {"action": "store_true"},
        ),
    ):
        if copy and any(flag in taken for flag in flags):
            continue  # the subcommand has an option of that name: its own wins
        action = option(group, *flags, help=text, env=env, default=value, **extra)
        if copy:
            action.default = default(value)


def add_global_options(parser: argparse.ArgumentParser) -> None:
    """The global options on the top-level parser, and `--version`."""
    _add_globals(parser.add_argument_group(GLOBAL_TITLE), copy=False)
    parser.add_argument(
        "--version", action="version", version=f"ofd {version()}", help="print the version"
    )


def subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every parser below `parser`, depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases share a parser
                yield child
                yield from subparsers(child)


def spread_global_options(root: argparse.ArgumentParser) -> None:
    """Copies of the global options on every subcommand, so they may follow it."""
    for parser in subparsers(root):
        _add_globals(parser.add_argument_group(GLOBAL_TITLE), copy=True)


def fail(message: str) -> None:
    """One line on stderr, as every error of the CLI is."""
    print(f"error: {message}", file=sys.stderr)


def add_log_level(parser: argparse.ArgumentParser, detail: str = "") -> None:
    """--log-level, the same on every long-running command."""
    option(
        parser,
        "--log-level",
        choices=LOG_LEVELS,
        env="OFD_LOG_LEVEL",
        default="info",
        help=f"JSON logs on stderr{detail}",
    )


def add_data_dir(parser: argparse.ArgumentParser, holds: str) -> None:
    """--data-dir, the same on every command; `holds` says what this command finds there."""
    option(
        parser,
        "--data-dir",
        env="OFD_DATA_DIR",
        default=str(DEFAULT_DATA_DIR),
        help=f"the gateway's data directory: {holds}",
    )


def add_database_url(parser: argparse.ArgumentParser) -> None:
    """--database-url, the same on every command that reaches the registry."""
    option(
        parser,
        "--database-url",
        env="OFD_DATABASE_URL",
        default="",
        help="PostgreSQL DSN; empty: the embedded server in DATA_DIR/pg (started or joined)",
    )
