"""Which shift a document belongs to: the shift rules of protocol.md, on top of the tally.

- Shift numbers run on from registration: the first shift is 1, each next one the last plus one.
- A shift opens with its first document (receipt, money placement, or a close of an empty
  shift); a document without a shift number belongs to the open shift, or opens the next one.
- A document for the next shift while one is still open closes the open one implicitly: the
  device moved on without a CLOSE_SHIFT reaching us. The OFD's Z report of that shift is stored
  and flagged, never lost, and the document is accepted (inferred: refusing it would block a
  till over a report it can no longer send).
- OPEN_SHIFT_TIMEOUT_EXPIRED (11) when a document comes more than 24 hours after its shift's
  first one, by the documents' own clocks, except for offline documents: a device draining its
  backlog is never refused for being late. A close is never refused for it.
"""

from datetime import datetime, timedelta

from ledger.errors import Refusal
from ledger.tally import Tally, close_shift, open_shift
from ledger.ticket_checks import refuse
from ledger.wire import ResultCode

SHIFT_TIMEOUT = timedelta(hours=24)


def enter_shift(
    tally: Tally, number: int, when: datetime, *, offline: bool, field: str
) -> tuple[Tally, Tally | None]:
    """Puts a document of shift `number` (0: unstated) made at `when` into its shift: returns
    the tally with that shift open, and the shift it closed on the way (usually None).

    Raises Refusal: 13 naming `field` for a shift number out of turn, 11 for an online document
    of a shift open more than 24 hours.
    """
    current = tally.shift_number
    if tally.is_open:
        if number in (0, current):
            opened = tally.opened_at
            if not offline and opened is not None and when - opened > SHIFT_TIMEOUT:
                raise Refusal(
                    ResultCode.OPEN_SHIFT_TIMEOUT_EXPIRED,
                    f"shift {current} opened at {opened.isoformat()} is open more than 24 hours:"
                    " close it",
                )
            return tally, None
        if number == current + 1:
            following = open_shift(close_shift(tally, withdraw_money=False), number, when)
            return following, tally
        raise refuse(f"{field}: shift {number} is neither the open shift {current} nor the next")
    expected = current + 1
    if number not in (0, expected):
        raise refuse(f"{field}: shift {number} cannot open, the next shift is {expected}")
    return open_shift(tally, expected, when), None
