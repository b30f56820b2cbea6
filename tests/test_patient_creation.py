"""`!patient nouveau` is all-or-nothing: the room is created by the outbox, once, after the commit.

Against the real Synapse: a command whose transaction is rolled back leaves no room; a bot that
dies between room_create and recording the room id does not create a second one at restart; a
room whose creation is held back makes the other commands wait with a French answer.
"""
from __future__ import annotations

import asyncio
import re

import pytest
from nio import JoinedRoomsResponse, RoomCreateError
from sqlalchemy import func, select

from storage.models import OutboxItem, Patient
from tests.test_patient_rooms_e2e import command, direct_chat

pytestmark = pytest.mark.synapse


def nouveau(dr, ide) -> str:
    return (f"patient nouveau nom=Dupontel prenom=Marielle naissance=12/03/1950 sexe=F tel=06.12.34.56.78 "
            f'adresse="3 rue des Lilas, 91220 Brétigny-sur-Orge" mt={dr.user_id} pros={ide.user_id} '
            f"consentement=oui")


async def bot_rooms(harness) -> set[str]:
    """The rooms the bot is joined to, as the homeserver says (not the bot's database)."""
    response = await harness.bot.client.joined_rooms()
    assert isinstance(response, JoinedRoomsResponse), response
    return set(response.rooms)


async def count(harness, stmt) -> int:
    async with harness.bot.store.session() as s:
        return await s.scalar(stmt)


def cards(clinician, room: str, bot_user: str) -> list:
    return [m for m in clinician.messages(room) if m.sender == bot_user and "Fiche d'identité" in m.body]


async def test_a_command_rolled_back_creates_no_room(harness, people, monkeypatch):
    dr = await people("drcoupure", name="Rose Coupure")
    ide = await people("idecoupure", "infirmier", name="Léa Coupure")
    dm = await direct_chat(dr, harness)
    await harness.idle()
    before = await bot_rooms(harness)

    # The database connection drops after the handler has done everything, before the commit.
    import bot.dispatch as dispatch

    real_mark, armed = dispatch._mark, [True]

    async def cut_before_commit(session, event_id, status, now, error=None):
        if status == "handled" and armed[0]:
            armed[0] = False
            raise ConnectionResetError("connexion à la base coupée")
        return await real_mark(session, event_id, status, now, error)

    monkeypatch.setattr(dispatch, "_mark", cut_before_commit)
    reply = await command(dr, dm, harness, nouveau(dr, ide))
    assert "Rien n'a été enregistré" in reply.body, reply.body
    await harness.idle()

    assert await bot_rooms(harness) == before  # nothing on the homeserver
    assert await count(harness, select(func.count()).select_from(Patient)) == 0
    assert await count(harness, select(func.count()).select_from(OutboxItem)
                       .where(OutboxItem.action == "create_room")) == 0
    assert not dr.client.invited_rooms and not ide.client.invited_rooms

    # Trying again makes exactly one room, with its card.
    reply = await command(dr, dm, harness, nouveau(dr, ide))
    assert "créé" in reply.body, reply.body
    room = await dr.wait_for_invite()
    await dr.join(room)
    await dr.wait_for_message(room, sender=harness.user_id, predicate=lambda m: "Fiche d'identité" in m.body)
    await harness.idle()
    assert await bot_rooms(harness) - before == {dm, room} - before
    assert len(await bot_rooms(harness) - before) == 1


async def test_a_crash_after_room_create_does_not_create_a_second_room(harness, people):
    dr = await people("drcrash", name="Paul Crash")
    ide = await people("idecrash", "infirmier", name="Julie Crash")
    dm = await direct_chat(dr, harness)
    await harness.idle()
    before = await bot_rooms(harness)

    # The bot dies right after the homeserver created the patient room: nothing after room_create runs.
    real_create, created = harness.bot.client.room_create, asyncio.Event()

    async def create_then_die(*args, **kwargs):
        response = await real_create(*args, **kwargs)
        if str(kwargs.get("name", "")).startswith("Cercle P-"):
            created.set()
            await asyncio.Event().wait()
        return response

    harness.bot.client.room_create = create_then_die
    await dr.send_text(dm, nouveau(dr, ide))
    await asyncio.wait_for(created.wait(), 20)
    await harness.restart()
    await harness.idle()

    after = await bot_rooms(harness)
    assert len(after - before) == 1, f"salons créés : {after - before}"
    room = (after - before).pop()
    assert await dr.wait_for_invite(predicate=lambda r: r.room_id == room) == room
    await dr.join(room)
    await dr.wait_for_message(room, sender=harness.user_id, predicate=lambda m: "Fiche d'identité" in m.body)
    await harness.idle()
    await asyncio.sleep(1.5)  # one more sync of the clinician: a second card would be seen
    assert len(cards(dr, room, harness.user_id)) == 1
    async with harness.bot.store.session() as s:
        patients = (await s.scalars(select(Patient))).all()
    assert [p.room_id for p in patients] == [room]
    assert set(dr.client.invited_rooms) | set(dr.client.rooms) <= {dm, room}


async def test_commands_wait_while_the_room_is_being_created(harness, people):
    dr = await people("drattente", name="Anne Attente")
    ide = await people("ideattente", "infirmier", name="Marc Attente")
    ph = await people("phattente", "pharmacien", name="Hugo Attente")
    dm = await direct_chat(dr, harness)
    ph_dm = await direct_chat(ph, harness)

    # The homeserver refuses room creation for a while (e.g. overloaded).
    real_create = harness.bot.client.room_create
    busy = [True]

    async def busy_create(*args, **kwargs):
        if busy[0] and str(kwargs.get("name", "")).startswith("Cercle P-"):
            return RoomCreateError("serveur occupé", "M_LIMIT_EXCEEDED")
        return await real_create(*args, **kwargs)

    harness.bot.client.room_create = busy_create
    reply = await command(dr, dm, harness, nouveau(dr, ide))
    assert "en cours de création" in reply.body, reply.body
    code = re.search(r"P-[2-9A-Z]{4}", reply.body).group(0)
    reply = await command(ph, ph_dm, harness, f"acces demander {code}")
    assert "en cours de création" in reply.body and "Usage" not in reply.body, reply.body
    async with harness.bot.store.session() as s:
        held = (await s.scalars(select(OutboxItem).where(OutboxItem.status == "pending"))).all()
    # Everything meant for the patient room waits on its placeholder. Items for other rooms may be
    # pending too at this instant (a direct notice to a colleague who has not joined their chat, a
    # reply whose send is being recorded): they are not the room's.
    waiting_room = [i for i in held if i.room_id.startswith("pending:")]
    assert {i.action for i in waiting_room} >= {"create_room", "message", "pin", "state"}
    assert all(i.room_id == f"pending:patient:{code}" for i in waiting_room), \
        [(i.action, i.room_id) for i in held]

    busy[0] = False
    room = await dr.wait_for_invite()
    await dr.join(room)
    card = await dr.wait_for_message(room, sender=harness.user_id, predicate=lambda m: "Fiche d'identité" in m.body)
    assert card.encrypted
    await harness.idle()
    reply = await command(ph, ph_dm, harness, f"acces demander {code}")
    assert "Demande transmise" in reply.body, reply.body
    state = await dr.request_json("GET", f"/_matrix/client/v3/rooms/{room}/state/org.cercle.creation")
    assert state == {"key": f"patient:{code}"}  # the opaque creation key, no identity


async def test_a_room_refused_for_good_is_reported_and_nothing_stays_pending(harness, people):
    dr = await people("drrefus", name="Léon Refus")
    ide = await people("iderefus", "infirmier", name="Inès Refus")
    ph = await people("phrefus", "pharmacien", name="Hugo Refus")
    dm = await direct_chat(dr, harness)
    ph_dm = await direct_chat(ph, harness)

    async def refused(*args, **kwargs):
        return RoomCreateError("création de salons interdite", "M_FORBIDDEN")

    harness.bot.client.room_create = refused
    reply = await command(dr, dm, harness, nouveau(dr, ide))
    code = re.search(r"P-[2-9A-Z]{4}", reply.body).group(0)
    notice = await dr.wait_for_message(dm, sender=harness.user_id, predicate=lambda m: "pas pu être créé" in m.body)
    assert code in notice.body and "!patient nouveau" in notice.body
    await harness.idle()
    assert await count(harness, select(func.count()).select_from(OutboxItem)
                       .where(OutboxItem.status == "pending")) == 0
    reply = await command(ph, ph_dm, harness, f"acces demander {code}")
    assert "aucun cercle actif" in reply.body, reply.body
