"""Repositories: the only place that reads and writes rows. Encryption at rest happens here."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, event, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from storage.crypto import FieldCipher
from storage.engine import latest_revision, make_engine, migrate, schema_revision, sessionmaker
from storage.models import BotState, Deadline, InboxEvent, OutboxItem, RoomRecord

# The statements of the command path, built once: SQLAlchemy memoizes a statement's cache key on
# the object, so a prepared one skips both the construction and the key (issue 11: a third of the
# bot's CPU per command was SQLAlchemy's, cache keys included). Values come as bound parameters.
# Those that run in a transaction of their own (record_sync, pending_events, outbox_done) use a
# Core connection rather than an ORM session: half the cost (0.7 ms instead of 1.2 for a sync's).
_NO_SYNC = {"synchronize_session": False}
SET_STATE = (update(BotState).where(BotState.key == bindparam("b_key")).values(value=bindparam("b_value"))
             .execution_options(**_NO_SYNC))
KNOWN_EVENTS = select(InboxEvent.event_id).where(InboxEvent.event_id.in_(bindparam("ids", expanding=True)))
PENDING_EVENTS = (select(InboxEvent.event_id, InboxEvent.room_id, InboxEvent.sender, InboxEvent.kind,
                         InboxEvent.origin_ts, InboxEvent.payload_enc).where(InboxEvent.status == "pending")
                  .order_by(InboxEvent.origin_ts, InboxEvent.received_at).limit(bindparam("limit")))
MARK_EVENT = (update(InboxEvent).where(InboxEvent.event_id == bindparam("b_event_id"))
              .values(status=bindparam("b_status"), handled_at=bindparam("b_handled_at"), error=bindparam("b_error"))
              .execution_options(**_NO_SYNC))
OUTBOX_DONE = (update(OutboxItem).where(OutboxItem.id == bindparam("b_id"))
               .values(status=bindparam("b_status"), sent_at=bindparam("b_sent_at"), event_id=bindparam("b_event_id"),
                       error=bindparam("b_error"))
               .execution_options(**_NO_SYNC))


async def mark_event(session: AsyncSession, event_id: str, status: str, now: datetime, error: str | None = None) -> None:
    """Inside the caller's transaction: the inbox event is handled (or failed)."""
    await session.execute(MARK_EVENT, {"b_event_id": event_id, "b_status": status, "b_handled_at": now, "b_error": error})


@dataclass
class IncomingEvent:
    event_id: str
    room_id: str
    sender: str
    kind: str
    origin_ts: int
    payload: dict
    # An undecryptable event is recorded as `waiting_key` with its megolm session and the wall time
    # the wait started; everything else as `pending`.
    status: str = "pending"
    session_id: str | None = None
    waiting_since_ms: int | None = None


class Store:
    def __init__(self, engine: AsyncEngine, cipher: FieldCipher):
        self.engine = engine
        self.cipher = cipher
        # What this process committed, kept in memory so that the bot does not read back what it
        # just wrote (issue 11): the outbox items to send, in commit order, and the earliest due
        # instant among the deadlines added or moved. A session class of this store's own, so
        # that two stores in one process (tests, benchmarks) never see each other's commits.
        self.committed_outbox: list[tuple[OutboxItem, dict]] = []
        self.touched_deadline: datetime | None = None
        self.inbox_changes = 0  # bumped after each commit that makes inbox events pending
        session_class = type("StoreSession", (Session,), {})
        event.listen(session_class, "before_flush", _note_deadline_changes)
        event.listen(session_class, "after_commit", self._after_commit)
        event.listen(session_class, "after_rollback", _forget_uncommitted)
        self.session = sessionmaker(engine, sync_session_class=session_class)

    def _after_commit(self, session: Session) -> None:
        self.committed_outbox.extend(session.info.pop(QUEUED_OUTBOX, ()))
        touched = session.info.pop(TOUCHED_DEADLINE, None)
        if touched is not None and (self.touched_deadline is None or touched < self.touched_deadline):
            self.touched_deadline = touched

    def take_committed_outbox(self) -> list[tuple[OutboxItem, dict]]:
        taken, self.committed_outbox = self.committed_outbox, []
        return taken

    def take_touched_deadline(self) -> datetime | None:
        """The earliest due instant among deadlines committed (added or moved) since the last call."""
        taken, self.touched_deadline = self.touched_deadline, None
        return taken

    async def migrate(self) -> None:
        await migrate(self.engine)

    async def close(self) -> None:
        await self.engine.dispose()

    # --- key/value state -------------------------------------------------------------
    async def get_state(self, key: str) -> str | None:
        async with self.session() as s:
            row = await s.get(BotState, key)
            return row.value if row else None

    async def set_state(self, key: str, value: str | None, session: AsyncSession | None = None) -> None:
        if session is None:
            async with self.session.begin() as s:
                return await self.set_state(key, value, session=s)
        # One UPDATE in the usual case (the sync token at every sync), an INSERT the first time.
        updated = await session.execute(SET_STATE, {"b_key": key, "b_value": value})
        if updated.rowcount == 0:
            session.add(BotState(key=key, value=value))

    async def delete_state(self, key: str, session: AsyncSession | None = None) -> None:
        if session is not None:
            row = await session.get(BotState, key)
            if row is not None:
                await session.delete(row)
            return
        async with self.session.begin() as s:
            await self.delete_state(key, session=s)

    async def get_secret(self, key: str):
        async with self.session() as s:
            row = await s.get(BotState, key)
            return self.cipher.decrypt_json(row.value_enc, f"state:{key}") if row and row.value_enc else None

    async def set_secret(self, key: str, value) -> None:
        async with self.session.begin() as s:
            await s.merge(BotState(key=key, value_enc=self.cipher.encrypt_json(value, f"state:{key}")))

    # --- inbox -------------------------------------------------------------------------
    async def record_sync(self, events: list[IncomingEvent], next_batch: str, now: datetime) -> int:
        """Record the events to handle and the new sync token in one transaction.

        Either both are stored or neither: a crash never skips an event nor records a token
        past an unrecorded one. Already known event ids are ignored. Returns how many are new.
        (SyncIntake may skip this for a sync with nothing to record: see SyncIntake._must_record.)
        """
        async with self.engine.begin() as conn:
            known = set()
            if events:
                ids = [e.event_id for e in events]
                known = set((await conn.execute(KNOWN_EVENTS, {"ids": ids})).scalars().all())
            rows = []
            for e in events:
                if e.event_id in known:
                    continue
                known.add(e.event_id)
                rows.append(self._inbox_values(e, now))
            if rows:
                await conn.execute(insert(InboxEvent), rows)
            new = len(rows)
            if (await conn.execute(SET_STATE, {"b_key": "sync_token", "b_value": next_batch})).rowcount == 0:
                await conn.execute(insert(BotState).values(key="sync_token", value=next_batch))
        if new:
            self.inbox_changes += 1
        return new

    async def record_event(self, event: IncomingEvent, now: datetime) -> bool:
        """Record one event outside a sync batch (e.g. recovered from a gap). False if already known."""
        try:
            async with self.session.begin() as s:
                s.add(self._inbox_row(event, now))
            self.inbox_changes += 1
            return True
        except IntegrityError:
            return False

    def _inbox_values(self, e: IncomingEvent, now: datetime) -> dict:
        return dict(
            event_id=e.event_id, room_id=e.room_id, sender=e.sender, kind=e.kind,
            origin_ts=e.origin_ts, received_at=now, status=e.status, session_id=e.session_id,
            waiting_since_ms=e.waiting_since_ms, handled_at=None, error=None,
            payload_enc=self.cipher.encrypt_json(e.payload, f"inbox:{e.event_id}"),
        )

    def _inbox_row(self, e: IncomingEvent, now: datetime) -> InboxEvent:
        return InboxEvent(**self._inbox_values(e, now))

    async def waiting_key_events(self, limit: int = 200) -> list[IncomingEvent]:
        """Events recorded before their room key arrived, oldest first."""
        async with self.session() as s:
            rows = (await s.scalars(
                select(InboxEvent).where(InboxEvent.status == "waiting_key")
                .order_by(InboxEvent.origin_ts, InboxEvent.received_at).limit(limit))).all()
            return [IncomingEvent(r.event_id, r.room_id, r.sender, r.kind, r.origin_ts,
                                  self.cipher.decrypt_json(r.payload_enc, f"inbox:{r.event_id}"),
                                  r.status, r.session_id, r.waiting_since_ms) for r in rows]

    async def key_arrived(self, event_id: str, kind: str, payload: dict) -> bool:
        """waiting_key -> pending, as the decrypted event; False if it was no longer waiting."""
        async with self.session.begin() as s:
            result = await s.execute(
                update(InboxEvent).where(InboxEvent.event_id == event_id, InboxEvent.status == "waiting_key")
                .values(kind=kind, status="pending",
                        payload_enc=self.cipher.encrypt_json(payload, f"inbox:{event_id}")))
        self.inbox_changes += 1
        return result.rowcount == 1

    @staticmethod
    async def give_up_waiting(session: AsyncSession, event_id: str, now: datetime, error: str) -> bool:
        """waiting_key -> failed inside the caller's transaction; False if it was no longer waiting."""
        result = await session.execute(
            update(InboxEvent).where(InboxEvent.event_id == event_id, InboxEvent.status == "waiting_key")
            .values(status="failed", handled_at=now, error=error))
        return result.rowcount == 1

    async def is_known_event(self, event_id: str) -> bool:
        async with self.session() as s:
            return await s.get(InboxEvent, event_id) is not None

    async def pending_events(self, limit: int = 200) -> list[IncomingEvent]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(PENDING_EVENTS, {"limit": limit})).all()
        return [IncomingEvent(r.event_id, r.room_id, r.sender, r.kind, r.origin_ts,
                              self.cipher.decrypt_json(r.payload_enc, f"inbox:{r.event_id}")) for r in rows]

    async def mark_event(self, event_id: str, status: str, now: datetime, error: str | None = None) -> None:
        async with self.session.begin() as s:
            await mark_event(s, event_id, status, now, error)

    async def get_room(self, room_id: str) -> RoomRecord | None:
        async with self.session() as s:
            return await s.get(RoomRecord, room_id)

    async def save_room(self, room_id: str, kind: str, joined_ts: int, direct_with: str | None = None,
                        created: bool = False, session: AsyncSession | None = None) -> RoomRecord:
        if session is None:
            async with self.session.begin() as s:
                return await self.save_room(room_id, kind, joined_ts, direct_with, created, session=s)
        row = await session.get(RoomRecord, room_id)
        if row is None:
            row = RoomRecord(room_id=room_id, kind=kind, joined_ts=joined_ts, direct_with=direct_with,
                             bot_is_creator=created)
            session.add(row)
        else:
            row.kind = kind
            row.direct_with = direct_with or row.direct_with
            row.bot_is_creator = row.bot_is_creator or created
        return row

    async def add_room_if_absent(self, room_id: str, kind: str, joined_ts: int) -> RoomRecord:
        """Record a room seen in a sync, never changing a record written meanwhile by someone who
        knows better (e.g. the bot's direct chat, recorded just after its creation)."""
        try:
            async with self.session.begin() as s:
                row = await s.get(RoomRecord, room_id)
                if row is None:
                    row = RoomRecord(room_id=room_id, kind=kind, joined_ts=joined_ts, bot_is_creator=False)
                    s.add(row)
                return row
        except IntegrityError:  # inserted concurrently: theirs stands
            return await self.get_room(room_id)

    async def bot_created(self, room_id: str) -> bool:
        row = await self.get_room(room_id)
        return bool(row and row.bot_is_creator)

    async def rooms_joined_ts(self) -> dict[str, int]:
        """Every room's join instant, in one query (the sync keeps them in memory)."""
        async with self.session() as s:
            return {room_id: ts for room_id, ts in (await s.execute(
                select(RoomRecord.room_id, RoomRecord.joined_ts))).all()}

    async def room_counts(self) -> dict[str, int]:
        """Rooms per kind, counted by the database."""
        async with self.session() as s:
            return {kind: n for kind, n in (await s.execute(
                select(RoomRecord.kind, func.count()).group_by(RoomRecord.kind))).all()}

    async def rooms(self) -> list[RoomRecord]:
        async with self.session() as s:
            return list((await s.scalars(select(RoomRecord))).all())

    # --- deadlines ---------------------------------------------------------------------
    async def add_deadline(self, kind: str, ref: str, due_at: datetime, now: datetime,
                           payload: dict | None = None, session: AsyncSession | None = None) -> None:
        row = Deadline(kind=kind, ref=ref, due_at=due_at, status="pending", payload=payload or {}, created_at=now)
        if session is not None:
            session.add(row)
            return
        async with self.session.begin() as s:
            s.add(row)

    async def bring_forward(self, session: AsyncSession, kind: str, ref: str, due_at: datetime, now: datetime,
                            payload: dict | None = None) -> None:
        """A planned step due earlier (e.g. the MT declined: the pool now). One row per (kind, ref):
        the pending row moves; a row that already fired or was cancelled stays as it is."""
        existing = await session.scalar(select(Deadline).where(Deadline.kind == kind, Deadline.ref == ref))
        if existing is None:
            session.add(Deadline(kind=kind, ref=ref, due_at=due_at, status="pending", payload=payload or {},
                                 created_at=now))
        elif existing.status == "pending" and existing.due_at > due_at:
            existing.due_at = due_at

    async def due_deadlines(self, now: datetime) -> list[Deadline]:
        async with self.session() as s:
            return list((await s.scalars(
                select(Deadline).where(Deadline.status == "pending", Deadline.due_at <= now)
                .order_by(Deadline.due_at, Deadline.id))).all())

    async def next_deadline(self) -> datetime | None:
        async with self.session() as s:
            return await s.scalar(select(Deadline.due_at).where(Deadline.status == "pending")
                                  .order_by(Deadline.due_at).limit(1))

    async def pending_deadlines(self) -> list[Deadline]:
        async with self.session() as s:
            return list((await s.scalars(select(Deadline).where(Deadline.status == "pending")
                                         .order_by(Deadline.due_at))).all())

    async def pending_deadline_summary(self, first: int = 20) -> tuple[int, list[Deadline]]:
        """How many deadlines are pending, and the `first` next ones (for `cercle status`)."""
        async with self.session() as s:
            count = await s.scalar(select(func.count()).select_from(Deadline).where(Deadline.status == "pending"))
            rows = (await s.scalars(select(Deadline).where(Deadline.status == "pending")
                                    .order_by(Deadline.due_at, Deadline.id).limit(first))).all()
            return count or 0, list(rows)

    async def pending_event_count(self) -> int:
        async with self.session() as s:
            return await s.scalar(select(func.count()).select_from(InboxEvent)
                                  .where(InboxEvent.status == "pending")) or 0

    @staticmethod
    async def take_deadline(session: AsyncSession, deadline_id: int, now: datetime) -> bool:
        """pending -> fired inside the caller's transaction; False if already fired or cancelled."""
        # No autoflush: what earlier handlers of a batch queued (outbox rows) is written at commit in
        # a few multi-row INSERTs, not flushed row by row before each take. Handlers change deadlines
        # only by statements (cancel_deadlines), which run at once, never by pending ORM changes.
        with session.no_autoflush:
            result = await session.execute(
                update(Deadline).where(Deadline.id == deadline_id, Deadline.status == "pending")
                .values(status="fired", fired_at=now).execution_options(synchronize_session=False))
        return result.rowcount == 1

    async def cancel_deadlines(self, ref: str, kinds: tuple[str, ...] | None = None,
                               session: AsyncSession | None = None) -> None:
        stmt = update(Deadline).where(Deadline.ref == ref, Deadline.status == "pending")
        if kinds:
            stmt = stmt.where(Deadline.kind.in_(kinds))
        stmt = stmt.values(status="cancelled")
        if session is not None:
            await session.execute(stmt)
            return
        async with self.session.begin() as s:
            await s.execute(stmt)


    # --- outbox ------------------------------------------------------------------------
    def queue(self, session: AsyncSession, action: str, room_id: str, content: dict, now: datetime,
              ref: str | None = None) -> str:
        """Add an outgoing action to the caller's transaction; returns its transaction id."""
        txn_id = uuid.uuid4().hex
        row = OutboxItem(txn_id=txn_id, action=action, room_id=room_id, status="pending", created_at=now,
                         ref=ref, content_enc=self.cipher.encrypt_json(content, f"outbox:{txn_id}"))
        session.add(row)
        session.info.setdefault(QUEUED_OUTBOX, []).append((row, content))
        return txn_id

    async def pending_outbox(self, limit: int = 100) -> list[tuple[OutboxItem, dict]]:
        async with self.session() as s:
            rows = (await s.scalars(select(OutboxItem).where(OutboxItem.status == "pending")
                                    .order_by(OutboxItem.id).limit(limit))).all()
            return [(r, self.cipher.decrypt_json(r.content_enc, f"outbox:{r.txn_id}")) for r in rows]

    async def outbox_done(self, item_id: int, now: datetime, event_id: str | None = None,
                          error: str | None = None) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(OUTBOX_DONE, {"b_id": item_id, "b_status": "failed" if error else "sent",
                                             "b_sent_at": now, "b_event_id": event_id, "b_error": error})

    async def created_room_id(self, placeholder: str) -> str | None:
        """The real room id behind a `pending:<creation key>` placeholder, once the room exists."""
        async with self.session() as s:
            return await s.scalar(select(OutboxItem.event_id).where(
                OutboxItem.action == "create_room", OutboxItem.room_id == placeholder,
                OutboxItem.status == "sent"))

    @staticmethod
    async def room_exists(session: AsyncSession, item_id: int, placeholder: str, room_id: str,
                          now: datetime) -> None:
        """Inside the caller's transaction: the create_room item is done (its `event_id` keeps the
        room id) and every item still queued against the placeholder now targets the real room."""
        await session.execute(update(OutboxItem).where(OutboxItem.id == item_id).values(
            status="sent", sent_at=now, event_id=room_id))
        await session.execute(update(OutboxItem).where(
            OutboxItem.room_id == placeholder, OutboxItem.status == "pending",
            OutboxItem.action != "create_room").values(room_id=room_id))

    @staticmethod
    async def creation_failed(session: AsyncSession, placeholder: str, now: datetime, error: str) -> None:
        """The room will not exist: its create_room item and everything queued against it fail."""
        await session.execute(update(OutboxItem).where(
            OutboxItem.room_id == placeholder, OutboxItem.status == "pending").values(
            status="failed", sent_at=now, error=error))

    async def outbox_retry(self, item_id: int, *, attempts: int, next_attempt_at: datetime,
                           first_try_at: datetime, last_error: str | None) -> None:
        """An attempt that did not deliver: when to try again, persisted across restarts."""
        async with self.session.begin() as s:
            await s.execute(update(OutboxItem).where(OutboxItem.id == item_id, OutboxItem.status == "pending")
                            .values(attempts=attempts, next_attempt_at=next_attempt_at,
                                    first_try_at=first_try_at, last_error=(last_error or "")[:200] or None)
                            .execution_options(synchronize_session=False))

    async def outbox_stuck_reported(self, item_id: int, at: datetime) -> None:
        async with self.session.begin() as s:
            await s.execute(update(OutboxItem).where(OutboxItem.id == item_id).values(stuck_reported_at=at))

    async def outbox_backlog(self) -> list[OutboxItem]:
        """Pending items without their content (for `cercle status`)."""
        async with self.session() as s:
            return list((await s.scalars(select(OutboxItem).where(OutboxItem.status == "pending")
                                         .order_by(OutboxItem.id))).all())

    async def outbox_backlog_summary(self, stuck_before: datetime, first: int = 20) -> tuple[int, int, list[OutboxItem]]:
        """Pending sends: how many, how many stuck (reported, or first tried before `stuck_before`),
        and the `first` stuck ones, without their content (for `cercle status`)."""
        stuck = (OutboxItem.stuck_reported_at.is_not(None)) | (OutboxItem.first_try_at <= stuck_before)
        async with self.session() as s:
            pending = await s.scalar(select(func.count()).select_from(OutboxItem)
                                     .where(OutboxItem.status == "pending"))
            n_stuck = await s.scalar(select(func.count()).select_from(OutboxItem)
                                     .where(OutboxItem.status == "pending", stuck))
            rows = (await s.scalars(select(OutboxItem).where(OutboxItem.status == "pending", stuck)
                                    .order_by(OutboxItem.id).limit(first))).all()
            return pending or 0, n_stuck or 0, list(rows)

    async def ref_of_sent_event(self, session: AsyncSession, event_id: str) -> str | None:
        """The `ref` of the outbox item the homeserver answered with `event_id`: what a vote or
        a reply answers."""
        return await session.scalar(select(OutboxItem.ref).where(OutboxItem.event_id == event_id).limit(1))

    async def outbox_event_ids(self, ref: str) -> list[str]:
        async with self.session() as s:
            return list((await s.scalars(select(OutboxItem.event_id).where(
                OutboxItem.ref == ref, OutboxItem.event_id.is_not(None)))).all())


QUEUED_OUTBOX = "cercle.queued_outbox"
TOUCHED_DEADLINE = "cercle.touched_deadline"


def _note_deadline_changes(session: Session, flush_context, instances) -> None:
    """A deadline added or moved by ORM (add_deadline, bring_forward): the runner must look at
    the rows again after the commit. Cancellations (statements) never make anything due sooner."""
    dues = [o.due_at for o in (*session.new, *session.dirty)
            if isinstance(o, Deadline) and o.status == "pending" and o.due_at is not None]
    if dues:
        earliest = min(dues)
        current = session.info.get(TOUCHED_DEADLINE)
        session.info[TOUCHED_DEADLINE] = earliest if current is None else min(current, earliest)


def _forget_uncommitted(session: Session) -> None:
    session.info.pop(QUEUED_OUTBOX, None)
    session.info.pop(TOUCHED_DEADLINE, None)


class SchemaBehind(Exception):
    """The database predates this version of the bot: the bot's next start migrates it."""


async def open_store(database_url: str, key_file, create_key: bool = True, migrate: bool = True) -> Store:
    """The bot's store, migrated to the latest schema; `migrate=False` (operator commands that only
    read) checks the schema is current instead of loading Alembic, and raises SchemaBehind."""
    store = Store(make_engine(database_url), FieldCipher.from_key_file(key_file, create=create_key))
    if migrate:
        await store.migrate()
    elif await schema_revision(store.engine) != latest_revision():
        await store.close()
        raise SchemaBehind()
    return store
