"""The deadline runner: deadline rows -> handlers, fired in batches of transactions.

APScheduler only wakes the runner at the next due instant; the deadline rows are the truth. Its
job does nothing but set an event and return, so it can never be "skipped: maximum number of
running instances reached" while a pass runs (that lost a red flag's relance for hours): the pass
itself runs in run(), and every pass re-arms the next wake-up in a `finally`. A slow poll in that
loop is the last safety net.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.orm.exc import StaleDataError

from bot.dispatch import command_context
from bot.metrics import Metrics
from domain.clock import Clock
from rooms.services import Services
from storage.repositories import Store

log = logging.getLogger("cercle")

DEADLINE_POLL_S = 60.0  # the loop looks at the rows at least this often, whatever happens
DEADLINE_RETRY_S = 5.0  # a deadline whose handler failed is tried again after this
# Due deadlines fired per transaction: one commit (an fsync) per deadline made 2,000 overdue ones
# take ~20 s after a downtime. Bounded because SQLite holds its write lock for the whole batch
# (the sync and the inbox worker wait meanwhile, up to busy_timeout).
DEADLINE_BATCH = 200


class DeadlineRunner:
    def __init__(self, store: Store, clock: Clock, services: Services, handlers: dict,
                 after_pass: Callable[..., Awaitable[object]], batch_size: int = DEADLINE_BATCH,
                 metrics: Metrics | None = None):
        self.store = store
        self.metrics = metrics or Metrics()
        self.batch_size = max(1, batch_size)
        self.clock = clock
        self.services = services  # what each handler's context gets
        self.handlers = handlers  # deadline kind -> async handler(ctx, deadline) (bot/wiring.py)
        self._after_pass = after_pass  # sends what the handlers queued (the outbox flush)
        self._due = asyncio.Event()
        self._lock = asyncio.Lock()
        self._scheduler: AsyncIOScheduler | None = None

    def start(self) -> None:
        self._scheduler = AsyncIOScheduler(timezone="UTC")
        self._scheduler.start()

    def shutdown(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)

    async def schedule_wakeup(self, retry_in: float | None = None) -> None:
        if self._scheduler is None or not self._scheduler.running:
            return
        delays = [] if retry_in is None else [retry_in]
        nxt = await self.store.next_deadline()
        if nxt is not None:
            delay = self.clock.real_seconds_until(nxt)
            if delay != float("inf"):
                delays.append(delay)
        if not delays:
            return
        run_at = datetime.now(timezone.utc) + timedelta(seconds=min(delays))
        self._scheduler.add_job(self._scheduler_wake, "date", run_date=run_at, id="wake",
                                replace_existing=True, misfire_grace_time=None, coalesce=True,
                                max_instances=10)  # it only sets an event: overlapping runs are harmless

    async def _scheduler_wake(self) -> None:
        self._due.set()

    def wake(self) -> None:
        """Fire what is due now, in the runner's own loop (what the scheduler does)."""
        self._due.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            periodic = False
            try:
                await asyncio.wait_for(self._due.wait(), DEADLINE_POLL_S)
            except asyncio.TimeoutError:
                periodic = True
            self._due.clear()
            try:
                await self.fire_due()
                if periodic:  # the outbox read back once a minute, whatever the memory says
                    await self._after_pass(full=True)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("erreur du traitement des échéances")
                await asyncio.sleep(1)
                self._due.set()

    async def fire_due(self) -> int:
        """Fire every due deadline once: its state change and messages commit together.

        Single-flight: the worker loop, the deadline loop and Bot.run may ask at the same time;
        they take turns, and a pass loops until nothing is due, so whoever asked returns with
        everything due at its call fired.
        """
        fired = 0
        async with self._lock:
            retry_soon = False
            try:
                failures: dict[int, int] = {}
                while True:
                    due = [d for d in await self.store.due_deadlines(self.clock.now())
                           if failures.get(d.id, 0) < 3]
                    if not due:
                        break
                    for start in range(0, len(due), self.batch_size):
                        outcome = await self._fire_group(due[start:start + self.batch_size])
                        fired += outcome[0]
                        for deadline_id in outcome[1]:
                            failures[deadline_id] = failures.get(deadline_id, 0) + 1
                            retry_soon = True
            finally:
                await self.schedule_wakeup(retry_in=DEADLINE_RETRY_S if retry_soon else None)
        await self._after_pass()
        return fired

    async def _fire_group(self, batch: list) -> tuple[int, list[int]]:
        """Fire `batch`: how many fired, and the ids that failed (still pending, tried again later).

        One transaction for the whole batch; if one of them fails, the batch rolled back and its
        halves are tried the same way, down to the one that fails alone: a broken handler among
        200 costs about 2 x log2(200) = 16 transactions, not 200, and does not hold the others back.
        """
        if len(batch) == 1:
            outcome = await self._fire_one(batch[0])
            return (1 if outcome else 0), ([batch[0].id] if outcome is None else [])
        taken = await self._fire_batch(batch)
        if taken is not None:
            return taken, []
        middle = len(batch) // 2
        first, second = await self._fire_group(batch[:middle]), await self._fire_group(batch[middle:])
        return first[0] + second[0], first[1] + second[1]

    async def _fire_batch(self, batch: list) -> int | None:
        """Take and fire `batch` in one transaction: how many fired, or None if one of them failed
        (nothing of the batch is then written). Same guard as one by one: the `status = 'pending'`
        update (take_deadline) is in the transaction that fires, so a row fires once at most."""
        try:
            fired = []
            async with self.store.session.begin() as session:
                for deadline in batch:
                    # Taken one at a time, just before its handler: a handler may cancel a later
                    # deadline of the batch (e.g. a closed request's other timers), as one by one.
                    if await self._take_and_fire(session, deadline):
                        fired.append(deadline)
            self._count(fired)  # once committed: a batch rolled back and fired in halves counts once
            return len(fired)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # StaleDataError included: _fire_one logs and retries the culprit
            log.info("lot de %d échéances annulé (%s) : en deux moitiés", len(batch), type(e).__name__)
            return None

    async def _take_and_fire(self, session, deadline) -> bool:
        if not await self.store.take_deadline(session, deadline.id, self.clock.now()):
            return False
        handler = self.handlers.get(deadline.kind)
        if handler is None:
            log.error("échéance %s sans traitement (%s)", deadline.kind, deadline.ref)
            return False
        ctx = command_context(self.services, session, deadline.payload.get("room_id", ""), "timer",
                              self.services.bot_user_id, f"deadline:{deadline.id}")
        await handler(ctx, deadline)
        return True

    def _count(self, fired: list) -> None:
        now = self.clock.now()
        for deadline in fired:
            self.metrics.deadline_fired(deadline.due_at, now)

    async def _fire_one(self, deadline) -> bool | None:
        """True if fired here, False if someone else did (or no handler), None to try again."""
        try:
            async with self.store.session.begin() as session:
                fired = await self._take_and_fire(session, deadline)
            self._count([deadline] if fired else [])
            return fired
        except StaleDataError:  # an answer changed the request meanwhile: still pending, tried again
            log.info("échéance %s reportée (conflit d'écriture)", deadline.ref)
            return None
        except asyncio.CancelledError:
            raise
        except Exception:  # still pending: tried again shortly, the other deadlines go on
            log.exception("échéance %s (%s) en erreur", deadline.kind, deadline.ref)
            return None
