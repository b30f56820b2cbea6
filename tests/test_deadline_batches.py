"""Overdue deadlines fire in batches of one transaction each, and still exactly once: a batch that
fails falls back to one transaction per deadline, a crash between batches repeats nothing.

The real DeadlineRunner on a real store (both databases), with a no-op kind whose only effect is one
outbox row per firing: the rows committed are what fired.
"""
from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm.exc import StaleDataError

from bot.deadlines import DeadlineRunner
from domain.clock import FakeClock
from storage.models import Deadline, OutboxItem
from tests.usecase import UseCases

N = 1200


class Crash(BaseException):
    """The process dies here (kill -9): nothing catches it, the open transaction is lost."""


async def _nothing():
    return None


def _runner(uc: UseCases, handler, batch_size: int = 500) -> DeadlineRunner:
    return DeadlineRunner(uc.bot.store, uc.clock, uc.bot.services, {"noop": handler}, _nothing, batch_size=batch_size)


async def _noop(ctx, deadline) -> None:
    ctx.queue("message", "!r:cpts.test", {"body": "."}, ref=f"fired:{deadline.id}")


async def _overdue(uc: UseCases, n: int = N) -> list[int]:
    async with uc.bot.store.session.begin() as session:
        for i in range(n):
            await uc.bot.store.add_deadline("noop", f"ref:{i}", uc.now() - timedelta(hours=1), uc.now(), session=session)
    async with uc.bot.store.session() as session:
        return list((await session.scalars(select(Deadline.id).order_by(Deadline.due_at, Deadline.id))).all())


async def _fired(uc: UseCases) -> tuple[int, Counter]:
    """Deadlines marked fired, and how many outbox rows each one's firing committed."""
    async with uc.bot.store.session() as session:
        fired = await session.scalar(select(func.count()).select_from(Deadline).where(Deadline.status == "fired"))
        refs = (await session.scalars(select(OutboxItem.ref).where(OutboxItem.ref.startswith("fired:")))).all()
    return fired, Counter(refs)


def _count_commits(uc: UseCases) -> list:
    commits: list = []
    event.listen(uc.bot.store.engine.sync_engine, "commit", lambda conn: commits.append(1))
    return commits


async def test_overdue_deadlines_fire_once_each_across_a_crash_between_batches(tmp_path, database_url):
    uc = await UseCases.open(tmp_path / "bot", database_url, clock=FakeClock())
    ids = await _overdue(uc)
    crash_on = ids[600]  # in the second batch of 500

    async def crashing(ctx, deadline):
        if deadline.id == crash_on:
            raise Crash()
        await _noop(ctx, deadline)

    with pytest.raises(Crash):
        await _runner(uc, crashing).fire_due()
    fired, rows = await _fired(uc)
    # The first batch committed whole; the second died with its transaction: none of it happened.
    assert fired == 500 and len(rows) == 500 and set(rows.values()) == {1}
    await uc.close()

    uc = await UseCases.open(tmp_path / "bot", database_url, clock=FakeClock())  # the restart
    try:
        commits = _count_commits(uc)
        assert await _runner(uc, _noop).fire_due() == N - 500
        fired, rows = await _fired(uc)
        assert fired == N and len(rows) == N and set(rows.values()) == {1}
        assert rows.keys() == {f"fired:{i}" for i in ids}
        assert len(commits) <= 4, "the 700 remaining deadlines fire in 2 transactions, not one each"
        assert await _runner(uc, _noop).fire_due() == 0
    finally:
        await uc.close()


async def test_a_failing_deadline_in_a_batch_neither_loses_nor_doubles_the_others(tmp_path, database_url):
    uc = await UseCases.open(tmp_path / "bot", database_url, clock=FakeClock())
    try:
        n = 600
        ids = await _overdue(uc, n)
        broken, conflicted = ids[10], ids[450]  # in the first and the third batch of 200
        calls: Counter = Counter()
        state = {"repaired": False}

        async def flaky(ctx, deadline):
            calls[deadline.id] += 1
            if deadline.id == broken and not state["repaired"]:
                raise ValueError("handler bug")
            if deadline.id == conflicted and calls[deadline.id] == 1:
                raise StaleDataError("an answer changed the request meanwhile")
            await _noop(ctx, deadline)

        runner = _runner(uc, flaky, batch_size=200)
        assert await runner.fire_due() == n - 1
        fired, rows = await _fired(uc)
        assert fired == n - 1 and len(rows) == n - 1 and set(rows.values()) == {1}
        assert f"fired:{broken}" not in rows and f"fired:{conflicted}" in rows
        async with uc.bot.store.session() as session:
            assert (await session.get(Deadline, broken)).status == "pending"  # tried again later

        state["repaired"] = True
        assert await runner.fire_due() == 1
        fired, rows = await _fired(uc)
        assert fired == n and len(rows) == n and set(rows.values()) == {1}
    finally:
        await uc.close()


async def test_status_summaries_count_in_the_database(tmp_path, database_url):
    uc = await UseCases.open(tmp_path / "bot", database_url, clock=FakeClock())
    try:
        store = uc.bot.store
        await _overdue(uc, 30)
        async with store.session.begin() as session:
            await store.add_deadline("noop", "later", uc.now() + timedelta(days=1), uc.now(), session=session)
        await _runner(uc, _noop, batch_size=7).fire_due()
        async with store.session.begin() as session:
            await store.add_deadline("noop", "soon", uc.now() + timedelta(hours=1), uc.now(), session=session)
            await store.add_deadline("noop", "gone", uc.now() + timedelta(hours=2), uc.now(), session=session)
        await store.cancel_deadlines("gone")
        count, first = await store.pending_deadline_summary(first=1)
        assert count == 2 and [d.ref for d in first] == ["soon"]
        assert (await store.room_counts())["coordination"] == 1
        pending, stuck, rows = await store.outbox_backlog_summary(uc.now() - timedelta(minutes=10))
        assert (pending, stuck, rows) == (30, 0, [])
    finally:
        await uc.close()


async def test_a_deadline_cancelled_by_an_earlier_one_of_its_batch_does_not_fire(tmp_path, database_url):
    """E.g. a request closed by its first timer: its other timers, due in the same batch, stay silent."""
    uc = await UseCases.open(tmp_path / "bot", database_url, clock=FakeClock())
    try:
        store = uc.bot.store

        async def closing(ctx, deadline):
            await _noop(ctx, deadline)
            await store.cancel_deadlines(deadline.ref, session=ctx.session)

        async with store.session.begin() as session:
            await store.add_deadline("closing", "demande:1", uc.now() - timedelta(hours=2), uc.now(), session=session)
            await store.add_deadline("noop", "demande:1", uc.now() - timedelta(hours=1), uc.now(), session=session)
            await store.add_deadline("noop", "demande:2", uc.now() - timedelta(hours=1), uc.now(), session=session)
        runner = DeadlineRunner(store, uc.clock, uc.bot.services, {"noop": _noop, "closing": closing}, _nothing)
        assert await runner.fire_due() == 2
        async with store.session() as session:
            rows = (await session.execute(select(Deadline.kind, Deadline.ref, Deadline.status))).all()
        assert sorted(rows) == [("closing", "demande:1", "fired"), ("noop", "demande:1", "cancelled"),
                                ("noop", "demande:2", "fired")]
    finally:
        await uc.close()
