"""Structured JSON logs (structlog), one event per line, for machines first.

Request-level events carry device_id and request_number so that one device's story can be
followed through a gateway's log: every refusal and failure at info and above, every answered
request at debug (thousands a second would drown an info log).
"""

import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable

import structlog


def configure_logging(level: str = "info") -> None:
    threshold = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    _route_library_logs(threshold)


def _route_library_logs(threshold: int) -> None:
    """Libraries that log through `logging` (asyncpg, aiohttp, warnings) write the same JSON
    lines: without a handler Python prints their messages, and tracebacks over many lines, as
    plain text between ours."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.format_exc_info,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(ensure_ascii=False),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(threshold)
    logging.captureWarnings(True)


# Refusal lines one device may cause per minute (`ofd serve --refusal-logs-per-device`); a device
# refused more often is a device in a loop or someone guessing, and one line says as much.
REFUSAL_LOGS_PER_DEVICE = 5
# And all devices together per second: ids sprayed at random are each new to the table above.
REFUSAL_LOGS_PER_SECOND = 100
MAX_CAPPED_KEYS = 100_000


class LogCap:
    """Lets through at most `per_key` lines per key per `window_seconds` and `per_second` lines
    in all; the rest are counted (`suppressed`), and the next line let through for a key
    carries how many of its lines were left out. The table of keys is bounded, oldest first."""

    def __init__(
        self,
        per_key: int,
        window_seconds: float = 60.0,
        per_second: int = REFUSAL_LOGS_PER_SECOND,
        max_keys: int = MAX_CAPPED_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._per_key = per_key
        self._window = window_seconds
        self._per_second = per_second
        self._max_keys = max_keys
        self._clock = clock
        # key -> [window start, lines let through in it, lines left out since the last one]
        self._keys: OrderedDict[int, list[float]] = OrderedDict()
        self._second = (0.0, 0)  # (second's start, lines let through in it)
        self.suppressed = 0

    def allow(self, key: int) -> int | None:
        """None: leave this line out. Otherwise the number of this key's lines left out
        before it (to be logged with it)."""
        now = self._clock()
        entry = self._keys.get(key)
        if entry is None or now - entry[0] >= self._window:
            entry = [now, 0, entry[2] if entry is not None else 0]
            self._keys[key] = entry
            if len(self._keys) > self._max_keys:
                self._keys.popitem(last=False)
        second, lines = self._second
        if now - second >= 1.0:
            second, lines = now, 0
        if entry[1] >= self._per_key or lines >= self._per_second:
            entry[2] += 1
            self.suppressed += 1
            return None
        self._second = (second, lines + 1)
        entry[1] += 1
        left_out, entry[2] = int(entry[2]), 0
        return left_out
