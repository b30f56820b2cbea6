"""The middle test tier: the bot's real handlers on a real store, with a FakeClock and no homeserver.

Commands go through the real dispatch (parse, access checks, handler, one transaction); what the
bot would send is read back from the outbox, which is the recorder: every effect on the homeserver
is an outbox row. Timers are the real deadline rows, fired with `fire_due()`.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from bot.app import Bot
from bot.config import Config, CptsConfig, MatrixConfig, StorageConfig
from bot.dispatch import dispatch
from bot.wiring import compose
from domain.clock import FakeClock
from rooms.directory import upsert_professional
from rooms.patients import Identity, encrypt_identity
from storage.models import CercleMember, Deadline, Inclusion, OutboxItem, Patient
from storage.repositories import IncomingEvent, open_store

BOT = "@cercle:cpts.test"
COORDINATION_ROOM = "!coordination:cpts.test"


class NoHomeserver:
    """The use-case tier's stand-in for the Matrix client: sends are outbox rows (read them with
    `sent()`); reads of the server's state answer « unknown », as when the homeserver is away."""

    rooms: dict = {}

    async def joined_members(self, room_id: str):
        return None


@dataclass
class Sent:
    action: str
    room_id: str
    content: dict
    ref: str | None

    @property
    def body(self) -> str:
        inner = self.content.get("content", self.content)  # "direct" items wrap the message
        return inner.get("body", "")

    @property
    def recipient(self) -> str | None:
        return self.content.get("user_id")


class UseCases:
    def __init__(self, bot: Bot, clock: FakeClock):
        self.bot = bot
        self.clock = clock
        self._ids = itertools.count(1)
        self._seen_outbox = 0

    @classmethod
    async def open(cls, data_dir: Path, database_url: str | None = None, clock: FakeClock | None = None) -> "UseCases":
        clock = clock or FakeClock()
        config = Config(matrix=MatrixConfig(homeserver="http://127.0.0.1:9", user_id=BOT, password="unused"),
                        storage=StorageConfig(data_dir=data_dir, database_url=database_url),
                        cpts=CptsConfig(name="CPTS de test", coordinator_room=COORDINATION_ROOM))
        data_dir.mkdir(parents=True, exist_ok=True)
        store = await open_store(config.storage.url(), config.storage.key_path())
        bot = Bot(config, store, clock, NoHomeserver(), "unused", compose(config, store, clock))
        bot.services.coordinator_room = COORDINATION_ROOM
        await store.save_room(COORDINATION_ROOM, "coordination", 0)
        return cls(bot, clock)

    async def close(self) -> None:
        await self.bot.store.close()

    # --- the world ---------------------------------------------------------------------------------
    async def enrol(self, user_id: str, profession: str = "medecin_generaliste", *, name: str | None = None,
                    roles: list[str] | None = None, communes: list[str] | None = None) -> str:
        now = self.clock.now()
        async with self.bot.store.session.begin() as session:
            await upsert_professional(session, user_id=user_id, display_name=name or user_id[1:].split(":")[0],
                                      profession=profession, roles=roles or [], now=now,
                                      communes=communes if communes is not None else ["Brétigny-sur-Orge"],
                                      cotisation_until=now + timedelta(days=365))
        await self.bot.store.save_room(self.direct_room(user_id), "direct", 0, direct_with=user_id)
        return user_id

    @staticmethod
    def direct_room(user_id: str) -> str:
        return f"!direct-{user_id[1:].split(':')[0]}:cpts.test"

    async def patient(self, code: str, members: list[str], *, mt: str | None = None,
                      commune: str = "Brétigny-sur-Orge") -> str:
        """A patient's cercle as `!patient nouveau` leaves it (the room already exists)."""
        room_id = f"!cercle-{code}:cpts.test"
        now = self.clock.now()
        identity = Identity(nom="Dupont", prenom="Marie", naissance="1950-03-12", sexe="F",
                            telephone="0612345678", adresse="3 rue des Lilas")
        async with self.bot.store.session.begin() as session:
            session.add(Patient(code=code, room_id=room_id, identity_enc=encrypt_identity(self.bot.store.cipher, code, identity),
                                medecin_traitant=mt, created_by=members[0], created_at=now, commune=commune,
                                birth_year=1950))
            for user_id in members:
                session.add(CercleMember(patient_code=code, user_id=user_id, added_by=members[0], added_at=now,
                                         role="medecin_traitant" if user_id == mt else "habituel"))
        await self.bot.store.save_room(room_id, "patient", 0, created=True)
        return room_id

    async def remove_member(self, code: str, user_id: str) -> None:
        async with self.bot.store.session.begin() as session:
            row = await session.get(CercleMember, (code, user_id))
            row.removed_at = self.clock.now()

    # --- acting ----------------------------------------------------------------------------------
    async def say(self, sender: str, room_id: str, body: str, *, relates_to: dict | None = None) -> list[Sent]:
        """`sender` writes `body` in `room_id` (in a thread or as a reply with `relates_to`);
        returns what the bot queued in answer. The event id is then `self.last_event`."""
        content = {"msgtype": "m.text", "body": body}
        if relates_to:
            content["m.relates_to"] = relates_to
        self.last_event = f"$ev{next(self._ids)}"
        return await self._handle(IncomingEvent(self.last_event, room_id, sender, "message",
                                                int(self.clock.now().timestamp() * 1000),
                                                {"body": body, "content": content}))

    async def vote(self, sender: str, room_id: str, poll_event_id: str, answer_ids: list[str]) -> list[Sent]:
        return await self._handle(IncomingEvent(f"$ev{next(self._ids)}", room_id, sender, "poll_response",
                                                int(self.clock.now().timestamp() * 1000),
                                                {"poll": poll_event_id, "answers": answer_ids}))

    async def react(self, sender: str, room_id: str, key: str, event_id: str) -> list[Sent]:
        return await self._handle(IncomingEvent(f"$ev{next(self._ids)}", room_id, sender, "reaction",
                                                int(self.clock.now().timestamp() * 1000),
                                                {"key": key, "reacts_to": event_id}))

    async def _handle(self, event: IncomingEvent) -> list[Sent]:
        await self.bot.store.record_event(event, self.clock.now())
        await dispatch(self.bot, event)
        return await self.sent()

    async def fire_due(self, advance: timedelta | None = None) -> list[Sent]:
        """Move the clock, fire what is due (the deadline runner's own code), return what it queued."""
        if advance:
            self.clock.advance(advance)
        for deadline in await self.bot.store.due_deadlines(self.clock.now()):
            async with self.bot.store.session.begin() as session:
                if not await self.bot.store.take_deadline(session, deadline.id, self.clock.now()):
                    continue
                ctx = self.bot.context(session, deadline.payload.get("room_id", ""), "timer", BOT,
                                       f"deadline:{deadline.id}")
                await self.bot.deadline_handlers[deadline.kind](ctx, deadline)
        return await self.sent()

    async def sent(self) -> list[Sent]:
        """Outbox rows queued since the last call, in order."""
        async with self.bot.store.session() as session:
            rows = (await session.scalars(select(OutboxItem).where(OutboxItem.id > self._seen_outbox)
                                          .order_by(OutboxItem.id))).all()
        if rows:
            self._seen_outbox = rows[-1].id
        cipher = self.bot.store.cipher
        return [Sent(r.action, r.room_id, cipher.decrypt_json(r.content_enc, f"outbox:{r.txn_id}"), r.ref)
                for r in rows]

    async def pending_deadlines(self) -> list[Deadline]:
        return await self.bot.store.pending_deadlines()

    async def event_id_of(self, ref_prefix: str, *, latest: bool = False) -> str:
        """Give an outbox item an event id as if it had been sent (for ✅ reactions to notices)."""
        async with self.bot.store.session.begin() as session:
            item = await session.scalar(select(OutboxItem).where(OutboxItem.ref.startswith(ref_prefix))
                                        .order_by(OutboxItem.id.desc() if latest else OutboxItem.id).limit(1))
            item.event_id = item.event_id or f"$sent-{item.id}"
            return item.event_id

    def now(self) -> datetime:
        return self.clock.now()


async def patient_in_parcours(tmp_path, code: str, mt: str, ide: str, sf: str, *parcours: str, start,
                              database_url: str | None = None) -> UseCases:
    """A médecin traitant, a nurse and a midwife in the directory, a patient whose cercle they form
    (`uc.room`), included in `parcours` at `start`: the usual world of the follow-up tests."""
    uc = await UseCases.open(tmp_path / "bot", database_url=database_url, clock=FakeClock(start))
    await uc.enrol(mt, "medecin_generaliste", name="Dr Martin")
    await uc.enrol(ide, "infirmier", name="Julie Petit")
    await uc.enrol(sf, "sage_femme", name="Sophie Leroy")
    uc.room = await uc.patient(code, [mt, ide, sf], mt=mt)
    async with uc.bot.store.session.begin() as session:
        for p in parcours:
            session.add(Inclusion(patient_code=code, parcours=p, included_by=mt, included_at=uc.now()))
    return uc
