"""Operators of an organization who log in at its devices (AUTH), with their roles.

Passwords are stored as scrypt hashes with a random salt per operator, parameters in the stored
string so they can be raised later without invalidating old hashes. Checking one costs tens of
milliseconds and 16 MiB on purpose: the gateway runs it in a worker thread, never on the event
loop. An unknown login is checked against a fixed dummy hash, so the answer takes as long as for
a wrong password and does not tell which logins exist.

The answer (inferred, ours to choose): AuthResponse RESULT_TYPE_OK with the operator's code,
name and roles; or AuthResponse RESULT_TYPE_INVALID_LOGIN_PASSWORD, with the Result's code 12
(RESULT_TYPE_INVALID_LOGIN_PASSWORD, the same in 2.0.3 and 2.0.4) so that a device reading
either says the same. Not rate-limited here: the session rules already allow one request at a
time per device.
"""

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from ledger.errors import InvalidRequest

Conn = asyncpg.Connection | PoolConnectionProxy

PAYMASTER, CHIEF_PAYMASTER, ADMINISTRATOR = 1, 2, 3  # UserRoleEnum
ROLES = frozenset({PAYMASTER, CHIEF_PAYMASTER, ADMINISTRATOR})
# scrypt cost: N=2^14, r=8, p=1 is the interactive-login setting of the scrypt paper (16 MiB).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT_BYTES, KEY_BYTES = 16, 32
MAX_PASSWORD = 256  # characters: bounds the work one request can ask for
SCHEME = "scrypt"


class OperatorError(InvalidRequest):
    """An operator that cannot be added as given."""


@dataclass(frozen=True, slots=True)
class Operator:
    code: int
    name: str
    roles: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class StoredOperator:
    operator: Operator
    password_hash: str


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"{SCHEME}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${key.hex()}"


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=2 * 128 * n * r, dklen=KEY_BYTES
    )


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != SCHEME:
            return False
        computed = _scrypt(password[:MAX_PASSWORD], bytes.fromhex(salt), int(n), int(r), int(p))
        return hmac.compare_digest(computed, bytes.fromhex(key))
    except ValueError:
        return False


# Checked when the login is unknown, so that the answer takes the same time.
_DUMMY_HASH = hash_password("", salt=bytes(SALT_BYTES))


def authenticate(found: StoredOperator | None, password: str) -> Operator | None:
    """The operator when the password is theirs; None otherwise. Slow: run it in a thread."""
    if found is None:
        verify_password(password, _DUMMY_HASH)
        return None
    return found.operator if verify_password(password, found.password_hash) else None


async def add_operator(
    conn: Conn,
    organization_id: int,
    *,
    login: str,
    password: str,
    code: int,
    name: str,
    roles: Sequence[int],
) -> Operator:
    if not login or not password:
        raise OperatorError("login and password must not be empty")
    if len(password) > MAX_PASSWORD:
        raise OperatorError(f"password longer than {MAX_PASSWORD} characters")
    if not roles or not set(roles) <= ROLES:
        raise OperatorError(f"roles must be some of {sorted(ROLES)}")
    await conn.execute(
        "INSERT INTO operators (organization_id, login, code, name, roles, password_hash)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        organization_id,
        login,
        code,
        name,
        sorted(set(roles)),
        hash_password(password),
    )
    return Operator(code, name, tuple(sorted(set(roles))))


async def find_operator(
    conn: Conn, system_id: int, login: str, *, timeout: float
) -> StoredOperator | None:
    """The active operator with `login` at the organization the device belongs to."""
    row = await conn.fetchrow(
        "SELECT o.code, o.name, o.roles, o.password_hash FROM devices d"
        " JOIN trade_points p ON p.id = d.trade_point_id"
        " JOIN operators o ON o.organization_id = p.organization_id"
        " WHERE d.system_id = $1 AND o.login = $2 AND o.active",
        system_id,
        login,
        timeout=timeout,
    )
    if row is None:
        return None
    return StoredOperator(
        Operator(row["code"], row["name"], tuple(row["roles"])), row["password_hash"]
    )
