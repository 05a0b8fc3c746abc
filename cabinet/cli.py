"""`ofd web` (the cabinet and the public receipt check) and `ofd web-user add` (an
organization's main user, made by the operator).

ofd web [--web-host H] [--web-port P] [--qr-base-url URL] [--database-url DSN] [--data-dir D]
ofd web-user add --org ID --login L [--main] [--name ...] < password   (one line on stdin)
"""

import argparse
import asyncio
import getpass
import os
import sys
from datetime import timedelta
from pathlib import Path

import asyncpg
import uvloop

from cabinet.app import serve_web
from cabinet.settings import DEFAULT_LOGIN_FAILURES, WebSettings
from ingest.limits import FailureBudget
from ingest.logs import configure_logging
from ingest.settings import DEFAULT_DATA_DIR, LOG_LEVELS
from ledger import cabinet_users
from ledger.embedded_pg import start_embedded_postgres
from ledger.errors import RegistryError
from ledger.migrate import migrate
from ledger.receipt_check import DEFAULT_WEB_PORT

EXIT_FAILED = 1


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _settings(args: argparse.Namespace) -> WebSettings:
    return WebSettings(
        data_dir=Path(args.data_dir),
        database_url=args.database_url or None,
        host=args.web_host,
        port=args.web_port,
        clickhouse_url=args.clickhouse_url or None,
        qr_base_url=args.qr_base_url,
        secure_cookie=args.secure_cookie,
        login_failures=FailureBudget(args.login_failures, 60.0),
        check_pending=timedelta(minutes=args.check_pending_minutes),
    )


def _run_web(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    uvloop.run(serve_web(_settings(args)))
    return 0


async def _add_user(args: argparse.Namespace, password: str) -> cabinet_users.User:
    url = args.database_url or await asyncio.to_thread(
        start_embedded_postgres, Path(args.data_dir) / "pg"
    )
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        return await cabinet_users.add_user(
            conn,
            args.org,
            login=args.login,
            password=password,
            name=args.name,
            email=args.email,
            phone=args.phone,
            position=args.position,
            is_main=args.main,
        )
    finally:
        await conn.close()


def _run_add_user(args: argparse.Namespace) -> int:
    # From stdin (a pipe) or typed at a prompt: never a flag, which others see in /proc.
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    try:
        user = asyncio.run(_add_user(args, password))
    except RegistryError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    role = "main user" if user.is_main else "user"
    print(f"{role} {user.login} (id {user.id}) of organization {user.organization_id}")
    return 0


def _database(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=_env("OFD_DATA_DIR", str(DEFAULT_DATA_DIR)))
    p.add_argument(
        "--database-url",
        default=_env("OFD_DATABASE_URL", ""),
        help="PostgreSQL DSN; empty joins the embedded server in DATA_DIR/pg",
    )


def add_web_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    web = sub.add_parser("web", help="the cabinet and the public receipt check (HTTP)")
    _database(web)
    web.add_argument(
        "--web-host",
        default=_env("OFD_WEB_HOST", "127.0.0.1"),
        help="address to listen on (default loopback; put TLS in front of anything else)",
    )
    web.add_argument(
        "--web-port", type=int, default=int(_env("OFD_WEB_PORT", str(DEFAULT_WEB_PORT)))
    )
    web.add_argument(
        "--qr-base-url",
        default=_env("OFD_QR_BASE_URL", ""),
        help="public URL of the check page, as printed in QR codes (default: this server's)",
    )
    web.add_argument(
        "--clickhouse-url",
        default=_env("CLICKHOUSE_URL", ""),
        help="a ClickHouse server (default: the `ofd load` query service of DATA_DIR)",
    )
    web.add_argument(
        "--secure-cookie",
        action="store_true",
        default=_env("OFD_WEB_SECURE_COOKIE", "") == "1",
        help="mark the session cookie Secure (behind TLS)",
    )
    web.add_argument(
        "--login-failures",
        type=int,
        default=int(_env("OFD_WEB_LOGIN_FAILURES", str(DEFAULT_LOGIN_FAILURES.failures))),
        help="failed logins one address may have per minute (default %(default)s)",
    )
    web.add_argument(
        "--check-pending-minutes",
        type=float,
        default=float(_env("OFD_WEB_CHECK_PENDING_MINUTES", "15")),
        help="a receipt this recent and not yet in the warehouse is 'not yet received'",
    )
    web.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=_env("OFD_LOG_LEVEL", "info"),
        help="JSON logs on stderr",
    )
    web.set_defaults(run=_run_web)

    user = sub.add_parser("web-user", help="cabinet users").add_subparsers(
        dest="action", required=True
    )
    add = user.add_parser("add", help="add a cabinet user (password: one line on stdin)")
    _database(add)
    add.add_argument("--org", type=int, required=True, help="organization id")
    add.add_argument("--login", required=True)
    add.add_argument("--main", action="store_true", help="the organization's main user")
    add.add_argument("--name", default="")
    add.add_argument("--email", default="")
    add.add_argument("--phone", default="")
    add.add_argument("--position", default="")
    add.set_defaults(run=_run_add_user)
