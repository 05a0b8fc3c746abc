"""`make demo`: the foundation end to end on the embedded default.

Starts a gateway (embedded PostgreSQL from pgserver, local journal) in .ofd-demo, registers three
simulated cash registers through the control API (two speaking 2.0.3, one 2.0.4), and has each
send a shift of receipts over TCP, one connection per request like the reference client. One
device drops its connection before reading an answer and retransmits, as a real device does after
a lost answer. Then it stops the gateway and shows that the journal holds every acknowledged
receipt exactly once. Meanwhile `ofd load` (the warehouse loader, owner of the chDB directory)
loads the journal; the demo ends with an analyst's `ofd query` through it, checking that every
acknowledged receipt is in the warehouse once. A simulated KGD (simulators/kgd.py) and `ofd
forward` run beside them: each register goes from "awaiting registration" to "registered" when
the KGD accepts its application, and every acknowledged receipt is counted as forwarded to the
KGD exactly once (`ofd kgd status`). Last, `ofd web` (the cabinet) starts with a demo main
user, and a customer's check of a receipt by the very QR URL the gateway printed finds it.
Exits 0 only if every check holds; with --stay the cabinet (and the loader it reads through)
keeps running for a person to log in, until Ctrl-C.
"""

import argparse
import asyncio
import contextlib
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from ingest.control.client import ControlClient
from ledger.journal.view import journal_records
from ledger.schemas import SCHEMAS
from ledger.warehouse.service import query, service_address
from ofdproto.control.v1 import control_pb2 as pb
from simulators.kkm import SimulatedKkm
from simulators.receipts import PaymentKind, build_info, build_system, build_ticket, random_lines
from simulators.stage.kgd import kgd_state, start_forwarder, start_kgd
from simulators.stage.ports import free_ports
from simulators.stage.processes import ServerProcess, start_gateway, stop

DATA_DIR = Path(".ofd-demo")
# The defaults of `ofd serve` and `ofd web`, below the ephemeral range: taken when free, else the
# next free one (another demo, a gateway already running).
DEMO_PORT, DEMO_CONTROL_PORT, WEB_PORT = 7777, 7778, 7781
PORT_SEARCH = 200  # ports tried above a default
RECEIPTS_PER_SHIFT = 12
DROPPED_RECEIPT = 5  # the receipt whose answer the third device never reads
PAYMENTS: tuple[PaymentKind, ...] = ("cash", "card", "mobile")
SHIFT_START = datetime(2026, 11, 26, 9, 0)


@dataclass
class DemoDevice:
    name: str
    version: int
    system_id: int
    first_token: int
    acknowledged: dict[str, str] = field(default_factory=dict)  # fiscal sign -> document
    qr_urls: list[str] = field(default_factory=list)  # as printed on the receipts
    notes: list[str] = field(default_factory=list)


def _status(status: int) -> str:
    return pb.DeviceStatus.Name(status).removeprefix("DEVICE_STATUS_").lower()


def register(control: ControlClient, specs: list[tuple[str, int]]) -> list[DemoDevice]:
    org = control.call(
        "AddOrganization",
        pb.Organization(
            iin="180540012345",
            title="ТОО «Демо Дүкен»",
            address="Алматы, Абай 10",
            address_kz="Алматы, Абай 10",
            oked="47111",
        ),
    )
    point = control.call(
        "AddTradePoint",
        pb.TradePoint(
            organization_id=org.id,
            title="Дүкен №1",
            address="Алматы, Абай 10",
            address_kz="Алматы, Абай 10",
            latitude=43238949,
            longitude=76889709,
        ),
    )
    devices = []
    for index, (name, version) in enumerate(specs, start=1):
        device = control.call(
            "AddDevice",
            pb.Device(
                kgd_registration_number=f"6403000145{index:02d}",
                serial_number=f"DEMO-{index}",
                model="Demo KKM",
                year=2025,
                trade_point_id=point.id,
            ),
        )
        shown = control.call("ShowDevice", pb.DeviceRef(system_id=device.system_id))
        print(
            f"added {name}: system id {device.system_id},"
            f" {_status(shown.device.status)}, its application to the KGD"
            f" {shown.kgd_application_status}"
        )
        token = control.call("IssueToken", pb.DeviceRef(system_id=device.system_id)).token
        devices.append(DemoDevice(name, version, device.system_id, token))
    for device in devices:  # the KGD decides; `ofd forward` carries the decision out
        shown = await_registered(control, device.system_id)
        print(
            f"{device.name}: {_status(shown.device.status)}: the KGD"
            f" {shown.kgd_application_status} its {shown.kgd_application_kind} application"
        )
    return devices


KGD_DECISION_SECONDS = 1.0  # the simulated KGD's delay (a real one takes 15 minutes to 3 days)
REGISTRATION_TIMEOUT = 30.0


def await_registered(control: ControlClient, system_id: int) -> pb.DeviceState:
    deadline = time.monotonic() + REGISTRATION_TIMEOUT
    while True:
        shown: pb.DeviceState = control.call("ShowDevice", pb.DeviceRef(system_id=system_id))
        if shown.device.status == pb.DEVICE_STATUS_REGISTERED:
            return shown
        if time.monotonic() > deadline:
            raise SystemExit(f"device {system_id} not registered by the KGD: {shown}")
        time.sleep(0.1)


async def run_shift(gateway: ServerProcess, device: DemoDevice, drops_answer: bool) -> None:
    kkm = SimulatedKkm(
        gateway.host,
        gateway.port,
        version=device.version,
        system_id=device.system_id,
        token=device.first_token,
    )
    schema = SCHEMAS[device.version]
    rng = random.Random(device.system_id)
    await kkm.send(build_system(schema, get_reg_info=True))
    info = await kkm.send(build_info(schema))
    device.notes.append(
        f"INFO: last document {info.service.last_document_info.fr_shift_number}"
        f"/{info.service.last_document_info.printed_document_number}"
    )
    for number in range(1, RECEIPTS_PER_SHIFT + 1):
        ticket = build_ticket(
            schema,
            when=SHIFT_START + timedelta(minutes=7 * number),
            shift_number=1,
            document_number=number,
            lines=random_lines(rng, rng.randint(1, 4)),
            payment=PAYMENTS[number % len(PAYMENTS)],
        )
        if drops_answer and number == DROPPED_RECEIPT:
            await kkm.send_and_drop(ticket)
            first = await kkm.retransmit()
            first_bytes = kkm.last_response_frame
            again = await kkm.retransmit()
            identical = kkm.last_response_frame == first_bytes
            device.notes.append(
                f"receipt {number}: connection dropped before the answer was read; "
                f"retransmitted twice -> sign {first.ticket.ticket_number} both times, "
                f"answers byte-identical: {identical}"
            )
            if not identical or again.ticket.ticket_number != first.ticket.ticket_number:
                raise SystemExit("retransmission was not answered identically")
            response = again
        else:
            response = await kkm.send(ticket)
        if response.result.result_code != 0:
            raise SystemExit(f"{device.name}: receipt {number} refused: {response.result}")
        device.acknowledged[response.ticket.ticket_number] = f"s1/d{number}"
        device.qr_urls.append(response.ticket.qr_code.decode())
    device.notes.append(f"token now {kkm.token} (first {device.first_token})")
    await kkm.close()


def check_journal(devices: list[DemoDevice]) -> bool:
    counts: dict[tuple[int, str], int] = {}
    for record in journal_records(DATA_DIR / "journal"):
        key = (record.device_id, record.fiscal_sign)
        counts[key] = counts.get(key, 0) + 1
    ok = True
    print("\njournal check (after the gateway stopped):")
    for device in devices:
        held = [counts.get((device.system_id, sign), 0) for sign in device.acknowledged]
        exactly_once = all(n == 1 for n in held)
        extra = sum(n for (sid, _), n in counts.items() if sid == device.system_id) - sum(held)
        print(
            f"  {device.name}: {len(device.acknowledged)} acknowledged receipts, "
            f"{sum(held)} in the journal, each exactly once: {exactly_once}, "
            f"unacknowledged extras: {extra}"
        )
        ok = ok and exactly_once and extra == 0
    print(f"  total records: {sum(counts.values())}")
    return ok


WAREHOUSE_TIMEOUT = 60.0  # seconds the loader gets to start and to catch up
ANALYST_QUERY = (
    "SELECT device_id, count() AS receipts, sum(total) / 100 AS total_tenge,"
    " countIf(offline = 1) AS offline FROM ofd.receipts GROUP BY device_id ORDER BY device_id"
)


def start_loader() -> subprocess.Popen[bytes]:
    log = open(DATA_DIR / "loader.log", "ab")  # noqa: SIM115  (the child holds it)
    return subprocess.Popen(
        [sys.executable, "-m", "ingest.cli", "load", "--data-dir", str(DATA_DIR)],
        stdout=log,
        stderr=log,
    )


def check_warehouse(devices: list[DemoDevice], loader: subprocess.Popen[bytes]) -> bool:
    """Waits until the loader holds every acknowledged receipt, then asks as an analyst would."""
    expected = sum(len(d.acknowledged) for d in devices)
    deadline = time.monotonic() + WAREHOUSE_TIMEOUT
    count = -1
    while time.monotonic() < deadline and loader.poll() is None:
        if service_address(DATA_DIR) is not None:
            rows = query(DATA_DIR, {"sql": "SELECT count() AS n FROM ofd.documents"})
            count = int(rows[0]["n"])
            if count >= expected:
                break
        time.sleep(0.1)
    signs = {sign for d in devices for sign in d.acknowledged}
    rows = query(DATA_DIR, {"sql": "SELECT fiscal_sign FROM ofd.receipts"})
    loaded = [r["fiscal_sign"] for r in rows]
    ok = sorted(loaded) == sorted(signs)
    print(
        f"\nwarehouse check: {expected} acknowledged receipts, {len(loaded)} in chDB, "
        f"each exactly once: {ok}"
    )
    print(f'\nan analyst asks: ofd query --data-dir {DATA_DIR} "{ANALYST_QUERY}"')
    answer = subprocess.run(
        [sys.executable, "-m", "ingest.cli", "query", "--data-dir", str(DATA_DIR), ANALYST_QUERY],
        capture_output=True,
        text=True,
        timeout=WAREHOUSE_TIMEOUT,
        check=False,
    )
    print(answer.stdout.rstrip() or answer.stderr.rstrip())
    return ok and answer.returncode == 0


def check_kgd(devices: list[DemoDevice], kgd_url: str) -> bool:
    """Waits until the KGD holds every acknowledged receipt; exactly once: none twice."""
    expected = sum(len(d.acknowledged) for d in devices)
    deadline = time.monotonic() + WAREHOUSE_TIMEOUT
    state = kgd_state(kgd_url)
    while state["documents"] < expected and time.monotonic() < deadline:
        time.sleep(0.1)
        state = kgd_state(kgd_url)
    ok = bool(state["documents"] == expected and state["duplicates"] == 0)
    print(
        f"\nKGD check: {expected} acknowledged receipts, {state['documents']} forwarded to the"
        f" KGD, resends absorbed {state['duplicates']}, exactly once: {ok}"
    )
    status = subprocess.run(
        [sys.executable, "-m", "ingest.cli", "kgd", "status", "--data-dir", str(DATA_DIR)],
        capture_output=True,
        text=True,
        timeout=WAREHOUSE_TIMEOUT,
        check=False,
    )
    print(f"$ ofd kgd status --data-dir {DATA_DIR}")
    print(status.stdout.rstrip() or status.stderr.rstrip())
    return ok


DEMO_LOGIN, DEMO_PASSWORD = "demo", "demo-password"
DEMO_ORGANIZATION = 1  # the one organization register() made in the fresh database


def start_cabinet(web_port: int) -> subprocess.Popen[bytes]:
    """A main user for the demo organization, then `ofd web` on its default port."""
    cli = [sys.executable, "-m", "ingest.cli"]
    subprocess.run(
        [*cli, "web-user", "add", "--data-dir", str(DATA_DIR), "--org", str(DEMO_ORGANIZATION),
         "--login", DEMO_LOGIN, "--main", "--name", "Демо"],
        input=f"{DEMO_PASSWORD}\n".encode(),
        check=True,
        timeout=WAREHOUSE_TIMEOUT,
        capture_output=True,
    )  # fmt: skip
    log = open(DATA_DIR / "web.log", "ab")  # noqa: SIM115  (the child holds it)
    return subprocess.Popen(
        [*cli, "web", "--data-dir", str(DATA_DIR), "--web-port", str(web_port)],
        stdout=log,
        stderr=log,
    )


def check_cabinet(devices: list[DemoDevice], web: subprocess.Popen[bytes], web_port: int) -> bool:
    """A customer scans the first receipt's QR code: the cabinet's check page finds it."""
    url = devices[0].qr_urls[0]
    deadline = time.monotonic() + WAREHOUSE_TIMEOUT
    body = ""
    while time.monotonic() < deadline and web.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 (our own http URL)
                body = answer.read().decode()
            break
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    ok = "Чек получен ОФД" in body
    print(f"\ncabinet check: a customer scans {url}\n  the check page finds it: {ok}")
    print(
        f"the cabinet: `ofd web --data-dir {DATA_DIR}` on http://127.0.0.1:{web_port},"
        f" login {DEMO_LOGIN} / {DEMO_PASSWORD} (with `ofd load --data-dir {DATA_DIR}` running)"
    )
    return ok


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for flag, default, what in (
        ("--port", DEMO_PORT, "the gateway's device TCP port"),
        ("--control-port", DEMO_CONTROL_PORT, "the gateway's control API port"),
        ("--web-port", WEB_PORT, "the cabinet's port (ofd web), named in the QR codes"),
    ):
        parser.add_argument(
            flag, type=int, default=0, help=f"{what} (default: {default}, or the next free one)"
        )
    parser.add_argument(
        "--stay",
        action="store_true",
        help="after the checks, keep the cabinet and the loader running (Ctrl-C stops them)",
    )
    return parser.parse_args(argv)


def _free(preferred: int, taken: set[int]) -> int:
    for port in free_ports(range(preferred, preferred + PORT_SEARCH)):
        if port not in taken:
            taken.add(port)
            return port
    raise SystemExit(f"no free port from {preferred} to {preferred + PORT_SEARCH}")


def _terminated(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM: the cleanup of Ctrl-C, every process stopped


def _end(process: subprocess.Popen[bytes]) -> None:
    """Stops a child of this process group (the loader, the cabinet), killed when it hangs."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(WAREHOUSE_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    taken: set[int] = set()
    port = args.port or _free(DEMO_PORT, taken)
    control_port = args.control_port or _free(DEMO_CONTROL_PORT, taken)
    web_port = args.web_port or _free(WEB_PORT, taken)
    signal.signal(signal.SIGTERM, _terminated)
    try:
        return _demo(port, control_port, web_port, stay=args.stay)
    except KeyboardInterrupt:
        print("\ndemo interrupted: every process it started is stopped", file=sys.stderr)
        return 130


def _demo(port: int, control_port: int, web_port: int, *, stay: bool = False) -> int:
    if DATA_DIR.exists():
        shutil.rmtree(DATA_DIR)
    DATA_DIR.mkdir()
    # Every process started is stopped on the way out, whatever the way: done, failed, Ctrl-C or
    # SIGTERM (last started, first stopped).
    with contextlib.ExitStack() as started:
        print(f"starting the gateway on the embedded default (data in {DATA_DIR}/) ...")
        gateway = start_gateway(
            DATA_DIR,
            "--qr-base-url",
            f"http://127.0.0.1:{web_port}/check",
            port=port,
            control_port=control_port,
            log_path=DATA_DIR / "gateway.log",
        )
        started.callback(stop, gateway)
        loader = start_loader()
        started.callback(_end, loader)
        kgd, kgd_url = start_kgd(
            DATA_DIR / "kgd.log", "--decision-delay", str(KGD_DECISION_SECONDS)
        )
        started.callback(stop, kgd)
        forwarder = start_forwarder(DATA_DIR, kgd_url, "--application-poll-seconds", "0.2")
        started.callback(stop, forwarder)
        print(f"simulated KGD at {kgd_url}; `ofd forward` sends it applications and documents")
        print(f"gateway ready: TCP {gateway.host}:{gateway.port}, control API {gateway.control}")
        control = ControlClient(gateway.control, gateway.control_key)
        devices = register(
            control, [("kkm-A (2.0.3)", 203), ("kkm-B (2.0.4)", 204), ("kkm-C (2.0.3)", 203)]
        )
        control.close()
        for d in devices:
            print(f"{d.name}: system id {d.system_id}, token {d.first_token}")

        async def shifts() -> None:
            await asyncio.gather(*(run_shift(gateway, d, d is devices[-1]) for d in devices))

        asyncio.run(shifts())
        for d in devices:
            print(f"\n{d.name} sent a shift of {RECEIPTS_PER_SHIFT} receipts:")
            for sign, doc in list(d.acknowledged.items())[:3]:
                print(f"  {doc}: fiscal sign {sign}")
            print(f"  ... {len(d.acknowledged)} acknowledged in all")
            for note in d.notes:
                print(f"  {note}")
        print(f"\ngateway stopped (exit code {stop(gateway)})")
        ok = check_journal(devices) and check_warehouse(devices, loader)
        ok = check_kgd(devices, kgd_url) and ok
        web = start_cabinet(web_port)
        started.callback(_end, web)
        ok = check_cabinet(devices, web, web_port) and ok
        print("\ndemo " + ("passed" if ok else "FAILED"))
        if stay and web.poll() is None:
            print(f"the cabinet stays on http://127.0.0.1:{web_port}; Ctrl-C stops everything")
            web.wait()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
