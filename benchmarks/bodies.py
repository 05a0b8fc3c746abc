"""Request and answer bodies built once, before a run, so the load measures the server.

Building a receipt field by field in Python costs 20-50 µs, as much as the server's whole budget
per request, so the generator cycles a pool of serialized receipts instead. Each device walks the
pool in order (document numbers 1..N in shift 1); when it wraps, a few bytes appended to the body
move it to the next shift. Protobuf merges a repeated occurrence of an embedded message into the
first one, so `ticket { fr_shift_number: k }` after the body overrides the shift and every
document keeps a distinct identity (shift, number) however long the run.

The echo floor's answer is made by the gateway's own TICKET handler, so it has the same fields
and size as the answers the gateway sends.
"""

import functools
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ledger.commands import RequestContext, handle_ticket
from ledger.device_state import DeviceState, RegInfo
from ledger.fiscal import FiscalSettings
from ledger.lifecycle import DeviceStatus
from ledger.schemas import SCHEMAS
from ledger.wire import KZ_TIME, Command
from simulators.receipts import build_ticket, random_lines

DEFAULT_POOL_SIZE = 1000
MAX_LINES = 5  # a typical grocery receipt: 1-5 lines


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """A registered device as a load generator needs it: its id and current token."""

    system_id: int
    token: int


def kgd_number(index: int) -> str:
    """A 12-digit KGD registration number, the length real ones have."""
    return f"{600_000_000_000 + index:012d}"


@functools.lru_cache(maxsize=1024)
def shift_suffix(version: int, shift_number: int) -> bytes:
    """Bytes that, appended to a serialized TICKET request, set its shift number.

    Serialized by protobuf itself (partially: only the one field), so the field numbers of each
    version come from the schema rather than from constants here.
    """
    request: Any = SCHEMAS[version].Request()
    request.ticket.fr_shift_number = shift_number
    suffix: bytes = request.SerializePartialToString()
    return suffix


@dataclass(frozen=True, slots=True)
class RequestPool:
    """Serialized TICKET requests of shift 1, document numbers 1..len(bodies)."""

    version: int
    bodies: tuple[bytes, ...]

    def body(self, sequence: int) -> bytes:
        """The body of a device's `sequence`-th receipt (0-based): every one a new document."""
        shift, index = divmod(sequence, len(self.bodies))
        body = self.bodies[index]
        return body if shift == 0 else body + shift_suffix(self.version, shift + 1)


def build_pool(version: int, size: int = DEFAULT_POOL_SIZE, seed: int = 1) -> RequestPool:
    if size < 1:
        raise ValueError("the pool needs at least one body")
    schema = SCHEMAS[version]
    rng = random.Random(seed)
    when = datetime.now(KZ_TIME).replace(microsecond=0, tzinfo=None)
    bodies = tuple(
        build_ticket(
            schema,
            when=when,
            shift_number=1,
            document_number=number,
            lines=random_lines(rng, rng.randint(1, MAX_LINES)),
            payment=rng.choice(("cash", "card", "mobile")),
        ).SerializeToString()
        for number in range(1, size + 1)
    )
    return RequestPool(version, bodies)


def _sample_state(system_id: int) -> DeviceState:
    reg = RegInfo(
        kgd_registration_number=kgd_number(system_id),
        serial_number="SN-1",
        model="Bench KKM",
        org_title="ТОО Бенч",
        org_address="Алматы",
        org_address_kz="Алматы",
        org_iin="180240012342",
        org_oked="47111",
        point_title="Дүкен 1",
        point_address="Абай 1",
        point_address_kz="Абай 1",
        latitude=0,
        longitude=0,
    )
    return DeviceState(system_id, DeviceStatus.REGISTERED, reg, 1, 1, None, None, None, None, 0,
                       False, 0, 0, 0, None, None)  # fmt: skip


def ticket_ok_body(pool: RequestPool, secret: bytes = bytes(32)) -> bytes:
    """The gateway's answer to the pool's first receipt, made by the gateway's own handler."""
    schema = SCHEMAS[pool.version]
    request: Any = schema.Request.FromString(pool.bodies[0])
    ctx = RequestContext(schema, pool.version, 1, 1, FiscalSettings(secret=secret))
    outcome = handle_ticket(ctx, _sample_state(1), request)
    assert int(request.command) == Command.TICKET
    body: bytes = outcome.response.SerializeToString()
    return body
