"""Guided commands and replies on the wire (issue 17): a real Synapse, the real bot, E2EE clients.

- a patient created entirely by dialogue in the direct chat: a wrong birth date asked again, a
  choice made by voting in the poll, then ✅;
- in the patient's room, the dialogue in a thread: another member's answer ignored, `annuler`,
  and a dialogue that expires (the bot's clock is a FakeClock; nothing is written either way);
- a request accepted by replying « ok » to its notice in a direct chat, and a reply by someone
  not allowed refused exactly like the typed command.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from domain.clock import FakeClock
from domain.polls import POLL_START
from storage.models import Demande, Dialogue, Patient
from tests.bot_harness import BotHarness
from tests.clinician import Clinician
from tests.test_patient_rooms_e2e import command, create_patient, direct_chat

pytestmark = pytest.mark.synapse


async def count(harness, stmt) -> int:
    async with harness.bot.store.session() as s:
        return await s.scalar(stmt)


async def ask(c: Clinician, room: str, harness, text: str, *, relates_to: dict | None = None):
    """Send `text`; the bot's next message or poll answering it (reply or thread fallback)."""
    sent = await c.send_text(room, text, extra_content={"m.relates_to": relates_to} if relates_to else None)

    def answers(m) -> bool:
        return ((m.content.get("m.relates_to") or {}).get("m.in_reply_to") or {}).get("event_id") == sent

    async def message():
        return await c.wait_for_message(room, sender=harness.user_id, predicate=answers)

    async def poll():
        return await c.wait_for_event(room, POLL_START, predicate=answers)

    tasks = [asyncio.create_task(message()), asyncio.create_task(poll())]
    done, pending = await asyncio.wait(tasks, timeout=25, return_when=asyncio.FIRST_COMPLETED)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    assert done, f"aucune réponse du bot à « {text} »"
    return done.pop().result()


@pytest.fixture
async def clocked(synapse, register, tmp_path):
    """A bot whose clock the test moves (dialogue expiry), and a factory of enrolled clinicians."""
    clock = FakeClock(datetime.now(timezone.utc).replace(microsecond=0))
    bot_user, bot_password = register("cercle")
    harness = BotHarness(synapse.url, bot_user, bot_password, tmp_path / "bot", clock=clock)
    await harness.start()
    opened = []

    async def person(prefix, profession="medecin_generaliste", name=None):
        user_id, password = register(prefix)
        await harness.enrol(user_id, profession, name=name)
        c = await Clinician.login(synapse.url, user_id, password, tmp_path / f"store-{prefix}")
        opened.append(c)
        return c

    harness.clock, harness.person = clock, person
    yield harness
    for c in opened:
        await c.close()
    await harness.stop()


async def test_a_patient_created_by_dialogue_then_a_thread_cancelled_ignored_and_expired(clocked):
    harness = clocked
    dr = await harness.person("drguide", name="Paul Guide")
    ide = await harness.person("ideguide", "infirmier", name="Julie Guide")
    dm = await direct_chat(dr, harness)

    first = await ask(dr, dm, harness, "patient nouveau")
    assert "je vous pose 7 questions" in first.body and "Nom" in first.body and "Dupont" in first.body
    assert "Prénom" in (await ask(dr, dm, harness, "Dupontel")).body
    assert "Naissance" in (await ask(dr, dm, harness, "Marielle")).body
    again = await ask(dr, dm, harness, "31/02/1950")
    assert "n'est pas une date qui existe" in again.body and "Naissance" in again.body
    poll = await ask(dr, dm, harness, "12/03/1950")
    assert poll.msgtype == POLL_START and "2. M" in poll.content["org.matrix.msc1767.text"]
    await dr.vote(dm, poll.event_id, ["1"])  # F, by voting
    tel = await dr.wait_for_message(dm, sender=harness.user_id, predicate=lambda m: "Téléphone" in m.body)
    assert tel.encrypted
    assert "Adresse" in (await ask(dr, dm, harness, "06 12 34 56 78")).body
    consent = await ask(dr, dm, harness, "3 rue des Lilas, 91220 Brétigny-sur-Orge")
    assert consent.msgtype == POLL_START
    summary = await ask(dr, dm, harness, "oui")  # the poll's choice, typed
    assert "Récapitulatif" in summary.body and "Dupontel" in summary.body and "✅" in summary.body
    assert await count(harness, select(func.count()).select_from(Patient)) == 0  # nothing before ✅
    done = await ask(dr, dm, harness, "✅")
    assert "créé" in done.body, done.body
    patient_room = await dr.wait_for_invite()
    await dr.join(patient_room)
    assert await count(harness, select(func.count()).select_from(Patient)) == 1
    card = await dr.wait_for_message(patient_room, sender=harness.user_id,
                                     predicate=lambda m: "Fiche d'identité" in m.body)
    assert "DUPONTEL" in card.body.upper() and "12/03/1950" in card.body

    # In the patient's room: a thread on the command; another member's answer is ignored.
    added = await command(dr, patient_room, harness, f"!cercle ajouter {ide.user_id}")
    assert "invité" in added.body
    await ide.join(await ide.wait_for_invite())
    start = await ask(dr, patient_room, harness, "!dec")
    thread_root = start.content["m.relates_to"]["event_id"]
    assert start.content["m.relates_to"]["rel_type"] == "m.thread"
    thread = {"rel_type": "m.thread", "event_id": thread_root, "is_falling_back": True,
              "m.in_reply_to": {"event_id": start.event_id}}
    intruding = await ide.send_text(patient_room, "infirmier", extra_content={"m.relates_to": thread})
    await harness.idle()
    assert not [m for m in dr.messages(patient_room) if m.in_reply_to() == intruding]
    cancelled = await ask(dr, patient_room, harness, "annuler", relates_to=thread)
    assert "annulé" in cancelled.body and "rien n'a été enregistré" in cancelled.body

    # A dialogue left unanswered expires, and says so.
    question = await ask(dr, patient_room, harness, "!rdv")
    assert "Horaire" in question.body
    harness.clock.advance(timedelta(minutes=31))
    await harness.bot.fire_due_deadlines()
    expired = await dr.wait_for_message(patient_room, sender=harness.user_id,
                                        predicate=lambda m: m.body.startswith("⌛"))
    assert "!rdv" in expired.body and dr.user_id in expired.content["m.mentions"]["user_ids"]
    assert await count(harness, select(func.count()).select_from(Demande)) == 0
    async with harness.bot.store.session() as s:
        statuses = sorted((await s.scalars(select(Dialogue.status))).all())
    assert statuses == ["cancelled", "done", "expired"]


async def test_replying_ok_to_a_notice_accepts_and_a_refused_reply_reads_like_the_command(harness, people):
    dr = await people("drreply", name="Paul Réponse")
    ide = await people("idereply", "infirmier", name="Julie Réponse")
    ide2 = await people("idedm", "infirmier", name="Marc Direct")
    code, room = await create_patient(dr, ide, harness)
    await ide.join(await ide.wait_for_invite())

    # A request to one person outside the cercle: the notice goes to her direct chat.
    created = await command(dr, room, harness, f"!dec {ide2.user_id} vad surveillance glycémie")
    assert "n°1" in created.body
    dm = await ide2.wait_for_invite()
    await ide2.join(dm)
    notice = await ide2.wait_for_message(dm, sender=harness.user_id, predicate=lambda m: f"{code}/1" in m.body)
    accepted = await ask(ide2, dm, harness, "ok", relates_to={"m.in_reply_to": {"event_id": notice.event_id}})
    assert "vous prenez en charge la demande" in accepted.body, accepted.body
    assert await ide2.wait_for_invite() == room
    async with harness.bot.store.session() as s:
        assert (await s.scalar(select(Demande).where(Demande.numero == 1))).acceptee_par == ide2.user_id

    # The requester answering « ok » to her own request's notice: refused as `!accepter 2` is.
    await command(dr, room, harness, "!dec infirmier vad pansement quotidien")
    room_notice = await dr.wait_for_message(room, sender=harness.user_id,
                                            predicate=lambda m: "📣" in m.body and "n°2" in m.body)
    by_reply = await ask(dr, room, harness, "ok", relates_to={"m.in_reply_to": {"event_id": room_notice.event_id}})
    typed = await command(dr, room, harness, "!accepter 2")
    assert "⛔" in by_reply.body and by_reply.body == typed.body
    async with harness.bot.store.session() as s:
        assert (await s.scalar(select(Demande).where(Demande.numero == 2))).acceptee_par is None
