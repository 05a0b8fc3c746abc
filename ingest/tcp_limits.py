"""What one client may take of the TCP server: connection slots and frame bytes held in memory.

No I/O here: the server's connections (ingest/tcp_server.py) are `Holder`s, and these tables only
decide who is admitted, who is evicted, who may read how much and who waits.

Slots (ConnectionTable). A connection is *unauthenticated* until one of its requests is answered
OK: until then it has shown no known device and token. Honest registers behind one carrier-grade
NAT may hold any number of authenticated connections; what no honest fleet does is hold hundreds
of connections that never show a device, so that is what the per-source limit counts. When a
limit is reached the oldest idle unauthenticated connection (of the source, or of all sources
for the global limit) is closed to make room; only when there is none (every one of them is in
the middle of a request) is the new connection refused. A slot-holder therefore pushes out its
own connections, not the devices' authenticated ones.

Bytes (ByteBudget). The bytes a connection holds for requests not yet answered (a partly
received frame, whole frames waiting for their turn or their answer) are its own up to
ALLOWANCE; beyond that they are charged to a global budget and to its source's. Reads are sized
so that the charge never passes the room left (but for one byte, as a read cannot be refused).
So memory held is at most the budget plus ALLOWANCE per connection; a connection's whole small
request always gets in and is answered, even while a flood of half-sent frames has spent the
budget; and a receipt that arrives in one read is never charged at all (the hot path pays two
comparisons). A connection charged bytes that finds no room stops reading and waits, oldest
first, until bytes are released; the server's read timeout closes it if that takes too long,
as for any frame that does not arrive whole in time.
"""

import ipaddress
import itertools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

# At most this many idle-candidate checks per eviction: the table is in connection order, so the
# oldest idle connection is normally among the first few.
EVICTION_SCAN = 64
# Bytes a connection may hold without charge, whatever the budget: a header and a receipt of a
# hundred lines. Bounds how far past the budget a flood can push (this much per connection).
ALLOWANCE = 8 * 1024
# Largest single read (the server's shared receive buffer).
READ_SIZE = 256 * 1024
# Waiters resumed per release at most; each then reads only what is left.
RESUME_BATCH = 64

GLOBAL = "global"
PER_SOURCE = "per_source"


class Holder(Protocol):
    """What the tables need of a connection."""

    source: str | None

    @property
    def busy(self) -> bool:
        """A request of it is being answered: never evicted then."""
        ...

    def evict(self) -> None:
        """Close at once (the table has already released its slot)."""
        ...

    def budget_resumed(self) -> None:
        """Room was made: start reading again."""
        ...


def source_key(address: str) -> str:
    """The address limits count by: an IPv4 address as is (IPv4-mapped IPv6 unmapped), an IPv6
    address by its /64, since one subscriber holds a whole /64."""
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address.split("%", 1)[0])
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))


@dataclass(slots=True)
class SlotStats:
    active: int = 0
    unauthenticated: int = 0
    refused_global: int = 0
    refused_per_source: int = 0
    evicted_global: int = 0
    evicted_per_source: int = 0


class ConnectionTable:
    def __init__(self, max_connections: int, max_per_source: int, stats: SlotStats) -> None:
        self._max = max_connections
        self._max_per_source = max_per_source
        self.stats = stats
        self._counted: set[Holder] = set()
        # Unauthenticated connections, oldest first: all of them, and by source.
        self._unauthenticated: OrderedDict[Holder, None] = OrderedDict()
        self._by_source: dict[str, OrderedDict[Holder, None]] = {}

    def admit(self, conn: Holder) -> bool:
        """A new connection: within the global limit, making room if it must."""
        if self.stats.active >= self._max:
            victim = self._idle(self._unauthenticated)
            if victim is None:
                self.stats.refused_global += 1
                return False
            self.stats.evicted_global += 1
            self._evict(victim)
        self._counted.add(conn)
        self.stats.active += 1
        self._unauthenticated[conn] = None
        self.stats.unauthenticated += 1
        return True

    def place(self, conn: Holder, source: str) -> bool:
        """The admitted connection's source is known (at once, or from its PROXY header):
        within the per-source limit, making room if it must; False releases it."""
        conn.source = source
        peers = self._by_source.get(source)
        if peers is None:
            peers = self._by_source[source] = OrderedDict()
        elif len(peers) >= self._max_per_source:
            victim = self._idle(peers)
            if victim is None:
                self.stats.refused_per_source += 1
                self.release(conn)
                return False
            self.stats.evicted_per_source += 1
            self._evict(victim)
        peers[conn] = None
        return True

    def authenticated(self, conn: Holder) -> None:
        """Answered OK once: off the unauthenticated tables (it stays counted globally)."""
        if self._unauthenticated.pop(conn, 0) is None:
            self.stats.unauthenticated -= 1
            self._off_source(conn)

    def release(self, conn: Holder) -> None:
        """The connection is gone (idempotent)."""
        if conn not in self._counted:
            return
        self._counted.discard(conn)
        self.stats.active -= 1
        self.authenticated(conn)

    def _off_source(self, conn: Holder) -> None:
        if conn.source is None:
            return
        peers = self._by_source.get(conn.source)
        if peers is not None and peers.pop(conn, 0) is None and not peers:
            del self._by_source[conn.source]

    def _evict(self, victim: Holder) -> None:
        self.release(victim)
        victim.evict()

    @staticmethod
    def _idle(table: OrderedDict[Holder, None]) -> Holder | None:
        for n, conn in enumerate(table):
            if n >= EVICTION_SCAN:
                return None
            if not conn.busy:
                return conn
        return None


@dataclass(slots=True)
class BudgetStats:
    held: int = 0  # bytes charged now: held for requests not yet answered, beyond allowances
    peak: int = 0  # the most ever charged at once
    pauses: int = 0  # times a connection stopped reading for want of room
    waiting: int = 0  # connections waiting for room now


class ByteBudget:
    def __init__(self, total: int, per_source: int, stats: BudgetStats) -> None:
        self.total = total
        self.per_source = per_source
        self.stats = stats
        # While everything charged (to all sources) leaves this much free, no source is near
        # its own limit either: a read is sized without looking its source up.
        self._carefree = min(total, per_source) - READ_SIZE
        self._by_source: dict[str, int] = {}
        self._waiters: OrderedDict[Holder, None] = OrderedDict()

    def room(self, source: str | None) -> int:
        free = self.total - self.stats.held
        if source is not None:
            free = min(free, self.per_source - self._by_source.get(source, 0))
        return free

    def read_size(self, source: str | None, holding: int) -> int:
        """How much a connection holding `holding` bytes may read now: the room left plus what
        is left of its allowance (at least one byte: a read cannot be refused, and a connection
        with no room has stopped reading already)."""
        if self.stats.held <= self._carefree:
            return READ_SIZE
        room = self.room(source)
        if holding < ALLOWANCE:
            room += ALLOWANCE - holding
        return min(READ_SIZE, max(room, 1))

    def change(self, source: str | None, delta: int) -> int:
        """Charges `delta` bytes (negative: releases them) to `source`; the room left to it."""
        stats = self.stats
        stats.held += delta
        room = self.total - stats.held
        if source is not None:
            held = self._by_source.get(source, 0) + delta
            if held:
                self._by_source[source] = held
            else:
                self._by_source.pop(source, None)
            room = min(room, self.per_source - held)
        if delta > 0:
            stats.peak = max(stats.peak, stats.held)
        elif self._waiters:
            self._resume()
        return room

    def wait(self, conn: Holder) -> None:
        """`conn` holds bytes and has no room: it has stopped reading until resumed."""
        if conn not in self._waiters:
            self._waiters[conn] = None
            self.stats.pauses += 1
            self.stats.waiting += 1

    def forget(self, conn: Holder) -> None:
        if self._waiters.pop(conn, 0) is None:
            self.stats.waiting -= 1

    def _resume(self) -> None:
        free = self.total - self.stats.held
        if free <= 0:
            return
        batch = min(RESUME_BATCH, max(1, free // ALLOWANCE))
        for conn in list(itertools.islice(self._waiters, RESUME_BATCH)):
            if batch == 0:
                return
            if self.room(conn.source) <= 0:
                continue  # its own source is over its share: others first
            self.forget(conn)
            batch -= 1
            conn.budget_resumed()
