"""The registry facts the public check reads, kept for a minute.

Every check looks up the device by the KGD number printed on the receipt, and a receipt found
shows its seller and trade point: two PostgreSQL round trips per checked receipt, for facts
that change seldom (a register keeps its KGD number; a title or an address is edited rarely)
and that the check shows only beside a receipt carrying them already. Keeping them FACTS_TTL
seconds is safe: an edit shows on the check page at most that late, and nothing but the check
reads them from here. A KGD number that names no device is not kept: a register registered a
moment ago is found at once, and guessed numbers (misses are limited per address, but there
are many addresses) take no room. At most MAX_FACTS of each are kept, the least recently
stored dropped first.
"""

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

import asyncpg

from ledger import registry

FACTS_TTL = 60.0  # seconds
MAX_FACTS = 4096  # entries of each kind

K = TypeVar("K")
V = TypeVar("V")
Seller = tuple[registry.Organization | None, registry.TradePoint | None]


class Kept(Generic[K, V]):
    """Values kept `ttl` seconds each, at most `size`, the least recently stored dropped first."""

    def __init__(self, ttl: float, size: int, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._size = size
        self._clock = clock
        self._values: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        kept = self._values.get(key)
        if kept is None:
            return None
        stored, value = kept
        if self._clock() - stored >= self._ttl:
            del self._values[key]
            return None
        return value

    def put(self, key: K, value: V) -> None:
        self._values[key] = (self._clock(), value)
        self._values.move_to_end(key)
        while len(self._values) > self._size:
            self._values.popitem(last=False)


class CheckFacts:
    """The device of a KGD number and the seller of a receipt, from PostgreSQL or kept."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        ttl: float = FACTS_TTL,
        size: int = MAX_FACTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._devices: Kept[str, int] = Kept(ttl, size, clock)
        self._sellers: Kept[tuple[int, int], Seller] = Kept(ttl, size, clock)

    async def device_id(self, kgd_number: str) -> int | None:
        """The system id of the device registered with this KGD number, if any."""
        kept = self._devices.get(kgd_number)
        if kept is not None:
            return kept
        async with self._pool.acquire() as conn:
            device = await registry.device_by_kgd_number(conn, kgd_number)
        if device is None:
            return None
        self._devices.put(kgd_number, device.system_id)
        return device.system_id

    async def seller(self, organization_id: int, trade_point_id: int) -> Seller:
        """The organization and trade point a receipt names (None for one that is gone)."""
        key = (organization_id, trade_point_id)
        kept = self._sellers.get(key)
        if kept is not None:
            return kept
        async with self._pool.acquire() as conn:
            found = await registry.seller_of_receipt(conn, organization_id, trade_point_id)
        self._sellers.put(key, found)
        return found
