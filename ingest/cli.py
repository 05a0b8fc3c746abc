"""`ofd`: run the gateway and manage devices through the control API.

ofd serve                                   run a gateway (embedded PostgreSQL by default)
ofd serve --journal kafka --kafka-bootstrap H:P   journal to Kafka instead of DATA_DIR
          [--kafka-outage reject|spool]     broker down: answer 254, or spool and replay
ofd org add --iin 123456789012 --title ...  add an organization
ofd org update --id O --title ... [--address ...]   its title, addresses, OKED (never its IIN)
ofd org list [--iin I]                      organizations in the caller's scope
ofd point add --org 1 --title ... [--lat MICRODEG --lon MICRODEG]   add a trade point
ofd point list [--org O]                    trade points in the caller's scope
ofd point update --id P --title ... [--lat --lon]   coordinates change at most once a day
ofd kkm add --point 1 --kgd ... --serial ... --model ... --year 2024   (its first token issued)
ofd kkm activate SYSTEM_ID                  mark registered at KGD
ofd kkm get-token SYSTEM_ID                 the current token, to type into the device (audited)
ofd kkm reset-token SYSTEM_ID [--yes]       issue a new one (the device's stops working)
ofd kkm send --id SYSTEM_ID --token T       a receipt (or a shift close, X report, offline
                                            backlog) from a registered device, TCP or gRPC
ofd kkm show SYSTEM_ID                      a device's registration and exchange state
ofd kkm deregister-request|deregister-cancel|deregister SYSTEM_ID   the lifecycle
ofd kkm reregister SYSTEM_ID --point P      re-registration, at another trade point
ofd kkm block SYSTEM_ID --message TEXT      BLOCKED (15) with TEXT shown on the device
ofd kkm unblock SYSTEM_ID
ofd kkm subscription SYSTEM_ID on|off       off: DISCONNECTED (19) in 2.0.4
ofd kkm list [--org O] [--point P] [--status S]   devices in the caller's scope
ofd kkm audit [SYSTEM_ID]                   who did what, when
ofd key add --name N --role R [--org O [--point P ...]] [--device ID ...] [--module M ...]
ofd key revoke ID                           the key stops working at once
ofd whoami                                  the caller the key stands for
  Control calls present --key, else OFD_CONTROL_KEY, else the file --key-file
  (default $OFD_DATA_DIR/operator.key, written by `ofd serve` on first start).
ofd journal show [--device N [--decode]]    what the local journal holds; a device's documents
ofd journal verify [--data-dir D]           check every record of every segment (exit 1: corrupt)
ofd load | query "SQL" | report ...        the warehouse (see ingest/query_cli.py)
ofd web | web-user add ...                  the cabinet and the receipt check (cabinet/cli.py)
ofd forward --kgd-url URL | kgd status     the tax authority (see ingest/kgd_cli.py)

Global options (--control, --key, --key-file, --json, --debug) go before or after the
subcommand; every option's default and environment variable are in its --help.
"""

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvloop

from cabinet.cli import add_web_commands
from cabinet.operator_cli import add_operator_commands
from ingest.app import serve
from ingest.cli_errors import describe, unexpected
from ingest.cli_options import (
    EXIT_FAILED,
    EXIT_USAGE,
    CliError,
    OfdParser,
    add_data_dir,
    add_database_url,
    add_global_options,
    add_log_level,
    fail,
    option,
    spread_global_options,
)
from ingest.control_cli import add_control_commands
from ingest.guessing import (
    DEFAULT_CHECKS_PER_SOURCE,
    DEFAULT_DEVICE_THRESHOLD,
    DEFAULT_PENALTY_SECONDS,
    DEFAULT_TOKEN_FAILURES,
    GuessSettings,
)
from ingest.journal_cli import add_journal_commands, corrupt_message
from ingest.kafka_options import add_kafka_security, kafka_security_from
from ingest.kgd_cli import add_kgd_commands
from ingest.kkm_send import add_send_command
from ingest.limits import FailureBudget
from ingest.logs import REFUSAL_LOGS_PER_DEVICE
from ingest.metrics import DEFAULT_METRICS_PORT
from ingest.query_cli import add_warehouse_commands
from ingest.settings import (
    DEFAULT_CONTROL_PORT,
    DEFAULT_GATEWAY_ID,
    DEFAULT_GRPC_PORT,
    DEFAULT_TCP_PORT,
    Settings,
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
from ingest.tls import server_tls
from ledger.errors import OfdError
from ledger.fiscal import FiscalSettings
from ledger.group_commit import COMMIT_WORKERS, CommitSettings
from ledger.journal import JournalCorrupt
from ledger.journal.kafka import DEFAULT_PARTITIONS, DEFAULT_TOPIC, OUTAGE_POLICIES, KafkaSettings
from ledger.receipt_check import DEFAULT_CHECK_URL

JOURNALS = ("local", "kafka")
EXIT_INTERRUPTED = 130

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "build_parser", "main"]


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
        control_tls=server_tls(
            args.control_tls_cert,
            args.control_tls_key,
            args.control_tls_client_ca,
            surface="the control API",
        ),
        grpc_tls=server_tls(args.grpc_tls_cert, args.grpc_tls_key, surface="the gRPC ingest"),
        grpc_port=args.grpc_port or None,
        kafka=_kafka_from(args),
        mqtt_url=args.mqtt_url or None,
        offline_alert_seconds=args.offline_alert_seconds,
        subscription_ending_days=args.subscription_ending_days,
        log_level=args.log_level,
        refusal_logs_per_device=args.refusal_logs_per_device,
    )


def _kafka_from(args: argparse.Namespace) -> KafkaSettings | None:
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
        replication_factor=args.kafka_replication_factor or None,
        min_insync_replicas=args.kafka_min_insync_replicas or None,
        security=kafka_security_from(args),
    )


def _run_serve(args: argparse.Namespace) -> int:
    settings = _settings_from(args)
    try:
        uvloop.run(serve(settings))
    except JournalCorrupt as err:
        raise CliError(corrupt_message(err, settings.data_dir, "refusing to start")) from err
    return 0


def _add_serve(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run a gateway", description="Run a gateway.")
    add_data_dir(serve, "the journal, the secret, the operator key and the embedded PostgreSQL")
    add_database_url(serve)
    option(
        serve,
        "--host",
        env="OFD_HOST",
        default="127.0.0.1",
        help="address the devices reach (TCP and gRPC ingest); 0.0.0.0 for all interfaces",
    )
    option(
        serve,
        "--port",
        type=int,
        env="OFD_PORT",
        default=DEFAULT_TCP_PORT,
        help="the devices' TCP protocol port (on --host); 0: one the kernel picks",
    )
    option(
        serve,
        "--control-host",
        env="OFD_CONTROL_HOST",
        default="127.0.0.1",
        help="address of the operator control API, apart from --host",
    )
    for surface, flag, env, what in (
        ("the control API", "control", "CONTROL", "operators"),
        ("the gRPC device ingest", "grpc", "GRPC", "devices"),
    ):
        option(
            serve,
            f"--{flag}-tls-cert",
            env=f"OFD_{env}_TLS_CERT",
            default="",
            help=f"PEM certificate: {surface} speaks TLS ({what} need the CA that signed it)",
        )
        option(
            serve,
            f"--{flag}-tls-key",
            env=f"OFD_{env}_TLS_KEY",
            default="",
            help=f"PEM private key of --{flag}-tls-cert",
        )
    option(
        serve,
        "--control-tls-client-ca",
        env="OFD_CONTROL_TLS_CLIENT_CA",
        default="",
        help="PEM CA: the control API then requires a client certificate it signed (mutual TLS)",
    )
    option(
        serve,
        "--control-auth-failures",
        type=int,
        env="OFD_CONTROL_AUTH_FAILURES",
        default=20,
        help="failed control keys one address may have per minute before it is refused for"
        " the rest of the minute",
    )
    option(
        serve,
        "--control-port",
        type=int,
        env="OFD_CONTROL_PORT",
        default=DEFAULT_CONTROL_PORT,
        help="the control API's port (on --control-host)",
    )
    option(
        serve,
        "--grpc-port",
        type=int,
        env="OFD_GRPC_PORT",
        default=DEFAULT_GRPC_PORT,
        help="gRPC device ingest port (on --host); 0 disables",
    )
    option(
        serve,
        "--metrics-host",
        env="OFD_METRICS_HOST",
        default="127.0.0.1",
        help="address of Prometheus /metrics, apart from --host",
    )
    option(
        serve,
        "--metrics-port",
        type=int,
        env="OFD_METRICS_PORT",
        default=DEFAULT_METRICS_PORT,
        help="Prometheus /metrics port (on --metrics-host); 0 disables",
    )
    option(
        serve,
        "--gateway-id",
        env="OFD_GATEWAY_ID",
        default=DEFAULT_GATEWAY_ID,
        help="this gateway's name in logs, metrics and journal records; another id makes it"
        " one of several (they share --secret-file)",
    )
    option(
        serve,
        "--reuse-port",
        action="store_true",
        help="share the ports with other gateway processes (SO_REUSEPORT)",
    )
    option(
        serve,
        "--commit-workers",
        type=int,
        env="OFD_COMMIT_WORKERS",
        default=COMMIT_WORKERS,
        help="group-commit batches in flight at once",
    )
    option(
        serve,
        "--journal",
        choices=JOURNALS,
        env="OFD_JOURNAL",
        default="local",
        help="where documents are journaled: files in DATA_DIR, or a Kafka topic",
    )
    option(
        serve,
        "--kafka-bootstrap",
        env="OFD_KAFKA_BOOTSTRAP",
        default="",
        help="Kafka bootstrap servers host:port[,host:port] (with --journal kafka)",
    )
    option(
        serve,
        "--kafka-topic",
        env="OFD_KAFKA_TOPIC",
        default=DEFAULT_TOPIC,
        help="the journal topic, keyed by device id (with --journal kafka)",
    )
    option(
        serve,
        "--kafka-partitions",
        type=int,
        env="OFD_KAFKA_PARTITIONS",
        default=DEFAULT_PARTITIONS,
        help="partitions of the journal topic when the gateway creates it",
    )
    option(
        serve,
        "--kafka-replication-factor",
        type=int,
        env="OFD_KAFKA_REPLICATION_FACTOR",
        default=0,
        shown="3, or every broker where there are fewer",
        help="replicas of the journal topic; start refuses an existing topic with fewer",
    )
    option(
        serve,
        "--kafka-min-insync-replicas",
        type=int,
        env="OFD_KAFKA_MIN_INSYNC_REPLICAS",
        default=0,
        shown="one less than the replication factor, at least 1",
        help="replicas that must hold a document before a device is answered OK (the topic's"
        " min.insync.replicas); start refuses an existing topic with a lower one",
    )
    add_kafka_security(serve)
    option(
        serve,
        "--kafka-outage",
        choices=OUTAGE_POLICIES,
        env="OFD_KAFKA_OUTAGE",
        default="reject",
        help="broker down: answer 254 (reject) or spool locally and replay in order (spool)",
    )
    option(
        serve,
        "--secret-file",
        env="OFD_SECRET_FILE",
        default="",
        help="file holding the server secret (hex, at least 32 digits); every gateway serving"
        " the same devices needs the same one",
    )
    option(
        serve,
        "--secret-hex",
        env="OFD_SECRET_HEX",
        default="",
        help="the server secret itself (shows in /proc: prefer --secret-file); default: kept"
        " in DATA_DIR/secret",
    )
    option(
        serve,
        "--qr-base-url",
        env="OFD_QR_BASE_URL",
        default=DEFAULT_CHECK_URL,
        help="the receipt check printed in QR codes: the public URL of `ofd web`'s /check",
    )
    option(
        serve,
        "--mqtt-url",
        env="OFD_MQTT_URL",
        default="",
        help="publish notifications to this broker, mqtt://host:1883 (empty: none)",
    )
    option(
        serve,
        "--offline-alert-seconds",
        type=float,
        env="OFD_OFFLINE_ALERT_SECONDS",
        default=6 * 3600.0,
        help="notify when a device is silent this long (over MQTT, and in the cabinet)",
    )
    option(
        serve,
        "--subscription-ending-days",
        type=int,
        env="OFD_SUBSCRIPTION_ENDING_DAYS",
        default=7,
        help="tell an organization in the cabinet when a register's subscription ends this soon",
    )
    add_log_level(serve, "; debug adds a line per answered request")
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
    option(
        serve,
        "--max-connections",
        type=int,
        env="OFD_MAX_CONNECTIONS",
        default=MAX_CONNECTIONS,
        help="device TCP connections at once; when full, the oldest idle connection never"
        " answered OK makes room",
    )
    option(
        serve,
        "--max-connections-per-source",
        type=int,
        env="OFD_MAX_CONNECTIONS_PER_SOURCE",
        default=MAX_CONNECTIONS_PER_SOURCE,
        help="connections one address (an IPv6 /64) may hold that have not been answered OK for"
        " a known device; connections serving devices do not count, so a NAT carrying many"
        " registers is not limited",
    )
    option(
        serve,
        "--unauthenticated-timeout",
        type=float,
        env="OFD_UNAUTHENTICATED_TIMEOUT",
        default=UNAUTHENTICATED_TIMEOUT,
        help="seconds a connection may stay open without a request answered OK",
    )
    option(
        serve,
        "--partial-frame-budget",
        type=_size,
        env="OFD_PARTIAL_FRAME_BUDGET",
        default=PARTIAL_FRAME_BUDGET,
        shown=f"{PARTIAL_FRAME_BUDGET >> 20}M",
        help="bytes held for requests not yet answered (half-received frames included), all"
        " connections together; past it, connections holding bytes stop reading",
    )
    option(
        serve,
        "--partial-frame-budget-per-source",
        type=_size,
        env="OFD_PARTIAL_FRAME_BUDGET_PER_SOURCE",
        default=PARTIAL_FRAME_BUDGET_PER_SOURCE,
        shown=f"{PARTIAL_FRAME_BUDGET_PER_SOURCE >> 20}M",
        help="the same, per source address",
    )
    option(
        serve,
        "--proxy-protocol",
        action="store_true",
        env="OFD_PROXY_PROTOCOL",
        help="every device connection starts with a PROXY protocol v2 header (from an L4"
        " balancer); its source address is the one limits count; a connection without a"
        " valid one is closed",
    )
    option(
        serve,
        "--token-failures",
        type=int,
        env="OFD_TOKEN_FAILURES",
        default=DEFAULT_TOKEN_FAILURES.failures,
        help="unknown-id and wrong-token answers one address may get per minute before its"
        " token checks are gated",
    )
    option(
        serve,
        "--token-penalty",
        type=float,
        env="OFD_TOKEN_PENALTY",
        default=DEFAULT_PENALTY_SECONDS,
        help="seconds a failed token check of a gated address holds its slot before it is answered",
    )
    option(
        serve,
        "--token-checks-per-source",
        type=int,
        env="OFD_TOKEN_CHECKS_PER_SOURCE",
        default=DEFAULT_CHECKS_PER_SOURCE,
        help="token checks a gated address may have in flight: with --token-penalty, at most"
        " this many / penalty guesses a second; correct tokens are never delayed by a penalty",
    )
    option(
        serve,
        "--device-token-failures",
        type=int,
        env="OFD_DEVICE_TOKEN_FAILURES",
        default=DEFAULT_DEVICE_THRESHOLD,
        help="token failures of one device per minute, from any address, after which it is"
        " counted and logged once",
    )
    option(
        serve,
        "--refusal-logs-per-device",
        type=int,
        env="OFD_REFUSAL_LOGS_PER_DEVICE",
        default=REFUSAL_LOGS_PER_DEVICE,
        help="refusal log lines per device per minute; the rest are counted, and the next"
        " line says how many were left out",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = OfdParser(
        prog="ofd",
        description="OFD Gateway: a fiscal data receiver for Kazakh cash registers.",
        epilog="ofd COMMAND --help: a command's options, their defaults and variables.",
    )
    add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(sub)
    kkm = add_control_commands(sub)
    add_send_command(kkm)
    add_journal_commands(sub)
    add_warehouse_commands(sub)
    add_kgd_commands(sub)
    add_web_commands(sub)
    add_operator_commands(sub)
    spread_global_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except CliError as err:
        fail(str(err))
        return err.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `ofd ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as err:
        if args.debug:
            raise
        known = describe(err, args)
        if known is not None:
            fail(known)
            return EXIT_FAILED
        if isinstance(err, ValueError):  # a setting refused at start-up, with the reason
            fail(str(err))
            return EXIT_USAGE
        if isinstance(err, OfdError):  # refused on purpose, with a message that says why
            fail(str(err))
            return EXIT_FAILED
        fail(unexpected(err))
        return EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
