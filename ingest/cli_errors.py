"""An exception as the one line a person reads, naming the fix; the traceback only with --debug.

The mistakes people make starting things: a port another process has (the gateway's TCP server
says so through an ExceptionGroup of its TaskGroup, gRPC through a RuntimeError), a data
directory another gateway or loader holds (the journal's and the warehouse's lock files name the
holder's pid). Anything else is its type and message, and a hint that --debug shows the rest.
"""

import argparse
import errno
import re
from collections.abc import Iterator

from ledger.journal.local import JournalHeld
from ledger.warehouse.backends import WarehouseHeld

# What holds a port or a directory, by the command that found it held.
HOLDERS = {
    "serve": "gateway",
    "load": "loader",
    "web": "cabinet (ofd web)",
    "forward": "forwarder",
}
_BIND_OS = re.compile(r"address \('?([^',]*)'?, (\d+)\)")
_BIND_GRPC = re.compile(r"Failed to bind to address (\S+?):(\d+)\b")


def leaves(err: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups, or the exception itself."""
    if isinstance(err, BaseExceptionGroup):
        for inner in err.exceptions:
            yield from leaves(inner)
    else:
        yield err


def _option_of_port(args: argparse.Namespace, port: int) -> str:
    """The option that asked for `port` (--port, --control-port, ...), or --port."""
    for name, value in sorted(vars(args).items()):
        if name.endswith("port") and value == port and not isinstance(value, bool):
            return "--" + name.replace("_", "-")
    return "--port"


def _port_in_use(err: BaseException, args: argparse.Namespace) -> str | None:
    holder = HOLDERS.get(getattr(args, "command", ""), "process")
    if isinstance(err, OSError) and err.errno == errno.EADDRINUSE:
        found = _BIND_OS.search(str(err))
        if found is None:
            return f"a port is in use ({err.strerror}): pass other ports or stop the other {holder}"
        port = int(found[2])
    elif isinstance(err, RuntimeError) and (grpc := _BIND_GRPC.search(str(err))):
        port = int(grpc[2])
    else:
        return None
    return f"port {port} is in use: pass {_option_of_port(args, port)} or stop the other {holder}"


def _held(err: BaseException, args: argparse.Namespace) -> str | None:
    data_dir = getattr(args, "data_dir", "?")
    if isinstance(err, JournalHeld):
        pid = "" if err.pid is None else f" (pid {err.pid})"
        return (
            f"data directory {data_dir} is held by another gateway{pid}: use another"
            " --gateway-id (with the same --secret-file) or another --data-dir"
        )
    if isinstance(err, WarehouseHeld):
        pid = "" if err.pid is None else f" (pid {err.pid})"
        if getattr(args, "command", "") == "load":
            return (
                f"the warehouse of data directory {data_dir} is held by another loader{pid}:"
                " stop it, or give this one another --data-dir or a --clickhouse-url"
            )
        return (
            f"the warehouse of data directory {data_dir} is held by another process{pid}"
            " (an `ofd load --once`?): wait for it to finish, or run `ofd load` to answer queries"
        )
    return None


def describe(err: BaseException, args: argparse.Namespace) -> str | None:
    """The one line for a known mistake; None for anything else."""
    for leaf in leaves(err):
        line = _port_in_use(leaf, args) or _held(leaf, args)
        if line is not None:
            return line
    return None


def unexpected(err: BaseException) -> str:
    """An error nothing above knows: its type and message, and where the traceback is."""
    leaf = next((e for e in leaves(err)), err)
    text = str(leaf).strip().splitlines()[0] if str(leaf).strip() else ""
    return f"{type(leaf).__name__}: {text} (run again with --debug for the traceback)"
