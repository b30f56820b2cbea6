"""Tier 2: questionnaires and the cahier de liaison (rooms/questionnaires.py, rooms/journal.py) through
the real dispatch on a real store, FakeClock, the outbox as the recorder (tests/usecase.py)."""
from __future__ import annotations

import base64
import csv
import io
from datetime import datetime, timedelta, timezone

import pypdf
from sqlalchemy import select

from domain.clock import FakeClock
from rooms import journal
from storage.models import Professional, QuestionnaireRun
from storage.repositories import IncomingEvent
from tests.usecase import COORDINATION_ROOM, UseCases

CODE = "P-VG7K"
MT = "@mt:cpts.test"          # includes the patient (médecin SOS / MG)
REF = "@referent:cpts.test"   # Vigie Référent: accepts the vigie request, so answers J7/J30
IDE = "@ide:cpts.test"
POLL_START = "org.matrix.msc3381.poll.start"
# Monday 7 December 2026, 20:00 in Paris (19:00 UTC): outside the référent's hours (8h-19h)
INCLUDED_AT = datetime(2026, 12, 7, 19, 0, tzinfo=timezone.utc)


async def _world(tmp_path, database_url: str | None = None) -> UseCases:
    uc = await UseCases.open(tmp_path / "bot", database_url, clock=FakeClock(INCLUDED_AT - timedelta(hours=1)))
    await uc.enrol(MT, "medecin_generaliste", name="Dr Martin")
    await uc.enrol(REF, "medecin_generaliste", name="Dr Vigie", roles=["vigie_referent", "referent:vigie_senior"])
    await uc.enrol(IDE, "infirmier", name="Julie Petit")
    async with uc.bot.store.session.begin() as session:
        (await session.get(Professional, REF)).notification_hours = "08:00-19:00"
    uc.room = await uc.patient(CODE, [MT, IDE], mt=MT)
    return uc


def _polls(sent):
    return [s for s in sent if s.action == "event" and s.content["type"] == POLL_START]


def _question(poll) -> str:
    return poll.content["content"][POLL_START]["question"]["body"]


async def _vote(uc, sender, ref_prefix, answers):
    event_id = await uc.event_id_of(ref_prefix)
    return await uc._handle(IncomingEvent(f"$vote{next(uc._ids)}", uc.room, sender, "poll_response",
                                          int(uc.now().timestamp() * 1000), {"poll": event_id, "answers": answers}))


async def _reply(uc, sender, ref_prefix, body):
    event_id = await uc.event_id_of(ref_prefix)
    content = {"msgtype": "m.text", "body": body, "m.relates_to": {"m.in_reply_to": {"event_id": event_id}}}
    return await uc._handle(IncomingEvent(f"$rep{next(uc._ids)}", uc.room, sender, "message",
                                          int(uc.now().timestamp() * 1000), {"body": body, "content": content}))


async def _run(uc, code) -> QuestionnaireRun:
    async with uc.bot.store.session() as session:
        return await session.scalar(select(QuestionnaireRun).where(QuestionnaireRun.code == code))


async def _include_with_referent(uc):
    await uc.say(MT, uc.room, "!dec referent vigie patient sénior sans médecin traitant, rupture de traitement")
    await uc.say(REF, uc.direct_room(REF), f"!accepter {CODE}/1")
    uc.clock.advance(INCLUDED_AT - uc.now())
    return await uc.say(MT, uc.room, "!inclure vigie")


async def test_j7_waits_for_its_day_and_the_referents_hours_then_is_answered(tmp_path, database_url):
    """On SQLite and PostgreSQL (tests/conftest.database_url)."""
    uc = await _world(tmp_path, database_url)
    try:
        included = await _include_with_referent(uc)
        assert any("Questionnaires prévus : J0 (dès maintenant), J7 (J+7), J30 (J+30)" in s.body for s in included)
        kinds = sorted(d.kind for d in await uc.pending_deadlines() if d.kind.startswith("questionnaire"))
        assert kinds == ["questionnaire.ouvrir"] * 3
        # J0 goes to the requester (the médecin SOS, no hours set): now, at 20:00.
        j0 = await uc.fire_due()
        assert any("Questionnaire J0" in s.body and MT in s.content["m.mentions"]["user_ids"] for s in j0)
        assert (await _run(uc, "vigie-j0")).addressee == MT
        await uc.say(MT, uc.room, "!questionnaire pause")
        # J7: 7 days after the inclusion (20:00) → the référent's next 8:00.
        uc.clock.advance(INCLUDED_AT + timedelta(days=7) - uc.now())
        assert await uc.fire_due() == []
        started = await uc.fire_due(timedelta(hours=12) - timedelta(minutes=1))
        assert started == []
        started = await uc.fire_due(timedelta(minutes=1))
        assert (await _run(uc, "vigie-j7")).started_at == INCLUDED_AT + timedelta(days=7, hours=12)  # 8:00 in Paris
        assert any("Questionnaire J7" in s.body for s in started)
        q1 = _polls(started)
        assert [_question(p) for p in q1] == ["Q1/6 · Le contact est-il établi avec le patient ?"]
        assert q1[0].ref == f"questionnaire:{(await _run(uc, 'vigie-j7')).id}:1:0"
        j7 = (await _run(uc, "vigie-j7")).id

        # Someone else's vote is not counted, and they are told why.
        foreign = await _vote(uc, IDE, f"questionnaire:{j7}:1:0", ["1"])
        assert len(foreign) == 1 and "votre vote n'est pas compté" in foreign[0].body and "Dr Vigie" in foreign[0].body
        assert await _vote(uc, IDE, f"questionnaire:{j7}:1:0", ["2"]) == []  # told once per question
        assert (await _run(uc, "vigie-j7")).current == 1

        # Q1 = Non by vote: the poll is ended with the answer, Q2 comes (Q3 will be skipped).
        sent = await _vote(uc, REF, f"questionnaire:{j7}:1:0", ["2"])
        assert [s.action for s in sent] == ["poll_end", "event"]
        assert sent[0].content == {"poll_ref": f"questionnaire:{j7}:1:0", "text": "Réponse : Non"}
        assert _question(sent[1]).startswith("Q2/6 · Si non, pourquoi ?")
        # Q2 typed: « !q 1 » = Patient non joignable; Q3 (« Suite à votre contact ») is skipped.
        sent = await uc.say(REF, uc.room, "!q 1")
        assert sent[0].content["poll_ref"] == f"questionnaire:{j7}:2:0"
        assert _question(_polls(sent)[0]).startswith("Q4/6 · Des ressources")
        assert _polls(sent)[0].content["content"][POLL_START]["max_selections"] == 6
        # Q4 multiple choice: votes settle 2 minutes (Element sends one per tap).
        assert await _vote(uc, REF, f"questionnaire:{j7}:4:0", ["6"]) == []
        assert await _vote(uc, REF, f"questionnaire:{j7}:4:0", ["5"]) == []
        assert await uc.fire_due(timedelta(minutes=1)) == []
        sent = await uc.fire_due(timedelta(minutes=1))
        assert sent[0].content["text"] == "Réponse : Pas de ressource"
        assert _question(_polls(sent)[0]).startswith("Q6/6")  # Q5 « Si des ressources… » skipped
        # A wrong typed answer is refused with what is expected; nothing moves.
        refused = await uc.say(REF, uc.room, "!q peut-être")
        assert "« peut-être » n'est pas un des choix" in refused[0].body and "1 = Oui, 2 = Non" in refused[0].body
        done = await uc.say(REF, uc.room, "!q oui")
        summary = next(s for s in done if "terminé" in s.body)
        assert summary.room_id == uc.room
        for line in ["Q1. Le contact est-il établi avec le patient ? → Non",
                     "Q2. Si non, pourquoi ? → Patient non joignable",
                     "Q3. Suite à votre contact avec le patient, celui-ci accepte d'être inclus dans le parcours ? → sans objet",
                     "Q4. Des ressources ont-elles été engagées pour le patient ? → Pas de ressource",
                     "Q5. Si des ressources ont été engagées, sous quel délai ? → sans objet",
                     "Q6. Le patient a-t-il été hospitalisé depuis son inclusion dans le parcours ? → Oui"]:
            assert line in summary.body, line
        coord = [s for s in done if s.room_id == COORDINATION_ROOM]
        assert len(coord) == 1
        assert CODE in coord[0].body and "patient non joignable" in coord[0].body
        assert "aucune ressource engagée" in coord[0].body and "hospitalisé depuis l'inclusion" in coord[0].body
        assert "dupont" not in coord[0].body.lower() and "marie" not in coord[0].body.lower()
        run = await _run(uc, "vigie-j7")
        assert run.status == "termine" and [t["via"] for t in run.trail] == ["vote", "texte", "vote", "texte"]
        assert {t["par"] for t in run.trail} == {REF}
        # A late vote on an ended poll is dropped.
        assert await _vote(uc, REF, f"questionnaire:{j7}:1:0", ["1"]) == []
    finally:
        await uc.close()


async def test_j0_free_text_by_reply_pause_and_resume(tmp_path):
    uc = await _world(tmp_path)
    try:
        uc.clock.advance(timedelta(hours=-10))  # 9:00 local: inside the hours
        await uc.say(MT, uc.room, "!inclure vigie")  # no vigie request: the author of the inclusion answers
        started = await uc.fire_due()
        j0 = (await _run(uc, "vigie-j0")).id
        assert (await _run(uc, "vigie-j0")).addressee == MT and _polls(started)
        await _vote(uc, MT, f"questionnaire:{j0}:1:0", ["1"])
        # Q2 is free text: a plain reply to the question's message is the answer.
        sent = await _reply(uc, MT, f"questionnaire:{j0}:2:0", "chute à domicile, pas de MT")
        assert "✔️ Q2 : chute à domicile, pas de MT" in sent[0].body and "Q3/12" in sent[0].body
        # A reply by someone else is refused, nothing recorded.
        other = await _reply(uc, IDE, f"questionnaire:{j0}:3:0", "marche avec une canne")
        assert "seules ses réponses sont comptées" in other[0].body
        assert (await _run(uc, "vigie-j0")).current == 3
        # Pause: typed answers wait; resume asks the same question again (a new message).
        paused = await uc.say(MT, uc.room, "!questionnaire pause")
        assert "en pause à la question 3" in paused[0].body
        assert "en pause" in (await uc.say(MT, uc.room, "!q marche seul"))[0].body
        assert "en pause" in (await uc.say(MT, uc.room, "!questionnaire"))[0].body
        resumed = await uc.say(MT, uc.room, "!questionnaire reprendre")
        asked = next(s for s in resumed if s.ref == f"questionnaire:{j0}:3:1")
        assert "Q3/12" in asked.body
        # The old message no longer takes answers.
        stale = await _reply(uc, MT, f"questionnaire:{j0}:3:0", "marche seul")
        assert "n'attend plus de réponse" in stale[0].body
        await uc.say(MT, uc.room, "!q marche avec une canne")
        sent = await uc.say(MT, uc.room, "!q HTA, diabète")
        assert _question(_polls(sent)[0]).startswith("Q5/12")
        # Q5 = Non: Q6 (« Si oui… nom et prénom ») is skipped.
        sent = await _vote(uc, MT, f"questionnaire:{j0}:5:0", ["2"])
        assert _question(_polls(sent)[0]).startswith("Q7/12")
        # Leaving the parcours drops the questionnaires left.
        await uc.say(MT, uc.room, "!sortir vigie patient réorienté")
        runs = {r: (await _run(uc, r)).status for r in ("vigie-j0", "vigie-j7", "vigie-j30")}
        assert runs == {"vigie-j0": "abandonne", "vigie-j7": "abandonne", "vigie-j30": "abandonne"}
        assert not [d for d in await uc.pending_deadlines() if d.kind.startswith("questionnaire")]
    finally:
        await uc.close()


async def test_journal_lists_who_did_what_and_exports_pdf_and_csv(tmp_path, monkeypatch):
    uc = await _world(tmp_path)
    try:
        await _include_with_referent(uc)
        await uc.fire_due()
        j0 = (await _run(uc, "vigie-j0")).id
        await _vote(uc, MT, f"questionnaire:{j0}:1:0", ["1"])
        shown = await uc.say(MT, uc.room, "!journal")
        body = shown[0].body
        for expected in ["Cahier de liaison · P-VG7K", "Dr Martin · Demande n°1 (Vigie sénior) créée",
                         "Dr Vigie · Demande n°1 (Vigie sénior) acceptée", "Dr Martin · Inclusion dans le parcours Vigie sénior",
                         "Questionnaire J0, Q1 : Oui"]:
            assert expected in body, expected
        assert body.index("créée") < body.index("Inclusion") < body.index("Q1 : Oui")  # newest last
        monkeypatch.setattr(journal, "PAGE", 3)
        last = (await uc.say(MT, uc.room, "!journal"))[0].body
        assert "page 1/" in last and "Questionnaire J0, Q1 : Oui" in last and "créée" not in last
        assert "!journal page 2" in last
        older = (await uc.say(MT, uc.room, "!journal page 9"))[0].body  # past the end: the oldest page
        assert "créée" in older and "Q1 : Oui" not in older
        monkeypatch.setattr(journal, "PAGE", 25)
        only_ic = (await uc.say(MT, uc.room, "!journal insuffisance_cardiaque"))[0].body
        assert "Inclusion" not in only_ic and "Questionnaire" not in only_ic and "Demande" not in only_ic
        since = await uc.say(MT, uc.room, "!journal depuis 09/12/2026")
        assert "rien à montrer" in since[0].body
        bad = await uc.say(MT, uc.room, "!journal depuis hier")
        assert "« hier » n'est pas une date" in bad[0].body

        sent = await uc.say(MT, uc.room, "!journal export")
        files = [s for s in sent if s.action == "file"]
        assert [f.content["mimetype"] for f in files] == ["application/pdf", "text/csv"]
        pdf_bytes = base64.b64decode(files[0].content["data"])
        assert pdf_bytes.startswith(b"%PDF-")
        text = "\n".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(pdf_bytes)).pages)
        assert "Cahier de liaison - patient P-VG7K" in text
        assert "Inclusion dans le parcours Vigie sénior" in text and "Questionnaire J0, Q1 : Oui" in text
        assert "dupont" not in text.lower()  # the code, not the identity
        rows = list(csv.DictReader(io.StringIO(base64.b64decode(files[1].content["data"]).decode("utf-8-sig")),
                                   delimiter=";"))
        assert rows[0].keys() == {"date", "parcours", "source", "par", "quoi"}
        assert any(r["par"] == "Dr Martin" and r["quoi"] == "Questionnaire J0, Q1 : Oui" for r in rows)
    finally:
        await uc.close()
