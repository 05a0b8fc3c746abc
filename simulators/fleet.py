"""Fleet runner: many offline-capable cash registers against one OFD, then a check of its record.

    python -m simulators.fleet --devices N --profile steady|shop-day|month-end|mass-reconnect
        --seconds S [--mix 203:0.7,204:0.3] [--persistent] [--rate R] [--backlog K]
        [--outage-hours H] [--concurrency C] [--drain-timeout T] [--seed X]
        [--gateway HOST:PORT --control HOST:PORT [--journal-dir DIR]] [--keep-data]

Without --gateway it starts its own gateway on the embedded default (PostgreSQL from pgserver,
local journal) in a temporary directory and stops it before reading the journal. Devices are
registered through the control API, then sell at the profile's rate for S seconds:

- steady: the peak rate throughout;
- shop-day: a whole shop day (24 simulated hours) squeezed into S seconds: quiet night, morning
  ramp, lunch, evening peak; receipts are dated by the simulated clock;
- month-end: a normal pace, then a burst at the peak rate for the last 40 %;
- mass-reconnect: a regional outage of --outage-hours ended: every device starts offline with
  --backlog receipts made during it, all reconnect at once and drain first in, first out while a
  trickle of new sales joins the queues; the report says how long the drain took and that no
  device blocked itself (72 hours).

The peak rate (--rate, receipts per second for the whole fleet) defaults to DEFAULT_RATE_PER_DEVICE
per device, capped at DEFAULT_MAX_RATE. At most --concurrency devices talk at once; a device
offline waits --probe-interval seconds between attempts (60 s in the field; compressed here).
Live progress is printed once a second, then a closing report, the verification against the
OFD (simulators.fleet_ofd) and the peak memory of the fleet (and of its own gateway). Exits 0
only when the verification passes.

The issue's mass reconnect (10,000 devices x 200 receipts: 2,000,000 queued receipts, about
1.3 GiB for the fleet with its verification; the drain runs as long as the gateway needs):

    python -m simulators.fleet --devices 10000 --profile mass-reconnect --backlog 200
        --seconds 60 --drain-timeout 3000
"""

import argparse
import asyncio
import bisect
import random
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, TextIO, get_args

import grpc

from ledger.schemas import SCHEMAS
from ledger.wire import KZ_TIME
from simulators.fleet_device import OfflineKkm, SimClock, Tally
from simulators.fleet_ofd import (
    MAX_DEVICES,
    MAX_LISTED,
    JournalCheck,
    TokenCheck,
    check_journal,
    check_tokens,
    read_journal,
    register_fleet,
)
from simulators.kkm import SimulatedKkm
from simulators.stage.processes import start_gateway, stop, unwind_on_sigterm

ProfileName = Literal["steady", "shop-day", "month-end", "mass-reconnect"]
PROFILE_NAMES: tuple[ProfileName, ...] = get_args(ProfileName)

HOST = "127.0.0.1"
TICK = 0.05  # seconds between steps of the sales generator
PROGRESS_EVERY = 1.0
MAX_SECONDS = 3600.0
MAX_SALES = 5_000_000  # sales one run may make, whatever the rate and duration
MAX_BACKLOG_TOTAL = 2_000_000  # queued receipts a mass reconnect may start with, fleet-wide
# The gateway keeps at most 10,000 connections and this process may open 20,000 files.
MAX_PERSISTENT_DEVICES = 8_000
MAX_CONCURRENCY = 4_000
DEFAULT_CONCURRENCY = 512
DEFAULT_RATE_PER_DEVICE = 2.0  # receipts per second per device at the profile's peak
DEFAULT_MAX_RATE = 1_500.0  # what one Python client process keeps up with beside the gateway
DEFAULT_BACKLOG = 50
DEFAULT_OUTAGE_HOURS = 12.0
DEFAULT_PROBE_INTERVAL = 0.5
DEFAULT_DRAIN_TIMEOUT = 60.0
MESSAGES_PER_TURN = 32  # a draining device yields its worker after this many, so others move
KKM_TIMEOUT = 7.0  # the reference client's timeout per request
DAY_SECONDS = 86_400.0
TEMP_ROOT = "/tmp"  # noqa: S108  # short: pgserver's socket path in <data dir>/pg is capped
EXIT_FAILED = 1

# --- rate profiles: the share of the peak rate at a fraction of the run ---

# (hour of the simulated day, share of the peak): a city grocery's receipts over a day.
SHOP_DAY = ((0, 0.02), (7, 0.02), (9, 0.45), (12, 0.8), (14, 0.6), (17, 0.8), (19, 1.0),
            (21, 0.5), (23, 0.05), (24, 0.02))  # fmt: skip
MONTH_END_NORMAL = 0.3
MONTH_END_RAMP = (0.5, 0.6)  # the burst ramps up over this part of the run, then holds
MASS_RECONNECT_TRICKLE = 0.1  # new sales while the backlogs drain


def _steady(_fraction: float) -> float:
    return 1.0


def _shop_day(fraction: float) -> float:
    hour = min(max(fraction, 0.0), 1.0) * 24
    hours = [h for h, _ in SHOP_DAY]
    i = min(bisect.bisect_right(hours, hour), len(SHOP_DAY) - 1)
    (h0, s0), (h1, s1) = SHOP_DAY[i - 1], SHOP_DAY[i]
    return s0 + (s1 - s0) * (hour - h0) / (h1 - h0)


def _month_end(fraction: float) -> float:
    start, end = MONTH_END_RAMP
    if fraction <= start:
        return MONTH_END_NORMAL
    if fraction >= end:
        return 1.0
    return MONTH_END_NORMAL + (1.0 - MONTH_END_NORMAL) * (fraction - start) / (end - start)


def _mass_reconnect(_fraction: float) -> float:
    return MASS_RECONNECT_TRICKLE


SHAPES: dict[ProfileName, Callable[[float], float]] = {
    "steady": _steady,
    "shop-day": _shop_day,
    "month-end": _month_end,
    "mass-reconnect": _mass_reconnect,
}


@dataclass(frozen=True, slots=True)
class FleetConfig:
    devices: int
    profile: ProfileName
    seconds: float
    mix: tuple[tuple[int, float], ...] = ((203, 0.7), (204, 0.3))
    persistent: bool = False
    rate: float | None = None  # peak receipts per second, fleet-wide; None: the default
    backlog: int = DEFAULT_BACKLOG
    outage_hours: float = DEFAULT_OUTAGE_HOURS
    concurrency: int = DEFAULT_CONCURRENCY
    probe_interval: float = DEFAULT_PROBE_INTERVAL
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    seed: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.devices <= MAX_DEVICES:
            raise ValueError(f"--devices must be 1..{MAX_DEVICES}")
        if not 0 < self.seconds <= MAX_SECONDS:
            raise ValueError(f"--seconds must be in (0, {MAX_SECONDS:g}]")
        if self.persistent and self.devices > MAX_PERSISTENT_DEVICES:
            raise ValueError(f"--persistent keeps one connection per device: at most"
                             f" {MAX_PERSISTENT_DEVICES} devices")  # fmt: skip
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"--concurrency must be 1..{MAX_CONCURRENCY}")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("--rate must be positive")
        if self.backlog < 0 or self.outage_hours <= 0:
            raise ValueError("--backlog must not be negative, --outage-hours must be positive")
        if self.profile == "mass-reconnect" and self.devices * self.backlog > MAX_BACKLOG_TOTAL:
            raise ValueError(f"devices x backlog may not exceed {MAX_BACKLOG_TOTAL}")
        if self.probe_interval <= 0 or self.drain_timeout <= 0:
            raise ValueError("--probe-interval and --drain-timeout must be positive")
        if not self.mix or any(v not in SCHEMAS or w <= 0 for v, w in self.mix):
            raise ValueError(f"--mix takes served versions {sorted(SCHEMAS)} with positive shares")

    @property
    def peak_rate(self) -> float:
        if self.rate is not None:
            return self.rate
        return min(self.devices * DEFAULT_RATE_PER_DEVICE, DEFAULT_MAX_RATE)


@dataclass(frozen=True, slots=True)
class Endpoints:
    host: str
    port: int
    control: str  # host:port of the control API
    control_key: str | None = None  # its API key; None: OFD_CONTROL_KEY (ingest/control/)


@dataclass(slots=True)
class FleetRun:
    """What happened in one run, before the journal is read."""

    config: FleetConfig
    devices: list[OfflineKkm]
    tally: Tally
    register_seconds: float = 0.0
    load_seconds: float = 0.0
    final_drain_seconds: float = 0.0
    backlog_devices: int = 0
    backlog_drain_seconds: float | None = None  # mass reconnect: until every backlog was sent
    backlog_drain_p50: float | None = None
    peak_offline_devices: int = 0
    peak_queued: int = 0
    tokens: TokenCheck = field(default_factory=TokenCheck)

    @property
    def undelivered(self) -> int:
        return sum(len(d.queue) for d in self.devices)

    @property
    def still_offline(self) -> int:
        return sum(d.offline for d in self.devices)

    @property
    def ever_blocked(self) -> int:
        return sum(d.ever_blocked for d in self.devices)

    @property
    def stuck(self) -> list[str]:
        return [f"{d.system_id}: {d.stuck}" for d in self.devices if d.stuck]


# --- building the fleet ---


def assign_versions(count: int, mix: Sequence[tuple[int, float]], seed: int) -> list[int]:
    """Versions in the mix's proportions exactly (largest remainder), in a seeded order."""
    total = sum(w for _, w in mix)
    exact = [count * w / total for _, w in mix]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(mix)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: count - sum(counts)]:
        counts[i] += 1
    versions = [v for (v, _), n in zip(mix, counts, strict=True) for _ in range(n)]
    random.Random(seed).shuffle(versions)
    return versions


def clock_for(config: FleetConfig) -> SimClock:
    now = datetime.now(UTC)
    if config.profile == "shop-day":
        # The run is one shop day: it starts at midnight in Kazakhstan and lasts 24 hours.
        midnight = now.astimezone(KZ_TIME).replace(hour=0, minute=0, second=0, microsecond=0)
        return SimClock(midnight, DAY_SECONDS / config.seconds)
    return SimClock(now)


def build_devices(
    config: FleetConfig, endpoints: Endpoints, keys: Sequence[tuple[int, int]], clock: SimClock
) -> tuple[list[OfflineKkm], Tally]:
    tally = Tally()
    versions = assign_versions(len(keys), config.mix, config.seed)
    devices = [
        OfflineKkm(
            SimulatedKkm(
                endpoints.host,
                endpoints.port,
                version=version,
                system_id=system_id,
                token=token,
                persistent=config.persistent,
                timeout=KKM_TIMEOUT,
            ),
            clock,
            tally,
        )
        for (system_id, token), version in zip(keys, versions, strict=True)
    ]
    return devices, tally


def start_outage(devices: Sequence[OfflineKkm], config: FleetConfig, now: datetime) -> None:
    """Every device offline since `outage_hours` ago, with `backlog` receipts made meanwhile."""
    began = now - timedelta(hours=config.outage_hours)
    step = timedelta(hours=config.outage_hours) / (config.backlog + 1)
    for device in devices:
        device.go_offline(since=began)
        for k in range(1, config.backlog + 1):
            device.ring_up(began + k * step)


# --- driving it ---


class Scheduler:
    """Hands devices to a bounded set of workers; a device is with at most one worker at a time.

    A device with something to send and a working link is queued at once; one whose link failed
    is queued again after the probe interval, as firmware waits before it reconnects.
    """

    def __init__(self, devices: Sequence[OfflineKkm], probe_interval: float) -> None:
        self.devices = devices
        self.probe_interval = probe_interval
        self.ready: asyncio.Queue[int] = asyncio.Queue()  # holds each device at most once
        self.waiting: set[int] = set()  # in `ready` or on a probe timer
        self.busy: set[int] = set()
        self.backlog_left: set[int] = set()  # mass reconnect: devices still draining a backlog
        self.backlog_done_at: list[float] = []
        self._loop = asyncio.get_running_loop()

    def wake(self, index: int) -> None:
        if index in self.waiting or index in self.busy or self.devices[index].stuck:
            return
        self.waiting.add(index)
        self.ready.put_nowait(index)

    def _due(self, index: int) -> None:
        self.waiting.discard(index)
        self.wake(index)

    def _after_turn(self, index: int) -> None:
        device = self.devices[index]
        if index in self.backlog_left and not device.offline:
            self.backlog_left.discard(index)
            self.backlog_done_at.append(self._loop.time())
        if device.stuck or not (device.queue or device.offline):
            return
        if device.link_up:
            self.wake(index)
        elif index not in self.waiting:
            self.waiting.add(index)
            self._loop.call_later(self.probe_interval, self._due, index)

    async def worker(self) -> None:
        while True:  # ends by cancellation when the run is over
            index = await self.ready.get()
            self.waiting.discard(index)
            self.busy.add(index)
            try:
                await self.devices[index].pump(MESSAGES_PER_TURN)
            finally:
                self.busy.discard(index)
            self._after_turn(index)


class Progress:
    """One line a second: sales, answers, queues, the rate of OK answers and the sales rate the
    profile asks for now."""

    def __init__(self, run: FleetRun, out: TextIO, enabled: bool) -> None:
        self._run = run
        self._out = out
        self._enabled = enabled
        self._started = time.monotonic()
        self._last_at = self._started
        self._last_ok = 0

    def maybe_print(self, phase: str, target_rate: float | None) -> None:
        now = time.monotonic()
        tally = self._run.tally
        self._run.peak_offline_devices = max(self._run.peak_offline_devices, tally.offline_devices)
        self._run.peak_queued = max(self._run.peak_queued, tally.queued)
        if now - self._last_at < PROGRESS_EVERY:
            return
        rate = (tally.ok - self._last_ok) / (now - self._last_at)
        self._last_at, self._last_ok = now, tally.ok
        if not self._enabled:
            return
        target = "" if target_rate is None else f" | sales rate {target_rate:,.0f}/s"
        print(
            f"[{now - self._started:6.1f}s {phase}] sales {tally.made:,} (offline"
            f" {tally.made_offline:,}) | sent {tally.requests:,} ok {tally.ok:,} |"
            f" queued {tally.queued:,} | offline devices {tally.offline_devices:,} |"
            f" 254/255 {tally.unavailable:,} | lost links {tally.link_failures:,} |"
            f" ok rate {rate:,.0f}/s{target}",
            file=self._out,
            flush=True,
        )


async def _sell(
    config: FleetConfig, scheduler: Scheduler, progress: Progress, rng_seed: int
) -> None:
    """Rings up sales at the profile's rate for the run's duration (bounded by MAX_SALES)."""
    rng = random.Random(rng_seed)
    shape = SHAPES[config.profile]
    devices = scheduler.devices
    loop = asyncio.get_running_loop()
    start = last = loop.time()
    carry = 0.0
    made = 0
    while (now := loop.time()) < start + config.seconds and made < MAX_SALES:
        rate = config.peak_rate * shape((now - start) / config.seconds)
        carry += rate * (now - last)
        last = now
        due = min(int(carry), MAX_SALES - made)
        carry -= due
        for _ in range(due):
            index = rng.randrange(len(devices))
            device = devices[index]
            if device.ring_up() is not None and device.link_up:
                scheduler.wake(index)
        made += due
        progress.maybe_print("load", rate)
        await asyncio.sleep(TICK)


async def _final_drain(run: FleetRun, scheduler: Scheduler, progress: Progress) -> None:
    """Lets queues empty and offline devices come back, up to the drain timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + run.config.drain_timeout
    while loop.time() < deadline:
        if all(d.stuck or d.idle for d in run.devices) and not scheduler.busy:
            return
        progress.maybe_print("drain", None)
        await asyncio.sleep(TICK * 4)


async def drive(config: FleetConfig, endpoints: Endpoints, out: TextIO = sys.stdout) -> FleetRun:
    """Registers the fleet, runs the profile, drains, and checks every device's token."""
    started = time.monotonic()
    keys = await register_fleet(endpoints.control, config.devices, endpoints.control_key)
    clock = clock_for(config)
    devices, tally = build_devices(config, endpoints, [(k.system_id, k.token) for k in keys], clock)
    run = FleetRun(config, devices, tally, register_seconds=time.monotonic() - started)
    print(f"registered {len(devices):,} devices in {run.register_seconds:.1f} s", file=out)
    if config.profile == "mass-reconnect":
        start_outage(devices, config, clock.now())
        run.backlog_devices = len(devices)
    scheduler = Scheduler(devices, config.probe_interval)
    progress = Progress(run, out, config.progress)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.TaskGroup() as tasks:
            workers = [
                tasks.create_task(scheduler.worker(), name=f"fleet-worker-{n}")
                for n in range(min(config.concurrency, len(devices)))
            ]
            load_start = loop.time()
            if config.profile == "mass-reconnect":
                # The outage ends: every device reconnects at once.
                scheduler.backlog_left = set(range(len(devices)))
                for index in range(len(devices)):
                    scheduler.wake(index)
            await _sell(config, scheduler, progress, config.seed)
            run.load_seconds = loop.time() - load_start
            drain_start = loop.time()
            await _final_drain(run, scheduler, progress)
            run.final_drain_seconds = loop.time() - drain_start
            for worker in workers:
                worker.cancel()
        if run.backlog_devices:
            done = sorted(t - load_start for t in scheduler.backlog_done_at)
            if not scheduler.backlog_left and done:
                run.backlog_drain_seconds = done[-1]
            run.backlog_drain_p50 = done[len(done) // 2] if done else None
        run.tokens = await check_tokens(devices)
    finally:
        for device in devices:
            await device.kkm.close()
    return run


# --- the verdict ---


def _percentile_ms(samples: list[int], pct: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1] / 1e6


def _listed(items: Sequence[object]) -> str:
    shown = ", ".join(map(str, items[:MAX_LISTED]))
    return shown + (f" ... (+{len(items) - MAX_LISTED})" if len(items) > MAX_LISTED else "")


def failures(run: FleetRun, journal: JournalCheck | None) -> list[str]:
    """Why the run fails verification; empty when it passes."""
    found: list[str] = []
    if journal is not None and not journal.passed:
        checks = (
            ("missing from the journal", journal.missing),
            ("journaled more than once", journal.duplicated),
            ("journaled, never acknowledged nor queued", journal.orphans),
        )
        for label, items in checks:
            if items:
                found.append(f"{len(items)} {label}: {_listed(items)}")
    if not run.tokens.passed:
        if run.tokens.refused:
            found.append(f"{len(run.tokens.refused)} tokens refused: {_listed(run.tokens.refused)}")
        if run.tokens.unreachable:
            found.append(f"{len(run.tokens.unreachable)} devices unreachable for the token check")
    if run.tally.refused:
        found.append(f"refusals: {dict(run.tally.refused)}")
    if run.stuck:
        found.append(f"{len(run.stuck)} devices stuck: {_listed(run.stuck)}")
    if run.ever_blocked:
        found.append(f"{run.ever_blocked} devices blocked themselves (72 h)")
    if run.undelivered or run.still_offline:
        found.append(f"{run.undelivered} receipts undelivered, {run.still_offline} devices"
                     f" still offline after the {run.config.drain_timeout:g} s drain")  # fmt: skip
    return found


def report(run: FleetRun, journal: JournalCheck | None) -> list[str]:
    config, tally = run.config, run.tally
    versions = {v: sum(d.kkm.version == v for d in run.devices) for v, _ in config.mix}
    connection = "persistent" if config.persistent else "one per request"
    elapsed = max(run.load_seconds + run.final_drain_seconds, 1e-9)
    lines = [
        "",
        f"fleet report: {config.profile}, {len(run.devices):,} devices"
        f" ({', '.join(f'{v}: {n}' for v, n in versions.items())}), connections {connection}",
        f"  load {run.load_seconds:.1f} s at peak {config.peak_rate:,.0f} receipts/s,"
        f" then drain {run.final_drain_seconds:.1f} s; registration {run.register_seconds:.1f} s",
        f"  sales {tally.made:,} (offline {tally.made_offline:,}), lost to blocked devices"
        f" {tally.lost_sales:,}",
        f"  requests {tally.requests:,}, OK {tally.ok:,}, receipts acknowledged"
        f" {tally.acked_receipts:,}; 254/255 {tally.unavailable:,}, lost links"
        f" {tally.link_failures:,}, refused {sum(tally.refused.values()):,}",
        f"  throughput {tally.acked_receipts / elapsed:,.0f} receipts/s; latency p50"
        f" {_percentile_ms(tally.latencies_ns, 50):.2f} ms,"
        f" p99 {_percentile_ms(tally.latencies_ns, 99):.2f} ms",
        f"  went offline {tally.went_offline:,} times; peak offline devices"
        f" {run.peak_offline_devices:,}, peak queued {run.peak_queued:,}; blocked (72 h)"
        f" {run.ever_blocked}, stuck {len(run.stuck)}",
    ]
    if run.backlog_devices:
        drained = (
            f"{run.backlog_drain_seconds:.2f} s"
            if run.backlog_drain_seconds is not None
            else "NOT finished"
        )
        p50 = "-" if run.backlog_drain_p50 is None else f"{run.backlog_drain_p50:.2f} s"
        pace = ""
        if run.backlog_drain_seconds:
            backlog = run.backlog_devices * config.backlog
            pace = f" ({backlog / run.backlog_drain_seconds:,.0f} receipts/s)"
        lines.append(
            f"  mass reconnect: {run.backlog_devices:,} devices x {config.backlog} receipts"
            f" over {config.outage_hours:g} h; all backlogs drained in {drained}{pace} (median"
            f" device {p50}); devices blocked: {run.ever_blocked}"
        )
    lines.append("verification against the OFD:")
    if journal is None:
        lines.append("  journal: not checked (no journal directory given)")
    else:
        lines.append(
            f"  journal: {journal.acknowledged:,} acknowledged receipts, {journal.exactly_once:,}"
            f" exactly once, {journal.collapsing_duplicates} duplicates after 254/255 (collapse"
            f" downstream), {len(journal.missing)} missing, {len(journal.duplicated)} doubled,"
            f" {len(journal.orphans)} orphans; {journal.records:,} records"
        )
    tokens = run.tokens
    lines.append(
        f"  tokens: {tokens.ok:,}/{tokens.checked:,} devices answered OK with their last token"
        f" ({len(tokens.refused)} refused, {len(tokens.unreachable)} unreachable,"
        f" {tokens.skipped} skipped)"
    )
    problems = failures(run, journal)
    lines += [f"  FAIL: {p}" for p in problems]
    lines.append("verification " + ("FAILED" if problems else "passed"))
    return lines


async def run_against(
    config: FleetConfig, endpoints: Endpoints, journal_root: Path | None, out: TextIO = sys.stdout
) -> tuple[FleetRun, JournalCheck | None]:
    """A run against a gateway that keeps running (in-process, or someone else's): the journal
    is read while it serves, which is safe since every acknowledged record is already durable."""
    run = await drive(config, endpoints, out)
    journal = (
        None if journal_root is None else check_journal(run.devices, read_journal(journal_root))
    )
    return run, journal


# --- the command line ---


def _mix(text: str) -> tuple[tuple[int, float], ...]:
    try:
        pairs = [part.split(":") for part in text.split(",") if part.strip()]
        return tuple((int(v), float(w)) for v, w in pairs)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--mix looks like 203:0.7,204:0.3, not {text!r}") from err


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.fleet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--profile", choices=PROFILE_NAMES, default="steady")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the load")
    parser.add_argument("--mix", type=_mix, default=((203, 0.7), (204, 0.3)))
    parser.add_argument("--persistent", action="store_true", help="one connection per device")
    parser.add_argument("--rate", type=float, help="peak receipts per second, fleet-wide")
    parser.add_argument("--backlog", type=int, default=DEFAULT_BACKLOG, help="mass-reconnect")
    parser.add_argument("--outage-hours", type=float, default=DEFAULT_OUTAGE_HOURS)
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument("--probe-interval", type=float, default=DEFAULT_PROBE_INTERVAL)
    parser.add_argument("--drain-timeout", type=float, default=DEFAULT_DRAIN_TIMEOUT)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--gateway", type=_address, help="HOST:PORT of a running gateway")
    parser.add_argument("--control", type=_address, help="its control API, HOST:PORT")
    parser.add_argument(
        "--key", default="", help="its control API key (default: OFD_CONTROL_KEY, --key-file)"
    )
    parser.add_argument(
        "--key-file", type=Path, help="a file holding it: the gateway's DATA_DIR/operator.key"
    )
    parser.add_argument("--journal-dir", type=Path, help="its data_dir/journal, to check")
    parser.add_argument("--keep-data", action="store_true", help="keep the own gateway's data")
    args = parser.parse_args(argv)
    if (args.gateway is None) != (args.control is None):
        parser.error("--gateway and --control go together")
    try:
        args.config = FleetConfig(
            devices=args.devices, profile=args.profile, seconds=args.seconds, mix=args.mix,
            persistent=args.persistent, rate=args.rate, backlog=args.backlog,
            outage_hours=args.outage_hours, concurrency=args.concurrency,
            probe_interval=args.probe_interval, drain_timeout=args.drain_timeout,
            seed=args.seed, progress=not args.quiet,
        )  # fmt: skip
    except ValueError as err:
        parser.error(str(err))
    return args


def _run_loop(config: FleetConfig, endpoints: Endpoints) -> FleetRun:
    import uvloop  # noqa: PLC0415  # the CLI's loop; tests run on pytest's

    run: FleetRun = uvloop.run(drive(config, endpoints))
    return run


def _own_gateway(config: FleetConfig, keep: bool) -> tuple[FleetRun, JournalCheck]:
    data_dir = Path(tempfile.mkdtemp(prefix="ofdf-", dir=TEMP_ROOT))
    try:
        print(f"starting a gateway on the embedded default in {data_dir} ...", flush=True)
        # Every simulated register connects from one loopback address: no per-source limit.
        server = start_gateway(data_dir, "--host", HOST, "--max-connections-per-source", "100000")
        try:
            control_host, _, control_port = server.control.rpartition(":")
            endpoints = Endpoints(
                server.host, server.port, f"{control_host}:{control_port}", server.control_key
            )
            run = _run_loop(config, endpoints)
        finally:
            code = stop(server)
            print(f"gateway stopped (exit code {code})", flush=True)
        # Read after the stop: the journal is then complete and nobody appends to it.
        return run, check_journal(run.devices, read_journal(data_dir / "journal"))
    finally:
        if keep:
            print(f"gateway data kept in {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


def memory_lines(own_gateway: bool) -> list[str]:
    """Peak resident memory of this process (devices, queues, the journal check) and, when the
    gateway was ours, of the largest child it reaped: the gateway (its PostgreSQL is daemonised
    by pg_ctl, so it is not among them). ru_maxrss is in KiB on Linux."""
    lines = [
        f"  peak memory: fleet {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB"
    ]
    if own_gateway:
        gateway = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        lines.append(f"  peak memory: gateway {gateway:,.0f} MiB")
    return lines


def read_key(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError as err:
        raise SystemExit(f"error: cannot read --key-file {path}: {err.strerror}") from err


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config: FleetConfig = args.config
    unwind_on_sigterm()
    journal: JournalCheck | None
    if args.gateway is None:
        run, journal = _own_gateway(config, args.keep_data)
    else:
        (host, port), (chost, cport) = args.gateway, args.control
        key = args.key or (read_key(args.key_file) if args.key_file else None)
        try:
            run = _run_loop(config, Endpoints(host, port, f"{chost}:{cport}", key))
        except grpc.RpcError as err:  # the registration's control calls
            print(
                f"error: the control API at {chost}:{cport} refused:"
                f" {err.code().name.lower()} ({err.details()}); a running gateway wants an"
                " operator key: pass --key, set OFD_CONTROL_KEY or --key-file"
                " DATA_DIR/operator.key",
                file=sys.stderr,
            )
            return EXIT_FAILED
        journal = None
        if args.journal_dir is not None:
            journal = check_journal(run.devices, read_journal(args.journal_dir))
    print("\n".join(report(run, journal) + memory_lines(args.gateway is None)))
    return EXIT_FAILED if failures(run, journal) else 0


if __name__ == "__main__":
    sys.exit(main())
