"""`ofd`: run the gateway and manage devices through the control API.

ofd serve                                   run a gateway (embedded PostgreSQL by default)
ofd serve --journal kafka --kafka-bootstrap H:P   journal to Kafka instead of DATA_DIR
          [--kafka-outage reject|spool]     broker down: answer 254, or spool and replay
ofd org add --iin 123456789012 --title ...  add an organization
ofd org update --id O --title ... [--address ...]   its title, addresses, OKED (never its IIN)
ofd org list [--iin I]                      organizations in the caller's scope
ofd point add --org 1 --title ...           add a trade point
ofd point list [--org O]                    trade points in the caller's scope
ofd kkm add --point 1 --kgd ... --serial ... --model ... --year 2024
ofd kkm activate SYSTEM_ID                  mark registered at KGD
ofd kkm token SYSTEM_ID                     issue a new token
ofd kkm get-token SYSTEM_ID                 the current token (audited)
ofd kkm show SYSTEM_ID [--json]             a device's registration and exchange state
ofd kkm deregister-request|deregister-cancel|deregister SYSTEM_ID   the lifecycle
ofd kkm reregister SYSTEM_ID --point P      re-registration, at another trade point
ofd kkm block SYSTEM_ID --message TEXT      BLOCKED (15) with TEXT shown on the device
ofd kkm unblock SYSTEM_ID
ofd kkm subscription SYSTEM_ID on|off       off: DISCONNECTED (19) in 2.0.4
ofd kkm list [--org O] [--point P] [--status S]   devices in the caller's scope
ofd kkm audit [SYSTEM_ID]                   who did what, when
ofd point update --id P --title ... [--lat --lon]   coordinates change at most once a day
ofd key add --name N --role R [--org O [--point P ...]] [--device ID ...] [--module M ...]
ofd key revoke ID                           the key stops working at once
ofd whoami                                  the caller the key stands for
  Control calls present --key, else OFD_CONTROL_KEY, else the file --key-file
  (default DATA_DIR/operator.key, written by `ofd serve` on first start).
ofd journal show [--data-dir D]             what the local journal holds
ofd journal verify [--data-dir D]           check every record of every segment (exit 1: corrupt)
ofd load | query "SQL" | report ...        the warehouse (see ingest/query_cli.py)
ofd web | web-user add ...                  the cabinet and the receipt check (cabinet/cli.py)
ofd forward --kgd-url URL | kgd status     the tax authority (see ingest/kgd_cli.py)
"""

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import uvloop
from google.protobuf.json_format import MessageToDict

from cabinet.cli import add_web_commands
from ingest.app import serve
from ingest.control.client import ControlClient, find_key
from ingest.guessing import (
    DEFAULT_CHECKS_PER_SOURCE,
    DEFAULT_DEVICE_THRESHOLD,
    DEFAULT_PENALTY_SECONDS,
    DEFAULT_TOKEN_FAILURES,
    GuessSettings,
)
from ingest.kgd_cli import add_kgd_commands
from ingest.limits import FailureBudget
from ingest.logs import REFUSAL_LOGS_PER_DEVICE
from ingest.metrics import DEFAULT_METRICS_PORT
from ingest.query_cli import add_warehouse_commands
from ingest.settings import (
    DEFAULT_CONTROL_PORT,
    DEFAULT_DATA_DIR,
    DEFAULT_GATEWAY_ID,
    DEFAULT_GRPC_PORT,
    DEFAULT_TCP_PORT,
    LOG_LEVELS,
    Settings,
    default_gateway_id,
    load_secret,
)
from ingest.tcp_server import (
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_SOURCE,
    PARTIAL_FRAME_BUDGET,
    PARTIAL_FRAME_BUDGET_PER_SOURCE,
    UNAUTHENTICATED_TIMEOUT,
    ServerSettings,
)
from ledger.errors import OfdError
from ledger.fiscal import FiscalSettings
from ledger.group_commit import COMMIT_WORKERS, CommitSettings
from ledger.journal import JournalCorrupt
from ledger.journal.kafka import DEFAULT_PARTITIONS, DEFAULT_TOPIC, OUTAGE_POLICIES, KafkaSettings
from ledger.journal.view import journal_directories, summarize_journal, verify_report
from ledger.lifecycle import DeviceStatus
from ledger.receipt_check import DEFAULT_CHECK_URL
from ofdproto.control.v1 import control_pb2 as pb

EXIT_USAGE = 2
JOURNALS = ("local", "kafka")
EXIT_FAILED = 1


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _settings_from(args: argparse.Namespace) -> Settings:
    data_dir = Path(args.data_dir)
    if args.gateway_id != DEFAULT_GATEWAY_ID and not (args.secret_file or args.secret_hex):
        # A secret made in this data directory would sign differently from the other gateways'.
        raise ValueError(
            f"--gateway-id {args.gateway_id} makes this one of several gateways: give every"
            " one the same --secret-file"
        )
    return Settings(
        data_dir=data_dir,
        database_url=args.database_url or None,
        gateway_id=args.gateway_id,
        server=_server_settings(args),
        control_host=args.control_host,
        control_port=args.control_port,
        commit=CommitSettings(workers=args.commit_workers),
        fiscal=FiscalSettings(
            secret=load_secret(
                data_dir, args.secret_hex, Path(args.secret_file) if args.secret_file else None
            ),
            qr_base_url=args.qr_base_url,
        ),
        metrics_port=args.metrics_port or None,
        metrics_host=args.metrics_host,
        control_auth_failures=FailureBudget(args.control_auth_failures, 60.0),
        grpc_port=args.grpc_port or None,
        kafka=_kafka_from(args),
        mqtt_url=args.mqtt_url or None,
        offline_alert_seconds=args.offline_alert_seconds,
        log_level=args.log_level,
        refusal_logs_per_device=args.refusal_logs_per_device,
    )


def _kafka_from(args: argparse.Namespace) -> KafkaSettings | None:
    # argparse checks choices on the command line only, not a default taken from OFD_JOURNAL.
    if args.journal not in JOURNALS:
        raise ValueError(f"journal must be one of {', '.join(JOURNALS)}, not {args.journal!r}")
    if args.journal == "local":
        return None
    if not args.kafka_bootstrap:
        raise ValueError("--journal kafka needs --kafka-bootstrap (or OFD_KAFKA_BOOTSTRAP)")
    return KafkaSettings(
        bootstrap_servers=args.kafka_bootstrap,
        topic=args.kafka_topic,
        client_id=f"ofd-{args.gateway_id}",
        on_outage=args.kafka_outage,
        partitions=args.kafka_partitions,
    )


def _run_serve(args: argparse.Namespace) -> int:
    settings = _settings_from(args)
    try:
        uvloop.run(serve(settings))
    except JournalCorrupt as err:
        print(_corrupt_message(err, settings.data_dir, "refusing to start"), file=sys.stderr)
        return EXIT_FAILED
    return 0


def _corrupt_message(err: JournalCorrupt, data_dir: Path, outcome: str) -> str:
    return (
        f"error: {err}; {outcome} (recovery cuts only a torn tail, never acknowledged records);"
        f" inspect with: ofd journal verify --data-dir {data_dir}"
    )


def _print_message(message: Any, as_json: bool) -> None:
    data = MessageToDict(message, preserving_proto_field_name=True)
    if as_json:
        print(json.dumps(data, ensure_ascii=False, sort_keys=True))
        return
    rows = list(_flatten(data))
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")


def _flatten(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _read_key_file(path: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def _control_call(args: argparse.Namespace, method: str, request: Any) -> int:
    client = ControlClient(args.control, find_key(args.key) or _read_key_file(args.key_file))
    try:
        response = client.call(method, request)
    except grpc.RpcError as err:
        code = err.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            print(
                f"error: control API at {args.control} is unreachable"
                f" (is `ofd serve` running?): {err.details()}",
                file=sys.stderr,
            )
        elif code == grpc.StatusCode.UNAUTHENTICATED:
            print(
                f"error: unauthenticated: {err.details()} (pass --key, set OFD_CONTROL_KEY, or"
                f" point --key-file at the gateway's DATA_DIR/operator.key; tried {args.key_file})",
                file=sys.stderr,
            )
        else:
            print(f"error: {code.name.lower()}: {err.details()}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        client.close()
    _print_message(response, getattr(args, "json", False))
    return 0


def _run_journal_show(args: argparse.Namespace) -> int:
    directory = Path(args.data_dir) / "journal"
    if not directory.is_dir():
        print(f"error: no journal under {directory}", file=sys.stderr)
        return EXIT_FAILED
    try:
        summary = summarize_journal(directory)
    except JournalCorrupt as err:
        print(_corrupt_message(err, Path(args.data_dir), "stopped there"), file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


def _run_journal_verify(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    if not journal_directories(data_dir):
        print(f"error: no journal under {data_dir / 'journal'}", file=sys.stderr)
        return EXIT_FAILED
    try:
        lines, intact = verify_report(data_dir)
    except OSError as err:
        print(f"error: cannot read the journal: {err}", file=sys.stderr)
        return EXIT_FAILED
    print("\n".join(lines))
    return 0 if intact else EXIT_FAILED


def _add_serve(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run a gateway")
    serve.add_argument("--data-dir", default=_env("OFD_DATA_DIR", str(DEFAULT_DATA_DIR)))
    serve.add_argument(
        "--database-url",
        default=_env("OFD_DATABASE_URL", ""),
        help="PostgreSQL DSN; empty starts the embedded server in DATA_DIR/pg",
    )
    serve.add_argument(
        "--host",
        default=_env("OFD_HOST", "127.0.0.1"),
        help="address the devices reach (TCP and gRPC ingest); 0.0.0.0 for all interfaces",
    )
    serve.add_argument("--port", type=int, default=int(_env("OFD_PORT", str(DEFAULT_TCP_PORT))))
    serve.add_argument(
        "--control-host",
        default=_env("OFD_CONTROL_HOST", "127.0.0.1"),
        help="address of the operator control API, apart from --host (default: loopback)",
    )
    serve.add_argument(
        "--control-auth-failures",
        type=int,
        default=int(_env("OFD_CONTROL_AUTH_FAILURES", "20")),
        help="failed control keys one address may have per minute before it is refused for"
        " the rest of the minute (default 20)",
    )
    serve.add_argument(
        "--control-port",
        type=int,
        default=int(_env("OFD_CONTROL_PORT", str(DEFAULT_CONTROL_PORT))),
    )
    serve.add_argument(
        "--grpc-port",
        type=int,
        default=int(_env("OFD_GRPC_PORT", str(DEFAULT_GRPC_PORT))),
        help="gRPC device ingest port (on --host); 0 disables",
    )
    serve.add_argument(
        "--metrics-host",
        default=_env("OFD_METRICS_HOST", "127.0.0.1"),
        help="address of Prometheus /metrics, apart from --host (default: loopback)",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("OFD_METRICS_PORT", str(DEFAULT_METRICS_PORT))),
        help="Prometheus /metrics port (on --metrics-host); 0 disables",
    )
    serve.add_argument("--gateway-id", default=default_gateway_id())
    serve.add_argument("--reuse-port", action="store_true", help="share the port (SO_REUSEPORT)")
    serve.add_argument(
        "--commit-workers",
        type=int,
        default=int(_env("OFD_COMMIT_WORKERS", str(COMMIT_WORKERS))),
        help="group-commit batches in flight at once",
    )
    serve.add_argument(
        "--journal",
        choices=JOURNALS,
        default=_env("OFD_JOURNAL", "local"),
        help="where documents are journaled: files in DATA_DIR (default) or a Kafka topic",
    )
    serve.add_argument(
        "--kafka-bootstrap",
        default=_env("OFD_KAFKA_BOOTSTRAP", ""),
        help="Kafka bootstrap servers host:port[,host:port] (with --journal kafka)",
    )
    serve.add_argument(
        "--kafka-topic",
        default=_env("OFD_KAFKA_TOPIC", DEFAULT_TOPIC),
        help="the journal topic, keyed by device id (with --journal kafka)",
    )
    serve.add_argument(
        "--kafka-partitions",
        type=int,
        default=int(_env("OFD_KAFKA_PARTITIONS", str(DEFAULT_PARTITIONS))),
        help="partitions of the journal topic when the gateway creates it",
    )
    serve.add_argument(
        "--kafka-outage",
        choices=OUTAGE_POLICIES,
        default=_env("OFD_KAFKA_OUTAGE", "reject"),
        help="broker down: answer 254 (reject) or spool locally and replay in order (spool)",
    )
    serve.add_argument(
        "--secret-file",
        default=_env("OFD_SECRET_FILE", ""),
        help="file holding the server secret (hex, at least 32 digits); every gateway serving"
        " the same devices needs the same one",
    )
    serve.add_argument(
        "--secret-hex",
        default=_env("OFD_SECRET_HEX", ""),
        help="the server secret itself (shows in /proc: prefer --secret-file);"
        " default: kept in DATA_DIR/secret",
    )
    serve.add_argument(
        "--qr-base-url",
        default=_env("OFD_QR_BASE_URL", DEFAULT_CHECK_URL),
        help="the receipt check printed in QR codes: the public URL of `ofd web`'s /check"
        " (default %(default)s)",
    )
    serve.add_argument(
        "--mqtt-url",
        default=_env("OFD_MQTT_URL", ""),
        help="publish notifications to this broker, mqtt://host:1883 (default: none)",
    )
    serve.add_argument(
        "--offline-alert-seconds",
        type=float,
        default=float(_env("OFD_OFFLINE_ALERT_SECONDS", str(6 * 3600))),
        help="notify when a device is silent this long (with --mqtt-url)",
    )
    serve.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=_env("OFD_LOG_LEVEL", "info"),
        help="JSON logs on stderr; debug adds a line per answered request",
    )
    _add_limits(serve)
    serve.set_defaults(run=_run_serve)


def _size(text: str) -> int:
    """Bytes, with an optional K, M or G suffix (powers of 1024)."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    try:
        return int(text[:-1] if scale > 1 else text) * scale
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (say 65536, 64K or 64M)") from err


def _server_settings(args: argparse.Namespace) -> ServerSettings:
    return ServerSettings(
        host=args.host,
        port=args.port,
        reuse_port=args.reuse_port,
        max_connections=args.max_connections,
        max_connections_per_source=args.max_connections_per_source,
        unauthenticated_timeout=args.unauthenticated_timeout,
        partial_frame_budget=args.partial_frame_budget,
        partial_frame_budget_per_source=args.partial_frame_budget_per_source,
        proxy_protocol=args.proxy_protocol,
        guessing=GuessSettings(
            failures=FailureBudget(args.token_failures, 60.0),
            penalty_seconds=args.token_penalty,
            checks_per_source=args.token_checks_per_source,
            device_threshold=args.device_token_failures,
        ),
    )


def _add_limits(serve: argparse.ArgumentParser) -> None:
    """What one client may take of the device TCP server (README, "Limits on what one client
    can take")."""
    serve.add_argument(
        "--max-connections",
        type=int,
        default=int(_env("OFD_MAX_CONNECTIONS", str(MAX_CONNECTIONS))),
        help="device TCP connections at once; when full, the oldest idle connection never"
        f" answered OK makes room (default {MAX_CONNECTIONS})",
    )
    serve.add_argument(
        "--max-connections-per-source",
        type=int,
        default=int(_env("OFD_MAX_CONNECTIONS_PER_SOURCE", str(MAX_CONNECTIONS_PER_SOURCE))),
        help="connections one address (an IPv6 /64) may hold that have not been answered OK for"
        " a known device; connections serving devices do not count, so a NAT carrying many"
        f" registers is not limited (default {MAX_CONNECTIONS_PER_SOURCE})",
    )
    serve.add_argument(
        "--unauthenticated-timeout",
        type=float,
        default=float(_env("OFD_UNAUTHENTICATED_TIMEOUT", str(UNAUTHENTICATED_TIMEOUT))),
        help="seconds a connection may stay open without a request answered OK"
        f" (default {UNAUTHENTICATED_TIMEOUT:g})",
    )
    serve.add_argument(
        "--partial-frame-budget",
        type=_size,
        default=_env("OFD_PARTIAL_FRAME_BUDGET", str(PARTIAL_FRAME_BUDGET)),  # type applies
        help="bytes held for requests not yet answered (half-received frames included), all"
        " connections together; past it, connections holding bytes stop reading"
        f" (default {PARTIAL_FRAME_BUDGET >> 20}M)",
    )
    serve.add_argument(
        "--partial-frame-budget-per-source",
        type=_size,
        default=_env("OFD_PARTIAL_FRAME_BUDGET_PER_SOURCE", str(PARTIAL_FRAME_BUDGET_PER_SOURCE)),
        help=f"the same, per source address (default {PARTIAL_FRAME_BUDGET_PER_SOURCE >> 20}M)",
    )
    serve.add_argument(
        "--proxy-protocol",
        action="store_true",
        default=_env("OFD_PROXY_PROTOCOL", "") not in ("", "0", "false", "no"),
        help="every device connection starts with a PROXY protocol v2 header (from an L4"
        " balancer); its source address is the one limits count; a connection without a"
        " valid one is closed (default off)",
    )
    serve.add_argument(
        "--token-failures",
        type=int,
        default=int(_env("OFD_TOKEN_FAILURES", str(DEFAULT_TOKEN_FAILURES.failures))),
        help="unknown-id and wrong-token answers one address may get per minute before its"
        f" token checks are gated (default {DEFAULT_TOKEN_FAILURES.failures})",
    )
    serve.add_argument(
        "--token-penalty",
        type=float,
        default=float(_env("OFD_TOKEN_PENALTY", str(DEFAULT_PENALTY_SECONDS))),
        help="seconds a failed token check of a gated address holds its slot before it is"
        f" answered (default {DEFAULT_PENALTY_SECONDS:g})",
    )
    serve.add_argument(
        "--token-checks-per-source",
        type=int,
        default=int(_env("OFD_TOKEN_CHECKS_PER_SOURCE", str(DEFAULT_CHECKS_PER_SOURCE))),
        help="token checks a gated address may have in flight: with --token-penalty, at most"
        " this many / penalty guesses a second; correct tokens are never delayed by a penalty"
        f" (default {DEFAULT_CHECKS_PER_SOURCE})",
    )
    serve.add_argument(
        "--device-token-failures",
        type=int,
        default=int(_env("OFD_DEVICE_TOKEN_FAILURES", str(DEFAULT_DEVICE_THRESHOLD))),
        help="token failures of one device per minute, from any address, after which it is"
        f" counted and logged once (default {DEFAULT_DEVICE_THRESHOLD})",
    )
    serve.add_argument(
        "--refusal-logs-per-device",
        type=int,
        default=int(_env("OFD_REFUSAL_LOGS_PER_DEVICE", str(REFUSAL_LOGS_PER_DEVICE))),
        help="refusal log lines per device per minute; the rest are counted, and the next"
        f" line says how many were left out (default {REFUSAL_LOGS_PER_DEVICE})",
    )


def _control_command(
    sub: Any, name: str, help_text: str, method: str, build: Callable[[argparse.Namespace], Any]
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=lambda args: _control_call(args, method, build(args)))
    return parser


def _add_paging(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--after", type=int, default=0, help=f"paging: {what} above this")
    parser.add_argument("--limit", type=int, default=0, help="at most this many (<= 1000)")


def _add_control(sub: Any) -> None:
    org = sub.add_parser("org", help="organizations").add_subparsers(dest="action", required=True)
    p = _control_command(
        org,
        "add",
        "add an organization",
        "AddOrganization",
        lambda a: pb.Organization(
            iin=a.iin, title=a.title, address=a.address, address_kz=a.address_kz, oked=a.oked
        ),
    )
    p.add_argument("--iin", required=True, help="12-digit IIN or BIN")
    p.add_argument("--title", required=True)
    p.add_argument("--address", default="")
    p.add_argument("--address-kz", default="")
    p.add_argument("--oked", default="")
    p = _control_command(
        org,
        "update",
        "change an organization's title, addresses and OKED (never its IIN)",
        "UpdateOrganization",
        lambda a: pb.Organization(
            id=a.id, title=a.title, address=a.address, address_kz=a.address_kz, oked=a.oked
        ),
    )
    p.add_argument("--id", type=int, required=True, help="organization id")
    p.add_argument("--title", required=True)
    p.add_argument("--address", default="")
    p.add_argument("--address-kz", default="")
    p.add_argument("--oked", default="")
    p = _control_command(
        org,
        "list",
        "organizations in the caller's scope",
        "ListOrganizations",
        lambda a: pb.OrganizationFilter(iin=a.iin, after=a.after, limit=a.limit),
    )
    p.add_argument("--iin", default="", help="only the organization with this IIN or BIN")
    _add_paging(p, "organization ids")

    point = sub.add_parser("point", help="trade points").add_subparsers(
        dest="action", required=True
    )
    p = _control_command(
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
    p.add_argument("--org", type=int, required=True, help="organization id")
    p.add_argument("--title", required=True)
    p.add_argument("--address", default="")
    p.add_argument("--address-kz", default="")
    p.add_argument("--lat", type=int, default=0, help="latitude x 1,000,000")
    p.add_argument("--lon", type=int, default=0, help="longitude x 1,000,000")
    p = _control_command(
        point,
        "list",
        "trade points, of one organization or all in the caller's scope",
        "ListTradePoints",
        lambda a: pb.TradePointFilter(organization_id=a.org, after=a.after, limit=a.limit),
    )
    p.add_argument("--org", type=int, default=0, help="organization id")
    _add_paging(p, "point ids")

    kkm = sub.add_parser("kkm", help="cash registers").add_subparsers(dest="action", required=True)
    p = _control_command(
        kkm,
        "add",
        "add a device awaiting registration",
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
    p.add_argument("--point", type=int, required=True, help="trade point id")
    p.add_argument("--kgd", required=True, help="KGD registration number")
    p.add_argument("--serial", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--year", type=int, required=True)
    p.add_argument("--system-id", type=int, default=0, help="default: the next free one")
    for name, help_text, method in (
        ("activate", "mark registered at KGD", "ActivateDevice"),
        ("token", "issue a new token", "IssueToken"),
        ("get-token", "the current token (audited)", "GetToken"),
        ("show", "show registration and exchange state", "ShowDevice"),
    ):
        p = _control_command(
            kkm, name, help_text, method, lambda a: pb.DeviceRef(system_id=a.system_id)
        )
        p.add_argument("system_id", type=int)

    _add_lifecycle(kkm, point)
    _add_access(sub)

    journal = sub.add_parser("journal", help="the local journal").add_subparsers(
        dest="action", required=True
    )
    p = journal.add_parser("show", help="count what the journal holds")
    p.add_argument("--data-dir", default=_env("OFD_DATA_DIR", str(DEFAULT_DATA_DIR)))
    p.set_defaults(run=_run_journal_show)
    p = journal.add_parser("verify", help="check every record; exit 1 when corrupt")
    p.add_argument("--data-dir", default=_env("OFD_DATA_DIR", str(DEFAULT_DATA_DIR)))
    p.set_defaults(run=_run_journal_verify)


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


def _add_lifecycle(kkm: Any, point: Any) -> None:
    """Lifecycle, block, subscription and the queries (issue 6)."""
    for name, help_text, method in (
        ("deregister-request", "ask KGD to deregister", "RequestDeregistration"),
        ("deregister-cancel", "withdraw the deregistration request", "CancelDeregistration"),
        ("deregister", "mark deregistered at KGD", "Deregister"),
        ("unblock", "lift a block", "UnblockDevice"),
    ):
        p = _control_command(
            kkm, name, help_text, method, lambda a: pb.DeviceRef(system_id=a.system_id)
        )
        p.add_argument("system_id", type=int)
    p = _control_command(
        kkm,
        "reregister",
        "re-register (awaiting registration again), optionally at another trade point",
        "Reregister",
        lambda a: pb.Reregistration(system_id=a.system_id, trade_point_id=a.point),
    )
    p.add_argument("system_id", type=int)
    p.add_argument("--point", type=int, default=0, help="the new trade point; 0 keeps it")
    p = _control_command(
        kkm,
        "block",
        "block: the device gets BLOCKED (15) and shows the message",
        "BlockDevice",
        lambda a: pb.BlockRequest(system_id=a.system_id, message=a.message),
    )
    p.add_argument("system_id", type=int)
    p.add_argument("--message", required=True, help="what the device shows (<= 500 chars)")
    p = _control_command(
        kkm,
        "subscription",
        "switch the subscription on or off",
        "SetSubscription",
        lambda a: pb.SubscriptionRequest(system_id=a.system_id, active=a.state == "on"),
    )
    p.add_argument("system_id", type=int)
    p.add_argument("state", choices=("on", "off"))
    p = _control_command(
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
    )
    p.add_argument("--org", type=int, default=0)
    p.add_argument("--point", type=int, default=0)
    p.add_argument("--status", choices=sorted(STATUS_CHOICES), default="")
    _add_paging(p, "system ids")
    p = _control_command(
        kkm,
        "audit",
        "the control audit log, newest first",
        "ListAudit",
        lambda a: pb.AuditQuery(system_id=a.system_id, limit=a.limit),
    )
    p.add_argument("system_id", type=int, nargs="?", default=0)
    p.add_argument("--limit", type=int, default=0)
    p = _control_command(
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
    p.add_argument("--id", type=int, required=True, help="trade point id")
    p.add_argument("--title", required=True)
    p.add_argument("--address", default="")
    p.add_argument("--address-kz", default="")
    p.add_argument("--lat", type=int, default=0, help="latitude x 1,000,000")
    p.add_argument("--lon", type=int, default=0, help="longitude x 1,000,000")


def _add_access(sub: Any) -> None:
    key = sub.add_parser("key", help="control API keys").add_subparsers(
        dest="action", required=True
    )
    p = _control_command(
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
    p.add_argument("--name", required=True)
    p.add_argument("--role", choices=sorted(ROLE_CHOICES), required=True)
    p.add_argument("--org", type=int, default=0, help="organization (role organization)")
    p.add_argument("--device", type=int, action="append", default=[], help="service centre")
    p.add_argument("--module", action="append", default=[], help="service centre")
    p.add_argument(
        "--point",
        type=int,
        action="append",
        default=[],
        help="organization key: only these trade points (default: all of them)",
    )
    p = _control_command(
        key, "revoke", "revoke a key", "RevokeApiKey", lambda a: pb.ApiKeyRef(id=a.id)
    )
    p.add_argument("id", type=int)
    _control_command(sub, "whoami", "the caller the key stands for", "WhoAmI", lambda _: pb.Empty())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ofd", description="OFD Gateway")
    parser.add_argument(
        "--control",
        default=_env("OFD_CONTROL", f"127.0.0.1:{DEFAULT_CONTROL_PORT}"),
        help="control API address (host:port)",
    )
    parser.add_argument("--key", default="", help="control API key (else OFD_CONTROL_KEY)")
    parser.add_argument(
        "--key-file",
        default=str(Path(_env("OFD_DATA_DIR", str(DEFAULT_DATA_DIR))) / "operator.key"),
        help="read the key from this file when neither --key nor OFD_CONTROL_KEY is set",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_control(sub)
    add_warehouse_commands(sub)
    add_kgd_commands(sub)
    add_web_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except OfdError as err:  # refused on purpose, with a message that says why
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
