"""Per-source failure budgets: how many failures (wrong keys, wrong tokens) one source address
may have in a window before it is slowed or refused.

Only failures count: what an honest client never does in bulk. Many registers behind one
carrier-grade NAT share an address, so successes are never counted against it, and a limit on
failures never stops a correct credential from working (DESIGN.md, "Trust boundaries").

A fixed window per source, kept in a bounded table: when the table is full the oldest window is
forgotten first (an attacker spraying addresses costs memory up to the bound, never more).
"""

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FailureBudget:
    failures: int  # per source per window; past it the source is over budget
    window_seconds: float
    max_sources: int = 100_000  # sources remembered at once

    def __post_init__(self) -> None:
        if self.failures < 1 or self.window_seconds <= 0 or self.max_sources < 1:
            raise ValueError("a failure budget needs failures >= 1, a window > 0, sources >= 1")


# Failed control-API authentications one address may have per minute.
DEFAULT_CONTROL_AUTH_FAILURES = FailureBudget(failures=20, window_seconds=60.0)


class FailureLimiter:
    """Counts failures per source; `over_budget` says whether a source has spent its budget."""

    def __init__(self, budget: FailureBudget, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = budget
        self._clock = clock
        # source -> (window start, failures in it), oldest window first
        self._windows: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self.failures = 0  # all failures seen (a metric)
        self.refused = 0  # requests refused or slowed for being over budget (a metric)

    def _current(self, source: str, now: float) -> tuple[float, int]:
        window = self._windows.get(source)
        if window is None or now - window[0] >= self.budget.window_seconds:
            return (now, 0)
        return window

    def over_budget(self, source: str) -> bool:
        """True when `source` has had its budget of failures in the current window; counts the
        request as refused."""
        _, failures = self._current(source, self._clock())
        if failures >= self.budget.failures:
            self.refused += 1
            return True
        return False

    def failed(self, source: str) -> int:
        """Records one failure of `source`; returns its failures in the current window."""
        now = self._clock()
        start, failures = self._current(source, now)
        self._windows[source] = (start, failures + 1)
        self._windows.move_to_end(source)
        while len(self._windows) > self.budget.max_sources:
            self._windows.popitem(last=False)
        self.failures += 1
        return failures + 1

    @property
    def sources(self) -> int:
        return len(self._windows)


def peer_address(peer: str) -> str:
    """The address part of a gRPC peer string (`ipv4:1.2.3.4:5678`, `ipv6:[::1]:5678`,
    `unix:...`): failures are counted per address, not per connection."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer
