"""The cabinet's users and groups, and what each user may reach.

An organization has one main user (made by the operator, `ofd web-user add --main`), who creates
the others and their groups. A group grants sections (SECTIONS: the cabinet's pages) and trade
points (all of the organization's, or a list); a user reaches the union of what its groups grant,
and nothing of another organization. The main user reaches everything of its organization and
alone manages users and groups (USERS_SECTION): a section to grant would let its holder grant
itself the rest.

Passwords are scrypt hashes (ledger/operators.py: the same parameters and format as the devices'
operators); checking one is slow on purpose, so callers run `authenticate` in a worker thread.
"""

import asyncio
import functools
import re
from dataclasses import dataclass

import asyncpg

from ledger import operators
from ledger.cabinet_centres import CENTRES_SECTION, CLIENTS_SECTION
from ledger.errors import AlreadyExists, InvalidRequest, NotFound, PermissionDenied
from ledger.state_store import Conn

# The sections a group may grant, in the order the cabinet shows them.
SECTIONS = (
    "organization", "points", "devices", "token", "transactions", "reports", "analytics",
    CENTRES_SECTION, CLIENTS_SECTION, "notifications", "subscriptions",
)  # fmt: skip
USERS_SECTION = "users"  # the main user's alone
LOGIN = re.compile(r"[A-Za-z0-9._@-]{3,64}")  # the column's CHECK says the same
MIN_PASSWORD = 8
MAX_FIELD = 200  # characters of a name, e-mail or position (the columns' CHECKs)
MAX_PHONE = 50
MAX_GROUPS = 100  # groups one user may be in; points one group may list: registry.MAX_LIST


@dataclass(frozen=True, slots=True)
class User:
    id: int
    organization_id: int
    login: str
    name: str
    email: str
    phone: str
    position: str
    is_main: bool
    active: bool


@dataclass(frozen=True, slots=True)
class Group:
    id: int
    organization_id: int
    name: str
    sections: frozenset[str]
    all_points: bool
    point_ids: frozenset[int]


@dataclass(frozen=True, slots=True)
class Access:
    """What one user reaches: its organization, the sections and the trade points (None: all of
    the organization's)."""

    user: User
    sections: frozenset[str]
    point_ids: frozenset[int] | None

    @property
    def organization_id(self) -> int:
        return self.user.organization_id

    @property
    def whole_organization(self) -> bool:
        return self.point_ids is None

    def may(self, section: str) -> bool:
        return section in self.sections

    def reaches(self, organization_id: int | None, point_id: int | None) -> bool:
        """Whether a trade point (of `organization_id`) is within reach."""
        if organization_id != self.user.organization_id or point_id is None:
            return False
        return self.point_ids is None or point_id in self.point_ids


USER_COLUMNS = "id, organization_id, login, name, email, phone, position, is_main, active"


def _check_profile(name: str, email: str, phone: str, position: str) -> None:
    for label, value, limit in (
        ("name", name, MAX_FIELD),
        ("e-mail", email, MAX_FIELD),
        ("phone", phone, MAX_PHONE),
        ("position", position, MAX_FIELD),
    ):
        if len(value) > limit:
            raise InvalidRequest(f"{label} longer than {limit} characters")


def _check_password(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= operators.MAX_PASSWORD:
        raise InvalidRequest(
            f"a password has {MIN_PASSWORD} to {operators.MAX_PASSWORD} characters"
        )


async def add_user(
    conn: Conn,
    organization_id: int,
    *,
    login: str,
    password: str,
    name: str = "",
    email: str = "",
    phone: str = "",
    position: str = "",
    is_main: bool = False,
) -> User:
    """Adds a user (its password hashed in a worker thread: scrypt takes tens of ms)."""
    check_new_user(login, name, email, phone, position)
    password_hash = await new_password_hash(password)
    return await insert_user(
        conn,
        organization_id,
        login=login,
        password_hash=password_hash,
        name=name,
        email=email,
        phone=phone,
        position=position,
        is_main=is_main,
    )


def check_new_user(login: str, name: str, email: str, phone: str, position: str) -> None:
    if not LOGIN.fullmatch(login):
        raise InvalidRequest("a login is 3 to 64 letters, digits or . _ @ -")
    _check_profile(name, email, phone, position)


async def new_password_hash(password: str) -> str:
    """A new password's scrypt hash, made in a worker thread; a too short or long one refused."""
    _check_password(password)
    return await asyncio.to_thread(operators.hash_password, password)


async def insert_user(
    conn: Conn,
    organization_id: int,
    *,
    login: str,
    password_hash: str,
    name: str,
    email: str,
    phone: str,
    position: str,
    is_main: bool,
) -> User:
    """Stores a user whose fields `check_new_user` and `new_password_hash` passed."""
    try:
        row = await conn.fetchrow(
            "INSERT INTO cabinet_users (organization_id, login, password_hash, name, email,"
            f" phone, position, is_main) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            f" RETURNING {USER_COLUMNS}",
            organization_id,
            login,
            password_hash,
            name,
            email,
            phone,
            position,
            is_main,
        )
    except asyncpg.UniqueViolationError as err:
        what = "a main user" if err.constraint_name == "cabinet_users_main" else "this login"
        raise AlreadyExists(f"{what} already exists") from err
    except asyncpg.ForeignKeyViolationError as err:
        raise NotFound(f"no organization {organization_id}") from err
    assert row is not None
    return User(*row)


async def find_login(conn: Conn, login: str) -> tuple[User, str] | None:
    """The active user with this login and its password hash."""
    row = await conn.fetchrow(
        f"SELECT {USER_COLUMNS}, password_hash FROM cabinet_users WHERE login = $1 AND active",
        login,
    )
    if row is None:
        return None
    return User(*list(row)[:-1]), row["password_hash"]


@functools.cache
def _dummy_hash() -> str:
    # Checked when the login is unknown; made once, on the first such login.
    return operators.hash_password("", salt=bytes(operators.SALT_BYTES))


def authenticate(found: tuple[User, str] | None, password: str) -> User | None:
    """The user when the password is theirs. Slow (scrypt): run it in a worker thread. An
    unknown login costs the same time as a wrong password (ledger/operators.authenticate)."""
    if found is None or len(password) > operators.MAX_PASSWORD:
        operators.verify_password(password[: operators.MAX_PASSWORD], _dummy_hash())
        return None
    user, stored = found
    return user if operators.verify_password(password, stored) else None


async def get_user(conn: Conn, organization_id: int, user_id: int) -> User:
    row = await conn.fetchrow(
        f"SELECT {USER_COLUMNS} FROM cabinet_users WHERE id = $1 AND organization_id = $2",
        user_id,
        organization_id,
    )
    if row is None:
        raise NotFound(f"no user {user_id}")
    return User(*row)


async def main_user(conn: Conn, organization_id: int) -> User:
    """The organization's active main user: who confirms its registration applications."""
    row = await conn.fetchrow(
        f"SELECT {USER_COLUMNS} FROM cabinet_users WHERE organization_id = $1 AND is_main"
        " AND active",
        organization_id,
    )
    if row is None:
        raise NotFound(f"organization {organization_id} has no active main user")
    return User(*row)


async def list_users(conn: Conn, organization_id: int) -> list[User]:
    rows = await conn.fetch(
        f"SELECT {USER_COLUMNS} FROM cabinet_users WHERE organization_id = $1 ORDER BY id",
        organization_id,
    )
    return [User(*row) for row in rows]


async def set_active(conn: Conn, organization_id: int, user_id: int, active: bool) -> User:
    """Turns a user off (its sessions end at once) or on again; never the main user."""
    async with conn.transaction():
        user = await get_user(conn, organization_id, user_id)
        if user.is_main:
            raise PermissionDenied("the main user cannot be turned off here")
        await conn.execute("UPDATE cabinet_users SET active = $2 WHERE id = $1", user_id, active)
        if not active:
            await conn.execute("DELETE FROM cabinet_sessions WHERE user_id = $1", user_id)
    return await get_user(conn, organization_id, user_id)


async def _points_of_organization(conn: Conn, organization_id: int, point_ids: set[int]) -> None:
    if not point_ids:
        return
    found = await conn.fetchval(
        "SELECT count(*) FROM trade_points WHERE id = ANY($1) AND organization_id = $2",
        sorted(point_ids),
        organization_id,
    )
    if found != len(point_ids):
        raise NotFound("some of the trade points are not this organization's")


async def add_group(
    conn: Conn,
    organization_id: int,
    *,
    name: str,
    sections: set[str],
    all_points: bool,
    point_ids: set[int],
) -> Group:
    """A group granting `sections` on all the organization's points or on `point_ids`, which
    must be the organization's own."""
    name = name.strip()
    if not name or len(name) > MAX_FIELD:
        raise InvalidRequest(f"a group's name has 1 to {MAX_FIELD} characters")
    unknown = sections - set(SECTIONS)
    if unknown:
        raise InvalidRequest(f"no such sections: {', '.join(sorted(unknown))}")
    async with conn.transaction():
        await _points_of_organization(conn, organization_id, point_ids)
        try:
            group_id = await conn.fetchval(
                "INSERT INTO cabinet_groups (organization_id, name, sections, all_points)"
                " VALUES ($1, $2, $3, $4) RETURNING id",
                organization_id,
                name,
                sorted(sections),
                all_points,
            )
        except asyncpg.UniqueViolationError as err:
            raise AlreadyExists(f"a group named {name!r} already exists") from err
        await conn.executemany(
            "INSERT INTO cabinet_group_points (group_id, trade_point_id) VALUES ($1, $2)",
            [(group_id, point) for point in sorted(point_ids)],
        )
    return Group(
        group_id,
        organization_id,
        name,
        frozenset(sections),
        all_points,
        frozenset(() if all_points else point_ids),
    )


async def list_groups(conn: Conn, organization_id: int) -> list[Group]:
    rows = await conn.fetch(
        "SELECT g.id, g.organization_id, g.name, g.sections, g.all_points,"
        " coalesce(array_agg(p.trade_point_id) FILTER (WHERE p.trade_point_id IS NOT NULL),"
        " '{}') AS points"
        " FROM cabinet_groups g LEFT JOIN cabinet_group_points p ON p.group_id = g.id"
        " WHERE g.organization_id = $1 GROUP BY g.id ORDER BY g.id",
        organization_id,
    )
    return [
        Group(r["id"], r["organization_id"], r["name"], frozenset(r["sections"]),
              r["all_points"], frozenset(r["points"]))
        for r in rows
    ]  # fmt: skip


async def delete_group(conn: Conn, organization_id: int, group_id: int) -> None:
    done = await conn.fetchval(
        "DELETE FROM cabinet_groups WHERE id = $1 AND organization_id = $2 RETURNING id",
        group_id,
        organization_id,
    )
    if done is None:
        raise NotFound(f"no group {group_id}")


async def user_group_ids(conn: Conn, user_id: int) -> frozenset[int]:
    rows = await conn.fetch("SELECT group_id FROM cabinet_user_groups WHERE user_id = $1", user_id)
    return frozenset(r["group_id"] for r in rows)


async def set_user_groups(
    conn: Conn, organization_id: int, user_id: int, group_ids: set[int]
) -> None:
    """Puts a user of the organization in exactly these groups of the organization."""
    if len(group_ids) > MAX_GROUPS:
        raise InvalidRequest(f"at most {MAX_GROUPS} groups per user")
    async with conn.transaction():
        await get_user(conn, organization_id, user_id)
        found = await conn.fetchval(
            "SELECT count(*) FROM cabinet_groups WHERE id = ANY($1) AND organization_id = $2",
            sorted(group_ids),
            organization_id,
        )
        if found != len(group_ids):
            raise NotFound("some of the groups are not this organization's")
        await conn.execute("DELETE FROM cabinet_user_groups WHERE user_id = $1", user_id)
        await conn.executemany(
            "INSERT INTO cabinet_user_groups (user_id, group_id) VALUES ($1, $2)",
            [(user_id, group) for group in sorted(group_ids)],
        )


async def access_of(conn: Conn, user: User) -> Access:
    """What `user` reaches now (read on every request: a changed group applies at once)."""
    if user.is_main:
        return Access(user, frozenset((*SECTIONS, USERS_SECTION)), None)
    rows = await conn.fetch(
        "SELECT g.sections, g.all_points,"
        " array(SELECT trade_point_id FROM cabinet_group_points WHERE group_id = g.id) AS points"
        " FROM cabinet_user_groups ug JOIN cabinet_groups g ON g.id = ug.group_id"
        " WHERE ug.user_id = $1 AND g.organization_id = $2",
        user.id,
        user.organization_id,
    )
    sections: set[str] = set()
    points: set[int] | None = set()
    for row in rows:
        sections.update(row["sections"])
        if row["all_points"]:
            points = None
        elif points is not None:
            points.update(row["points"])
    return Access(
        user,
        frozenset(sections & set(SECTIONS)),
        None if points is None else frozenset(points),
    )
