"""What the KGD forwarding tests share: devices sending receipts to a gateway, the forwarder
(in-process or as `ofd forward`) and the checks that the simulated KGD holds every acknowledged
document exactly once, in each register's order, unchanged."""

import asyncio
import base64
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from conftest import register_device

from ledger.journal.view import journal_records
from ledger.schemas import SCHEMAS
from ledger.wire import HEADER_SIZE, ResultCode
from simulators.kgd import SimulatedKgd
from simulators.kkm import SimulatedKkm
from simulators.receipts import Line, build_ticket

VERSION = 204
DAY0 = datetime(2026, 11, 20, 8, 0, 0)


@dataclass
class Registers:
    """Devices that send receipts in order and remember what was acknowledged."""

    kkms: list[SimulatedKkm]
    numbers: dict[int, int] = field(default_factory=dict)
    acked: dict[int, list[str]] = field(default_factory=dict)  # system id -> document ids

    @classmethod
    async def start(cls, database_url: str, port: int, count: int) -> "Registers":
        kkms = []
        for _ in range(count):
            device = await register_device(database_url)
            kkms.append(
                SimulatedKkm(
                    "127.0.0.1",
                    port,
                    version=VERSION,
                    system_id=device.system_id,
                    token=device.token,
                    retries=0,
                )
            )
        return cls(kkms, {k.system_id: 0 for k in kkms}, {k.system_id: [] for k in kkms})

    async def send(self, per_device: int) -> None:
        await asyncio.gather(*(self._device(kkm, per_device) for kkm in self.kkms))

    async def _device(self, kkm: SimulatedKkm, count: int) -> None:
        for _ in range(count):
            number = self.numbers[kkm.system_id] + 1
            ticket = build_ticket(
                SCHEMAS[VERSION],
                when=DAY0 + timedelta(minutes=number),
                shift_number=1,
                document_number=number,
                lines=[Line("Нан", "1", 1000, 1000 + number)],
                payment="card",
            )
            response = await kkm.send(ticket)
            assert response.result.result_code == ResultCode.OK, response.result
            self.numbers[kkm.system_id] = number
            self.acked[kkm.system_id].append(f"{kkm.system_id}/s1/d{number}")

    @property
    def total(self) -> int:
        return sum(len(ids) for ids in self.acked.values())

    async def close(self) -> None:
        for kkm in self.kkms:
            await kkm.close()


def assert_exactly_once(kgd: SimulatedKgd, registers: Registers) -> None:
    """Every acknowledged document held once, none other, each register's in its order."""
    expected = {d for ids in registers.acked.values() for d in ids}
    assert set(kgd.documents) == expected
    for system_id, ids in registers.acked.items():
        assert kgd.order[system_id] == ids, f"register {system_id} out of order"


def assert_unchanged(kgd: SimulatedKgd, journal_root: Path) -> None:
    """What the KGD holds is the journal's request body byte for byte, with the OFD's answer."""
    for record in journal_records(journal_root):
        held = kgd.documents[record.document_id]
        assert base64.b64decode(held["body"]) == record.request_frame[HEADER_SIZE:]
        assert held["fiscal_sign"] == record.fiscal_sign
        assert held["received_at_us"] == record.received_at_us
        assert held["device_id"] == record.device_id


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def start_forwarder(
    data_dir: Path,
    database_url: str,
    kgd_url: str,
    *,
    batch: int,
    extra: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """`ofd forward` as a child process, logging beside the data directory."""
    log = open(data_dir / "forwarder.log", "ab")  # noqa: SIM115  (the child holds it)
    return subprocess.Popen(
        [
            sys.executable, "-m", "ingest.cli", "forward", "--data-dir", str(data_dir),
            "--database-url", database_url, "--kgd-url", kgd_url, "--batch", str(batch),
            "--metrics-port", "0", "--no-applications", "--backoff-base", "0.05",
            "--backoff-cap", "0.5", *extra,
        ],
        stdout=log, stderr=log, env=os.environ.copy(),
    )  # fmt: skip
