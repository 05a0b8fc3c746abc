"""`ofd org|point|kkm|key|whoami ...`: the control API from the command line.

Every call presents a key: `--key`, else OFD_CONTROL_KEY, else the file `--key-file` (default
$OFD_DATA_DIR/operator.key, written by `ofd serve` on first start). An answer prints as a table
(lists; `--csv` too) or `key  value` lines, or JSON with `--json` (ingest/control_output.py). A
refusal is one line naming the gRPC status (`not_found: no organization 9`), and a missing or
refused key names where the key came from and how to pass another.
"""

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from ingest.cli_options import CliError, option, positional
from ingest.control.client import KEY_ENV, ControlClient
from ingest.control_output import render_answer
from ingest.tls import ClientTls
from ledger.lifecycle import DeviceStatus
from ofdproto.control.v1 import control_pb2 as pb

IIN_DIGITS = 12
MICRO = 1_000_000
MAX_MICRO_DEGREES = 180 * MICRO
EXIT_USAGE = 2
STATUS_CHOICES = {
    DeviceStatus.AWAITING_REGISTRATION.value: pb.DEVICE_STATUS_AWAITING_REGISTRATION,
    DeviceStatus.REGISTERED.value: pb.DEVICE_STATUS_REGISTERED,
    DeviceStatus.AWAITING_DEREGISTRATION.value: pb.DEVICE_STATUS_AWAITING_DEREGISTRATION,
    DeviceStatus.DEREGISTERED.value: pb.DEVICE_STATUS_DEREGISTERED,
}
ROLE_CHOICES = {
    "operator": pb.ROLE_OPERATOR,
    "organization": pb.ROLE_ORGANIZATION,
    "service_centre": pb.ROLE_SERVICE_CENTRE,
}
KEY_HINT = (
    "pass --key KEY, set OFD_CONTROL_KEY, or point --key-file at the gateway's"
    " DATA_DIR/operator.key"
)


# --- values checked before anything is sent ---


def iin(text: str) -> str:
    """A 12-digit IIN or BIN."""
    value = text.strip()
    if len(value) != IIN_DIGITS or not value.isdigit():
        raise argparse.ArgumentTypeError(
            f"an IIN or BIN is {IIN_DIGITS} digits, not {text!r}"
            f" ({len(value)} characters{'' if value.isdigit() else ', not all digits'})"
        )
    return value


def micro_degrees(text: str) -> int:
    """A coordinate in micro-degrees (degrees x 1,000,000), as the protocol carries it."""
    try:
        value = int(text)
    except ValueError:
        try:
            degrees = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a number of micro-degrees (degrees x 1,000,000, e.g. 43238949)"
            ) from None
        raise argparse.ArgumentTypeError(
            f"{text} looks like degrees: the unit is micro-degrees (degrees x 1,000,000),"
            f" pass {round(degrees * MICRO)}"
        ) from None
    if not 0 <= value <= MAX_MICRO_DEGREES:
        raise argparse.ArgumentTypeError(
            f"{value} micro-degrees is out of range: 0 to {MAX_MICRO_DEGREES}"
            " (degrees x 1,000,000, north and east)"
        )
    return value


def system_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a system id is a number, not {text!r}") from None
    if not 0 < value < 1 << 32:
        raise argparse.ArgumentTypeError(f"a system id is 1 to {(1 << 32) - 1}, not {value}")
    return value


# --- the call ---


def key_and_source(args: argparse.Namespace) -> tuple[str | None, str]:
    """The key to present and where it came from, in words for an error message."""
    if args.key:
        from_env = os.environ.get(KEY_ENV) == args.key
        return args.key, KEY_ENV if from_env else "--key"
    try:
        key = Path(args.key_file).read_text().strip()
    except OSError as err:
        return None, (
            f"none: --key and {KEY_ENV} are unset and --key-file {args.key_file} cannot be read"
            f" ({err.strerror})"
        )
    if not key:
        return None, f"none: --key and {KEY_ENV} are unset and --key-file {args.key_file} is empty"
    return key, f"--key-file {args.key_file}"


def client_tls(args: argparse.Namespace) -> ClientTls | None:
    """TLS toward the control API when --control-ca is given (with a client certificate when
    --control-cert and --control-cert-key are)."""
    if not args.control_ca:
        if args.control_cert or args.control_cert_key:
            raise CliError("--control-cert needs --control-ca (the CA that signed the gateway's)")
        return None
    return ClientTls(args.control_ca, args.control_cert or None, args.control_cert_key or None)


def call(args: argparse.Namespace, method: str, request: Any) -> Any:
    """One control call; a refusal becomes a CliError of one line."""
    key, source = key_and_source(args)
    client = ControlClient(args.control, key, client_tls(args))
    try:
        return client.call(method, request)
    except grpc.RpcError as err:
        raise CliError(_refusal(err, args.control, key, source)) from err
    finally:
        client.close()


def _refusal(err: grpc.RpcError, control: str, key: str | None, source: str) -> str:
    code, details = err.code(), err.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return (
            f"the control API at {control} is unreachable ({details}): is `ofd serve` running?"
            " Pass its address with --control HOST:PORT (OFD_CONTROL)"
        )
    if code == grpc.StatusCode.UNAUTHENTICATED:
        if key is None:
            return (
                f"unauthenticated: the control API at {control} wants a key and got {source}:"
                f" {KEY_HINT}"
            )
        return (
            f"unauthenticated: the control API at {control} refused the key from {source}"
            f" ({details}): {KEY_HINT}"
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the control API at {control} did not answer in time: is the gateway overloaded?"
    return f"{code.name.lower()}: {details}"


def _print(args: argparse.Namespace, answer: Any) -> None:
    fmt = "json" if args.json else "csv" if getattr(args, "csv", False) else "table"
    print(render_answer(answer, fmt))


def command(
    sub: Any,
    name: str,
    help_text: str,
    method: str,
    build: Callable[[argparse.Namespace], Any],
    *,
    listing: bool = False,
) -> argparse.ArgumentParser:
    """A subcommand that makes one control call and prints its answer."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    if listing:
        option(parser, "--csv", action="store_true", help="print CSV instead of a table")

    def run(args: argparse.Namespace) -> int:
        _print(args, call(args, method, build(args)))
        return 0

    parser.set_defaults(run=run)
    return parser


def _paging(parser: argparse.ArgumentParser, what: str) -> None:
    option(parser, "--after", type=int, default=0, help=f"paging: {what} above this")
    option(parser, "--limit", type=int, default=0, help="at most this many (<= 1000; 0: 1000)")


def _system_id(parser: argparse.ArgumentParser) -> None:
    positional(parser, "system_id", type=system_id, help="the device's system id")


# --- organizations and trade points ---


def _org_fields(p: argparse.ArgumentParser) -> None:
    option(p, "--title", required=True, help="the organization's name, as on receipts")
    option(p, "--address", default="", help="legal address (Russian)")
    option(p, "--address-kz", default="", help="legal address (Kazakh)")
    option(p, "--oked", default="", help="main activity code (OKED), e.g. 47111")
    option(p, "--head", default="", help="the name of the organization's head (director)")


def _point_fields(p: argparse.ArgumentParser) -> None:
    option(p, "--title", required=True, help="the trade point's name")
    option(p, "--address", default="", help="address (Russian)")
    option(p, "--address-kz", default="", help="address (Kazakh)")
    for flag, what in (("--lat", "latitude"), ("--lon", "longitude")):
        option(
            p,
            flag,
            type=micro_degrees,
            default=0,
            metavar="MICRODEG",
            help=f"{what} in micro-degrees: degrees x 1,000,000 (43.238949 is 43238949)",
        )


def add_org_and_point(sub: Any) -> None:
    org = sub.add_parser("org", help="organizations").add_subparsers(dest="action", required=True)
    p = command(
        org,
        "add",
        "add an organization",
        "AddOrganization",
        lambda a: pb.Organization(
            iin=a.iin,
            title=a.title,
            address=a.address,
            address_kz=a.address_kz,
            oked=a.oked,
            head=a.head,
        ),
    )
    option(p, "--iin", type=iin, required=True, help="the taxpayer's 12-digit IIN or BIN")
    _org_fields(p)
    p = command(
        org,
        "update",
        "change an organization's title, addresses, OKED and head (never its IIN)",
        "UpdateOrganization",
        lambda a: pb.Organization(
            id=a.id,
            title=a.title,
            address=a.address,
            address_kz=a.address_kz,
            oked=a.oked,
            head=a.head,
        ),
    )
    option(p, "--id", type=int, required=True, help="organization id")
    _org_fields(p)
    p = command(
        org,
        "list",
        "organizations in the caller's scope",
        "ListOrganizations",
        lambda a: pb.OrganizationFilter(iin=a.iin or "", after=a.after, limit=a.limit),
        listing=True,
    )
    option(p, "--iin", type=iin, help="only the organization with this IIN or BIN")
    _paging(p, "organization ids")

    point = sub.add_parser("point", help="trade points").add_subparsers(
        dest="action", required=True
    )
    p = command(
        point,
        "add",
        "add a trade point",
        "AddTradePoint",
        lambda a: pb.TradePoint(
            organization_id=a.org,
            title=a.title,
            address=a.address,
            address_kz=a.address_kz,
            latitude=a.lat,
            longitude=a.lon,
        ),
    )
    option(p, "--org", type=int, required=True, help="organization id (ofd org list)")
    _point_fields(p)
    p = command(
        point,
        "update",
        "change a trade point (all fields; coordinates at most once a day)",
        "UpdateTradePoint",
        lambda a: pb.TradePoint(
            id=a.id,
            title=a.title,
            address=a.address,
            address_kz=a.address_kz,
            latitude=a.lat,
            longitude=a.lon,
        ),
    )
    option(p, "--id", type=int, required=True, help="trade point id")
    _point_fields(p)
    p = command(
        point,
        "list",
        "trade points, of one organization or all in the caller's scope",
        "ListTradePoints",
        lambda a: pb.TradePointFilter(organization_id=a.org, after=a.after, limit=a.limit),
        listing=True,
    )
    option(p, "--org", type=int, default=0, help="only this organization's (0: all)")
    _paging(p, "point ids")


# --- devices ---


def _confirm_reset(args: argparse.Namespace) -> None:
    """A new token makes the running register's one invalid: asked on a terminal, else --yes."""
    if getattr(args, "deprecated_name", False):
        print(
            "warning: `ofd kkm token` is deprecated: it issues a NEW token, as `ofd kkm"
            " reset-token` does; `ofd kkm get-token` shows the current one",
            file=sys.stderr,
        )
    if args.yes:
        return
    what = (
        f"a new token for device {args.system_id}: the register's current token stops working"
        " (INVALID_TOKEN) until the new one is typed into it"
    )
    if not sys.stdin.isatty():
        raise CliError(
            f"refusing to issue {what}; pass --yes to confirm (stdin is not a terminal);"
            " to see the current token: ofd kkm get-token",
            EXIT_USAGE,
        )
    answer = input(f"Issue {what}? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise CliError("no new token issued", EXIT_USAGE)


def _confirmed_ref(args: argparse.Namespace) -> pb.DeviceRef:
    _confirm_reset(args)
    return _device_ref(args)


def _add_tokens(kkm: Any) -> None:
    p = command(
        kkm,
        "get-token",
        "the device's current token, to type into the register (audited)",
        "GetToken",
        lambda a: pb.DeviceRef(system_id=a.system_id),
    )
    _system_id(p)
    for name, deprecated in (("reset-token", False), ("token", True)):
        help_text = (
            "issue a NEW token (the register's current one stops working; asks first)"
            if not deprecated
            else "deprecated: the same as reset-token"
        )
        p = command(
            kkm,
            name,
            help_text,
            "IssueToken",
            _confirmed_ref,
        )
        _system_id(p)
        option(p, "--yes", action="store_true", help="do not ask (needed when not on a terminal)")
        p.set_defaults(deprecated_name=deprecated)


def add_devices(sub: Any) -> Any:
    kkm = sub.add_parser("kkm", help="cash registers").add_subparsers(dest="action", required=True)
    p = command(
        kkm,
        "add",
        "add a device awaiting registration (its first token is issued: ofd kkm get-token)",
        "AddDevice",
        lambda a: pb.Device(
            system_id=a.system_id,
            kgd_registration_number=a.kgd,
            serial_number=a.serial,
            model=a.model,
            year=a.year,
            trade_point_id=a.point,
        ),
    )
    option(p, "--point", type=int, required=True, help="trade point id (ofd point list)")
    option(p, "--kgd", required=True, help="the KGD's registration number of the register")
    option(p, "--serial", required=True, help="the register's serial number")
    option(p, "--model", required=True, help="the register's model")
    option(p, "--year", type=int, required=True, help="year of manufacture")
    option(p, "--system-id", type=int, default=0, help="its system id (0: the next free one)")
    for name, help_text, method in (
        ("activate", "mark registered at the KGD (the operator's override)", "ActivateDevice"),
        ("show", "a device's registration and exchange state", "ShowDevice"),
        ("deregister-request", "ask the KGD to deregister", "RequestDeregistration"),
        ("deregister-cancel", "withdraw the deregistration request", "CancelDeregistration"),
        ("deregister", "mark deregistered at the KGD", "Deregister"),
        ("unblock", "lift a block", "UnblockDevice"),
    ):
        _system_id(command(kkm, name, help_text, method, _device_ref))
    _add_tokens(kkm)
    p = command(
        kkm,
        "reregister",
        "re-register (awaiting registration again), optionally at another trade point",
        "Reregister",
        lambda a: pb.Reregistration(system_id=a.system_id, trade_point_id=a.point),
    )
    _system_id(p)
    option(p, "--point", type=int, default=0, help="the new trade point (0 keeps it)")
    p = command(
        kkm,
        "block",
        "block: the device gets BLOCKED (15) and shows the message",
        "BlockDevice",
        lambda a: pb.BlockRequest(system_id=a.system_id, message=a.message),
    )
    _system_id(p)
    option(p, "--message", required=True, help="what the device shows (<= 500 characters)")
    p = command(
        kkm,
        "subscription",
        "switch the subscription on or off (off: DISCONNECTED, 19, in 2.0.4)",
        "SetSubscription",
        lambda a: pb.SubscriptionRequest(system_id=a.system_id, active=a.state == "on"),
    )
    _system_id(p)
    positional(p, "state", choices=("on", "off"), help="on or off")
    p = command(
        kkm,
        "list",
        "devices by organization, trade point or status",
        "ListDevices",
        lambda a: pb.DeviceFilter(
            organization_id=a.org,
            trade_point_id=a.point,
            status=STATUS_CHOICES.get(a.status, pb.DEVICE_STATUS_UNSPECIFIED),
            after=a.after,
            limit=a.limit,
        ),
        listing=True,
    )
    option(p, "--org", type=int, default=0, help="only this organization's (0: all)")
    option(p, "--point", type=int, default=0, help="only this trade point's (0: all)")
    option(p, "--status", choices=sorted(STATUS_CHOICES), default="", help="only this status")
    _paging(p, "system ids")
    p = command(
        kkm,
        "audit",
        "the control audit log, newest first",
        "ListAudit",
        lambda a: pb.AuditQuery(system_id=a.system_id, limit=a.limit),
        listing=True,
    )
    positional(
        p, "system_id", type=int, nargs="?", default=0, help="only this device's (default: all)"
    )
    option(p, "--limit", type=int, default=0, help="at most this many entries (0: 100)")
    return kkm


def _device_ref(args: argparse.Namespace) -> pb.DeviceRef:
    return pb.DeviceRef(system_id=args.system_id)


# --- keys ---


def add_keys(sub: Any) -> None:
    key = sub.add_parser("key", help="control API keys").add_subparsers(
        dest="action", required=True
    )
    p = command(
        key,
        "add",
        "create a caller key (printed once)",
        "CreateApiKey",
        lambda a: pb.ApiKeySpec(
            name=a.name,
            role=ROLE_CHOICES[a.role],
            organization_id=a.org,
            system_ids=a.device,
            modules=a.module,
            trade_point_ids=a.point,
        ),
    )
    option(p, "--name", required=True, help="who holds the key (shown in the audit log)")
    option(p, "--role", choices=sorted(ROLE_CHOICES), required=True, help="what the key may do")
    option(p, "--org", type=int, default=0, help="its organization (role organization)")
    option(
        p,
        "--device",
        type=int,
        action="append",
        default=[],
        help="a device a service centre may reach (repeat)",
    )
    option(p, "--module", action="append", default=[], help="a module a service centre may use")
    option(
        p,
        "--point",
        type=int,
        action="append",
        default=[],
        help="organization key: only these trade points (repeat; default: all of them)",
    )
    command(
        key,
        "list",
        "every key, live and revoked (never the keys themselves)",
        "ListApiKeys",
        lambda _: pb.Empty(),
        listing=True,
    )
    p = command(key, "revoke", "revoke a key", "RevokeApiKey", lambda a: pb.ApiKeyRef(id=a.id))
    positional(p, "id", type=int, help="the key's id (printed by ofd key add)")
    command(sub, "whoami", "the caller the key stands for", "WhoAmI", lambda _: pb.Empty())


def add_control_commands(sub: Any) -> Any:
    """org, point, kkm, key and whoami; returns the kkm subcommands (ofd kkm send joins them)."""
    add_org_and_point(sub)
    kkm = add_devices(sub)
    add_keys(sub)
    return kkm
