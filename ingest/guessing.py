"""Token guessing, slowed per source address without ever failing the real device.

Every answer UNKNOWN_ID (1) or INVALID_TOKEN (2) counts against its source's failure budget
(ingest/limits.py). While a source is within budget nothing changes. Once it is over budget:

- Its requests pass a gate of `checks_per_source` slots before the session check runs: a
  request takes a slot (waiting in arrival order when all are taken), is answered by the
  pipeline, and gives the slot back at once when the answer is anything but a token failure.
  A failure keeps the slot `penalty_seconds` more and is answered only then.
- So one source gets at most checks_per_source / penalty_seconds token checks a second
  (defaults 16 / 0.25 s: 64, against 1,400 measured without a limit), however many connections
  it opens or abandons: a slot is held through its penalty even when the client has gone, and a
  request still waiting for a slot when its connection closes is dropped unchecked.
- Why slots and not "delay the failures, answer correct tokens at once": with unbounded
  concurrency a guesser sends thousands of guesses at once and the one answered fast is the
  token; delays on the wrong ones would bound nothing. The slots bound checks in flight, so a
  correct guess is found no faster than checks_per_source / penalty_seconds allows.
- The real device is never refused by any of this: a correct token is checked in its turn and
  answered at once, never after a penalty, and nothing here answers a failure the pipeline did
  not give. Behind the same address as a guesser (carrier-grade NAT) it waits its turn behind
  at most one request per other connection of that address (a connection answers in order);
  a guesser without any device's token has only unauthenticated connections, so that is
  max-connections-per-source x penalty / checks-per-source (256 x 0.25 / 16 = 4 s with the
  defaults), inside a register's 5 s. A connection already answered OK for a device skips the
  gate for that device (it has shown the token), so a register on a persistent connection is
  not slowed at all.

Failures are also watched per device (DeviceWatch): a device whose token fails `device_threshold`
times in a window, from whatever sources, is counted (a metric: a label per device would be
unbounded) and logged once per window, so a distributed guess at one till is seen.
"""

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from ingest.codec import Frame
from ingest.limits import FailureBudget, FailureLimiter
from ledger.wire import ResultCode

log = structlog.get_logger(__name__)

TOKEN_FAILURES = frozenset((int(ResultCode.UNKNOWN_ID), int(ResultCode.INVALID_TOKEN)))
# An honest fleet behind one address mistypes a token or runs a deregistered register now and
# then: 100 failures a minute is far beyond that, far below a guesser.
DEFAULT_TOKEN_FAILURES = FailureBudget(failures=100, window_seconds=60.0)
DEFAULT_PENALTY_SECONDS = 0.25
DEFAULT_CHECKS_PER_SOURCE = 16
DEFAULT_DEVICE_THRESHOLD = 20  # token failures of one device per window before it is reported
DEVICE_WINDOW_SECONDS = 60.0
MAX_WATCHED_DEVICES = 100_000

Handler = Callable[[Frame], Awaitable[bytes]]
ResultOf = Callable[[bytes], int]


@dataclass(frozen=True, slots=True)
class GuessSettings:
    failures: FailureBudget = DEFAULT_TOKEN_FAILURES  # per source per window
    penalty_seconds: float = DEFAULT_PENALTY_SECONDS
    checks_per_source: int = DEFAULT_CHECKS_PER_SOURCE  # checks in flight, over budget only
    device_threshold: int = DEFAULT_DEVICE_THRESHOLD

    def __post_init__(self) -> None:
        if self.penalty_seconds < 0 or self.checks_per_source < 1 or self.device_threshold < 1:
            raise ValueError("token guessing: penalty >= 0, checks per source >= 1, threshold >= 1")


@dataclass(slots=True)
class GuessStats:
    penalized: int = 0  # failures answered after the penalty
    abandoned: int = 0  # requests dropped unchecked: their connection closed while waiting
    waiting: int = 0  # requests waiting for a slot now
    devices_over_threshold: int = 0  # times a device crossed device_threshold in a window


class _Gate:
    """The slots of one over-budget source: `held` checks in flight, waiters in order."""

    __slots__ = ("held", "waiters")

    def __init__(self) -> None:
        self.held = 0
        self.waiters: deque[asyncio.Future[bool]] = deque()


class DeviceWatch:
    """Token failures per device in a fixed window, in a bounded table (oldest forgotten
    first); a device crossing the threshold is counted and logged once per window."""

    def __init__(
        self,
        threshold: int,
        stats: GuessStats,
        window_seconds: float = DEVICE_WINDOW_SECONDS,
        max_devices: int = MAX_WATCHED_DEVICES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self._stats = stats
        self._window = window_seconds
        self._max = max_devices
        self._clock = clock
        # device -> (window start, failures in it)
        self._devices: OrderedDict[int, tuple[float, int]] = OrderedDict()

    def failed(self, device_id: int, source: str) -> None:
        now = self._clock()
        start, failures = self._devices.get(device_id, (now, 0))
        if now - start >= self._window:
            start, failures = now, 0
        failures += 1
        self._devices[device_id] = (start, failures)
        self._devices.move_to_end(device_id)
        while len(self._devices) > self._max:
            self._devices.popitem(last=False)
        if failures == self.threshold:  # once per device per window
            self._stats.devices_over_threshold += 1
            log.warning(
                "device token failures",
                device_id=device_id,
                failures_in_window=failures,
                window_seconds=self._window,
                last_source=source,
            )


class TokenGuard:
    """Counts token failures per source and gates the requests of over-budget sources."""

    def __init__(
        self,
        settings: GuessSettings,
        result_of: ResultOf,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._result_of = result_of  # an answer frame's result code
        self.limiter = FailureLimiter(settings.failures, clock)
        self.stats = GuessStats()
        self.devices = DeviceWatch(settings.device_threshold, self.stats, clock=clock)
        self._gates: dict[str, _Gate] = {}

    async def answer(
        self,
        source: str,
        frame: Frame,
        handler: Handler,
        lost: asyncio.Future[None],
        *,
        trusted: bool = False,
    ) -> tuple[bytes, int] | None:
        """The answer to `frame` from `source` and its result code; None when the request was
        dropped unchecked because `lost` (the connection's end) came while it waited for a
        slot. `trusted`: the connection was answered OK for this device already."""
        if trusted or not self.limiter.over_budget(source):
            answer = await handler(frame)
            code = self._result_of(answer)
            self.observe(source, frame, code)
            return answer, code
        gate = self._gates.get(source)
        if gate is None:
            gate = self._gates[source] = _Gate()
        if not await self._take(gate, lost):
            self.stats.abandoned += 1
            self._forget_if_idle(source, gate)
            return None
        try:
            answer = await handler(frame)
            code = self._result_of(answer)
            if code in TOKEN_FAILURES:
                self._failed(source, frame)
                self.stats.penalized += 1
                # The slot stays taken through the penalty even if the client has gone.
                await asyncio.sleep(self.settings.penalty_seconds)
            return answer, code
        finally:
            self._give_back(gate)
            self._forget_if_idle(source, gate)

    def observe(self, source: str, frame: Frame, code: int) -> None:
        """Counts an answer given without the gate (a trusted connection's)."""
        if code in TOKEN_FAILURES:
            self._failed(source, frame)

    def _failed(self, source: str, frame: Frame) -> None:
        self.limiter.failed(source)
        self.devices.failed(frame.header.device_id, source)

    async def _take(self, gate: _Gate, lost: asyncio.Future[None]) -> bool:
        if gate.held < self.settings.checks_per_source and not gate.waiters:
            gate.held += 1
            return True
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        gate.waiters.append(waiter)

        def drop(_: object) -> None:
            if not waiter.done():
                gate.waiters.remove(waiter)
                waiter.set_result(False)

        lost.add_done_callback(drop)
        self.stats.waiting += 1
        try:
            return await waiter  # True: _give_back handed its slot over
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self._give_back(gate)  # handed over just as we were cancelled
            elif waiter in gate.waiters:
                gate.waiters.remove(waiter)
            raise
        finally:
            self.stats.waiting -= 1
            lost.remove_done_callback(drop)

    @staticmethod
    def _give_back(gate: _Gate) -> None:
        # A slot goes straight to the oldest waiter: `held` does not change.
        while gate.waiters:
            waiter = gate.waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return
        gate.held -= 1

    def _forget_if_idle(self, source: str, gate: _Gate) -> None:
        if gate.held == 0 and not gate.waiters and self._gates.get(source) is gate:
            del self._gates[source]

    @property
    def gated_sources(self) -> int:
        return len(self._gates)
