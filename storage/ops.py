"""What the operator's endpoints read (bot/health.py, bot/metrics.py): counts and ages, never content."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import func, select

from storage.models import Deadline, InboxEvent, OutboxItem, RoomRecord


@dataclass(frozen=True)
class Counts:
    outbox_pending: int
    outbox_oldest: datetime | None  # created_at of the oldest pending send (UTC)
    deadlines_pending: int
    inbox_pending: int
    rooms: dict[str, int]  # kind -> rooms ("left" included)


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:  # SQLite's MIN() gives the raw, naive value back
        return value.replace(tzinfo=timezone.utc)
    return value


async def oldest_pending_send(store) -> datetime | None:
    async with store.session() as s:
        return _utc(await s.scalar(select(func.min(OutboxItem.created_at)).where(OutboxItem.status == "pending")))


async def counts(store) -> Counts:
    async with store.session() as s:
        pending, oldest = (await s.execute(
            select(func.count(), func.min(OutboxItem.created_at)).where(OutboxItem.status == "pending"))).one()
        deadlines = await s.scalar(select(func.count()).select_from(Deadline).where(Deadline.status == "pending"))
        inbox = await s.scalar(select(func.count()).select_from(InboxEvent).where(InboxEvent.status == "pending"))
        rooms = dict((await s.execute(select(RoomRecord.kind, func.count()).group_by(RoomRecord.kind))).all())
    return Counts(pending or 0, _utc(oldest), deadlines or 0, inbox or 0, rooms)
