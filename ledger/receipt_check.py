"""The public receipt check behind every printed QR code.

ledger.fiscal.qr_url prints `<base>?i=<fiscal sign>&f=<KGD registration number>&s=<total in
tenge, two decimals>&t=<YYYYMMDDTHHMMSS, the device's clock>`. The check answers one of three:

- FOUND: the warehouse holds a receipt of the device with that KGD number whose sign, total and
  time are exactly these; then (and only then) its facts are shown.
- PENDING: no such receipt yet, and the printed time is recent: receipts reach the warehouse
  within seconds of their acknowledgement, and an offline one when the register reconnects.
- UNKNOWN: anything else, malformed parameters included.

PENDING depends on the time the caller typed and on nothing stored, so a non-matching query
learns nothing from either answer: not whether the KGD number exists, nor what the device sent.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

# Where `ofd web` serves the check, and so the QR base URL the gateway prints by default
# (`ofd serve --qr-base-url`, `ofd web --qr-base-url`): this deployment's own page.
CHECK_PATH = "/check"
DEFAULT_WEB_PORT = 7781
DEFAULT_CHECK_URL = f"http://127.0.0.1:{DEFAULT_WEB_PORT}{CHECK_PATH}"
SIGN = re.compile(r"[0-9]{1,20}")
KGD_NUMBER = re.compile(r"[0-9A-Za-z-]{1,40}")
TOTAL = re.compile(r"([0-9]{1,15})\.([0-9]{2})")
TIME = re.compile(r"[0-9]{8}T[0-9]{6}")
# A device's clock may run a little ahead of ours.
CLOCK_SKEW = timedelta(minutes=5)


class Verdict(StrEnum):
    FOUND = "found"
    PENDING = "pending"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class CheckQuery:
    fiscal_sign: str
    kgd_number: str
    total: int  # tiyn
    when: datetime  # naive: the device's wall clock (UTC+5)


def parse_check(params: Mapping[str, str]) -> CheckQuery | None:
    """The query a QR URL's parameters make, or None when any is missing or malformed."""
    sign, kgd = params.get("i", ""), params.get("f", "")
    total, moment = TOTAL.fullmatch(params.get("s", "")), params.get("t", "")
    if not (SIGN.fullmatch(sign) and KGD_NUMBER.fullmatch(kgd) and total):
        return None
    if not TIME.fullmatch(moment):
        return None
    try:
        when = datetime.strptime(moment, "%Y%m%dT%H%M%S")  # the device's clock: naive
    except ValueError:
        return None
    return CheckQuery(sign, kgd, int(total[1]) * 100 + int(total[2]), when)


def verdict(query: CheckQuery | None, found: bool, now: datetime, pending: timedelta) -> Verdict:
    """`now` on the devices' clock (naive UTC+5), `pending` how long a receipt may take to
    arrive."""
    if found:
        return Verdict.FOUND
    if query is not None and now - pending <= query.when <= now + CLOCK_SKEW:
        return Verdict.PENDING
    return Verdict.UNKNOWN
