"""Issue 8: a patient's identity typed in the coordinators' room does not stay in its history."""
from __future__ import annotations

import asyncio

import pytest

from bot.coordination import ensure_coordinator_room
from tests.test_patient_rooms_e2e import direct_chat

pytestmark = pytest.mark.synapse

FIELDS = ("Dupontel", "DUPONTEL", "Marielle", "12/03/1950", "0612345678", "06.12.34.56.78", "Lilas")
COMMAND = ("!patient nouveau nom=Dupontel prenom=Marielle naissance=12/03/1950 sexe=F tel=06.12.34.56.78 "
           'adresse="3 rue des Lilas, 91220 Brétigny-sur-Orge" commune=Brétigny-sur-Orge consentement=oui')


async def history_text(reader, room_id: str) -> str:
    """The room's history as the server serves it now, with every event this reader can decrypt."""
    from nio import Event, MegolmEvent

    page = await reader.request_json("GET", f"/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=100")
    texts = [repr(page["chunk"])]
    for source in page["chunk"]:
        event = Event.parse_event({**source, "room_id": room_id})
        if isinstance(event, MegolmEvent):
            try:
                texts.append(repr(reader.client.decrypt_event(event).source))
            except Exception:  # no key for this session (e.g. sent before the reader joined)
                pass
    return " ".join(texts)


async def test_identity_typed_in_the_coordinators_room_is_redacted_and_answered_privately(harness, people):
    coord = await people("coord", "autre", name="Claire Coord", roles=["coordinateur"])
    witness = await people("coord2", "autre", name="Hugo Coord", roles=["coordinateur"])
    room = await ensure_coordinator_room(harness.bot, invite=[coord.user_id, witness.user_id])
    for c in (coord, witness):
        await c.join(await c.wait_for_invite())
    dm = await direct_chat(coord, harness)  # where the answer goes

    sent = await coord.send_text(room, COMMAND)
    notice = await coord.wait_for_message(room, sender=harness.user_id, predicate=lambda m: "effacé" in m.body)
    assert not any(f in notice.body for f in FIELDS)
    answer = await coord.wait_for_message(dm, sender=harness.user_id, predicate=lambda m: "Cercle" in m.body)
    assert "créé" in answer.body

    # The command event is redacted on the server: its ciphertext is gone for everyone.
    for _ in range(100):
        event = await witness.request_json("GET", f"/_matrix/client/v3/rooms/{room}/event/{sent}")
        if not event.get("content"):
            break
        await asyncio.sleep(0.1)
    assert event.get("content") == {} and "redacted_because" in event.get("unsigned", {})

    # A coordinator present all along (who held the room key) and one who joins later both find no
    # identity field anywhere in the history they can read.
    late = await people("coord3", "autre", name="Inès Coord", roles=["coordinateur"])
    async with harness.bot.store.session.begin() as session:
        harness.bot.store.queue(session, "invite", room, {"user_id": late.user_id}, harness.bot.clock.now())
    await harness.bot.flush_outbox()
    await late.join(await late.wait_for_invite())
    await asyncio.sleep(1)
    for reader in (witness, late):
        text = await history_text(reader, room)
        leaked = [f for f in FIELDS if f in text]
        assert not leaked, f"{reader.user_id} can still read {leaked}"


async def test_a_wrong_identity_command_in_the_coordinators_room_is_redacted_too(harness, people):
    """A refusal would quote the bad value: it goes to the direct chat, and the command is redacted."""
    coord = await people("coordb", "autre", name="Claire Coord", roles=["coordinateur"])
    room = await ensure_coordinator_room(harness.bot, invite=[coord.user_id])
    await coord.join(await coord.wait_for_invite())
    dm = await direct_chat(coord, harness)
    await coord.send_text(room, COMMAND.replace("12/03/1950", "31/02/1950"))
    await coord.wait_for_message(room, sender=harness.user_id, predicate=lambda m: "effacé" in m.body)
    usage = await coord.wait_for_message(dm, sender=harness.user_id, predicate=lambda m: "Usage" in m.body)
    assert "naissance" in usage.body
    assert not any("31/02/1950" in m.body for m in coord.messages(room) if m.sender == harness.user_id)


async def test_the_bot_leaves_a_room_where_no_directory_member_remains(harness, people):
    """Issue 8, defect 7: a member invites the bot and an outsider, then leaves."""
    dr = await people("drpart", name="Paul Part")
    outsider = await people("intrusb", enrol=False)
    room = await dr.create_room(invite=[harness.user_id, outsider.user_id])
    await outsider.join(room)
    await dr.wait_joined(room, harness.user_id)
    await dr.client.room_leave(room)
    for _ in range(200):
        members = await outsider.request_json("GET", f"/_matrix/client/v3/rooms/{room}/joined_members")
        if harness.user_id not in members["joined"]:
            break
        await asyncio.sleep(0.1)
    assert harness.user_id not in members["joined"], "the bot stayed alone with an outsider"
    reply = await outsider.send_text(room, "!aide")  # nobody answers any more
    await asyncio.sleep(1)
    assert not [m for m in outsider.messages(room) if m.sender == harness.user_id and m.in_reply_to() == reply]
