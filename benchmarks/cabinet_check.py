"""The public receipt check and the cabinet's pages over a warehouse of a million receipts.

    python -m benchmarks.cabinet_check [--receipts 1000000] [--devices 200] [--seconds 20]
                                       [--connections 16] [--out bench-results/cabinet.json]

The warehouse is filled by one INSERT … SELECT FROM numbers() of synthetic receipts straight
into `documents` (the warehouse's own schema, its views filling the rest), not through a gateway:
a million receipts take seconds this way and an hour through the protocol. Their devices, trade
points and organizations are put in PostgreSQL through ledger.registry, each device with a KGD
number, as the check needs.

Then, as deployed: `ofd load` owns the chDB directory and answers queries, `ofd web` serves the
check and the cabinet reading the warehouse through it, PostgreSQL is the embedded one; each a
process of its own, on this machine with the load generator.

- check: GET /check?i=&f=&s=&t= over keep-alive connections, half of them printed tuples sampled
  from the warehouse (hits), half the same with the total one tiyn off (misses), every answer
  checked for its verdict; the floor, measured in the same run: GET /healthz on the same server
  over the same connections;
- pages: a signed-in owner's receipts of a day, one receipt, the X/Z reports of a week and the
  analytics of a week, one request at a time: p50 and p95.

Misses are limited per address (60 a minute), as guessing is: each connection speaks from a
loopback address of its own (127.x.y.z) and moves to a fresh one after MISSES_PER_ADDRESS
requests, as many customers would; no address is used twice in a run (warm-up included), so
none carries more misses than the limit allows. CPU per check is that of `ofd web`, `ofd load`
and PostgreSQL over the measurement window (/proc); peak memory is `ofd web`'s.
"""

import argparse
import asyncio
import multiprocessing
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import uvloop

from benchmarks.load import PERCENTILES
from benchmarks.procstat import cpu_seconds_between, peak_rss_kib, reset_peak_rss, sample
from benchmarks.report import finished_at, machine, write_json
from cabinet.warehouse import ServiceReader
from ledger import cabinet_users, registry
from ledger.embedded_pg import start_embedded_postgres
from ledger.lifecycle import DeviceStatus
from ledger.migrate import migrate
from ledger.warehouse.backends import ChdbWarehouse, apply_schema
from ledger.warehouse.service import service_address, warehouse_dir
from simulators.stage.processes import end_process, postmaster_pids

FIRST_DEVICE = 500_000
POINTS_PER_ORG = 5
DEVICES_PER_POINT = 4
DEVICES_PER_ORGANIZATION = POINTS_PER_ORG * DEVICES_PER_POINT
DAY0 = datetime(2026, 9, 1, 8, 0, 0)
SECONDS_APART = 7  # between one device's receipts
SAMPLES = 20_000  # printed tuples drawn from the warehouse
MISSES_PER_ADDRESS = 40  # under the check's 60 a minute per address
PAGE_REPEATS = 30
START_TIMEOUT = 120.0
FOUND = "Чек получен ОФД".encode()
NOT_FOUND = "Такого чека нет".encode()
READY = re.compile(rb"ofd cabinet ready http://[^ ]+:(\d+) ")
GRACE = 10.0  # seconds a server gets to stop
LOGIN_CSRF = re.compile(r'name="login_csrf" value="([^"]+)"')
PASSWORD = "bench password 1"  # noqa: S105 (a throwaway user)


def _kgd(device: int) -> str:
    return f"KGD{device}"


def fill(directory: Path, receipts: int, devices: int) -> float:
    """Seconds to insert `receipts` synthetic receipts over `devices` devices (a process of its
    own: chDB lets one process hold the directory, and `ofd load` opens it next)."""
    warehouse = ChdbWarehouse(directory)
    try:
        apply_schema(warehouse)
        started = time.perf_counter()
        device = f"{FIRST_DEVICE} + number % {devices}"
        org = f"1 + intDiv(number % {devices}, {DEVICES_PER_ORGANIZATION})"
        point = f"1 + intDiv(number % {devices}, {DEVICES_PER_POINT})"
        nth = f"intDiv(number, {devices})"  # the device's n-th receipt
        warehouse.execute(
            "INSERT INTO ofd.documents (device_id, document_id, organization_id, trade_point_id,"
            " command, protocol_version, gateway_id, received_at, loaded_at, document_time,"
            " shift_number, request_number, fiscal_sign, offline, printed_number, offline_number,"
            " operation, total, revenue, item_type, item_name, item_section, item_quantity,"
            " item_price, item_sum, payment_type, payment_sum, tax_type, tax_percent,"
            " tax_turnover, tax_sum)"
            f" SELECT {device} AS d, concat(toString(d), '/bench/', toString(number)), {org},"
            f" {point}, 1, 204, 'bench', now64(6), now64(6),"
            f" toDateTime('{DAY0:%Y-%m-%d %H:%M:%S}', 'UTC')"
            f" + toIntervalSecond({nth} * {SECONDS_APART}) AS t,"
            f" 1 + intDiv({nth}, 500), {nth} % 65535,"
            " toString(1000000000 + cityHash64(number) % 9000000000), number % 10 = 0,"
            f" {nth} + 1, if(number % 10 = 0, {nth} % 1000 + 1, 0), 2,"
            " 10000 + (number * 7919) % 5000000 AS total, total, [1, 1], ['Нан', 'Сүт'],"
            " ['', ''], [1000, 2000], [total - 2000, 1000], [total - 2000, 2000], [1], [total],"
            " [100], [1200], [total], [intDiv(total * 12, 112)]"
            f" FROM numbers({receipts})"
        )
        return time.perf_counter() - started
    finally:
        warehouse.close()


async def registry_rows(dsn: str, devices: int) -> str:
    """The organizations, points and devices the receipts name; returns the first owner's login."""
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        orgs = -(-devices // DEVICES_PER_ORGANIZATION)
        point_ids: list[int] = []
        for n in range(orgs):
            org = await registry.add_organization(
                conn, registry.Organization(0, f"{n:012d}", f"ТОО Бенч {n}", "Алматы", "", "47111")
            )
            for p in range(POINTS_PER_ORG):
                point = await registry.add_trade_point(
                    conn, registry.TradePoint(0, org.id, f"Точка {p}", "Абай 1", "", 43, 76)
                )
                point_ids.append(point.id)
            if n == 0:
                await cabinet_users.add_user(
                    conn, org.id, login="bench", password=PASSWORD, is_main=True
                )
        for d in range(devices):
            await registry.add_device(
                conn,
                registry.Device(
                    FIRST_DEVICE + d, _kgd(FIRST_DEVICE + d), f"SN{d}", "KKM", 2025,
                    point_ids[d // DEVICES_PER_POINT], DeviceStatus.AWAITING_REGISTRATION,
                ),
            )  # fmt: skip
        return "bench"
    finally:
        await conn.close()


@dataclass(slots=True)
class Tally:
    latencies_ns: list[int] = field(default_factory=list)
    wrong: int = 0  # answers that were not what the request must get

    def summary(self, seconds: float) -> dict[str, Any]:
        ordered = sorted(self.latencies_ns)
        n = len(ordered)
        pct = {f"p{p}": round(ordered[min(n - 1, int(n * p / 100))] / 1e6, 3) for p in PERCENTILES}
        return {"requests": n, "per_s": round(n / seconds), "latency_ms": pct, "wrong": self.wrong}


class Addresses:
    """Loopback source addresses, a fresh one each time (127.1.0.1, 127.1.0.2, ...): one for the
    whole run, as the check's limit counts an address's misses over a minute, across phases."""

    def __init__(self) -> None:
        self._next = 1

    def take(self) -> str:
        n, self._next = self._next, self._next + 1
        # Octets 1..254 only: an address is never handed out twice.
        return f"127.{1 + n // 254**2}.{1 + n // 254 % 254}.{1 + n % 254}"


async def _connection(
    port: int,
    requests: Iterator[tuple[bytes, bytes]],
    addresses: Addresses,
    tally: Tally,
    until: float,
) -> None:
    """Sends requests one after another on a keep-alive connection, each answer read whole and
    checked for its marker; a new connection from a new address after MISSES_PER_ADDRESS."""
    while time.monotonic() < until:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(addresses.take(), 0)
        )
        try:
            # Connections take turns on one stream of alternating hits and misses, so one of
            # them may get misses only: an address carries no more requests than its misses may.
            for _ in range(MISSES_PER_ADDRESS):
                if time.monotonic() >= until:
                    return
                request, marker = next(requests)
                started = time.perf_counter_ns()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: (\d+)", head)[1])  # type: ignore[index]
                body = await reader.readexactly(length)
                tally.latencies_ns.append(time.perf_counter_ns() - started)
                if not head.startswith(b"HTTP/1.1 200") or marker not in body:
                    tally.wrong += 1
        finally:
            writer.close()


async def drive(
    port: int,
    requests: Iterator[tuple[bytes, bytes]],
    addresses: Addresses,
    connections: int,
    seconds: float,
) -> Tally:
    tally = Tally()
    until = time.monotonic() + seconds
    async with asyncio.TaskGroup() as group:
        for _ in range(connections):
            group.create_task(_connection(port, requests, addresses, tally, until))
    return tally


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()


def check_requests(samples: list[dict[str, Any]]) -> Iterator[tuple[bytes, bytes]]:
    """Printed tuples and, every other one, the same with the total a tiyn off."""
    n = 0
    while True:
        for row in samples:
            total = int(row["total"]) + (n % 2)
            when = datetime.fromisoformat(str(row["time"])).strftime("%Y%m%dT%H%M%S")
            path = (
                f"/check?i={row['fiscal_sign']}&f={_kgd(int(row['device_id']))}"
                f"&s={total // 100}.{total % 100:02d}&t={when}"
            )
            yield _get(path), FOUND if n % 2 == 0 else NOT_FOUND
            n += 1


def floor_requests() -> Iterator[tuple[bytes, bytes]]:
    while True:
        yield _get("/healthz"), b"ok"


class Cpu:
    """CPU of the serving processes over a window, per request."""

    def __init__(self, pids: list[int]) -> None:
        self._pids = pids
        self._before = sample(pids, with_children=True)

    def per_request_us(self, requests: int) -> float:
        used = cpu_seconds_between(self._before, sample(self._pids, with_children=True))
        return round(used / max(requests, 1) * 1e6, 1)


async def measure(
    port: int,
    requests: Iterator[tuple[bytes, bytes]],
    addresses: Addresses,
    pids: dict[str, list[int]],
    args: Any,
) -> dict[str, Any]:
    await drive(port, requests, addresses, args.connections, args.warmup)
    cpus = {name: Cpu(p) for name, p in pids.items()}
    started = time.monotonic()
    tally = await drive(port, requests, addresses, args.connections, args.seconds)
    seconds = time.monotonic() - started
    result = tally.summary(seconds)
    result["cpu_us_per_request"] = {
        n: c.per_request_us(result["requests"]) for n, c in cpus.items()
    }
    return result


async def pages(url: str, login: str, device: int, day: str, sign: str) -> dict[str, Any]:
    """p50/p95 of a signed-in owner's pages, one request at a time."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(f"{url}/login") as answer:
            found = LOGIN_CSRF.search(await answer.text())
        assert found, "no login form"
        form = {"login": login, "password": PASSWORD, "login_csrf": found[1]}
        async with http.post(f"{url}/login", data=form) as answer:
            assert answer.status == 200, answer.status
        end = (datetime.fromisoformat(day) + timedelta(days=6)).date().isoformat()
        paths = {
            "receipts_of_a_day": f"/kkm/{device}/receipts?from={day}&to={day}",
            "one_receipt": f"/kkm/{device}/receipts/{sign}",
            "reports": f"/kkm/{device}/reports?from={day}&to={end}",
            "analytics_week": f"/analytics?device={device}&from={day}&to={end}",
        }
        out: dict[str, Any] = {}
        for name, path in paths.items():
            times: list[float] = []
            for _ in range(PAGE_REPEATS):
                started = time.perf_counter()
                async with http.get(url + path) as answer:
                    await answer.read()
                    assert answer.status == 200, (path, answer.status)
                times.append((time.perf_counter() - started) * 1000)
            times.sort()
            out[name] = {
                "p50_ms": round(times[len(times) // 2], 1),
                "p95_ms": round(times[int(len(times) * 0.95)], 1),
            }
        return out


def _start_load(data: Path) -> subprocess.Popen[bytes]:
    """`ofd load`: it owns the filled chDB directory and answers the cabinet's queries."""
    return subprocess.Popen(
        [sys.executable, "-m", "ingest.cli", "load", "--data-dir", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _start_web(data: Path, dsn: str) -> tuple[subprocess.Popen[bytes], int]:
    """`ofd web` on a port the kernel picks, once it says it is ready."""
    command = ["web", "--data-dir", str(data), "--database-url", dsn, "--web-port", "0"]
    web = subprocess.Popen(
        [sys.executable, "-m", "ingest.cli", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert web.stdout is not None
    for line in web.stdout:
        ready = READY.search(line)
        if ready:
            # Whatever it prints later is read and dropped: a full pipe would stall it.
            threading.Thread(target=web.stdout.read, daemon=True).start()
            return web, int(ready[1])
    end_process(web, GRACE)
    raise RuntimeError("ofd web did not start")


async def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    data = root / "data"
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        fill_s = pool.apply(fill, (warehouse_dir(data), args.receipts, args.devices))
    print(f"filled {args.receipts:,} receipts in {fill_s:.1f} s", flush=True)
    dsn = await asyncio.to_thread(start_embedded_postgres, data / "pg")
    login = await registry_rows(dsn, args.devices)
    load = _start_load(data)
    web: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while service_address(data) is None:
            if time.monotonic() > deadline or load.poll() is not None:
                raise RuntimeError("ofd load did not start")
            await asyncio.sleep(0.1)
        reader = ServiceReader(data)
        samples = reader.select(
            "SELECT device_id, fiscal_sign, total, toString(document_time) AS time"
            f" FROM ofd.receipts ORDER BY rand() LIMIT {SAMPLES}"
        )
        web, port = _start_web(data, dsn)
        pids = {"web": [web.pid], "load": [load.pid], "postgres": postmaster_pids(data / "pg")}
        reset_peak_rss(web.pid)
        addresses = Addresses()
        floor = await measure(port, floor_requests(), addresses, pids, args)
        check = await measure(port, check_requests(samples), addresses, pids, args)
        check["ratio_to_floor"] = round(check["per_s"] / max(floor["per_s"], 1), 3)
        check["web_peak_rss_mib"] = round((peak_rss_kib(web.pid) or 0) / 1024)
        # A receipt of the owner's organization (the first: its devices come first).
        first = next(
            r for r in samples if int(r["device_id"]) < FIRST_DEVICE + DEVICES_PER_ORGANIZATION
        )
        page_times = await pages(
            f"http://127.0.0.1:{port}", login, int(first["device_id"]),
            str(first["time"])[:10], str(first["fiscal_sign"]),
        )  # fmt: skip
    finally:
        if web is not None:
            end_process(web, GRACE)
        end_process(load, GRACE)
    return {
        "benchmark": "cabinet",
        "finished_at": finished_at(),
        "machine": machine(),
        "config": {**vars(args), "out": str(args.out), "fill_seconds": round(fill_s, 1)},
        "floor": floor,
        "check": check,
        "pages": page_times,
        "valid": check["wrong"] == 0 and floor["wrong"] == 0,
    }


def _lines(doc: dict[str, Any]) -> list[str]:
    check, floor = doc["check"], doc["floor"]
    cpu = check["cpu_us_per_request"]
    lines = [
        f"check   {check['per_s']:>7,} checks/s  p50 {check['latency_ms']['p50']:.1f} ms"
        f"  p99 {check['latency_ms']['p99']:.1f} ms  CPU µs/check: web {cpu['web']:.0f},"
        f" load {cpu['load']:.0f}, postgres {cpu['postgres']:.0f}"
        f"  web peak {check['web_peak_rss_mib']} MiB  wrong {check['wrong']}",
        f"floor   {floor['per_s']:>7,} /healthz/s  p99 {floor['latency_ms']['p99']:.1f} ms"
        f"  web CPU {floor['cpu_us_per_request']['web']:.0f} µs;"
        f" check/floor {check['ratio_to_floor']:.3f}",
    ]
    lines += [
        f"page    {name:<18} p50 {t['p50_ms']:.1f} ms  p95 {t['p95_ms']:.1f} ms"
        for name, t in doc["pages"].items()
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cabinet_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--receipts", type=int, default=1_000_000)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("bench-results/cabinet.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ofd-bench-cabinet-") as tmp:
        doc = uvloop.run(run(args, Path(tmp)))
    print("\n".join(_lines(doc)))
    write_json(args.out, doc)
    print(f"results: {args.out}")
    return 0 if doc["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
