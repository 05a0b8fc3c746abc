"""Who may do what: roles, their modules and scopes, and the API keys that stand for callers.

Callers of the control API present a key (as gRPC metadata, ingest/control). Only the key's SHA-256
is stored (api_keys), so a leaked table grants nothing. Three roles:

- operator: the OFD's staff; every method on everything.
- organization: an organization's users; its own trade points and their devices, and only the
  modules in ORGANIZATION_MODULES (no blocking, no KGD confirmations, no subscription switches:
  those are the OFD's acts). A key may be narrowed to some of the trade points (a shop
  manager's): it then reaches those points and their devices only, and nothing organization-wide.
- service_centre: the devices granted to it, and only the modules listed on its key.

On first start `ofd serve` creates an operator key named "bootstrap" and writes it to
DATA_DIR/operator.key (mode 0600); the CLI reads `--key`, OFD_CONTROL_KEY or that file.
"""

import contextlib
import hashlib
import os
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg

from ledger.constraints import translate
from ledger.errors import InvalidRequest, NotFound
from ledger.state_store import Conn

OPERATOR, ORGANIZATION, SERVICE_CENTRE = "operator", "organization", "service_centre"
ROLES = (OPERATOR, ORGANIZATION, SERVICE_CENTRE)
# Modules: groups of control methods a key may be limited to.
MODULES = frozenset(
    {"admin", "kgd", "organization", "points", "devices", "show", "token", "lifecycle", "block",
     "subscription", "audit"}
)  # fmt: skip
# "organization": its own title, addresses and OKED (never its IIN).
ORGANIZATION_MODULES = frozenset(
    {"organization", "points", "devices", "show", "token", "lifecycle", "audit"}
)
# Modules that never make sense on a handful of granted devices.
SERVICE_CENTRE_MODULES = frozenset({"show", "token", "lifecycle", "block", "audit"})
KEY_FILE = "operator.key"
KEY_BYTES = 32
BOOTSTRAP_NAME = "bootstrap"
# Any constant works; shared by every gateway so that two starting together make one key.
BOOTSTRAP_LOCK_KEY = 0x0FD0_0002
MAX_GRANTED_DEVICES = 10_000
MAX_GRANTED_POINTS = 1_000


@dataclass(frozen=True, slots=True)
class Caller:
    key_id: int
    name: str
    role: str
    organization_id: int | None
    modules: frozenset[str]
    system_ids: frozenset[int]
    # An organization's key narrowed to these trade points; empty: the whole organization.
    trade_point_ids: frozenset[int] = frozenset()

    @property
    def organization_wide(self) -> bool:
        return self.role == OPERATOR or (self.role == ORGANIZATION and not self.trade_point_ids)

    def reaches_point(self, organization_id: int | None, point_id: int | None) -> bool:
        """Whether this organization's key reaches a trade point of `organization_id`."""
        if self.role != ORGANIZATION or organization_id != self.organization_id:
            return False
        return not self.trade_point_ids or point_id in self.trade_point_ids

    def may_use(self, module: str) -> bool:
        if self.role == OPERATOR:
            return True
        if self.role == ORGANIZATION:
            return module in ORGANIZATION_MODULES
        return module in self.modules and module in SERVICE_CENTRE_MODULES


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "ofd_" + secrets.token_urlsafe(KEY_BYTES)


async def authenticate(conn: Conn, key: str) -> Caller | None:
    row = await conn.fetchrow(
        "SELECT id, name, role, organization_id, modules FROM api_keys"
        " WHERE key_hash = $1 AND revoked_at IS NULL",
        hash_key(key),
    )
    if row is None:
        return None
    devices = await conn.fetch("SELECT system_id FROM api_key_devices WHERE key_id = $1", row["id"])
    points = await conn.fetch(
        "SELECT trade_point_id FROM api_key_points WHERE key_id = $1", row["id"]
    )
    return Caller(
        row["id"],
        row["name"],
        row["role"],
        row["organization_id"],
        frozenset(row["modules"]),
        frozenset(r["system_id"] for r in devices),
        frozenset(r["trade_point_id"] for r in points),
    )


async def create_key(
    conn: Conn,
    *,
    name: str,
    role: str,
    organization_id: int | None = None,
    system_ids: frozenset[int] = frozenset(),
    modules: frozenset[str] = frozenset(),
    trade_point_ids: frozenset[int] = frozenset(),
) -> tuple[int, str]:
    """A new key (id, the key itself); the key is not kept anywhere but in the answer."""
    if role not in ROLES:
        raise InvalidRequest(f"unknown role {role!r}")
    if role == ORGANIZATION and not organization_id:
        raise InvalidRequest("an organization key needs its organization")
    if role != ORGANIZATION and organization_id:
        raise InvalidRequest("only an organization key names an organization")
    if role == SERVICE_CENTRE:
        unknown = modules - SERVICE_CENTRE_MODULES
        if unknown or not modules or not system_ids:
            raise InvalidRequest(
                "a service centre key needs devices and modules among "
                f"{', '.join(sorted(SERVICE_CENTRE_MODULES))}",
            )
        if len(system_ids) > MAX_GRANTED_DEVICES:
            raise InvalidRequest(f"at most {MAX_GRANTED_DEVICES} devices per key")
    elif system_ids or modules:
        raise InvalidRequest("only a service centre key lists devices and modules")
    if trade_point_ids and role != ORGANIZATION:
        raise InvalidRequest("only an organization key lists trade points")
    if len(trade_point_ids) > MAX_GRANTED_POINTS:
        raise InvalidRequest(f"at most {MAX_GRANTED_POINTS} trade points per key")
    key = new_key()
    try:
        async with conn.transaction():
            key_id: int = await conn.fetchval(
                "INSERT INTO api_keys (key_hash, name, role, organization_id, modules)"
                " VALUES ($1, $2, $3, $4, $5) RETURNING id",
                hash_key(key),
                name,
                role,
                organization_id,
                sorted(modules),
            )
            if system_ids:
                await conn.executemany(
                    "INSERT INTO api_key_devices (key_id, system_id) VALUES ($1, $2)",
                    [(key_id, s) for s in sorted(system_ids)],
                )
            if trade_point_ids:
                granted = await conn.fetchval(
                    "WITH granted AS (INSERT INTO api_key_points (key_id, trade_point_id)"
                    " SELECT $1, id FROM trade_points WHERE id = ANY($2) AND organization_id = $3"
                    " RETURNING 1) SELECT count(*) FROM granted",
                    key_id,
                    sorted(trade_point_ids),
                    organization_id,
                )
                if granted != len(trade_point_ids):
                    # Rolls the key back with the transaction.
                    raise InvalidRequest("the key's trade points must be its organization's own")
    except (asyncpg.ForeignKeyViolationError, asyncpg.CheckViolationError) as err:
        raise translate(err) from err
    return key_id, key


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key as it is listed: what it may reach, never the key (only its hash is kept)."""

    id: int
    name: str
    role: str
    organization_id: int | None
    modules: tuple[str, ...]
    system_ids: tuple[int, ...]
    trade_point_ids: tuple[int, ...]
    created_at: datetime
    revoked_at: datetime | None


async def list_keys(conn: Conn) -> list[KeyInfo]:
    """Every key, live and revoked, in id order."""
    rows = await conn.fetch(
        "SELECT k.id, k.name, k.role, k.organization_id, k.modules,"
        " coalesce((SELECT array_agg(system_id ORDER BY system_id) FROM api_key_devices"
        "  WHERE key_id = k.id), '{}') AS system_ids,"
        " coalesce((SELECT array_agg(trade_point_id ORDER BY trade_point_id) FROM api_key_points"
        "  WHERE key_id = k.id), '{}') AS trade_point_ids,"
        " k.created_at, k.revoked_at FROM api_keys k ORDER BY k.id"
    )
    return [
        KeyInfo(
            r["id"],
            r["name"],
            r["role"],
            r["organization_id"],
            tuple(r["modules"]),
            tuple(r["system_ids"]),
            tuple(r["trade_point_ids"]),
            r["created_at"],
            r["revoked_at"],
        )
        for r in rows
    ]


async def revoke_key(conn: Conn, key_id: int) -> None:
    """Revokes a live key at once: its next call is refused."""
    done = await conn.fetchval(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING id",
        key_id,
    )
    if done is None:
        raise NotFound(f"no live key {key_id}")


async def ensure_bootstrap_key(conn: Conn, data_dir: Path) -> Path:
    """Makes sure DATA_DIR/operator.key holds a working operator key; returns its path.

    A key file whose key the database no longer knows (a new database) is replaced. The
    advisory lock keeps gateways starting together from writing two keys.
    """
    await conn.execute("SELECT pg_advisory_lock($1)", BOOTSTRAP_LOCK_KEY)
    try:
        existing = read_key_file(data_dir)
        if existing is not None:
            caller = await authenticate(conn, existing)
            if caller is not None and caller.role == OPERATOR:
                return data_dir / KEY_FILE
        _, key = await create_key(conn, name=BOOTSTRAP_NAME, role=OPERATOR)
        # A few bytes to a local file: not worth a thread, and it runs once at start-up.
        return write_key_file(data_dir, key)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", BOOTSTRAP_LOCK_KEY)


def write_key_file(data_dir: Path, key: str) -> Path:
    path = data_dir / KEY_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a key
    return path


def read_key_file(data_dir: Path) -> str | None:
    path = data_dir / KEY_FILE
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None
