"""Prometheus metrics of one gateway process, served over HTTP on /metrics (ingest/metrics_http,
beside /healthz for balancers).

A request costs the hot path one dict increment and one histogram bucket increment: its labels
(protocol version, command, result code) are read from the first bytes of the answer frame, not
parsed out of it. Everything else is read at scrape time from counters the servers and the
group commit keep anyway (`ServerStats`, `CommitStats`), so it costs nothing per request.
The offline-window gauges come from PostgreSQL (all devices, not this process's): a background
task refreshes them every OFFLINE_REFRESH_SECONDS, bounded by a timeout, and a scrape reads the
cached values, so a scrape never waits on the database.
Authentication failures are the requests answered 1, 2, 8 or 9, summed at scrape time.
Latency by stage: a request's whole time (frame in to answer out) is
`ofd_request_duration_seconds`; of it, its change waited `ofd_commit_queue_seconds` for a batch,
then `ofd_commit_duration_seconds` for the batch to be durable; the rest is parsing, the
session and ledger rules and the answer.

Exported (label values: `result` is the numeric result code of protocol.md, `command` the
command's name, `version` 203 or 204, `transport` tcp or grpc):

    ofd_requests_total{command,result,version,transport}   answers sent
    ofd_request_duration_seconds{transport}                 histogram: frame in to answer out
    ofd_auth_failures_total{code}                           answers 1, 2, 8 and 9
    ofd_commit_batch_size                                   histogram: changes per group commit
    ofd_commit_duration_seconds                             histogram: one batch made durable
    ofd_commit_queue_seconds                                histogram: a change's wait for its batch
    ofd_commit_failures_total                               batches that failed (answered 254)
    ofd_commit_conflicts_total                              changes that lost a concurrent update
    ofd_shed_total{policy}                                  requests shed (answered 254 at once)
    ofd_journal_appends_total                               documents the journal acknowledged
    ofd_journal_lag_changes / _seconds                      changes not yet durable; oldest's wait
    ofd_journal_spool_bytes, ofd_journal_spooled_total,     the Kafka outage spool: backlog,
    ofd_journal_replayed_total, ofd_journal_outages_total   records spooled and replayed, outages
    ofd_journal_torn_tail_bytes_total, _torn_tails_total    a torn tail the local journal (or the
                                                            spool) cut when it was opened
    ofd_connections_active / _total                         device TCP connections
    ofd_connections_refused_total{reason}                   global, per_source, proxy_header
    ofd_connections_evicted_total{reason}                   idle unauthenticated, closed for room
    ofd_connections_unauthenticated, _closed_total          no request answered OK (yet, in time)
    ofd_connections_timed_out_total                         closed by the read or idle timeout
    ofd_partial_frame_bytes, _peak, _pauses_total,          bytes held for requests not answered,
    ofd_partial_frame_waiting_connections                   and who waits for the budget
    ofd_token_checks_waiting, ofd_token_penalties_total,    token guessing gated per source
    ofd_token_checks_abandoned_total                        (its budget: ofd_limited_*)
    ofd_token_failure_devices_total                         devices past --device-token-failures
    ofd_log_lines_suppressed_total{kind}                    log lines left out by their caps
    ofd_frame_errors_total{transport}                       framing lost (TCP) or bad metadata
    ofd_shifts_closed_total                                 shifts closed (CLOSE_SHIFT durable)
    ofd_z_report_mismatches_total                           closes whose device Z report differed
    ofd_offline_windows_open                                devices with an open offline window
    ofd_offline_window_max_age_seconds                      the oldest open window's age
    ofd_gateway_info{gateway_id}                            1, naming this process
    process_*                                               CPU, memory, file descriptors

Each gateway has its own `CollectorRegistry`, so several gateways in one process (tests) keep
separate counts; one process per core means one metrics port per process.
"""

import asyncio
import bisect
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from datetime import UTC, datetime
from threading import Thread
from typing import Any
from wsgiref.simple_server import WSGIServer

import asyncpg
import structlog
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ingest import metrics_http
from ingest.codec import Frame
from ingest.guessing import GuessStats, TokenGuard
from ingest.limits import FailureLimiter
from ingest.logs import LogCap
from ingest.pipeline import ShiftStats
from ingest.tcp_server import ServerStats
from ledger.group_commit import CommitStats, GroupCommitter
from ledger.journal import Journal
from ledger.journal.counting import CountingJournal
from ledger.journal.local import LocalJournal
from ledger.journal.spool import SpoolingJournal, SpoolStats
from ledger.offline import offline_backlog
from ledger.state_store import DATABASE_ERRORS
from ledger.wire import HEADER_SIZE, KZ_TIME, Command, ResultCode

log = structlog.get_logger(__name__)

DEFAULT_METRICS_PORT = 7779
# The offline-window gauges: refreshed this often, each refresh given this long at most.
OFFLINE_REFRESH_SECONDS = 30.0
OFFLINE_REFRESH_TIMEOUT = 10.0
# Offline windows are kept in device-local time (ledger/offline.py): Kazakhstan, UTC+5.

Handler = Callable[[Frame], Awaitable[bytes]]
# What the gRPC side needs to run a request as a task of its own.
CoroutineHandler = Callable[[Frame], Coroutine[Any, Any, bytes]]

# Seconds. A device waits 5 s for an answer; the group commit aims at a few milliseconds.
REQUEST_SECONDS_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
COMMIT_SECONDS_BUCKETS = REQUEST_SECONDS_BUCKETS
# Changes per batch; MAX_BATCH is 1024.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
AUTH_FAILURE_CODES = (
    ResultCode.UNKNOWN_ID,
    ResultCode.INVALID_TOKEN,
    ResultCode.INVALID_REQUEST_NUMBER,
    ResultCode.INVALID_RETRY_REQUEST,
)
SHED_COMMIT_QUEUE_FULL = "commit_queue_full"
UNREADABLE = -1  # a label the answer's bytes did not yield (never seen with our own answers)

_VARINT_MORE = 0x80
_TAG_COMMAND = 0x08  # Response field 1 (command), varint; also Result field 1 (result_code)
_TAG_RESULT = 0x12  # Response field 2 (result), length-delimited


class Buckets:
    """A histogram without labels or locks: the event loop observes, a scrape copies."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le = "<=").
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> tuple[list[tuple[str, float]], float]:
        counts = self.counts.copy()  # one C call: consistent with the +Inf count we report
        total = self.total
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*map(_bound_text, self.bounds), "+Inf"), counts, strict=True):
            running += count
            buckets.append((bound, running))
        return buckets, total


def _histogram(name: str, documentation: str, histogram: Buckets) -> HistogramMetricFamily:
    buckets, total = histogram.cumulative()
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=total)


def _bound_text(bound: float) -> str:
    return repr(float(bound))


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]  # IndexError on a truncated varint: the caller gives up
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & _VARINT_MORE:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def answer_labels(answer: bytes) -> tuple[int, int, int]:
    """(version, command, result code) of an answer frame, read from its bytes.

    Our answers are serialized in field order: header, then Response.command (08 cc), then
    Response.result (12 len 08 rc ...), so the common case is a few byte compares; anything
    else takes the general walk.
    """
    version = answer[2] | answer[3] << 8
    pos = HEADER_SIZE
    if (
        len(answer) > pos + 5
        and answer[pos] == _TAG_COMMAND
        and answer[pos + 1] < _VARINT_MORE
        and answer[pos + 2] == _TAG_RESULT
        and answer[pos + 3] < _VARINT_MORE  # a one-byte length: result_text under ~120 bytes
        and answer[pos + 4] == _TAG_COMMAND
    ):
        code = answer[pos + 5]
        if code < _VARINT_MORE:
            return version, answer[pos + 1], code
        if len(answer) > pos + 6 and answer[pos + 6] < _VARINT_MORE:  # 254, 255
            return version, answer[pos + 1], (code & 0x7F) | answer[pos + 6] << 7
    try:
        return (version, *_walk(answer, pos))
    except (IndexError, ValueError):
        return version, UNREADABLE, UNREADABLE


def _walk(data: bytes, pos: int) -> tuple[int, int]:
    """Response.command and Result.result_code by walking the top-level fields."""
    command = code = UNREADABLE
    while pos < len(data) and UNREADABLE in (command, code):
        tag, pos = _varint(data, pos)
        wire_type = tag & 7
        if tag == _TAG_COMMAND:
            command, pos = _varint(data, pos)
        elif tag == _TAG_RESULT:
            length, pos = _varint(data, pos)
            code = _result_code(data[pos : pos + length])
            pos += length
        elif wire_type == 0:
            pos = _varint(data, pos)[1]
        elif wire_type == 2:
            length, pos = _varint(data, pos)
            pos += length
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        else:
            break
    return command, code


def _result_code(result: bytes) -> int:
    pos = 0
    while pos < len(result):
        tag, pos = _varint(result, pos)
        if tag == _TAG_COMMAND:
            return _varint(result, pos)[0]
        if tag & 7 == 0:
            pos = _varint(result, pos)[1]
        elif tag & 7 == 2:
            length, pos = _varint(result, pos)
            pos += length
        else:
            break
    return UNREADABLE


def _command_name(command: int) -> str:
    try:
        return Command(command).name
    except ValueError:
        return "unknown" if command == UNREADABLE else str(command)


class GatewayMetrics:
    """The metrics of one gateway: fed by `timed` handlers and the commit hook, read by a
    scrape. Sources are attached as the gateway is assembled."""

    def __init__(self, gateway_id: str) -> None:
        self.gateway_id = gateway_id
        self.registry = CollectorRegistry()
        # (transport, version, command, result code) -> answers
        self._requests: dict[tuple[str, int, int, int], int] = {}
        self._durations: dict[str, Buckets] = {}
        self._batch_sizes = Buckets(BATCH_SIZE_BUCKETS)
        self._commit_seconds = Buckets(COMMIT_SECONDS_BUCKETS)
        self._queue_seconds = Buckets(COMMIT_SECONDS_BUCKETS)
        self._commit_stats: CommitStats | None = None
        self._backlog: Callable[[], tuple[int, float]] = lambda: (0, 0.0)
        self._spool: SpoolingJournal | None = None
        self._torn_tail_bytes = 0  # cut by the local journal's (or spool's) recovery on opening
        self._journal: CountingJournal | None = None
        self._server_stats: ServerStats | None = None
        self._frame_errors: dict[str, Callable[[], int]] = {}
        self._limiters: dict[str, FailureLimiter] = {}
        self._guard: TokenGuard | None = None
        self._log_caps: dict[str, LogCap] = {}
        # MQTT notifications: the notifier's stats (ingest/notifications.NotifierStats).
        self._notifier: Any = None
        self._shifts: ShiftStats | None = None
        self._pool: asyncpg.Pool | None = None
        # (windows open, oldest window's age in seconds): replaced whole, read whole.
        self._offline: tuple[int, float] = (0, 0.0)
        self._http: tuple[WSGIServer, Thread] | None = None
        self.registry.register(self)
        ProcessCollector(registry=self.registry)

    # --- assembling ---

    def timed(self, handler: Handler, transport: str) -> CoroutineHandler:
        """`handler`, counting and timing every answer under `transport`."""
        durations = self._durations.setdefault(transport, Buckets(REQUEST_SECONDS_BUCKETS))
        requests = self._requests
        clock = time.perf_counter

        async def handle(frame: Frame) -> bytes:
            started = clock()
            answer = await handler(frame)
            durations.observe(clock() - started)
            key = (transport, *answer_labels(answer))
            requests[key] = requests.get(key, 0) + 1
            return answer

        return handle

    def counting(self, journal: Journal) -> CountingJournal:
        if isinstance(journal, SpoolingJournal):  # the Kafka outage spool: backlog and counts
            self._spool = journal
        if isinstance(journal, LocalJournal | SpoolingJournal):
            self._torn_tail_bytes = journal.recovered_bytes_cut
        self._journal = CountingJournal(journal)
        return self._journal

    def watch_commits(self, committer: GroupCommitter) -> None:
        self._commit_stats = committer.stats
        self._backlog = committer.backlog
        committer.on_batch = self._observe_batch

    def watch_tcp(self, stats: ServerStats) -> None:
        self._server_stats = stats
        self._frame_errors["tcp"] = lambda: stats.frame_errors

    def watch_failures(self, name: str, limiter: FailureLimiter) -> None:
        """A per-source failure budget (ingest/limits.py): failures, refusals, sources held."""
        self._limiters[name] = limiter

    def watch_guessing(self, guard: TokenGuard) -> None:
        """Token guessing (ingest/guessing.py): the per-source budget, gates and devices."""
        self._guard = guard
        self.watch_failures("device_token", guard.limiter)

    def watch_refusal_logs(self, cap: LogCap) -> None:
        """Refusal log lines left out by their cap (ingest/logs.LogCap)."""
        self._log_caps["refusal"] = cap

    def watch_frame_errors(self, transport: str, count: Callable[[], int]) -> None:
        self._frame_errors[transport] = count

    def watch_notifier(self, stats: object) -> None:
        """Counts of ingest/notifications.NotifierStats (queued, published, dropped, failures)."""
        self._notifier = stats

    def watch_shifts(self, stats: ShiftStats) -> None:
        """Closed shifts and Z report mismatches, as the pipeline counts them."""
        self._shifts = stats

    def watch_offline(self, pool: asyncpg.Pool) -> None:
        """Where `refresh_offline` reads the open offline windows from."""
        self._pool = pool

    async def refresh_offline(self, timeout: float = OFFLINE_REFRESH_TIMEOUT) -> None:
        """Reads the offline backlog once into the cached gauges (raises on failure, leaving
        the last values in place)."""
        if self._pool is None:
            return
        now = datetime.now(UTC).astimezone(KZ_TIME).replace(tzinfo=None)
        async with asyncio.timeout(timeout), self._pool.acquire(timeout=timeout) as conn:
            backlog = await offline_backlog(conn, now=now, timeout=timeout)
        self._offline = (backlog.windows_open, backlog.max_age.total_seconds())

    async def refresh_offline_forever(
        self, interval: float = OFFLINE_REFRESH_SECONDS, timeout: float = OFFLINE_REFRESH_TIMEOUT
    ) -> None:
        """`refresh_offline` every `interval` seconds until cancelled; a failed refresh is
        logged and the next one tries again."""
        while True:
            try:
                await self.refresh_offline(timeout)
            except DATABASE_ERRORS as err:
                log.warning("offline gauges refresh failed", error=repr(err))
            await asyncio.sleep(interval)

    def _ledger_families(self) -> Iterator[Metric]:
        shifts = self._shifts or ShiftStats()
        yield CounterMetricFamily(
            "ofd_shifts_closed", "Shifts closed (CLOSE_SHIFT made durable).", value=shifts.closed
        )
        yield CounterMetricFamily(
            "ofd_z_report_mismatches",
            "Shift closes whose device Z report differed from the OFD's, or never came.",
            value=shifts.mismatched,
        )
        windows_open, max_age = self._offline
        yield GaugeMetricFamily(
            "ofd_offline_windows_open",
            "Devices with an open offline window (all devices in the database, refreshed"
            f" every {OFFLINE_REFRESH_SECONDS:g} s).",
            value=windows_open,
        )
        yield GaugeMetricFamily(
            "ofd_offline_window_max_age_seconds",
            "Age of the oldest open offline window (0: none open); a device blocks itself at 72 h.",
            value=max_age,
        )

    def _notifier_families(self) -> Iterator[Metric]:
        stats = self._notifier
        if stats is None:
            return
        family = CounterMetricFamily(
            "ofd_notifications",
            "MQTT notifications by outcome: queued, published, dropped (queue full), failures.",
            labels=["outcome"],
        )
        for outcome in ("queued", "published", "dropped", "failures"):
            family.add_metric([outcome], getattr(stats, outcome))
        yield family

    def _observe_batch(self, size: int, seconds: float, waits: list[float]) -> None:
        self._batch_sizes.observe(size)
        self._commit_seconds.observe(seconds)
        observe = self._queue_seconds.observe
        for wait in waits:
            observe(wait)

    # --- serving ---

    def start_http(self, host: str, port: int) -> int:
        """Serves /metrics and /healthz from a daemon thread (port 0: the kernel picks); the
        bound port."""
        try:
            server, thread = metrics_http.serve(self.registry, self.health, host, port)
        except OSError as err:
            raise OSError(
                err.errno,
                f"metrics on {host}:{port}: {err.strerror}; each gateway process needs its own"
                " --metrics-port (0 serves none)",
            ) from err
        self._http = (server, thread)
        return server.server_port

    def health(self) -> str | None:
        """None while this gateway can make documents durable; else why not (metrics_http)."""
        stats = self._commit_stats
        if stats is None or stats.last_failure_at <= stats.last_success_at:
            return None
        if time.monotonic() - stats.last_failure_at > metrics_http.HEALTH_HOLD:
            return None
        return "durable writes are failing (journal or PostgreSQL unreachable from this gateway)"

    async def stop_http(self) -> None:
        if self._http is None:
            return
        server, thread = self._http
        self._http = None
        # shutdown() waits for the serving loop's next poll (up to 0.5 s): not on the event loop.
        await asyncio.to_thread(server.shutdown)
        server.server_close()
        await asyncio.to_thread(thread.join, 1.0)

    # --- scraping (runs on the HTTP thread; every read of shared state is one atomic copy) ---

    def collect(self) -> Iterator[Metric]:
        yield from self._request_families()
        yield from self._commit_families()
        yield from self._connection_families()
        yield from self._notifier_families()
        yield from self._ledger_families()
        info = GaugeMetricFamily("ofd_gateway_info", "This gateway process.", labels=["gateway_id"])
        info.add_metric([self.gateway_id], 1)
        yield info

    def _request_families(self) -> Iterator[Metric]:
        counted = CounterMetricFamily(
            "ofd_requests",
            "Requests answered, by command, result code, protocol version and transport.",
            labels=["command", "result", "version", "transport"],
        )
        auth = dict.fromkeys(AUTH_FAILURE_CODES, 0)
        for (transport, version, command, code), count in self._requests.copy().items():
            counted.add_metric([_command_name(command), str(code), str(version), transport], count)
            if code in auth:
                auth[ResultCode(code)] += count
        yield counted
        failures = CounterMetricFamily(
            "ofd_auth_failures",
            "Requests refused as unknown device (1), invalid token (2), invalid request"
            " number (8) or invalid retry (9).",
            labels=["code"],
        )
        for code, count in auth.items():
            failures.add_metric([str(int(code))], count)
        yield failures
        durations = HistogramMetricFamily(
            "ofd_request_duration_seconds",
            "Time from a whole request frame to its answer, by transport.",
            labels=["transport"],
        )
        for transport, histogram in self._durations.copy().items():
            buckets, total = histogram.cumulative()
            durations.add_metric([transport], buckets, total)
        yield durations

    def _commit_families(self) -> Iterator[Metric]:
        yield _histogram(
            "ofd_commit_batch_size",
            "Device state changes per group-commit batch.",
            self._batch_sizes,
        )
        yield _histogram(
            "ofd_commit_duration_seconds",
            "Time to make one group-commit batch durable (journal and state).",
            self._commit_seconds,
        )
        yield _histogram(
            "ofd_commit_queue_seconds",
            "Time a state change waited for its group-commit batch to begin.",
            self._queue_seconds,
        )
        stats = self._commit_stats or CommitStats()
        yield CounterMetricFamily(
            "ofd_commit_failures",
            "Group-commit batches that failed; their requests were answered 254.",
            value=stats.failures,
        )
        yield CounterMetricFamily(
            "ofd_commit_conflicts",
            "State changes that lost to a concurrent change of the same device.",
            value=stats.conflicts,
        )
        shed = CounterMetricFamily(
            "ofd_shed", "Requests shed by a named policy (answered 254 at once).", labels=["policy"]
        )
        shed.add_metric([SHED_COMMIT_QUEUE_FULL], stats.shed)
        yield shed
        yield CounterMetricFamily(
            "ofd_journal_appends",
            "Documents the journal acknowledged as durable.",
            value=self._journal.appended if self._journal else 0,
        )
        yield from self._spool_families()
        yield CounterMetricFamily(
            "ofd_journal_torn_tail_bytes",
            "Bytes of a torn tail (one incomplete last record) cut when the journal was opened.",
            value=self._torn_tail_bytes,
        )
        yield CounterMetricFamily(
            "ofd_journal_torn_tails",
            "Torn tails cut when the journal was opened (corruption refuses to start instead).",
            value=1 if self._torn_tail_bytes else 0,
        )
        waiting, age = self._backlog()
        yield GaugeMetricFamily(
            "ofd_journal_lag_changes",
            "Changes received but not yet durable: queued for, or inside, a group commit.",
            value=waiting,
        )
        yield GaugeMetricFamily(
            "ofd_journal_lag_seconds",
            "How long the oldest change not yet durable has waited (0 when none waits).",
            value=age,
        )

    def _spool_families(self) -> Iterator[Metric]:
        spool = self._spool
        stats = spool.stats if spool is not None else SpoolStats()
        yield GaugeMetricFamily(
            "ofd_journal_spool_bytes",
            "Documents spooled locally during a Kafka outage and not yet replayed, in bytes.",
            value=spool.backlog_bytes if spool is not None else 0,
        )
        yield CounterMetricFamily(
            "ofd_journal_spooled", "Records spooled locally instead of Kafka.", value=stats.spooled
        )
        yield CounterMetricFamily(
            "ofd_journal_replayed", "Spooled records replayed to Kafka.", value=stats.replayed
        )
        yield CounterMetricFamily(
            "ofd_journal_outages",
            "Times Kafka failed a batch and spooling began.",
            value=stats.outages,
        )

    def _connection_families(self) -> Iterator[Metric]:
        stats = self._server_stats or ServerStats()
        yield GaugeMetricFamily(
            "ofd_connections_active", "Device TCP connections open now.", value=stats.active
        )
        yield CounterMetricFamily(
            "ofd_connections", "Device TCP connections accepted.", value=stats.accepted
        )
        yield CounterMetricFamily(
            "ofd_connections_timed_out",
            "Device TCP connections closed by the read or idle timeout.",
            value=stats.timed_out,
        )
        yield from _client_limit_families(stats)
        errors = CounterMetricFamily(
            "ofd_frame_errors",
            "Requests whose framing (TCP) or header metadata (gRPC) could not be read.",
            labels=["transport"],
        )
        for transport, count in self._frame_errors.copy().items():
            errors.add_metric([transport], count())
        yield errors
        yield from self._limiter_families()

    def _limiter_families(self) -> Iterator[Metric]:
        failures = CounterMetricFamily(
            "ofd_limited_failures",
            "Failed attempts counted against a per-source budget, by what failed.",
            labels=["limit"],
        )
        refused = CounterMetricFamily(
            "ofd_limited_refusals",
            "Attempts refused or slowed because their source had spent its failure budget.",
            labels=["limit"],
        )
        sources = GaugeMetricFamily(
            "ofd_limited_sources",
            "Source addresses with failures in the current window, by what failed.",
            labels=["limit"],
        )
        for name, limiter in self._limiters.copy().items():
            failures.add_metric([name], limiter.failures)
            refused.add_metric([name], limiter.refused)
            sources.add_metric([name], limiter.sources)
        yield failures
        yield refused
        yield sources
        yield from _guessing_families(self._guard.stats if self._guard else GuessStats())
        suppressed = CounterMetricFamily(
            "ofd_log_lines_suppressed",
            "Log lines left out by a per-device or overall cap, by kind.",
            labels=["kind"],
        )
        for kind, cap in self._log_caps.copy().items():
            suppressed.add_metric([kind], cap.suppressed)
        yield suppressed


def _client_limit_families(stats: ServerStats) -> Iterator[Metric]:
    """What one client may take of the TCP server (ingest/tcp_limits.py)."""
    slots, held = stats.slots, stats.held
    refused = CounterMetricFamily(
        "ofd_connections_refused",
        "Device TCP connections refused: over the global or per-source limit with no idle"
        " unauthenticated connection to close instead, or without a valid PROXY header.",
        labels=["reason"],
    )
    refused.add_metric(["global"], slots.refused_global)
    refused.add_metric(["per_source"], slots.refused_per_source)
    refused.add_metric(["proxy_header"], stats.proxy_header_errors)
    yield refused
    evicted = CounterMetricFamily(
        "ofd_connections_evicted",
        "Idle connections never answered OK, closed to make room for a new one, by limit.",
        labels=["reason"],
    )
    evicted.add_metric(["global"], slots.evicted_global)
    evicted.add_metric(["per_source"], slots.evicted_per_source)
    yield evicted
    yield GaugeMetricFamily(
        "ofd_connections_unauthenticated",
        "Device TCP connections open now that have had no request answered OK.",
        value=slots.unauthenticated,
    )
    yield CounterMetricFamily(
        "ofd_connections_unauthenticated_closed",
        "Connections closed by the unauthenticated timeout (no request answered OK in time).",
        value=stats.unauthenticated_closed,
    )
    yield GaugeMetricFamily(
        "ofd_partial_frame_bytes",
        "Bytes held for device requests not yet answered (half-received frames included),"
        " beyond each connection's 8 KiB allowance: what the partial-frame budget counts.",
        value=held.held,
    )
    yield GaugeMetricFamily(
        "ofd_partial_frame_bytes_peak",
        "The most bytes ever charged to the partial-frame budget at once.",
        value=held.peak,
    )
    yield CounterMetricFamily(
        "ofd_partial_frame_pauses",
        "Times a connection stopped reading because the partial-frame budget was spent.",
        value=held.pauses,
    )
    yield GaugeMetricFamily(
        "ofd_partial_frame_waiting_connections",
        "Connections waiting for the partial-frame budget now.",
        value=held.waiting,
    )


def _guessing_families(stats: GuessStats) -> Iterator[Metric]:
    """Token guessing (ingest/guessing.py); the per-source budget is ofd_limited_*."""
    yield GaugeMetricFamily(
        "ofd_token_checks_waiting",
        "Requests of over-budget sources waiting for a token-check slot now.",
        value=stats.waiting,
    )
    yield CounterMetricFamily(
        "ofd_token_penalties",
        "Unknown-id or wrong-token answers of over-budget sources held for the penalty.",
        value=stats.penalized,
    )
    yield CounterMetricFamily(
        "ofd_token_checks_abandoned",
        "Requests dropped unchecked: their connection closed while waiting for a slot.",
        value=stats.abandoned,
    )
    yield CounterMetricFamily(
        "ofd_token_failure_devices",
        "Times a device's token failed --device-token-failures times within a minute.",
        value=stats.devices_over_threshold,
    )
