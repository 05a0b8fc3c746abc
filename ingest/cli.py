"""`ofd`: run the gateway and manage devices through the control API.

ofd serve                                   run a gateway (embedded PostgreSQL by default)
ofd serve --journal kafka --kafka-bootstrap H:P   journal to Kafka instead of DATA_DIR
ofd org add --iin 123456789012 --title ...  add an organization
ofd point add --org 1 --title ...           add a trade point
ofd kkm add --point 1 --kgd ... --serial ... --model ... --year 2024
ofd kkm activate SYSTEM_ID                  mark registered at KGD
ofd kkm token SYSTEM_ID                     issue a new token
ofd kkm show SYSTEM_ID [--json]             a device's registration and exchange state
ofd journal show [--data-dir D]             what the local journal holds
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

from ingest.app import serve
from ingest.commands import FiscalSettings
from ingest.control import ControlClient
from ingest.metrics import DEFAULT_METRICS_PORT
from ingest.settings import (
    DEFAULT_CONTROL_PORT,
    DEFAULT_DATA_DIR,
    DEFAULT_GRPC_PORT,
    DEFAULT_TCP_PORT,
    Settings,
    default_gateway_id,
    load_secret,
)
from ingest.tcp_server import ServerSettings
from ledger.group_commit import COMMIT_WORKERS, CommitSettings
from ledger.journal_view import summarize_journal
from ledger.kafka_journal import DEFAULT_TOPIC, KafkaSettings
from ofdproto.control.v1 import control_pb2 as pb

EXIT_USAGE = 2
JOURNALS = ("local", "kafka")
EXIT_FAILED = 1


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _settings_from(args: argparse.Namespace) -> Settings:
    data_dir = Path(args.data_dir)
    return Settings(
        data_dir=data_dir,
        database_url=args.database_url or None,
        gateway_id=args.gateway_id,
        server=ServerSettings(host=args.host, port=args.port, reuse_port=args.reuse_port),
        control_host=args.host,
        control_port=args.control_port,
        commit=CommitSettings(workers=args.commit_workers),
        fiscal=FiscalSettings(secret=load_secret(data_dir, args.secret_hex)),
        metrics_port=args.metrics_port or None,
        grpc_port=args.grpc_port or None,
        kafka=_kafka_from(args),
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
    )


def _run_serve(args: argparse.Namespace) -> int:
    uvloop.run(serve(_settings_from(args)))
    return 0


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


def _control_call(args: argparse.Namespace, method: str, request: Any) -> int:
    client = ControlClient(args.control)
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
    print(json.dumps(summarize_journal(directory), indent=2, sort_keys=True))
    return 0


def _add_serve(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run a gateway")
    serve.add_argument("--data-dir", default=_env("OFD_DATA_DIR", str(DEFAULT_DATA_DIR)))
    serve.add_argument(
        "--database-url",
        default=_env("OFD_DATABASE_URL", ""),
        help="PostgreSQL DSN; empty starts the embedded server in DATA_DIR/pg",
    )
    serve.add_argument("--host", default=_env("OFD_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(_env("OFD_PORT", str(DEFAULT_TCP_PORT))))
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
        "--metrics-port",
        type=int,
        default=int(_env("OFD_METRICS_PORT", str(DEFAULT_METRICS_PORT))),
        help="Prometheus /metrics port (on --host); 0 disables",
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
        "--secret-hex",
        default=_env("OFD_SECRET_HEX", ""),
        help="server secret for fiscal signs and tokens; default: kept in DATA_DIR/secret",
    )
    serve.set_defaults(run=_run_serve)


def _control_command(
    sub: Any, name: str, help_text: str, method: str, build: Callable[[argparse.Namespace], Any]
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=lambda args: _control_call(args, method, build(args)))
    return parser


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
        ("show", "show registration and exchange state", "ShowDevice"),
    ):
        p = _control_command(
            kkm, name, help_text, method, lambda a: pb.DeviceRef(system_id=a.system_id)
        )
        p.add_argument("system_id", type=int)

    journal = sub.add_parser("journal", help="the local journal").add_subparsers(
        dest="action", required=True
    )
    p = journal.add_parser("show", help="count what the journal holds")
    p.add_argument("--data-dir", default=_env("OFD_DATA_DIR", str(DEFAULT_DATA_DIR)))
    p.set_defaults(run=_run_journal_show)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ofd", description="OFD Gateway")
    parser.add_argument(
        "--control",
        default=_env("OFD_CONTROL", f"127.0.0.1:{DEFAULT_CONTROL_PORT}"),
        help="control API address (host:port)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_control(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return code


if __name__ == "__main__":
    sys.exit(main())
