"""Per-source failure budgets (ingest/limits.py): counted per address in a window, bounded in
memory, and only failures count."""

import pytest

from ingest.limits import FailureBudget, FailureLimiter, peer_address


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_source_is_over_budget_after_its_failures_until_the_window_ends() -> None:
    clock = Clock()
    limiter = FailureLimiter(FailureBudget(failures=3, window_seconds=60), clock)
    for expected in (1, 2, 3):
        assert not limiter.over_budget("10.0.0.1")
        assert limiter.failed("10.0.0.1") == expected
    assert limiter.over_budget("10.0.0.1")
    assert not limiter.over_budget("10.0.0.2")  # another address is untouched
    clock.now += 59.9
    assert limiter.over_budget("10.0.0.1")
    clock.now += 0.2
    assert not limiter.over_budget("10.0.0.1")  # a new window
    assert (limiter.failures, limiter.refused) == (3, 2)


def test_the_table_of_sources_is_bounded_oldest_first() -> None:
    limiter = FailureLimiter(FailureBudget(failures=1, window_seconds=60, max_sources=100))
    for n in range(1000):
        limiter.failed(f"10.0.{n // 256}.{n % 256}")
    assert limiter.sources == 100
    assert limiter.over_budget("10.0.3.231")  # the newest is remembered
    assert not limiter.over_budget("10.0.0.0")  # the oldest was forgotten


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.1:50512", "127.0.0.1"),
        ("ipv6:[::1]:50512", "::1"),
        ("unix:/tmp/x.sock", "unix:/tmp/x.sock"),
    ],
)
def test_peer_addresses(peer: str, address: str) -> None:
    assert peer_address(peer) == address


def test_a_budget_must_allow_something() -> None:
    with pytest.raises(ValueError, match="failure budget"):
        FailureBudget(failures=0, window_seconds=60)
