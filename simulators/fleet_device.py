"""A cash register with the autonomous (offline) mode of protocol.md, for fleets.

`OfflineKkm` wraps a SimulatedKkm (which keeps the token and request number, and resends the same
frame after a lost answer) and adds what firmware does when the OFD cannot be reached:

- it goes offline when a request gets no answer (DeviceOffline, or an answer it cannot read) or
  gets 254/255; the request that failed stays at the head of its queue and is later resent as
  the very same frame (same token and request number), so the OFD answers it as a retry;
- offline it numbers receipts itself (`offline_ticket_number`: the low 32 bits of the unix time,
  made strictly increasing so two receipts in one second stay unique for the device's lifetime)
  and queues them; new receipts join the end of the queue until it is empty;
- once the link is back it drains the queue strictly first in, first out, one OK per message,
  then reports its offline period {begin, end} in a SYSTEM request and is online again;
- when its oldest queued receipt is older than 72 hours of simulated time it blocks itself: it
  sells nothing more until the queue has been sent (a drained queue lifts the block);
- an answer other than OK, 254 or 255 while it drains (or a refusal that ends all exchange, such
  as INVALID_TOKEN) sticks it until support intervenes; a receipt refused while online is not
  printed and is dropped.

The queue holds small records, not protobuf messages: a receipt's lines follow from its device and
document number, so a fleet of 100,000 devices with backlogs fits in memory. Time is simulated
(`SimClock`), so a fleet can live through hours of outage in seconds.

Like SimulatedKkm, one OfflineKkm belongs to one task at a time: the fleet runner never pumps a
device from two coroutines.
"""

import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

from ledger.wire import ResultCode
from simulators.kkm import BadResponse, DeviceOffline, Response, SimulatedKkm
from simulators.receipts import (
    PaymentKind,
    Request,
    build_system,
    build_ticket,
    date_time,
    random_lines,
)

OFFLINE_LIMIT = timedelta(hours=72)  # the oldest queued receipt may not be older than this
OFFLINE_NUMBER_MASK = 0xFFFFFFFF  # offline numbers are the low 32 bits of the unix time
MAX_QUEUE = 100_000  # receipts one device holds; firmware memory is finite, so it blocks beyond
MAX_LINES = 5  # a grocery receipt: 1-5 lines
MAX_LATENCY_SAMPLES = 100_000  # the reservoir of answer latencies a fleet keeps
PAYMENTS: tuple[PaymentKind, ...] = ("cash", "card", "mobile")
UNAVAILABLE = frozenset({ResultCode.SERVICE_TEMPORARILY_UNAVAILABLE, ResultCode.UNKNOWN_ERROR})
# Refusals after which a device can exchange nothing until a person acts (protocol.md codes).
STOPPING = frozenset(
    {ResultCode.UNKNOWN_ID, ResultCode.INVALID_TOKEN, ResultCode.BLOCKED, ResultCode.DISCONNECTED}
)


class Clock(Protocol):
    def now(self) -> datetime: ...


class SimClock:
    """Simulated time: `start`, running `speed` times as fast as the monotonic clock, and able to
    jump forward (a test, or an outage that lasted hours)."""

    def __init__(self, start: datetime, speed: float = 1.0) -> None:
        if start.tzinfo is None:
            raise ValueError("the simulated clock needs an aware start time")
        if speed <= 0:
            raise ValueError("speed must be positive")
        self._start = start
        self._speed = speed
        self._origin = time.monotonic()
        self._skipped = timedelta()

    def now(self) -> datetime:
        elapsed = (time.monotonic() - self._origin) * self._speed
        return self._start + self._skipped + timedelta(seconds=elapsed)

    def advance(self, delta: timedelta) -> None:
        if delta < timedelta():
            raise ValueError("time does not run backwards")
        self._skipped += delta


@dataclass(frozen=True, slots=True)
class QueuedReceipt:
    """A receipt the device printed and has not had acknowledged yet."""

    made_at: datetime
    shift_number: int
    document_number: int
    offline_number: int | None  # None: made online, before the link failed

    @property
    def document_key(self) -> str:
        """The document's identity within its device, as the gateway derives it."""
        return f"s{self.shift_number}/d{self.document_number}"


@dataclass(frozen=True, slots=True)
class Ack:
    """A receipt the OFD acknowledged: what the device printed on it."""

    document_key: str
    fiscal_sign: str
    offline: bool
    # The document met 254/255 or a lost answer before its OK: a copy journaled in a batch that
    # failed may sit beside the acknowledged one and collapse downstream (DESIGN.md item 6).
    unavailable_seen: bool


@dataclass(slots=True)
class Tally:
    """What a whole fleet did, counted as it happens (shared by every device of a run)."""

    made: int = 0
    made_offline: int = 0
    requests: int = 0  # frames sent (a resend counts again)
    ok: int = 0
    acked_receipts: int = 0
    unavailable: int = 0  # 254/255 answers
    link_failures: int = 0  # no answer after the simulator's own retries, or an unreadable one
    went_offline: int = 0
    queued: int = 0  # receipts in queues now
    offline_devices: int = 0  # devices offline now
    self_blocks: int = 0  # times a device blocked itself at 72 hours
    stuck: int = 0  # devices stopped by a refusal
    refused: Counter[int] = field(default_factory=Counter)
    lost_sales: int = 0  # sales a blocked or stuck device could not make
    latencies_ns: list[int] = field(default_factory=list)
    _latency_seen: int = 0
    _rng: random.Random = field(default_factory=lambda: random.Random(0))

    def latency(self, nanoseconds: int) -> None:
        """Keeps a uniform sample of every OK answer's latency (reservoir sampling)."""
        self._latency_seen += 1
        if len(self.latencies_ns) < MAX_LATENCY_SAMPLES:
            self.latencies_ns.append(nanoseconds)
            return
        slot = self._rng.randrange(self._latency_seen)
        if slot < MAX_LATENCY_SAMPLES:
            self.latencies_ns[slot] = nanoseconds


def receipt_request(kkm: SimulatedKkm, receipt: QueuedReceipt) -> Request:
    """The TICKET for a queued receipt; its lines and payment follow from device and number, so
    building it again (a resend after a restart) gives the same document."""
    rng = random.Random((kkm.system_id << 32) | receipt.document_number)
    return build_ticket(
        kkm.schema,
        when=receipt.made_at,
        shift_number=receipt.shift_number,
        document_number=receipt.document_number,
        lines=random_lines(rng, rng.randint(1, MAX_LINES)),
        payment=rng.choice(PAYMENTS),
        offline_number=receipt.offline_number,
    )


def system_with_offline_period(kkm: SimulatedKkm, begin: datetime, end: datetime) -> Request:
    request: Any = build_system(kkm.schema)
    period = request.service.offline_period
    period.begin_time.CopyFrom(date_time(kkm.schema, begin))
    period.end_time.CopyFrom(date_time(kkm.schema, end))
    return cast(Request, request)


class OfflineKkm:
    """One register with an offline queue; `ring_up` sells, `pump` talks to the OFD."""

    def __init__(
        self,
        kkm: SimulatedKkm,
        clock: Clock,
        tally: Tally | None = None,
        *,
        shift_number: int = 1,
        document_number: int = 0,
    ) -> None:
        self.kkm = kkm
        self.clock = clock
        self.tally = tally or Tally()
        self.shift_number = shift_number
        self.document_number = document_number  # the last printed
        self.queue: deque[QueuedReceipt] = deque()
        self.acks: list[Ack] = []
        self.refusals: list[tuple[str, int, str]] = []  # document key, code, text
        self.offline_periods: list[tuple[datetime, datetime]] = []
        self.offline_since: datetime | None = None
        self.link_up = True  # the last exchange got an answer that was not 254/255
        self.head_failed = False  # the head was sent without an OK: resend that very frame
        self.head_unavailable = False  # the head met 254/255 or a lost answer
        self.self_blocked = False
        self.ever_blocked = False
        self.stuck: str | None = None
        self._last_offline_number = 0

    @property
    def system_id(self) -> int:
        return self.kkm.system_id

    @property
    def offline(self) -> bool:
        """In autonomous mode: the link failed and the queue has not been drained since."""
        return self.offline_since is not None

    @property
    def idle(self) -> bool:
        """Online with nothing to send: the run may end for this device."""
        return not self.queue and not self.offline

    # --- selling ---

    def ring_up(self, when: datetime | None = None) -> QueuedReceipt | None:
        """A sale at `when` (default: now): the receipt joins the queue. None when the device
        cannot sell (blocked, stuck, or its queue is full)."""
        when = self.clock.now() if when is None else when
        if self.stuck or self.check_block(when) or len(self.queue) >= MAX_QUEUE:
            self.tally.lost_sales += 1
            return None
        self.document_number += 1
        offline_number = self._next_offline_number(when) if self.offline else None
        receipt = QueuedReceipt(when, self.shift_number, self.document_number, offline_number)
        self.queue.append(receipt)
        self.tally.made += 1
        self.tally.queued += 1
        if offline_number is not None:
            self.tally.made_offline += 1
        return receipt

    def go_offline(self, since: datetime | None = None) -> None:
        """Enters autonomous mode (the fleet's mass outage calls this before ringing up)."""
        self.link_up = False
        if self.offline_since is None:
            self.offline_since = self.clock.now() if since is None else since
            self.tally.went_offline += 1
            self.tally.offline_devices += 1

    def check_block(self, now: datetime | None = None) -> bool:
        """Blocks the device when its oldest queued receipt is older than 72 hours."""
        if not self.self_blocked and self.queue:
            now = self.clock.now() if now is None else now
            if now - self.queue[0].made_at > OFFLINE_LIMIT:
                self.self_blocked = self.ever_blocked = True
                self.tally.self_blocks += 1
        return self.self_blocked

    def _next_offline_number(self, when: datetime) -> int:
        # Strictly increasing: unique even for several receipts within one second.
        number = max(int(when.timestamp()) & OFFLINE_NUMBER_MASK, self._last_offline_number + 1)
        self._last_offline_number = number & OFFLINE_NUMBER_MASK
        return self._last_offline_number

    # --- talking to the OFD ---

    async def pump(self, max_messages: int) -> None:
        """Sends queued receipts head first, at most `max_messages`, until the queue is empty or
        the link fails; after a drain, reports the offline period. Never raises for the link."""
        self.check_block()
        for _ in range(max_messages):
            if self.stuck or not self.queue:
                break
            if not await self._send_head():
                return
        if not self.queue and self.offline and not self.stuck:
            await self._report_offline_period()

    async def _send_head(self) -> bool:
        """One attempt at the head of the queue; True when it was acknowledged or dropped."""
        receipt = self.queue[0]
        started = time.perf_counter_ns()
        self.tally.requests += 1
        try:
            if self.head_failed:
                response = await self.kkm.retransmit()
            else:
                self.head_failed = True  # until an OK arrives, its frame is the one to resend
                response = await self.kkm.send(receipt_request(self.kkm, receipt))
        except (DeviceOffline, BadResponse):
            self.tally.link_failures += 1
            self.head_unavailable = True
            self.go_offline()
            return False
        code = response.result.result_code
        if code in UNAVAILABLE:
            self.tally.unavailable += 1
            self.head_unavailable = True
            self.go_offline()
            return False
        self.link_up = True
        if code == ResultCode.OK:
            self.tally.ok += 1
            self.tally.acked_receipts += 1
            self.tally.latency(time.perf_counter_ns() - started)
            self.acks.append(
                Ack(
                    receipt.document_key,
                    response.ticket.ticket_number,
                    receipt.offline_number is not None,
                    self.head_unavailable,
                )
            )
        else:
            self._refused(receipt, response)
            if self.stuck:
                return False
        self.queue.popleft()
        self.tally.queued -= 1
        self.head_failed = self.head_unavailable = False
        return True

    def _refused(self, receipt: QueuedReceipt, response: Response) -> None:
        code = response.result.result_code
        self.tally.refused[code] += 1
        self.refusals.append((receipt.document_key, code, response.result.result_text))
        # During a drain any refusal stops the device until support removes the message.
        if self.offline or code in STOPPING:
            self.stuck = f"code {code} for {receipt.document_key}: {response.result.result_text}"
            self.tally.stuck += 1

    async def _report_offline_period(self) -> None:
        """SYSTEM with the offline period, once the queue is drained; OK ends autonomous mode."""
        assert self.offline_since is not None
        end = self.clock.now()
        self.tally.requests += 1
        try:
            response = await self.kkm.send(
                system_with_offline_period(self.kkm, self.offline_since, end)
            )
        except (DeviceOffline, BadResponse):
            self.tally.link_failures += 1
            self.link_up = False
            return
        code = response.result.result_code
        if code in UNAVAILABLE:
            self.tally.unavailable += 1
            self.link_up = False
            return
        if code != ResultCode.OK:
            self.tally.refused[code] += 1
            self.refusals.append(("SYSTEM", code, response.result.result_text))
            if code in STOPPING:
                self.stuck = f"code {code} for SYSTEM: {response.result.result_text}"
                self.tally.stuck += 1
                return
        else:
            self.tally.ok += 1
        self.link_up = True
        self.offline_periods.append((self.offline_since, end))
        self.offline_since = None
        self.self_blocked = False
        self.tally.offline_devices -= 1
