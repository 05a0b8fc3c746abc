"""Capped exponential backoff with full jitter, for every retry toward the KGD.

Full jitter (a uniform draw below the capped exponential) spreads the retries of many
forwarders and workers that failed together, so a KGD coming back is not hit by all of them at
the same instant.
"""

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float = 0.5  # seconds: the ceiling of the first retry's wait
    cap: float = 60.0  # seconds: no wait is longer

    def __post_init__(self) -> None:
        if not 0 < self.base <= self.cap:
            raise ValueError("backoff needs 0 < base <= cap")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait before retry number `attempt` (1 for the first retry)."""
        ceiling = min(self.cap, self.base * 2 ** min(max(attempt - 1, 0), 32))
        return (rng or random).uniform(0, ceiling)
