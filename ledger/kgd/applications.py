"""The application worker: sends filed applications to the KGD and carries out its decisions.

Durable in PostgreSQL (kgd_applications, ledger/kgd/filing.py). Each round claims the due
applications by pushing their next attempt a lease ahead (`FOR UPDATE SKIP LOCKED`), so workers
in several processes never work one application at once, and one that dies mid-call leaves its
claims to expire and be retried. For each:

- pending: submit it (the KGD deduplicates on application_id, so a resend after a lost answer
  is harmless); then it is `sent`, or, on failure, retried after a capped, jittered backoff
  with the attempt and the error recorded;
- sent: ask the KGD for its decision every `poll_interval` (the KGD takes 15 minutes to 3 days);
- decided: in one transaction, the application's status and reason, the device's move and an
  audit entry by actor "kgd". Accepted: registration and re-registration ACTIVATE the device,
  deregistration DEREGISTERs it. Refused: a (re-)registration leaves the device awaiting
  registration, a deregistration moves it back to registered (CANCEL_DEREGISTRATION); the
  reason stays on the application (`kkm show`, the audit log) and is noticed to the
  organization in the cabinet (ledger/notices.py).

An operator's direct move (`ofd kkm activate`, `deregister`, ...) closes the open application
as overridden (ledger/registry.py), and its answer is then no longer acted on.
"""

import asyncio
from dataclasses import dataclass, field

import asyncpg
import structlog

from ledger import notices, registry
from ledger.errors import PreconditionFailed
from ledger.kgd import (
    Application,
    ApplicationKind,
    ApplicationStatus,
    Decision,
    Kgd,
    KgdError,
)
from ledger.kgd.filing import COLUMNS, OPEN_STATUSES, ApplicationRow, row_of
from ledger.kgd.retry import Backoff
from ledger.lifecycle import Action
from ledger.state_store import DATABASE_ERRORS, Conn

log = structlog.get_logger(__name__)

ACTOR = "kgd"  # the audit log's actor for what the KGD's decisions do
MAX_ERROR = 500  # characters of an error kept on the application

ON_ACCEPT = {
    ApplicationKind.REGISTRATION: Action.ACTIVATE,
    ApplicationKind.REREGISTRATION: Action.ACTIVATE,
    ApplicationKind.DEREGISTRATION: Action.DEREGISTER,
}
ON_REFUSE = {ApplicationKind.DEREGISTRATION: Action.CANCEL_DEREGISTRATION}


@dataclass(frozen=True, slots=True)
class ApplicationSettings:
    poll_interval: float = 30.0  # seconds between asking the KGD about a sent application
    idle_interval: float = 1.0  # seconds between looks for due applications
    lease: float = 60.0  # seconds a claimed application is left to this worker
    batch: int = 50  # applications claimed per round
    backoff: Backoff = field(default_factory=lambda: Backoff(base=1.0, cap=300.0))

    def __post_init__(self) -> None:
        if not (self.poll_interval > 0 and self.idle_interval > 0 and self.lease > 0):
            raise ValueError("application intervals must be positive")
        if not 0 < self.batch <= 1000:
            raise ValueError("application batch must be 1..1000")


@dataclass(slots=True)
class WorkerStats:
    submitted: int = 0
    accepted: int = 0
    refused: int = 0
    failures: int = 0
    last_error: str = ""


class ApplicationWorker:
    def __init__(self, pool: asyncpg.Pool, kgd: Kgd, settings: ApplicationSettings) -> None:
        self._pool = pool
        self._kgd = kgd
        self._settings = settings
        self.stats = WorkerStats()

    async def claim(self) -> list[ApplicationRow]:
        """The due open applications, each now leased to this worker."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "UPDATE kgd_applications SET next_attempt_at = now() + make_interval(secs => $1)"
                " WHERE id IN (SELECT id FROM kgd_applications"
                "  WHERE status = ANY($2::text[]) AND next_attempt_at <= now()"
                "  ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED)"
                f" RETURNING {COLUMNS}",
                self._settings.lease,
                list(OPEN_STATUSES),
                self._settings.batch,
            )
        return sorted((row_of(r) for r in rows), key=lambda a: a.id)

    async def step(self) -> int:
        """One round: every due application submitted or asked about; returns how many."""
        claimed = await self.claim()
        for application in claimed:
            await self._work(application)
        return len(claimed)

    async def run(self) -> None:
        """Rounds until cancelled; a database hiccup is logged and the round tried again."""
        while True:
            try:
                busy = await self.step()
            except DATABASE_ERRORS as err:
                log.warning("kgd_applications_database", error=repr(err))
                busy = 0
            if not busy:
                await asyncio.sleep(self._settings.idle_interval)

    async def _work(self, application: ApplicationRow) -> None:
        try:
            if application.status == "pending":
                status = await self._kgd.submit_application(
                    Application(
                        application.application_id,
                        application.kind,
                        application.system_id,
                        application.payload,
                    )
                )
                self.stats.submitted += 1
            else:
                status = await self._kgd.application_status(application.application_id)
        except KgdError as err:
            await self._failed(application, err)
            return
        if status.decision is Decision.PENDING:
            await self._sent(application)
        else:
            await self.decide(application, status)

    async def _sent(self, application: ApplicationRow) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(
                "UPDATE kgd_applications SET status = 'sent', attempts = 0, last_error = '',"
                " sent_at = coalesce(sent_at, now()),"
                " next_attempt_at = now() + make_interval(secs => $2)"
                " WHERE id = $1 AND status = ANY($3::text[])",
                application.id,
                self._settings.poll_interval,
                list(OPEN_STATUSES),
            )

    async def _failed(self, application: ApplicationRow, err: KgdError) -> None:
        attempts = application.attempts + 1
        delay = self._settings.backoff.delay(attempts)
        self.stats.failures += 1
        self.stats.last_error = str(err)
        log.warning(
            "kgd_application_failed",
            application_id=application.application_id,
            system_id=application.system_id,
            attempts=attempts,
            retriable=err.retriable,
            retry_in=round(delay, 2),
            error=str(err),
        )
        async with self._pool.acquire() as conn:
            await conn.execute(
                "UPDATE kgd_applications SET attempts = $2, last_error = $3,"
                " next_attempt_at = now() + make_interval(secs => $4)"
                " WHERE id = $1 AND status = ANY($5::text[])",
                application.id,
                attempts,
                str(err)[:MAX_ERROR],
                delay,
                list(OPEN_STATUSES),
            )

    async def decide(self, application: ApplicationRow, status: ApplicationStatus) -> None:
        """Records the KGD's decision and moves the device, in one transaction."""
        accepted = status.decision is Decision.ACCEPTED
        action = (ON_ACCEPT if accepted else ON_REFUSE).get(application.kind)
        async with self._pool.acquire() as conn, conn.transaction():
            current = await conn.fetchval(
                "SELECT status FROM kgd_applications WHERE id = $1 FOR UPDATE", application.id
            )
            if current not in OPEN_STATUSES:
                return  # overridden by an operator meanwhile: the decision is not acted on
            await conn.execute(
                "UPDATE kgd_applications SET status = $2, reason = $3, decided_at = now(),"
                " last_error = '' WHERE id = $1",
                application.id,
                status.decision.value,
                status.reason,
            )
            moved = await _move(conn, application.system_id, action)
            await registry.audit(
                conn,
                ACTOR,
                "KgdApplicationAccepted" if accepted else "KgdApplicationRefused",
                application.system_id,
                application_id=application.application_id,
                kind=application.kind.value,
                reason=status.reason,
                moved=moved,
            )
            if not accepted:  # the taxpayer learns it in the cabinet
                await notices.post(
                    conn, notices.Kind.KGD_REFUSED, [(application.system_id, status.reason, None)]
                )
        if accepted:
            self.stats.accepted += 1
        else:
            self.stats.refused += 1
        log.info(
            "kgd_application_decided",
            application_id=application.application_id,
            system_id=application.system_id,
            kind=application.kind.value,
            decision=status.decision.value,
            reason=status.reason,
            moved=moved,
        )


async def _move(conn: Conn, system_id: int, action: Action | None) -> str:
    """Carries out the decision's action; what happened, for the audit log."""
    if action is None:
        return "stays"
    try:
        device = await registry.transition(conn, system_id, action)
    except PreconditionFailed as err:
        # The device moved on meanwhile (its status is not the action's start): leave it.
        return f"not moved: {err}"
    return device.status.value
