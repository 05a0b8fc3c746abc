"""Assembles `ofd web`: the database pool (migrated), the warehouse reader, the aiohttp
application with its routes and middlewares, and the listening site."""

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import structlog
from aiohttp import web

from cabinet import (
    check,
    pages_analytics,
    pages_applications,
    pages_centres,
    pages_documents,
    pages_language,
    pages_notices,
    pages_registry,
    pages_signup,
    pages_subscriptions,
    pages_users,
    security,
)
from cabinet.check_facts import CheckFacts
from cabinet.check_lookups import CheckLookups
from cabinet.codes import MqttCodes
from cabinet.i18n import LANGUAGES
from cabinet.settings import WEB_ID, WebSettings
from cabinet.warehouse import Documents, WarehouseUnavailable, reader_for
from cabinet.web import (
    CABINET,
    Cabinet,
    ServerBusy,
    error_page,
    error_status,
    make_templates,
)
from ingest.limits import FailureLimiter
from ingest.notifications import Notifier
from ledger.embedded_pg import database_url
from ledger.errors import NotFound, PermissionDenied, RegistryError
from ledger.migrate import migrate
from ledger.receipt_check import CHECK_PATH
from ledger.warehouse.backends import Reader

log = structlog.get_logger(__name__)

POOL_SIZE = 8
STATIC = __file__.rsplit("/", 1)[0] + "/static"
ID = r"{id:\d{1,10}}"  # ids are digits only: anything else is no page (404) before any handler
SIGN = r"{sign:\d{1,20}}"  # a fiscal sign, digits only as ID


@dataclass(frozen=True, slots=True)
class RunningCabinet:
    url: str  # http://host:port
    port: int
    cabinet: Cabinet


@web.middleware
async def errors_middleware(request: web.Request, handler: security.Handler) -> web.StreamResponse:
    """The domain's refusals as pages: 404 and 403 say nothing of what they refused."""
    try:
        return await handler(request)
    except NotFound:
        return error_page(request, 404, "Не найдено.")
    except PermissionDenied:
        return error_page(request, 403, "Этот раздел вам не доступен.")
    except RegistryError as err:
        return error_page(request, error_status(err), str(err))
    except WarehouseUnavailable as err:
        log.warning("cabinet_warehouse_unavailable", error=str(err))
        return error_page(request, 503, "Хранилище документов сейчас недоступно.")
    except ServerBusy:
        log.warning("cabinet_kdf_queue_full", path=request.path)
        return error_page(request, 503, "Сервер занят. Попробуйте через минуту.")


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def build_app(context: Cabinet) -> web.Application:
    app = web.Application(
        middlewares=[
            security.headers_middleware,
            errors_middleware,
            security.session_middleware,
            pages_notices.unread_middleware,
        ],
        client_max_size=context.settings.max_body,
    )
    app[CABINET] = context
    r = pages_registry
    app.router.add_get("/", r.home)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/login", security.show_login)
    app.router.add_post("/login", security.login)
    app.router.add_post("/logout", security.logout)
    app.router.add_get("/lang/{language:[a-z]{2}}", pages_language.choose)
    app.router.add_get("/signup", pages_signup.show_signup)
    app.router.add_post("/signup", pages_signup.start_signup)
    app.router.add_post("/signup/confirm", pages_signup.confirm_signup)
    app.router.add_get(CHECK_PATH, check.check)
    app.router.add_get("/organization", r.show_organization)
    app.router.add_post("/organization", r.update_organization)
    app.router.add_get("/points", r.show_points)
    app.router.add_post("/points", r.add_point)
    app.router.add_get(f"/points/{ID}", r.show_point)
    app.router.add_post(f"/points/{ID}", r.update_point)
    app.router.add_post(f"/points/{ID}/delete", r.delete_point)
    app.router.add_get("/kkm", r.show_devices)
    app.router.add_post("/kkm", r.register_device)
    app.router.add_post("/kkm/confirm", pages_applications.confirm_registration)
    app.router.add_get(f"/kkm/{ID}", r.show_device)
    app.router.add_post(f"/kkm/{ID}/lifecycle", r.move_device)
    app.router.add_post(f"/kkm/{ID}/token", r.get_token)
    app.router.add_post(f"/kkm/{ID}/token/new", r.issue_token)
    app.router.add_get(f"/kkm/{ID}/receipts", pages_documents.receipts)
    app.router.add_get(f"/kkm/{ID}/receipts/{SIGN}", pages_documents.one_receipt)
    app.router.add_get(f"/kkm/{ID}/receipts/{SIGN}.zip", pages_documents.receipt_zip)
    app.router.add_get(f"/kkm/{ID}/receipts.csv", pages_documents.receipts_csv)
    app.router.add_get(f"/kkm/{ID}/receipts.zip", pages_documents.receipts_zip)
    app.router.add_get(f"/kkm/{ID}/reports", pages_documents.reports)
    app.router.add_get(f"/kkm/{ID}/reports.csv", pages_documents.reports_csv)
    app.router.add_get(f"/kkm/{ID}/reports.zip", pages_documents.reports_zip)
    app.router.add_get("/analytics", pages_analytics.analytics)
    app.router.add_get("/users", pages_users.show_users)
    app.router.add_post("/users", pages_users.add_user)
    app.router.add_post(f"/users/{ID}", pages_users.change_user)
    app.router.add_post("/groups", pages_users.add_group)
    app.router.add_post(f"/groups/{ID}/delete", pages_users.delete_group)
    app.router.add_get("/centres", pages_centres.show_centres)
    app.router.add_post("/centres", pages_centres.grant_centre)
    app.router.add_post(f"/centres/{ID}", pages_centres.change_grant)
    app.router.add_post(f"/centres/{ID}/stop", pages_centres.stop_grant)
    app.router.add_get("/clients", pages_centres.show_clients)
    app.router.add_routes(
        [
            web.get("/notifications", pages_notices.show_notices),
            web.post("/notifications/read", pages_notices.mark_all_read),
            web.post(f"/notifications/{ID}/read", pages_notices.mark_read),
            web.get("/subscriptions", pages_subscriptions.show_subscriptions),
            web.post(f"/subscriptions/{ID}", pages_subscriptions.set_auto_renew),
        ]
    )
    app.router.add_static("/static/", STATIC, append_version=False)
    return app


@contextlib.asynccontextmanager
async def running_cabinet(
    settings: WebSettings, *, reader: Reader | None = None
) -> AsyncIterator[RunningCabinet]:
    """Serves the cabinet until the block ends; `reader` replaces the configured warehouse
    (tests hand it an in-process one)."""
    mqtt = settings.mqtt()
    notifier = None if mqtt is None else Notifier(mqtt)
    dsn = await database_url(settings.data_dir, settings.database_url)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=POOL_SIZE)
    assert pool is not None
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        documents = Documents(
            reader or reader_for(settings.data_dir, settings.clickhouse_url),
            settings.warehouse_concurrency,
        )
        context = Cabinet(
            settings=settings,
            pool=pool,
            documents=documents,
            templates={language: make_templates(language) for language in LANGUAGES},
            login_failures=FailureLimiter(settings.login_failures),
            check_misses=FailureLimiter(settings.check_misses),
            check_facts=CheckFacts(pool),
            check_lookups=CheckLookups(documents),
            kdf=asyncio.Semaphore(settings.kdf_concurrency),
            check_url="",
            codes=None if notifier is None else MqttCodes(notifier, WEB_ID),
            signup_starts=FailureLimiter(settings.signup_starts),
        )
        runner = web.AppRunner(build_app(context), access_log=None)
        await runner.setup()
        sending = None if notifier is None else asyncio.create_task(notifier.run())
        checking = asyncio.create_task(context.check_lookups.run(), name="check-lookups")
        try:
            site = web.TCPSite(runner, settings.host, settings.port)
            await site.start()
            port = int(runner.addresses[0][1])  # the one the kernel chose for port 0
            context.check_url = settings.check_url(port)
            host = f"[{settings.host}]" if ":" in settings.host else settings.host
            yield RunningCabinet(f"http://{host}:{port}", port, context)
        finally:
            await runner.cleanup()
            for task in (checking, sending):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
    finally:
        await pool.close()


async def serve_web(settings: WebSettings) -> None:
    """`ofd web`: serves until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with running_cabinet(settings) as running:
        log.info("cabinet_ready", url=running.url, check=running.cabinet.check_url)
        print(f"ofd cabinet ready {running.url} check={running.cabinet.check_url}", flush=True)
        await stop.wait()
