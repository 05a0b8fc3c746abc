"""The cabinet's notifications (issue 13): what an organization is told about its registers,
written where the event happens in the ledger; ledger/cabinet_notices.py is the users' side.

A notice is a kind and a text in no language of its own: the event's own words (a block's
message, the KGD's reason, an operator's announcement) or its facts (a time, a date, a shift
and its differences); the cabinet gives each kind its title. A notice about a register belongs
to the organization of the trade point the register stands in when the notice is written.
"""

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum

from ledger.errors import InvalidRequest, NotFound
from ledger.state_store import Conn
from ledger.wire import KZ_TIME

MAX_TEXT = 2000  # characters; the column's CHECK says the same


class Kind(StrEnum):
    OFFLINE = "offline"  # silent long enough to near the 72 h after which it blocks itself
    Z_MISMATCH = "z_mismatch"  # a closed shift's Z report differs from the OFD's
    BLOCKED = "blocked"
    UNBLOCKED = "unblocked"
    KGD_REFUSED = "kgd_refused"  # the KGD refused an application of the register
    SUBSCRIPTION_ENDING = "subscription_ending"
    SUBSCRIPTION_LAPSED = "subscription_lapsed"
    SUBSCRIPTION_RENEWED = "subscription_renewed"
    ANNOUNCEMENT = "announcement"  # the operator's, to one organization or to all


POST_SQL = """
INSERT INTO cabinet_notices (organization_id, system_id, kind, text, once_key)
SELECT p.organization_id, d.system_id, $2, left(u.text, $5), u.once_key
FROM unnest($1::bigint[], $3::text[], $4::text[]) AS u(system_id, text, once_key)
JOIN devices d ON d.system_id = u.system_id
JOIN trade_points p ON p.id = d.trade_point_id
ON CONFLICT (kind, once_key) DO NOTHING
"""
ANNOUNCE_SQL = """
INSERT INTO cabinet_notices (organization_id, kind, text)
SELECT id, 'announcement', $2 FROM organizations WHERE $1::bigint IS NULL OR id = $1
"""
# Mismatched shifts are found in shift_reports, where the shift's close wrote them, by a scan
# off the request path; the window only bounds the scan (its partial index reads mismatches
# only), the once_key (the report's id) keeps a repeated scan from writing one twice.
Z_MISMATCH_SQL = """
INSERT INTO cabinet_notices (organization_id, system_id, kind, text, once_key)
SELECT p.organization_id, r.system_id, 'z_mismatch',
       left('№' || r.shift_number || ': '
            || array_to_string(ARRAY(SELECT jsonb_array_elements_text(r.differences)), '; '),
            $2),
       r.id::text
FROM shift_reports r
JOIN devices d ON d.system_id = r.system_id
JOIN trade_points p ON p.id = d.trade_point_id
WHERE r.differences <> '[]'::jsonb AND r.recorded_at > now() - make_interval(days => $1)
ON CONFLICT (kind, once_key) DO NOTHING
"""
Z_MISMATCH_WINDOW_DAYS = 7


async def post(
    conn: Conn,
    kind: Kind,
    notices: Sequence[tuple[int, str, str | None]],
    *,
    timeout: float | None = None,
) -> None:
    """Notices of one kind about registers: (system id, text, once_key or None) each; a
    once_key already written is skipped."""
    if not notices:
        return
    await conn.execute(
        POST_SQL,
        [system_id for system_id, _, _ in notices],
        kind.value,
        [text for _, text, _ in notices],
        [key for _, _, key in notices],
        MAX_TEXT,
        timeout=timeout,
    )


async def announce(conn: Conn, text: str, organization_id: int | None) -> int:
    """The operator's announcement to one organization, or (None) to every one; how many got
    it."""
    text = text.strip()
    if not text or len(text) > MAX_TEXT:
        raise InvalidRequest(f"an announcement has 1 to {MAX_TEXT} characters")
    status = await conn.execute(ANNOUNCE_SQL, organization_id, text)
    reached = int(status.rsplit(" ", 1)[1])  # "INSERT 0 <rows>"
    if organization_id is not None and not reached:
        raise NotFound(f"no organization {organization_id}")
    return reached


async def notice_z_mismatches(conn: Conn, *, timeout: float) -> None:
    """Notices of the shifts closed lately whose Z reports differ, each once."""
    await conn.execute(Z_MISMATCH_SQL, Z_MISMATCH_WINDOW_DAYS, MAX_TEXT, timeout=timeout)


def local_time(at: datetime) -> str:
    """A moment as a notice's text says it: Kazakhstan's wall clock, to the minute."""
    return at.astimezone(KZ_TIME).strftime("%Y-%m-%d %H:%M")
