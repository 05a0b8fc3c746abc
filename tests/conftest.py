"""Shared fixtures: the real services the tests start themselves (PostgreSQL, Mosquitto; Kafka
in tests/kafka_broker.py), a fresh PostgreSQL database per test, an in-process gateway on free
ports, and registered devices.

PostgreSQL and Mosquitto come from the system's packages (`.ci/run` installs them) and are
started once per session on free ports below 32768; OFD_TEST_PG / OFD_TEST_MQTT point the tests
at a running server instead. A test that needs one fails, not skips, when it cannot start:
`make test` promises tests against the real thing.
"""

import asyncio
import logging
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import structlog

from ingest.app import RunningGateway, running_gateway
from ingest.settings import Settings
from ingest.tcp_server import ServerSettings
from ledger import registry
from ledger.fiscal import FiscalSettings
from ledger.group_commit import CommitSettings
from ledger.lifecycle import DeviceStatus
from ledger.migrate import migrate
from simulators.stage.mosquitto import MosquittoBroker
from simulators.stage.postgres import PostgresServer

pytest_plugins = ["kafka_broker"]
TEST_SECRET = bytes(range(32))

# In-process gateways log at info, as `ofd serve` does by default: structlog's unconfigured
# default prints debug too, a line per request (tests/test_logs.py checks `ofd serve`'s own).
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """DSN (without a database) of the session's PostgreSQL server."""
    running = os.environ.get("OFD_TEST_PG")
    if running:
        yield running
        return
    with PostgresServer.create() as server:
        yield server.url


@pytest.fixture(scope="session")
def mqtt_url() -> Iterator[str]:
    """mqtt://host:port of the session's Mosquitto."""
    running = os.environ.get("OFD_TEST_MQTT")
    if running:
        yield running
        return
    with MosquittoBroker.start() as broker:
        yield broker.url


@pytest.fixture
def database_url(pg_server: str) -> Iterator[str]:
    """A new empty database, dropped afterwards."""
    name = f"ofd_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(f"{pg_server}/postgres")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{pg_server}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def gateway_settings(
    data_dir: Path,
    database_url: str,
    *,
    gateway_id: str = "gw-test",
    port: int = 0,
    control_auth: bool = False,
) -> Settings:
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        gateway_id=gateway_id,
        server=ServerSettings(host="127.0.0.1", port=port, read_timeout=2.0, idle_timeout=5.0),
        control_host="127.0.0.1",
        control_port=0,
        grpc_port=0,
        commit=CommitSettings(),
        fiscal=FiscalSettings(secret=TEST_SECRET),
        # Off for tests of other components; tests/test_control_*.py turn it on.
        control_auth=control_auth,
    )


@pytest.fixture
async def gateway(tmp_path: Path, database_url: str) -> AsyncIterator[RunningGateway]:
    async with running_gateway(gateway_settings(tmp_path, database_url)) as running:
        yield running


@dataclass(frozen=True, slots=True)
class RegisteredDevice:
    system_id: int
    token: int
    kgd_registration_number: str


async def register_device(
    database_url: str, *, token: int | None = None, activate: bool = True
) -> RegisteredDevice:
    """Adds an organization, trade point and device, marks it registered and issues a token
    (or sets `token`, to test values such as those above 2^31)."""
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)
        iin = f"{secrets.randbelow(10**12):012d}"
        org = await registry.add_organization(
            conn, registry.Organization(0, iin, "ТОО Тест", "Алматы", "Алматы", "47111")
        )
        point = await registry.add_trade_point(
            conn, registry.TradePoint(0, org.id, "Дүкен 1", "Абай 1", "Абай 1", 43238949, 76889709)
        )
        kgd = f"{secrets.randbelow(10**12):012d}"
        device = await registry.add_device(
            conn,
            registry.Device(
                0, kgd, "SN-1", "Test KKM", 2024, point.id, DeviceStatus.AWAITING_REGISTRATION
            ),
        )
        issued = await registry.issue_token(conn, device.system_id)
        if token is not None:
            await conn.execute(
                "UPDATE device_state SET token = $2 WHERE system_id = $1", device.system_id, token
            )
            issued = token
        if activate:
            await registry.set_status(conn, device.system_id, DeviceStatus.REGISTERED)
        return RegisteredDevice(device.system_id, issued, kgd)
    finally:
        await conn.close()
