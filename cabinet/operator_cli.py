"""The operator's cabinet commands beside `ofd web-user`: announcements and subscription terms.

ofd web-notice add (--org ID | --all) --text TEXT
ofd web-subscription set --kkm ID (--paid-until YYYY-MM-DD | --no-term) [--months N] [--auto-renew]
"""

import argparse
from datetime import date, datetime
from typing import Any

import asyncpg

from cabinet.cli_database import add_database_options, run_with_database
from ingest.cli_options import option
from ledger import notices, subscriptions
from ledger.wire import KZ_TIME

OPERATOR = "ofd web-subscription"  # the audit log's actor


def _announce(args: argparse.Namespace) -> int:
    async def act(conn: asyncpg.Connection) -> str:
        reached = await notices.announce(conn, args.text, None if args.all else args.org)
        return f"announced to {reached} organization(s)"

    return run_with_database(args, act)


def _set_term(args: argparse.Namespace) -> int:
    async def act(conn: asyncpg.Connection) -> str:
        term = await subscriptions.set_term(
            conn, args.kkm, paid_until=None if args.no_term else args.paid_until,
            period_months=args.months, auto_renew=args.auto_renew,
            today=datetime.now(KZ_TIME).date(), by=OPERATOR,
        )  # fmt: skip
        until = term.paid_until.isoformat() if term.paid_until else "no term"
        state = "on" if term.active else "off"
        return (
            f"kkm {term.system_id}: paid until {until}, {term.period_months} months,"
            f" auto-renewal {'on' if term.auto_renew else 'off'}, subscription {state}"
        )

    return run_with_database(args, act)


def add_operator_commands(sub: "argparse._SubParsersAction[Any]") -> None:
    notice = sub.add_parser("web-notice", help="the cabinet's announcements").add_subparsers(
        dest="action", required=True
    )
    add = notice.add_parser("add", help="an announcement to one organization or to all")
    add_database_options(add)
    whom = add.add_mutually_exclusive_group(required=True)
    whom.add_argument("--org", type=int, help="organization id")
    whom.add_argument("--all", action="store_true", help="every organization")
    option(add, "--text", required=True, help="the announcement, as the cabinet shows it")
    add.set_defaults(run=_announce)

    term = sub.add_parser("web-subscription", help="registers' subscription terms").add_subparsers(
        dest="action", required=True
    )
    put = term.add_parser(
        "set", help="a register's term; paid through today or later switches it on"
    )
    add_database_options(put)
    option(put, "--kkm", type=int, required=True, help="the register's system id")
    until = put.add_mutually_exclusive_group(required=True)
    until.add_argument("--paid-until", type=date.fromisoformat, help="last paid day, YYYY-MM-DD")
    until.add_argument(
        "--no-term", action="store_true", help="no term: the subscription is switched by hand"
    )
    option(put, "--months", type=int, default=12, help="the period auto-renewal extends by")
    option(put, "--auto-renew", action="store_true", help="renew by the period when it ends")
    put.set_defaults(run=_set_term)
