"""Registration applications to the KGD, against the simulated KGD over its real HTTP wire: the
control API files them (AddDevice, RequestDeregistration, Reregister), the worker sends them and
carries out the decision: accepted (the register becomes registered), refused with a reason
(it stays awaiting registration, the reason shown by ShowDevice and the audit log), delayed (it
waits, then moves), a KGD down for a while (retried with backoff, the error recorded), and an
operator's override.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from ingest.app import RunningGateway
from ingest.control.client import ControlClient
from ledger.kgd.applications import ApplicationSettings, ApplicationWorker
from ledger.kgd.http import HttpKgd, KgdSettings
from ledger.kgd.retry import Backoff
from ofdproto.control.v1 import control_pb2 as pb
from simulators.kgd import SERIAL_TAKEN, KgdFaults, SimulatedKgd

pytestmark = pytest.mark.integration

FAST = ApplicationSettings(
    poll_interval=0.05, idle_interval=0.05, lease=5.0, backoff=Backoff(base=0.01, cap=0.05)
)
WAIT = 10.0  # seconds a decision may take to be carried out in these tests


@dataclass
class Stage:
    gateway: RunningGateway
    kgd: SimulatedKgd
    worker: ApplicationWorker
    pool: asyncpg.Pool
    control: ControlClient
    point_id: int

    async def call(self, method: str, request: Any) -> Any:
        return await asyncio.to_thread(self.control.call, method, request)

    async def add_device(self, serial: str, kgd_number: str = "") -> int:
        device = await self.call(
            "AddDevice",
            pb.Device(
                kgd_registration_number=kgd_number or f"KGD-{serial}",
                serial_number=serial,
                model="Test KKM",
                year=2025,
                trade_point_id=self.point_id,
            ),
        )
        return int(device.system_id)

    async def show(self, system_id: int) -> Any:
        return await self.call("ShowDevice", pb.DeviceRef(system_id=system_id))

    async def audit(self, system_id: int) -> list[tuple[str, str, dict[str, Any]]]:
        log = await self.call("ListAudit", pb.AuditQuery(system_id=system_id))
        return [(e.actor, e.action, json.loads(e.detail_json)) for e in log.entries]

    async def until(self, system_id: int, status: int) -> Any:
        """Steps the worker until the device has `status`; its ShowDevice answer."""
        async with asyncio.timeout(WAIT):
            while True:
                await self.worker.step()
                shown = await self.show(system_id)
                if shown.device.status == status:
                    return shown
                await asyncio.sleep(0.02)


@pytest.fixture
async def stage(gateway: RunningGateway) -> AsyncIterator[Stage]:
    kgd = SimulatedKgd()
    url = await kgd.start()
    client = HttpKgd(KgdSettings(url, timeout=2.0))
    pool = await asyncpg.create_pool(gateway.database_url, min_size=1, max_size=2)
    control = ControlClient(f"127.0.0.1:{gateway.control_port}")
    try:
        org = await asyncio.to_thread(
            control.call, "AddOrganization", pb.Organization(iin="180540012345", title="ТОО Тест")
        )
        point = await asyncio.to_thread(
            control.call,
            "AddTradePoint",
            pb.TradePoint(
                organization_id=org.id, title="Дүкен", latitude=43238949, longitude=76889709
            ),
        )
        yield Stage(gateway, kgd, ApplicationWorker(pool, client, FAST), pool, control, point.id)
    finally:
        control.close()
        await pool.close()
        await client.close()
        await kgd.stop()


async def test_accepted_application_registers_the_device(stage: Stage) -> None:
    system_id = await stage.add_device("SN-ACCEPT")
    shown = await stage.show(system_id)
    assert shown.device.status == pb.DEVICE_STATUS_AWAITING_REGISTRATION
    assert (shown.kgd_application_kind, shown.kgd_application_status) == (
        "registration",
        "pending",
    )

    shown = await stage.until(system_id, pb.DEVICE_STATUS_REGISTERED)
    assert shown.kgd_application_status == "accepted"
    # What the KGD got: the register, its organization and its point with coordinates.
    (filed,) = [a.body for a in stage.kgd.applications.values()]
    assert filed["kind"] == "registration"
    assert filed["system_id"] == system_id
    assert (filed["serial_number"], filed["model"], filed["year"]) == (
        "SN-ACCEPT",
        "Test KKM",
        2025,
    )
    assert filed["organization"]["iin"] == "180540012345"
    assert (filed["trade_point"]["latitude"], filed["trade_point"]["longitude"]) == (
        43238949,
        76889709,
    )
    entries = await stage.audit(system_id)
    assert ("kgd", "KgdApplicationAccepted") in [(actor, action) for actor, action, _ in entries]


async def test_refused_application_keeps_the_device_waiting_with_the_reason(stage: Stage) -> None:
    first = await stage.add_device("SN-TWICE")
    await stage.until(first, pb.DEVICE_STATUS_REGISTERED)
    second = await stage.add_device("SN-TWICE", "KGD-2")  # the same serial, another register

    async with asyncio.timeout(WAIT):
        while (shown := await stage.show(second)).kgd_application_status != "refused":
            await stage.worker.step()
    assert shown.device.status == pb.DEVICE_STATUS_AWAITING_REGISTRATION
    assert shown.kgd_application_reason == SERIAL_TAKEN
    refused = [d for _, action, d in await stage.audit(second) if action == "KgdApplicationRefused"]
    assert refused == [refused[0]]
    assert refused[0]["reason"] == SERIAL_TAKEN
    assert refused[0]["moved"] == "stays"


async def test_delayed_decision_and_a_kgd_down_for_a_while(stage: Stage) -> None:
    stage.kgd.faults = KgdFaults(down=True, decision_delay=0.5)
    system_id = await stage.add_device("SN-LATER")
    for _ in range(3):
        await stage.worker.step()
        await asyncio.sleep(0.06)
    shown = await stage.show(system_id)
    assert shown.kgd_application_status == "pending"
    assert "503" in shown.kgd_application_error  # the last failed attempt, for the operator
    async with stage.pool.acquire() as conn:
        attempts = await conn.fetchval(
            "SELECT attempts FROM kgd_applications WHERE system_id = $1", system_id
        )
    assert attempts >= 1

    stage.kgd.faults.down = False
    async with asyncio.timeout(WAIT):
        while (shown := await stage.show(system_id)).kgd_application_status != "sent":
            await stage.worker.step()
            await asyncio.sleep(0.02)
    assert shown.device.status == pb.DEVICE_STATUS_AWAITING_REGISTRATION  # the KGD is deciding
    assert shown.kgd_application_error == ""
    shown = await stage.until(system_id, pb.DEVICE_STATUS_REGISTERED)
    assert shown.kgd_application_status == "accepted"
    # One application at the KGD, whatever the retries: idempotent by application id.
    assert len(stage.kgd.applications) == 1


async def test_deregistration_and_reregistration_go_through_the_kgd(stage: Stage) -> None:
    system_id = await stage.add_device("SN-LIFE")
    await stage.until(system_id, pb.DEVICE_STATUS_REGISTERED)
    await stage.call("RequestDeregistration", pb.DeviceRef(system_id=system_id))
    shown = await stage.until(system_id, pb.DEVICE_STATUS_DEREGISTERED)
    assert shown.kgd_application_kind == "deregistration"
    await stage.call("Reregister", pb.Reregistration(system_id=system_id))
    shown = await stage.until(system_id, pb.DEVICE_STATUS_REGISTERED)
    assert (shown.kgd_application_kind, shown.kgd_application_status) == (
        "reregistration",
        "accepted",
    )
    kinds = sorted(a.body["kind"] for a in stage.kgd.applications.values())
    assert kinds == ["deregistration", "registration", "reregistration"]


async def test_operator_activation_overrides_the_application(stage: Stage) -> None:
    stage.kgd.faults = KgdFaults(decision_delay=60.0)
    system_id = await stage.add_device("SN-OVERRIDE")
    await stage.worker.step()  # sent: the KGD takes its time
    assert (await stage.show(system_id)).kgd_application_status == "sent"

    await stage.call("ActivateDevice", pb.DeviceRef(system_id=system_id))
    shown = await stage.show(system_id)
    assert shown.device.status == pb.DEVICE_STATUS_REGISTERED
    assert shown.kgd_application_status == "overridden"
    activations = [d for _, a, d in await stage.audit(system_id) if a == "ActivateDevice"]
    assert activations[0]["override"] == "kgd_application"
    # The KGD's later answer is not acted on: the worker has nothing open to ask about.
    stage.kgd.faults.decision_delay = 0.0
    assert await stage.worker.step() == 0


async def test_refused_deregistration_moves_the_device_back_to_registered(stage: Stage) -> None:
    system_id = await stage.add_device("SN-STAYS")
    await stage.until(system_id, pb.DEVICE_STATUS_REGISTERED)
    stage.kgd.refuse_serials["SN-STAYS"] = "unsent documents of the register"
    await stage.call("RequestDeregistration", pb.DeviceRef(system_id=system_id))
    assert (await stage.show(system_id)).device.status == pb.DEVICE_STATUS_AWAITING_DEREGISTRATION

    async with asyncio.timeout(WAIT):
        while (shown := await stage.show(system_id)).kgd_application_status != "refused":
            await stage.worker.step()
    assert shown.device.status == pb.DEVICE_STATUS_REGISTERED
    assert shown.kgd_application_kind == "deregistration"
    assert shown.kgd_application_reason == "unsent documents of the register"
    refused = [d for _, a, d in await stage.audit(system_id) if a == "KgdApplicationRefused"]
    assert refused[0]["moved"] == "registered"
