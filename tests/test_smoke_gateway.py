"""A receipt through a real gateway (TCP, PostgreSQL, journal): the foundation's happy path."""

from datetime import datetime

from conftest import register_device

from ingest.app import RunningGateway
from ledger.schemas import SCHEMAS
from simulators.kkm import SimulatedKkm
from simulators.receipts import Line, build_ticket


async def test_receipt_gets_fiscal_sign_and_rotated_token(
    gateway: RunningGateway, database_url: str
) -> None:
    device = await register_device(database_url)
    kkm = SimulatedKkm(
        "127.0.0.1", gateway.tcp.port, version=203, system_id=device.system_id, token=device.token
    )
    ticket = build_ticket(
        SCHEMAS[203],
        when=datetime(2026, 11, 26, 12, 30, 5),
        shift_number=1,
        document_number=1,
        lines=[Line("Нан / Хлеб", "1", 2000, 25000)],
        payment="card",
    )
    response = await kkm.send(ticket)
    assert response.result.result_code == 0
    assert len(response.ticket.ticket_number) == 10
    assert response.ticket.qr_code.decode().endswith(
        f"&f={device.kgd_registration_number}&s=500.00&t=20261126T123005"
    )
    assert kkm.token != device.token
