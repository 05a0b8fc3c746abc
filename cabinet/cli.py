"""`ofd web` (the cabinet and the public receipt check) and `ofd web-user add` (an
organization's main user, made by the operator).

ofd web [--web-host H] [--web-port P] [--qr-base-url URL] [--database-url DSN] [--data-dir D]
        [--trusted-proxy ADDRESSES]
ofd web-user add --org ID --login L [--main] [--name ...] < password   (one line on stdin)
"""

import argparse
import getpass
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import uvloop

from cabinet.app import serve_web
from cabinet.cli_database import add_database_options, run_with_database
from cabinet.client_address import trusted_networks
from cabinet.settings import DEFAULT_LOGIN_FAILURES, DEFAULT_SIGNUP_STARTS, WebSettings
from ingest.cli_options import add_log_level, option
from ingest.limits import FailureBudget
from ingest.process import start_process
from ledger import cabinet_users
from ledger.receipt_check import DEFAULT_WEB_PORT


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
        trusted_proxies=args.trusted_proxy,
        mqtt_url=args.mqtt_url or None,
        signup_starts=FailureBudget(args.signup_starts, 3600.0),
    )


def _run_web(args: argparse.Namespace) -> int:
    start_process("cabinet", args.log_level)
    uvloop.run(serve_web(_settings(args)))
    return 0


def _run_add_user(args: argparse.Namespace) -> int:
    # From stdin (a pipe) or typed at a prompt: never a flag, which others see in /proc.
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
    else:
        password = sys.stdin.readline().rstrip("\n")

    async def act(conn: asyncpg.Connection) -> str:
        user = await cabinet_users.add_user(
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
        role = "main user" if user.is_main else "user"
        return f"{role} {user.login} (id {user.id}) of organization {user.organization_id}"

    return run_with_database(args, act)


def add_web_commands(sub: "argparse._SubParsersAction[Any]") -> None:
    web = sub.add_parser("web", help="the cabinet and the public receipt check (HTTP)")
    add_database_options(web)
    option(
        web,
        "--web-host",
        env="OFD_WEB_HOST",
        default="127.0.0.1",
        help="address to listen on (put TLS in front of anything but loopback)",
    )
    option(
        web,
        "--web-port",
        type=int,
        env="OFD_WEB_PORT",
        default=DEFAULT_WEB_PORT,
        help="port to listen on",
    )
    option(
        web,
        "--qr-base-url",
        env="OFD_QR_BASE_URL",
        default="",
        help="public URL of the check page, as printed in QR codes (empty: this server's)",
    )
    option(
        web,
        "--mqtt-url",
        env="OFD_MQTT_URL",
        default="",
        help="send one-time codes (sign-up) to this broker, mqtt://host:1883, for the SMS/e-mail"
        " gateway to deliver (empty: none, and sign-up is closed)",
    )
    option(
        web,
        "--signup-starts",
        env="OFD_SIGNUP_STARTS",
        type=int,
        default=DEFAULT_SIGNUP_STARTS.failures,
        help="sign-ups one address may start per hour",
    )
    option(
        web,
        "--clickhouse-url",
        env="CLICKHOUSE_URL",
        default="",
        help="a ClickHouse server (empty: the `ofd load` query service of DATA_DIR)",
    )
    option(
        web,
        "--secure-cookie",
        action="store_true",
        env="OFD_WEB_SECURE_COOKIE",
        help="mark the session cookie Secure (behind TLS)",
    )
    option(
        web,
        "--login-failures",
        type=int,
        env="OFD_WEB_LOGIN_FAILURES",
        default=DEFAULT_LOGIN_FAILURES.failures,
        help="failed logins one address may have per minute",
    )
    option(
        web,
        "--trusted-proxy",
        type=trusted_networks,
        env="OFD_WEB_TRUSTED_PROXY",
        default=(),
        metavar="ADDRESSES",
        help="proxies (addresses or CIDRs, comma-separated) whose X-Forwarded-For names the"
        " client the login and check limits count; others' header is ignored",
    )
    option(
        web,
        "--check-pending-minutes",
        type=float,
        env="OFD_WEB_CHECK_PENDING_MINUTES",
        default=15.0,
        help="a receipt this recent and not yet in the warehouse is 'not yet received'",
    )
    add_log_level(web)
    web.set_defaults(run=_run_web)

    user = sub.add_parser("web-user", help="cabinet users").add_subparsers(
        dest="action", required=True
    )
    add = user.add_parser("add", help="add a cabinet user (password: one line on stdin)")
    add_database_options(add)
    option(add, "--org", type=int, required=True, help="organization id")
    option(add, "--login", required=True, help="the login: 3 to 64 of A-Z a-z 0-9 . _ @ -")
    option(add, "--main", action="store_true", help="the organization's main user")
    option(add, "--name", default="", help="the user's name")
    option(add, "--email", default="", help="the user's e-mail")
    option(add, "--phone", default="", help="the user's phone")
    option(add, "--position", default="", help="the user's position")
    add.set_defaults(run=_run_add_user)
