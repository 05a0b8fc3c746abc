"""The cabinet's notifications (ledger/notices.py) as one user reads them.

A user sees its organization's notices, and one about a register only when its groups reach the
trade point the register stands in. A notice is unread until the user marks it, or marks all:
that moves the user's watermark (cabinet_users.notices_read_through) past every notice of the
organization, so the unread count reads only what came after it.
"""

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from ledger.cabinet_scope import require
from ledger.cabinet_users import Access
from ledger.errors import InvalidRequest, NotFound
from ledger.state_store import Conn
from ledger.wire import KZ_TIME

SECTION = "notifications"
MAX_LISTED = 200  # the newest of a period; a narrower period shows older ones
MAX_COUNTED = 100  # unread ones counted at most: the menu says "99+" past that

# Whether notice n is for user u ($1), of organization $2 reaching the points $3 (NULL: all).
VISIBLE = """
n.organization_id = $2
AND (n.system_id IS NULL OR $3::bigint[] IS NULL
     OR (SELECT d.trade_point_id FROM devices d WHERE d.system_id = n.system_id) = ANY($3))
"""
IS_READ = """
(n.id <= u.notices_read_through
 OR EXISTS (SELECT 1 FROM cabinet_notice_reads r WHERE r.user_id = u.id AND r.notice_id = n.id))
"""
UNREAD_SQL = f"""
SELECT count(*) FROM (
    SELECT 1 FROM cabinet_users u
    JOIN cabinet_notices n
      ON n.organization_id = u.organization_id AND n.id > u.notices_read_through
    WHERE u.id = $1 AND {VISIBLE} AND NOT {IS_READ}
    LIMIT {MAX_COUNTED}
) unread
"""
LIST_SQL = f"""
SELECT n.id, n.system_id, n.kind, n.text, n.created_at, {IS_READ} AS read
FROM cabinet_users u JOIN cabinet_notices n ON n.organization_id = u.organization_id
WHERE u.id = $1 AND {VISIBLE} AND n.created_at >= $4 AND n.created_at < $5
ORDER BY n.id DESC LIMIT {MAX_LISTED}
"""
FIND_SQL = f"""
SELECT n.id FROM cabinet_users u JOIN cabinet_notices n ON n.organization_id = u.organization_id
WHERE u.id = $1 AND n.id = $4 AND {VISIBLE}
"""


@dataclass(frozen=True, slots=True)
class Notice:
    id: int
    system_id: int | None  # None: about the organization as a whole
    kind: str  # ledger.notices.Kind
    text: str
    created_at: datetime
    read: bool


def _whose(access: Access) -> tuple[int, int, list[int] | None]:
    points = None if access.point_ids is None else sorted(access.point_ids)
    return access.user.id, access.organization_id, points


async def unread_count(conn: Conn, access: Access) -> int:
    """Unread notices, counted up to MAX_COUNTED; 0 to a user without the section."""
    if not access.may(SECTION):
        return 0
    count: int = await conn.fetchval(UNREAD_SQL, *_whose(access))
    return count


async def listed(conn: Conn, access: Access, first: date, last: date) -> list[Notice]:
    """The notices written from `first` through `last` (days in Kazakhstan), newest first."""
    require(access, SECTION)
    if last < first:
        raise InvalidRequest("the period ends before it begins")
    start = datetime.combine(first, time(), KZ_TIME)
    end = datetime.combine(last + timedelta(days=1), time(), KZ_TIME)
    rows = await conn.fetch(LIST_SQL, *_whose(access), start, end)
    return [Notice(*row) for row in rows]


async def mark_read(conn: Conn, access: Access, notice_id: int) -> None:
    """Marks one notice read; one the user does not see is NotFound like one that is none."""
    require(access, SECTION)
    if await conn.fetchval(FIND_SQL, *_whose(access), notice_id) is None:
        raise NotFound(f"no notice {notice_id}")
    await conn.execute(
        "INSERT INTO cabinet_notice_reads (user_id, notice_id) VALUES ($1, $2)"
        " ON CONFLICT DO NOTHING",
        access.user.id,
        notice_id,
    )


async def mark_all_read(conn: Conn, access: Access) -> None:
    """Everything of the organization written so far counts as read (a notice of a point the
    user gains later included); the marks one by one below the watermark go."""
    require(access, SECTION)
    async with conn.transaction():
        through = await conn.fetchval(
            "UPDATE cabinet_users SET notices_read_through = greatest(notices_read_through,"
            " (SELECT coalesce(max(id), 0) FROM cabinet_notices WHERE organization_id = $2))"
            " WHERE id = $1 RETURNING notices_read_through",
            access.user.id,
            access.organization_id,
        )
        await conn.execute(
            "DELETE FROM cabinet_notice_reads WHERE user_id = $1 AND notice_id <= $2",
            access.user.id,
            through,
        )
