"""Questionnaires and the cahier de liaison on the wire: a real Synapse, E2EE clinicians, a fake clock.

The J7 vigie questionnaire starts at the Vigie Référent's first notification hour after J+7, is
answered by poll votes, a typed `!q` and a plain reply; a conditional question is skipped, the
summary is posted, the indicators reach the coordinators' room without identity, and a nurse's
vote is not counted. Then `!journal export` is downloaded, decrypted and read (PDF and CSV).

Poll shapes are checked against what Element sends and reads, from matrix-js-sdk
src/extensible_events_v1/PollStartEvent.ts (M_POLL_START, M_POLL_KIND_DISCLOSED, answers with `id`
and M_TEXT, max_selections, the text fallback « question\\n1. answer »), PollResponseEvent.ts
(M_POLL_RESPONSE with `answers`, `m.relates_to` rel_type `m.reference`) and PollEndEvent.ts
(M_POLL_END, `m.reference` to the start).
"""
from __future__ import annotations

import asyncio
import csv
import io
import re
from datetime import datetime, timedelta, timezone

import pypdf
import pytest
from sqlalchemy import select

from bot.coordination import ensure_coordinator_room
from domain.clock import FakeClock
from rooms.questionnaires import KIND_SETTLE
from storage.models import Deadline, Professional
from tests.bot_harness import BotHarness
from tests.clinician import Clinician

pytestmark = pytest.mark.synapse

POLL_START = "org.matrix.msc3381.poll.start"      # PollStartEvent.ts M_POLL_START (unstable name)
POLL_END = "org.matrix.msc3381.poll.end"          # PollEndEvent.ts M_POLL_END
TEXT = "org.matrix.msc1767.text"                  # M_TEXT
DISCLOSED = "org.matrix.msc3381.poll.disclosed"   # M_POLL_KIND_DISCLOSED


def _question(m) -> str:
    return m.content[POLL_START]["question"]["body"]


def _element_poll_shape(m, choices: list[str], max_selections: int = 1) -> None:
    """What PollStartEvent.ts parses: kind, question text, answers (id + text), max_selections, fallback."""
    start = m.content[POLL_START]
    assert start["kind"] == DISCLOSED and start["max_selections"] == max_selections
    assert start["question"][TEXT] == start["question"]["body"]
    assert [(a["id"], a[TEXT]) for a in start["answers"]] == [(str(i), c) for i, c in enumerate(choices, 1)]
    assert m.content[TEXT] == start["question"][TEXT] + "\n" + "\n".join(f"{i}. {c}" for i, c in enumerate(choices, 1))
    assert m.encrypted


async def test_j7_by_polls_typed_and_reply_then_the_journal_export(synapse, register, tmp_path):
    # Wednesday 20:00 in Paris: outside the référent's hours (8h-19h).
    included_at = datetime(2026, 12, 9, 19, 0, tzinfo=timezone.utc)
    clock = FakeClock(included_at - timedelta(hours=1))
    bot_user, bot_password = register("cercle")
    harness = BotHarness(synapse.url, bot_user, bot_password, tmp_path / "bot", clock=clock)
    await harness.start()
    people: dict[str, Clinician] = {}
    try:
        async def person(key, profession, name, roles=None):
            user_id, password = register(key)
            await harness.enrol(user_id, profession, name=name, roles=roles)
            people[key] = await Clinician.login(synapse.url, user_id, password, tmp_path / f"store-{key}")
            return people[key]

        coord = await person("coord", "autre", "Claire Coord", roles=["coordinateur"])
        mt = await person("mt", "medecin_generaliste", "Paul Martin")
        ref = await person("ref", "medecin_generaliste", "Véra Vigie", roles=["vigie_referent", "referent:vigie_senior"])
        ide = await person("ide", "infirmier", "Julie Petit")
        async with harness.bot.store.session.begin() as session:
            (await session.get(Professional, ref.user_id)).notification_hours = "08:00-19:00"
        coord_room = await ensure_coordinator_room(harness.bot, invite=[coord.user_id])
        await coord.join(await coord.wait_for_invite())

        async def ask(c, room, text):
            sent = await c.send_text(room, text)
            return await c.wait_for_message(room, sender=bot_user, predicate=lambda m: m.in_reply_to() == sent)

        async def fire():
            await harness.bot.fire_due_deadlines()
            await harness.idle()

        async def settle_timer_armed(timeout: float = 20):
            loop = asyncio.get_running_loop()
            end = loop.time() + timeout
            while loop.time() < end:
                async with harness.bot.store.session() as s:
                    if await s.scalar(select(Deadline.id).where(Deadline.kind == KIND_SETTLE,
                                                                Deadline.status == "pending")):
                        return
                await asyncio.sleep(0.1)
            raise AssertionError("le vote à choix multiple n'a pas armé son délai")

        dm = await mt.create_room(invite=[bot_user], is_direct=True)
        await mt.wait_joined(dm, bot_user)
        reply = await ask(mt, dm, "patient nouveau nom=Dupontel prenom=Marielle naissance=12/03/1944 sexe=F "
                                  'tel=0612345678 adresse="3 rue des Lilas" commune=Brétigny-sur-Orge '
                                  f"pros={ide.user_id} consentement=oui")
        code = re.search(r"P-[2-9A-Z]{4}", reply.body).group(0)
        room = await mt.wait_for_invite()
        await mt.join(room)
        await ide.join(await ide.wait_for_invite())

        # The médecin SOS asks a Vigie Référent, who accepts from their direct chat and joins the cercle.
        await ask(mt, room, "!dec referent vigie patiente sénior sans médecin traitant, rupture de traitement")
        ref_dm = await ref.wait_for_invite(predicate=lambda r: r.room_id != room)
        await ref.join(ref_dm)
        await ref.wait_for_message(ref_dm, sender=bot_user, predicate=lambda m: f"{code}/1" in m.body)
        assert "vous prenez en charge" in (await ask(ref, ref_dm, f"accepter {code}/1")).body
        assert await ref.wait_for_invite(predicate=lambda r: r.room_id == room) == room
        await ref.join(room)

        clock.advance(included_at - clock.now())
        assert "J7 (J+7)" in (await ask(mt, room, "!inclure vigie")).body
        await fire()  # J0 goes to the requester (the médecin SOS, no hours set) at once; set aside for now
        await mt.wait_for_event(room, POLL_START, predicate=lambda m: _question(m).startswith("Q1/12"))
        await ask(mt, room, "!questionnaire pause")

        # J+7 at 20:00: nothing yet; at 7:59 the next day, nothing; at 8:00, Q1 of J7.
        clock.advance(included_at + timedelta(days=7) - clock.now())
        await fire()
        clock.advance(timedelta(hours=11, minutes=59))
        await fire()
        assert not [m for m in ref.events_of_type(room, POLL_START) if _question(m).startswith("Q1/6")]
        clock.advance(timedelta(minutes=1))
        await fire()
        q1 = await ref.wait_for_event(room, POLL_START, predicate=lambda m: _question(m).startswith("Q1/6"))
        _element_poll_shape(q1, ["Oui", "Non"])
        intro = await ref.wait_for_message(room, sender=bot_user, predicate=lambda m: "Questionnaire J7" in m.body)
        assert ref.user_id in intro.content["m.mentions"]["user_ids"]

        # A nurse votes: not counted, and told why.
        await ide.vote(room, q1.event_id, ["1"])
        told = await ide.wait_for_message(room, sender=bot_user, predicate=lambda m: "vote n'est pas compté" in m.body)
        assert ide.user_id in told.content["m.mentions"]["user_ids"] and "Véra Vigie" in told.body

        # The référent votes « Non »: the poll ends with the answer (PollEndEvent.ts), Q2 follows.
        await ref.vote(room, q1.event_id, ["2"])
        # The vote as the room sees it: PollResponseEvent.ts M_POLL_RESPONSE, `m.reference` to the start.
        vote = await mt.wait_for_event(room, "org.matrix.msc3381.poll.response", predicate=lambda m: m.sender == ref.user_id)
        assert vote.content["m.relates_to"] == {"rel_type": "m.reference", "event_id": q1.event_id}
        assert vote.content["org.matrix.msc3381.poll.response"] == {"answers": ["2"]}
        end = await ref.wait_for_event(room, POLL_END, predicate=lambda m: m.content["m.relates_to"]["event_id"] == q1.event_id)
        assert end.content["m.relates_to"]["rel_type"] == "m.reference" and "Réponse : Non" in end.content[TEXT]
        q2 = await ref.wait_for_event(room, POLL_START, predicate=lambda m: _question(m).startswith("Q2/6"))
        _element_poll_shape(q2, ["Patient non joignable", "Demande pas encore traitée", "Autre"])

        # Typed: « !q 1 » = patient non joignable; Q3 (« Suite à votre contact ») is skipped.
        await ref.send_text(room, "!q 1")
        q4 = await ref.wait_for_event(room, POLL_START, predicate=lambda m: _question(m).startswith("Q4/6"))
        _element_poll_shape(q4, ["Coordination CPTS", "DAC", "Médecin", "Infirmière", "Pas de ressource", "Autre"],
                            max_selections=6)
        assert not [m for m in ref.events_of_type(room, POLL_START) if _question(m).startswith("Q3/6")]
        # Multiple choice: the selection counts once unchanged for 2 minutes. « Pas de ressource »: Q5 skipped.
        await ref.vote(room, q4.event_id, ["5"])
        await settle_timer_armed()  # the vote has reached the bot (idle() alone may look too early)
        clock.advance(timedelta(minutes=2))
        await fire()
        q6 = await ref.wait_for_event(room, POLL_START, predicate=lambda m: _question(m).startswith("Q6/6"))
        # A plain reply to the poll is an answer too.
        await ref.send_text(room, "oui", extra_content={"m.relates_to": {"m.in_reply_to": {"event_id": q6.event_id}}})
        summary = await mt.wait_for_message(room, sender=bot_user, predicate=lambda m: "J7" in m.body and "terminé" in m.body)
        assert "Q1. Le contact est-il établi avec le patient ? → Non" in summary.body
        assert "celui-ci accepte d'être inclus dans le parcours ? → sans objet" in summary.body
        assert "Q6. Le patient a-t-il été hospitalisé depuis son inclusion dans le parcours ? → Oui" in summary.body
        alert = await coord.wait_for_message(coord_room, sender=bot_user, predicate=lambda m: code in m.body
                                             and "questionnaire J7" in m.body)
        assert "patient non joignable" in alert.body and "hospitalisé depuis l'inclusion" in alert.body
        for secret in ("Dupontel", "DUPONTEL", "Marielle", "1944", "Lilas"):
            assert secret not in alert.body

        # The cahier de liaison, exported: two encrypted attachments, decrypted and read.
        await mt.send_text(room, "!journal export")
        pdf_msg = await mt.wait_for_message(room, sender=bot_user, predicate=lambda m: m.msgtype == "m.file"
                                            and m.body.endswith(".pdf"))
        csv_msg = await mt.wait_for_message(room, sender=bot_user, predicate=lambda m: m.msgtype == "m.file"
                                            and m.body.endswith(".csv"))
        for m in (pdf_msg, csv_msg):
            assert "url" not in m.content and m.content["file"]["url"].startswith("mxc://")
        pdf = await mt.download_decrypted(pdf_msg)
        assert pdf.startswith(b"%PDF-")
        text = "\n".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(pdf)).pages)
        assert f"Cahier de liaison - patient {code}" in text
        for line in ["Demande n°1 (Vigie sénior) acceptée", "Inclusion dans le parcours Vigie sénior",
                     "Questionnaire J7, Q1 : Non", "Questionnaire J7, Q2 : Patient non joignable",
                     "Questionnaire J7 - Indicateurs de suivi terminé"]:
            assert line in text, line
        assert "DUPONTEL" not in text.upper()
        rows = list(csv.DictReader(io.StringIO((await mt.download_decrypted(csv_msg)).decode("utf-8-sig")), delimiter=";"))
        assert any(r["par"] == "Véra Vigie" and r["quoi"] == "Questionnaire J7, Q4 : Pas de ressource" for r in rows)
        assert rows == sorted(rows, key=lambda r: datetime.strptime(r["date"], "%d/%m/%Y %H:%M"))
    finally:
        for c in people.values():
            await c.close()
        await harness.stop()
