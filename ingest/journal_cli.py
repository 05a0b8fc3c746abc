"""`ofd journal show|verify`: the local journal, read back.

ofd journal show [--data-dir D]                       what it holds: counts per device
ofd journal show --device N [--decode] [--json]       that device's documents: a table, or one
                                                      JSON object a line (--decode: with the
                                                      request and the answer decoded)
ofd journal verify [--data-dir D]                     every record checked (exit 1: corrupt)
"""

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from ingest.cli_options import CliError, add_data_dir, option
from ingest.tables import iso_from_us, render
from ledger.journal import JournalCorrupt
from ledger.journal.view import (
    journal_directories,
    journal_records,
    summarize_journal,
    verify_report,
)
from ledger.schemas import SCHEMAS
from ledger.wire import HEADER_SIZE, Command
from ofdproto.journal.v1.record_pb2 import JournalRecord

COLUMNS = (
    "received_at", "command", "request_number", "document_id", "fiscal_sign", "offline",
    "protocol_version", "gateway_id",
)  # fmt: skip


def corrupt_message(err: JournalCorrupt, data_dir: Path, outcome: str) -> str:
    return (
        f"{err}; {outcome} (recovery cuts only a torn tail, never acknowledged records);"
        f" inspect with: ofd journal verify --data-dir {data_dir}"
    )


def plain(message: Message) -> dict[str, Any]:
    """A protocol message's set fields as JSON-ready data: numbers stay numbers (int64 too),
    enums are their protocol names, bytes are text when they are UTF-8 and hex otherwise."""
    return {
        field.name: [_plain(field, v) for v in value] if field.is_repeated else _plain(field, value)
        for field, value in message.ListFields()
    }


def _plain(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return plain(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        known = field.enum_type.values_by_number.get(value)
        return value if known is None else known.name
    if field.type == FieldDescriptor.TYPE_BYTES:
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return bytes(value).hex()
    return value


def _command(number: int) -> str | int:
    try:
        return Command(number).name
    except ValueError:
        return number


def document(record: JournalRecord, decode: bool) -> dict[str, Any]:
    """One journal record as a person reads it; `decode` adds the request and the answer."""
    row: dict[str, Any] = {
        "device_id": record.device_id,
        "received_at": iso_from_us(record.received_at_us),
        "command": _command(record.command),
        "request_number": record.request_number,
        "document_id": record.document_id,
        "fiscal_sign": record.fiscal_sign or None,
        "offline": record.is_offline,
        "protocol_version": record.protocol_version,
        "gateway_id": record.gateway_id,
        "organization_id": record.organization_id,
        "trade_point_id": record.trade_point_id,
    }
    if decode:
        schema = SCHEMAS.get(record.protocol_version)
        for name, frame, kind in (
            ("request", record.request_frame, "Request"),
            ("response", record.response_frame, "Response"),
        ):
            try:
                body = getattr(schema, kind).FromString(frame[HEADER_SIZE:]) if schema else None
            except DecodeError:
                body = None
            row[name] = None if body is None else plain(body)
    return row


def device_documents(journal: Path, device: int, decode: bool) -> Iterator[dict[str, Any]]:
    for record in journal_records(journal):
        if record.device_id == device:
            yield document(record, decode)


def _run_show(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    directory = data_dir / "journal"
    if not directory.is_dir():
        raise CliError(f"no journal under {directory}: is --data-dir the gateway's?")
    try:
        if args.device is None:
            if args.decode:
                raise CliError("--decode needs --device N", 2)
            print(json.dumps(summarize_journal(directory), indent=2, sort_keys=True))
            return 0
        rows = device_documents(directory, args.device, args.decode)
        if args.decode or args.json:
            for row in rows:
                print(json.dumps(row, ensure_ascii=False, sort_keys=True), flush=True)
            return 0
        empty = f"no documents of device {args.device}"
        print(render(list(rows), "table", columns=COLUMNS, empty=empty))
    except JournalCorrupt as err:
        raise CliError(corrupt_message(err, data_dir, "stopped there")) from err
    return 0


def _run_verify(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    if not journal_directories(data_dir):
        raise CliError(f"no journal under {data_dir / 'journal'}: is --data-dir the gateway's?")
    try:
        lines, intact = verify_report(data_dir)
    except OSError as err:
        raise CliError(f"cannot read the journal: {err}") from err
    print("\n".join(lines))
    return 0 if intact else 1


def _data_dir(p: argparse.ArgumentParser) -> None:
    add_data_dir(p, "its journal is DATA_DIR/journal")


def add_journal_commands(sub: Any) -> None:
    journal = sub.add_parser("journal", help="the local journal").add_subparsers(
        dest="action", required=True
    )
    p = journal.add_parser(
        "show", help="what the journal holds; --device N: that device's documents"
    )
    _data_dir(p)
    option(p, "--device", type=int, default=None, help="only this device's documents, listed")
    option(
        p,
        "--decode",
        action="store_true",
        help="with --device: each document with its request and answer decoded, a JSON line each",
    )
    p.set_defaults(run=_run_show)
    p = journal.add_parser("verify", help="check every record; exit 1 when corrupt")
    _data_dir(p)
    p.set_defaults(run=_run_verify)
