"""A real gateway's journal in the warehouse: receipts, a money placement and a shift close (the
device's Z report beside the OFD's), in both protocol versions."""

from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from conftest import register_device
from warehouse_journal import load_journals

from ingest.app import RunningGateway
from ledger import registry
from ledger.lifecycle import Action
from ledger.schemas import SCHEMAS
from ledger.warehouse.backends import open_warehouse
from ledger.warehouse.loader import Loader, local_sources
from ledger.warehouse.reports import run_report
from ledger.wire import ResultCode
from simulators.documents import build_close_shift, build_money_placement, build_report
from simulators.kkm import SimulatedKkm
from simulators.receipts import Line, build_ticket

START = datetime(2026, 11, 25, 9, 0, 0)
REPORT_X = 1


@pytest.mark.parametrize("version", [203, 204])
async def test_documents_of_a_shift_land_in_their_tables(
    gateway: RunningGateway, database_url: str, tmp_path: Path, version: int
) -> None:
    device = await register_device(database_url)
    kkm = SimulatedKkm(
        "127.0.0.1", gateway.tcp.port, version=version, system_id=device.system_id,
        token=device.token,
    )  # fmt: skip
    schema = SCHEMAS[version]
    total = 0
    for number in range(1, 4):
        lines = [Line("Нан", "1", 1000, 10_000 * number)]
        total += sum(line.sum_tiyn for line in lines)
        ticket = build_ticket(
            schema, when=START + timedelta(minutes=number), shift_number=1,
            document_number=number, lines=lines, payment="cash",
        )  # fmt: skip
        assert (await kkm.send(ticket)).result.result_code == ResultCode.OK
    placement = build_money_placement(
        schema, when=START + timedelta(minutes=5), operation=1, amount=5_000, shift_number=1,
        document_number=4,
    )  # fmt: skip
    assert (await kkm.send(placement)).result.result_code == ResultCode.OK
    x = build_report(schema, kind=REPORT_X, when=START + timedelta(minutes=6), shift_number=1)
    assert (await kkm.send(x)).result.result_code == ResultCode.OK
    close = build_close_shift(
        schema, when=START + timedelta(minutes=7), shift_number=1, document_number=5
    )
    assert (await kkm.send(close)).result.result_code == ResultCode.OK
    await kkm.close()

    warehouse = open_warehouse(path=tmp_path / "warehouse")
    try:
        loader = Loader(warehouse, lambda: local_sources(tmp_path / "journal"))
        assert sum(loader.drain()) >= 5
        sid = device.system_id
        receipts = warehouse.select(
            f"SELECT count() AS n, sum(revenue) AS r FROM ofd.receipts WHERE device_id = {sid}"
        )[0]
        assert (int(receipts["n"]), int(receipts["r"])) == (3, total)
        placements = warehouse.select(
            f"SELECT kind, sum FROM ofd.money_placements WHERE device_id = {sid}"
        )
        assert [(int(p["kind"]), int(p["sum"])) for p in placements] == [(1, 5_000)]
        shifts = warehouse.select(
            "SELECT shift_number, device_z, ofd_z, differences, reconciled FROM ofd.shifts"
            f" WHERE device_id = {sid}"
        )
        assert len(shifts) == 1
        shift = shifts[0]
        assert int(shift["shift_number"]) == 1
        assert '"revenue":' in shift["ofd_z"].replace(" ", "")
        # The simulated device sent a zero Z report (2.0.4) or none (2.0.3): the reconciliation
        # names what differs.
        assert int(shift["reconciled"]) == 0
        expected = "revenue" if version == 204 else "sent none"
        assert any(expected in d for d in shift["differences"]), shift["differences"]
        zx = run_report(warehouse, "zx", {"device": sid, "from": "2026-11-25"})
        # The gateway journals documents only: an X report request is answered from the tally
        # and never journaled, so the warehouse's reports are the shift closes.
        assert [r["kind"] for r in zx] == ["Z"]
        cash = run_report(warehouse, "receipts", {"device": sid, "shift": 1})
        assert [r["number"] for r in cash] in ([1, 2, 3], ["1", "2", "3"])
    finally:
        warehouse.close()


async def test_revenue_per_trade_point_follows_a_device_that_moved(
    gateway: RunningGateway, database_url: str, tmp_path: Path
) -> None:
    """The journal record carries the trade point the device stood in when each receipt
    arrived: a device re-registered to another point keeps its earlier revenue where it was made."""
    device = await register_device(database_url)
    sid = device.system_id
    kkm = SimulatedKkm(
        "127.0.0.1", gateway.tcp.port, version=204, system_id=sid, token=device.token
    )
    schema = SCHEMAS[204]

    async def sell(number: int, price: int) -> None:
        ticket = build_ticket(
            schema, when=START + timedelta(minutes=number), shift_number=1,
            document_number=number, lines=[Line("Сүт", "1", 1000, price)], payment="cash",
        )  # fmt: skip
        assert (await kkm.send(ticket)).result.result_code == ResultCode.OK

    await sell(1, 10_000)
    await sell(2, 20_000)
    conn = await asyncpg.connect(database_url)
    try:
        placement = await registry.placement_of_device(conn, sid)
        assert placement is not None
        org, first = placement
        second = await registry.add_trade_point(
            conn, registry.TradePoint(0, org, "Дүкен 2", "Абай 2", "Абай 2", 43238949, 76889709)
        )
        for action in (Action.REQUEST_DEREGISTRATION, Action.DEREGISTER):
            await registry.transition(conn, sid, action)
        await registry.transition(conn, sid, Action.REREGISTER, trade_point_id=second.id)
        await registry.transition(conn, sid, Action.ACTIVATE)
    finally:
        await conn.close()
    await sell(3, 40_000)
    await kkm.close()

    warehouse = open_warehouse(path=tmp_path / "warehouse")
    try:
        assert load_journals(warehouse, tmp_path) == 3
        rows = warehouse.select(
            "SELECT organization_id, trade_point_id, sum(receipts) AS n, sum(revenue) AS r"
            f" FROM ofd.daily_trade_point WHERE organization_id = {org}"
            " GROUP BY organization_id, trade_point_id ORDER BY trade_point_id"
        )
        assert [(int(r["trade_point_id"]), int(r["n"]), int(r["r"])) for r in rows] == [
            (first, 2, 30_000),
            (second.id, 1, 40_000),
        ]
    finally:
        warehouse.close()
