"""The cabinet's sessions, in PostgreSQL: any cabinet process can serve any request, and
logging out (or turning a user off) ends the session everywhere at once.

The cookie holds 32 random bytes; the table holds their SHA-256 only. A session ends when it
has been idle for `idle`, or at `lifetime` after login whatever happens. Each carries its own
CSRF token, which every form of the session posts back.
"""

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from ledger.cabinet_users import USER_COLUMNS, User
from ledger.state_store import Conn

TOKEN_BYTES = 32
MAX_COOKIE = 100  # characters: a longer cookie is no session of ours, and is not hashed


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    idle: timedelta = timedelta(minutes=30)
    lifetime: timedelta = timedelta(hours=12)

    def __post_init__(self) -> None:
        if self.idle <= timedelta(0) or self.lifetime < self.idle:
            raise ValueError("a session needs idle > 0 and lifetime >= idle")


@dataclass(frozen=True, slots=True)
class Session:
    user: User
    csrf_token: str


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def open_session(conn: Conn, user: User, policy: SessionPolicy) -> tuple[str, Session]:
    """A new session for `user`: the cookie's value (shown once) and the session."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    csrf = secrets.token_urlsafe(TOKEN_BYTES)
    await conn.execute(
        "INSERT INTO cabinet_sessions (token_hash, user_id, csrf_token, expires_at)"
        " VALUES ($1, $2, $3, now() + $4::interval)",
        _hash(token),
        user.id,
        csrf,
        policy.lifetime,
    )
    # Expired sessions of anyone go now and then: bounded work, no background task.
    if secrets.randbelow(20) == 0:
        await conn.execute(
            "DELETE FROM cabinet_sessions WHERE ctid IN (SELECT ctid FROM cabinet_sessions"
            " WHERE expires_at < now() OR last_seen < now() - $1::interval LIMIT 1000)",
            policy.idle,
        )
    return token, Session(user, csrf)


async def resume_session(conn: Conn, token: str, policy: SessionPolicy) -> Session | None:
    """The live session the cookie names, marked as used now; None when there is none (unknown,
    idle too long, past its lifetime, or its user turned off)."""
    if not token or len(token) > MAX_COOKIE:
        return None
    columns = ", ".join(f"u.{c.strip()}" for c in USER_COLUMNS.split(","))
    row = await conn.fetchrow(
        "UPDATE cabinet_sessions s SET last_seen = now() FROM cabinet_users u"
        " WHERE s.token_hash = $1 AND u.id = s.user_id AND u.active"
        " AND s.expires_at > now() AND s.last_seen > now() - $2::interval"
        f" RETURNING {columns}, s.csrf_token",
        _hash(token),
        policy.idle,
    )
    if row is None:
        return None
    return Session(User(*list(row)[:-1]), row["csrf_token"])


async def close_session(conn: Conn, token: str) -> None:
    if token and len(token) <= MAX_COOKIE:
        await conn.execute("DELETE FROM cabinet_sessions WHERE token_hash = $1", _hash(token))
