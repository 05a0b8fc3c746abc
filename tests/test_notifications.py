"""MQTT notifications against the real Mosquitto the session starts (conftest.mqtt_url):
a subscriber receives what the control API and the devices' traffic raise, and a broker that
is not there never slows ingest."""

import asyncio
import dataclasses
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
import pytest
from conftest import gateway_settings, register_device
from prometheus_client import generate_latest
from wire import ask, body

from ingest.app import RunningGateway, running_gateway
from ingest.codec import encode
from ingest.control.client import ControlClient
from ingest.notifications import MAX_QUEUED, MqttSettings, Notifier
from ledger.schemas import SCHEMAS
from ledger.wire import ResultCode
from ofdproto.control.v1 import control_pb2 as pb
from simulators.receipts import Line, build_ticket

DEADLINE = 20.0  # seconds the whole exchange with the broker may take


def sale(version: int, shift: int, number: int) -> bytes:
    return body(
        build_ticket(
            SCHEMAS[version],
            when=datetime(2026, 11, 26, 9 + shift, 0, 0),
            shift_number=shift,
            document_number=number,
            lines=[Line("Нан", "1", 2000, 18000)],
            payment="card",
        )
    )


@pytest.fixture
def gateway_id() -> str:
    # Its own topic subtree: tests running at once never see each other's notifications.
    return f"gwt{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def notifying(
    tmp_path: Path, database_url: str, gateway_id: str, mqtt_url: str
) -> AsyncIterator[RunningGateway]:
    settings = dataclasses.replace(
        gateway_settings(tmp_path, database_url, gateway_id=gateway_id),
        mqtt_url=mqtt_url,
        offline_alert_seconds=1.5,
        alert_scan_seconds=0.2,
    )
    async with running_gateway(settings) as running:
        yield running


async def control(gateway: RunningGateway, method: str, request: Any) -> Any:
    def call() -> Any:
        client = ControlClient(f"127.0.0.1:{gateway.control_port}")
        try:
            return client.call(method, request)
        finally:
            client.close()

    return await asyncio.to_thread(call)


async def test_a_subscriber_receives_every_kind_of_notification(
    notifying: RunningGateway, database_url: str, gateway_id: str, mqtt_url: str
) -> None:
    mqtt = MqttSettings.from_url(mqtt_url, gateway_id)
    seen: dict[tuple[int, str], dict[str, Any]] = {}
    async with aiomqtt.Client(mqtt.host, mqtt.port, timeout=5.0) as subscriber:
        await subscriber.subscribe(f"ofd/{gateway_id}/devices/#", qos=1)

        # Control: a device through registration, token reset, block and unblock.
        fresh = await register_device(database_url, activate=False)
        await control(notifying, "ActivateDevice", pb.DeviceRef(system_id=fresh.system_id))
        issued = await control(notifying, "IssueToken", pb.DeviceRef(system_id=fresh.system_id))
        blocked = pb.BlockRequest(system_id=fresh.system_id, message="Позвоните в ОФД")
        await control(notifying, "BlockDevice", blocked)
        await control(notifying, "UnblockDevice", pb.DeviceRef(system_id=fresh.system_id))

        # Traffic: 2.0.3 then 2.0.4 (a version change), and a new shift without closing the
        # old one (a Z report mismatch: the shift was never closed).
        port = notifying.tcp.port
        first = await ask(port, encode(203, fresh.system_id, issued.token, 1, sale(203, 1, 1)))
        assert first.code == ResultCode.OK
        second = await ask(
            port, encode(204, fresh.system_id, first.header.token, 2, sale(204, 2, 2))
        )
        assert second.code == ResultCode.OK

        # A shift open for two days, by the device's clock.
        other = await register_device(database_url)
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "UPDATE device_state SET shift_open = true, shift_number = 7,"
                " shift_opened_at = (now() AT TIME ZONE 'Asia/Almaty') - interval '48 hours'"
                " WHERE system_id = $1",
                other.system_id,
            )
        finally:
            await conn.close()

        wanted = {
            (fresh.system_id, "registered"),
            (fresh.system_id, "token_reset"),
            (fresh.system_id, "blocked"),
            (fresh.system_id, "unblocked"),
            (fresh.system_id, "protocol_version_changed"),
            (fresh.system_id, "z_mismatch"),
            (fresh.system_id, "offline"),  # silent longer than 1.5 s after its last ticket
            (other.system_id, "shift_open_too_long"),
        }
        async with asyncio.timeout(DEADLINE):
            async for message in subscriber.messages:
                _, gw, _, system_id, event = str(message.topic).split("/")
                data = json.loads(bytes(message.payload))
                assert message.qos == 1
                assert (gw, data["gateway"], data["event"]) == (gateway_id, gateway_id, event)
                assert data["system_id"] == int(system_id)
                assert data["schema"] == 1
                seen[(int(system_id), event)] = data
                if wanted <= seen.keys():
                    break

    assert seen[(fresh.system_id, "blocked")]["data"] == {"message": "Позвоните в ОФД"}
    change = seen[(fresh.system_id, "protocol_version_changed")]["data"]
    assert change == {"previous": 203, "current": 204}
    mismatch = seen[(fresh.system_id, "z_mismatch")]["data"]
    assert mismatch["shift_number"] == 1
    assert mismatch["device_sent_z"] is False
    assert seen[(fresh.system_id, "offline")]["data"]["seconds"] >= 1
    assert seen[(other.system_id, "shift_open_too_long")]["data"]["shift_number"] == 7
    assert str(issued.token) not in json.dumps(seen[(fresh.system_id, "token_reset")])
    # Raised once, not on every scan.
    assert notifying.notifier is not None
    assert notifying.notifier.stats.dropped == 0
    scraped = generate_latest(notifying.metrics.registry).decode()
    assert 'ofd_notifications_total{outcome="published"}' in scraped


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_missing_broker_never_slows_ingest(
    tmp_path: Path, database_url: str, gateway_id: str
) -> None:
    settings = dataclasses.replace(
        gateway_settings(tmp_path, database_url, gateway_id=gateway_id),
        mqtt_url=f"mqtt://127.0.0.1:{_closed_port()}",
    )
    async with running_gateway(settings) as gateway:
        device = await register_device(database_url)
        token = device.token
        started = time.monotonic()
        for number in range(1, 21):
            version = 203 if number % 2 else 204  # every request a version change to notify
            frame = encode(version, device.system_id, token, number, sale(version, 1, number))
            answer = await ask(gateway.tcp.port, frame)
            assert answer.code == ResultCode.OK
            token = answer.header.token
        await control(gateway, "BlockDevice", pb.BlockRequest(system_id=device.system_id,
                                                              message="x"))  # fmt: skip
        elapsed = time.monotonic() - started
        assert elapsed < 5.0, f"20 receipts took {elapsed:.1f} s with the broker down"
        assert gateway.notifier is not None
        assert gateway.notifier.stats.published == 0
        assert gateway.notifier.stats.queued >= 20


def test_the_queue_is_bounded_and_drops_the_oldest() -> None:
    notifier = Notifier(MqttSettings("127.0.0.1", 1, "gw"))
    for index in range(MAX_QUEUED + 5):
        notifier.publish(index, "offline", {})
    assert notifier.stats.dropped == 5
    assert notifier.stats.queued == MAX_QUEUED + 5


def test_mqtt_urls() -> None:
    parsed = MqttSettings.from_url("mqtt://u:p@broker:1884", "gw")
    assert (parsed.host, parsed.port, parsed.username, parsed.password) == (
        "broker", 1884, "u", "p"
    )  # fmt: skip
    assert MqttSettings.from_url("mqtt://broker", "gw").port == 1883
    with pytest.raises(ValueError, match="mqtt://"):
        MqttSettings.from_url("http://broker", "gw")
