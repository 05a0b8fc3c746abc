"""The OFD's side of a fleet run: registering the devices, and checking its record afterwards.

Registration goes through the control API as an operator's cabinet would (organization, trade
point, then per device: add, activate, issue a token), many devices at once over one gRPC
channel, since a call costs a round trip and a transaction and 100,000 devices one after another
would take most of an hour. It uses grpc.aio, so it also works against a gateway running in the
caller's own event loop (the tests).

After the run the OFD must show:
- every receipt a device got OK for is in the journal exactly once (a second copy is allowed only
  for a document that met 254/255 or a lost answer first: it collapses downstream by identity);
- nothing is journaled for a device that the device neither got OK for nor still holds queued;
- no device lost its token: each sends one SYSTEM with the token it holds and gets OK.
"""

import asyncio
import secrets
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from ingest.control.client import auth_metadata, find_key
from ingest.control.methods import CALL_TIMEOUT, METHODS, SERVICE
from ledger.journal.view import journal_records
from ledger.wire import Command, ResultCode
from ofdproto.control.v1 import control_pb2 as pb
from simulators.fleet_device import OfflineKkm
from simulators.kkm import BadResponse, DeviceOffline
from simulators.receipts import build_system

REGISTER_CONCURRENCY = 64  # control calls in flight; the gateway's pool has 8 connections
TOKEN_CHECK_CONCURRENCY = 256
MAX_DEVICES = 100_000
MAX_LISTED = 10  # problems listed by name in a report; the rest are counted
# Registration as a whole is bounded too: a generous base, plus time per device.
REGISTER_BASE_SECONDS = 60.0
REGISTER_SECONDS_PER_DEVICE = 0.05


@dataclass(frozen=True, slots=True)
class Registered:
    system_id: int
    token: int


async def register_fleet(control: str, count: int, key: str | None = None) -> list[Registered]:
    """`count` devices registered at KGD with their first tokens, in system id order; `key`
    (else OFD_CONTROL_KEY) authenticates the calls."""
    if not 1 <= count <= MAX_DEVICES:
        raise ValueError(f"a fleet has 1..{MAX_DEVICES} devices, not {count}")
    async with grpc.aio.insecure_channel(control) as channel:
        calls = {
            name: channel.unary_unary(
                f"/{SERVICE}/{name}",
                request_serializer=request_type.SerializeToString,
                response_deserializer=response_type.FromString,
            )
            for name, (request_type, response_type, _) in METHODS.items()
        }
        metadata = auth_metadata(find_key(key))

        async def call(name: str, request: Any) -> Any:
            return await calls[name](request, timeout=CALL_TIMEOUT, metadata=metadata)

        # Random identities: a second run against the same OFD must not collide with the first
        # (IIN and KGD number are unique in the registry).
        run_tag = secrets.randbelow(10**6)
        org = await call(
            "AddOrganization",
            pb.Organization(iin=f"{secrets.randbelow(10**12):012d}", title="ТОО «Флот»",
                            address="Алматы", address_kz="Алматы", oked="47111"),
        )  # fmt: skip
        point = await call(
            "AddTradePoint",
            pb.TradePoint(organization_id=org.id, title="Дүкен", address="Абай 1",
                          address_kz="Абай 1", latitude=43238949, longitude=76889709),
        )  # fmt: skip
        pending: Iterator[int] = iter(range(count))
        found: list[Registered] = []

        async def registrar() -> None:
            # Each index is taken by exactly one registrar: `pending` is shared, not copied.
            for index in pending:
                device = await call(
                    "AddDevice",
                    pb.Device(kgd_registration_number=f"{run_tag:06d}{index:06d}",
                              serial_number=f"FLEET-{index}", model="Fleet KKM", year=2025,
                              trade_point_id=point.id),
                )  # fmt: skip
                ref = pb.DeviceRef(system_id=device.system_id)
                await call("ActivateDevice", ref)
                issued = await call("IssueToken", ref)
                found.append(Registered(device.system_id, issued.token))

        limit = REGISTER_BASE_SECONDS + REGISTER_SECONDS_PER_DEVICE * count
        async with asyncio.timeout(limit), asyncio.TaskGroup() as tasks:
            for n in range(min(REGISTER_CONCURRENCY, count)):
                tasks.create_task(registrar(), name=f"registrar-{n}")
    return sorted(found, key=lambda r: r.system_id)


# --- the checks ---


@dataclass(slots=True)
class JournalCheck:
    acknowledged: int = 0
    exactly_once: int = 0
    collapsing_duplicates: int = 0  # a second copy after 254/255 or a lost answer: allowed
    missing: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # journaled, neither acked nor queued
    still_queued_journaled: int = 0  # journaled, answer lost, still queued on the device
    records: int = 0  # records of this fleet's devices

    @property
    def passed(self) -> bool:
        return not (self.missing or self.duplicated or self.orphans)


def check_journal(devices: Sequence[OfflineKkm], records: Iterable[Any]) -> JournalCheck:
    """Compares what the devices were acknowledged with the journal's records."""
    ours = {d.system_id: d for d in devices}
    per_sign: Counter[tuple[int, str]] = Counter()
    documents: dict[tuple[int, str], str] = {}  # (device, sign) -> document id
    check = JournalCheck()
    for record in records:
        if record.device_id not in ours or record.command != Command.TICKET:
            continue
        check.records += 1
        key = (record.device_id, record.fiscal_sign)
        per_sign[key] += 1
        documents[key] = record.document_id
    acked: set[tuple[int, str]] = set()
    for device in devices:
        for ack in device.acks:
            key = (device.system_id, ack.fiscal_sign)
            acked.add(key)
            check.acknowledged += 1
            name = f"{device.system_id}/{ack.document_key} sign {ack.fiscal_sign}"
            held = per_sign[key]
            if held == 0:
                check.missing.append(name)
            elif held == 1:
                check.exactly_once += 1
            elif ack.unavailable_seen:
                check.collapsing_duplicates += 1
            else:
                check.duplicated.append(f"{name} x{held}")
    for key, document_id in documents.items():
        if key in acked:
            continue
        device = ours[key[0]]
        queued = {f"{device.system_id}/{r.document_key}" for r in device.queue}
        if document_id in queued:
            check.still_queued_journaled += 1
        else:
            check.orphans.append(f"{document_id} sign {key[1]}")
    return check


def read_journal(journal_root: Path) -> Iterator[Any]:
    """Every record of every gateway journal under `journal_root` (data_dir/journal)."""
    return journal_records(journal_root)


@dataclass(slots=True)
class TokenCheck:
    checked: int = 0
    ok: int = 0
    refused: list[str] = field(default_factory=list)  # "id: code text"
    unreachable: list[int] = field(default_factory=list)
    skipped: int = 0  # stuck, or a receipt still awaiting its resend (a SYSTEM would jump it)

    @property
    def passed(self) -> bool:
        return not (self.refused or self.unreachable)


async def check_tokens(devices: Sequence[OfflineKkm]) -> TokenCheck:
    """One SYSTEM per device with the token it holds: every one must be OK."""
    check = TokenCheck()
    pending = iter(devices)

    async def checker() -> None:
        for device in pending:  # shared: each device is taken by one checker
            if device.stuck or device.head_failed:
                check.skipped += 1
                continue
            check.checked += 1
            try:
                response = await device.kkm.send(build_system(device.kkm.schema))
            except (DeviceOffline, BadResponse):
                check.unreachable.append(device.system_id)
                continue
            code = response.result.result_code
            if code == ResultCode.OK:
                check.ok += 1
            else:
                check.refused.append(f"{device.system_id}: {code} {response.result.result_text}")

    async with asyncio.TaskGroup() as tasks:
        for n in range(min(TOKEN_CHECK_CONCURRENCY, len(devices))):
            tasks.create_task(checker(), name=f"token-check-{n}")
    return check
