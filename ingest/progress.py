"""Progress of long work on stderr: `ofd load --once` and the exports.

On a terminal, one line rewritten in place (count, rate, elapsed); anywhere else (a pipe, a
log file, systemd's journal) a JSON line every few seconds, like every other log line, and one at
the end. How much work there is in all is not known up front (a journal is read to its end), so
there is a count rather than a bar.
"""

import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TextIO

TERMINAL_EVERY = 0.1  # seconds between rewrites of the terminal line
LOG_EVERY = 2.0  # seconds between JSON lines


class Progress:
    """Call it with the work done so far; `finish` once at the end."""

    def __init__(
        self,
        what: str,
        unit: str,
        stream: TextIO | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        every: float | None = None,
    ) -> None:
        self.what, self.unit = what, unit
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty()
        self.every = every if every is not None else TERMINAL_EVERY if self.terminal else LOG_EVERY
        self._clock = clock
        self._start = self._last = clock()
        self._done = 0

    def __call__(self, done: int) -> None:
        self._done = done
        now = self._clock()
        if now - self._last >= self.every:
            self._last = now
            self._show(now, final=False)

    def finish(self) -> None:
        self._show(self._clock(), final=True)

    def _show(self, now: float, *, final: bool) -> None:
        elapsed = now - self._start
        rate = self._done / elapsed if elapsed > 0 else 0.0
        if self.terminal:
            line = f"\r{self.what}: {self._done:,} {self.unit} ({rate:,.0f}/s, {elapsed:.0f} s)"
            self.stream.write(line + ("\n" if final else ""))
        else:
            record = {
                "event": f"{self.what} {'done' if final else 'progress'}",
                self.unit: self._done,
                "per_second": round(rate, 1),
                "elapsed_seconds": round(elapsed, 1),
                "level": "info",
                "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            }
            self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()
