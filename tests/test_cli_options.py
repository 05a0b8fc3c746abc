"""The CLI's conventions (ingest/cli_options.py): every option's help shows its default and its
environment variable, a bad variable is one line naming it and never breaks --help, --version,
and the global options before or after the subcommand."""

import argparse
import subprocess
import sys

import pytest

from ingest.cli import build_parser, main
from ingest.cli_options import EXIT_USAGE, described, subparsers

NO_DEFAULT: tuple[object, ...] = ("", [], argparse.SUPPRESS)


def _options() -> list[tuple[str, argparse.Action]]:
    root = build_parser()
    found = []
    for parser in [root, *subparsers(root)]:
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            found.append((parser.prog, action))
    return found


def test_every_option_has_help_and_shows_its_default_and_variable() -> None:
    options = _options()
    assert len(options) > 200  # every command's, and the global options on each
    for prog, action in options:
        name = action.option_strings[0] if action.option_strings else action.dest
        assert action.help, f"{prog} {name} has no help text"
        if not action.option_strings or isinstance(action, argparse._VersionAction):
            continue
        suffix = described(action)
        shown = getattr(action, "shown_default", action.default)
        if not action.required and not (shown is None or shown is False or shown in NO_DEFAULT):
            assert "default " in suffix, f"{prog} {name}: {suffix!r}"
        env = getattr(action, "env", None)
        if env:
            assert f"env {env}" in suffix, f"{prog} {name}: {suffix!r}"


def test_serve_help_names_default_and_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps help lines
    assert "(default 7777; env OFD_PORT)" in out
    assert "(default 64M; env OFD_PARTIAL_FRAME_BUDGET)" in out
    assert "(default 127.0.0.1:7778; env OFD_CONTROL)" in out  # a global option, after serve


def test_a_bad_variable_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OFD_PORT", "abc")
    with pytest.raises(SystemExit) as done:
        main(["serve"])
    assert done.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err == (
        "ofd serve: error: environment variable OFD_PORT='abc' is invalid (not an integer):"
        " fix or unset OFD_PORT\n"
    )
    monkeypatch.setenv("OFD_JOURNAL", "kafak")
    monkeypatch.setenv("OFD_PORT", "7777")
    with pytest.raises(SystemExit):
        main(["serve"])
    assert "OFD_JOURNAL='kafak' is invalid: choose from local, kafka" in capsys.readouterr().err


def test_a_bad_variable_breaks_neither_help_nor_other_commands(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OFD_PORT", "abc")
    for argv in (["--help"], ["serve", "--help"]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0
    args = build_parser().parse_args(["kkm", "list"])  # serve's variable is serve's business
    assert args.command == "kkm"
    capsys.readouterr()


def test_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ingest.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout.startswith("ofd 0.")


@pytest.mark.parametrize(
    "argv",
    [
        ["--control", "h:1", "--key", "k", "--json", "--debug", "kkm", "list"],
        ["kkm", "list", "--control", "h:1", "--key", "k", "--json", "--debug"],
        ["kkm", "--control", "h:1", "list", "--key", "k", "--json", "--debug"],
    ],
)
def test_global_options_before_or_after_the_subcommand(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.control, args.key, args.json, args.debug) == ("h:1", "k", True, True)


def test_global_options_keep_their_defaults_when_not_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OFD_CONTROL", "10.0.0.1:7778")
    monkeypatch.delenv("OFD_CONTROL_KEY", raising=False)
    args = build_parser().parse_args(["kkm", "list"])
    assert (args.control, args.key, args.json, args.debug) == ("10.0.0.1:7778", "", False, False)


def test_a_usage_mistake_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["kkm", "list", "--status", "nope"])
    assert done.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("ofd kkm list: error: argument --status: invalid choice: 'nope'")
    assert err.endswith("(see ofd kkm list --help)\n")
