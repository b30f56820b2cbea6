"""Questionnaires (vigie sénior J0/J7/J30, spec §6) in the patient room, one question at a time.

The questions are data (domain.questionnaires, data/questionnaires/*.yaml). Here:
- at the inclusion in a parcours that has questionnaires, one row per questionnaire and one
  deadline at its day (J0 = the inclusion, J7, J30 counted from it: spec §6.3, inferred);
- when it fires, the questionnaire is addressed as its file says: J7/J30 to the professional who
  holds the patient's request, i.e. whoever ACCEPTED the parcours' request (the Vigie Référent,
  S002 L191); J0 to its requester (the médecin SOS, S002 L198-199); failing such a request, the
  author of the inclusion. It waits for that professional's notification hours (decisions.md 1:
  a questionnaire is not urgent);
- a choice question is a poll (ref `questionnaire:<id>:<n>:<k>`): a vote of the addressee is the
  answer and the poll is ended with it; a multiple-choice vote settles for SETTLE (Element sends
  one vote per tap) before it counts. Any question also takes `!q <réponse>` or a reply to the
  question's message. A vote from anyone else is not counted, and they are told why;
- pause and resume (`!questionnaire pause|reprendre`); at the end, the summary in the room and
  the indicators (data beside the questions) in the coordinators' room, by patient code only.
"""
from __future__ import annotations

import base64
from datetime import timedelta

from sqlalchemy import select

from domain.markup import literal
from domain.notification_hours import ALWAYS, NotificationHours
from domain.permissions import may_act_in_cercle
from domain.questionnaires import (
    Question,
    Questionnaire,
    Reponse,
    ReponseInvalide,
    attendu,
    indicateurs_atteints,
    parse_reponse,
    prochaine_question,
    reponse_au_vote,
    resume,
)
from domain.text import format_french_datetime
from rooms import demandes
from rooms.access import actor, require_cercle
from rooms.directory import names
from rooms.patients import cercle_members
from storage.models import Demande as DemandeRow
from storage.models import Inclusion, Patient, Professional, QuestionnaireRun
from storage.questionnaires import postpone, runs_of_inclusion, runs_of_patient

KIND_OPEN = "questionnaire.ouvrir"      # the questionnaire's day
KIND_HOURS = "questionnaire.heures"     # the same, delayed to the addressee's notification hours
KIND_SETTLE = "questionnaire.vote"      # a multiple-choice vote counts once the voter stopped tapping
SETTLE = timedelta(minutes=2)
REF = "questionnaire"


# --- rows ---------------------------------------------------------------------------------------------
def _purpose(run: QuestionnaireRun) -> str:
    return f"questionnaire:{run.id}"


def answers_of(ctx, run: QuestionnaireRun) -> dict[int, Reponse]:
    if not run.answers_enc:
        return {}
    data = ctx.store.cipher.decrypt_json(run.answers_enc, _purpose(run))
    return {int(k): Reponse.from_json(v) for k, v in data.items()}


def _save_answers(ctx, run: QuestionnaireRun, answers: dict[int, Reponse]) -> None:
    run.answers_enc = ctx.store.cipher.encrypt_json({str(k): v.to_json() for k, v in answers.items()}, _purpose(run))


def questionnaire_of(ctx, run: QuestionnaireRun) -> Questionnaire:
    return ctx.services.questionnaires[run.code]


def for_parcours(services, parcours: str) -> list[Questionnaire]:
    return sorted((q for q in services.questionnaires.values() if q.parcours == parcours), key=lambda q: q.jour)


# --- scheduling ---------------------------------------------------------------------------------------
async def on_inclusion(ctx, patient: Patient, inclusion: Inclusion) -> list[QuestionnaireRun]:
    """`!inclure`: one row and one deadline per questionnaire of the parcours (J-day from the inclusion)."""
    runs = []
    for qn in for_parcours(ctx.services, inclusion.parcours):
        run = QuestionnaireRun(patient_code=patient.code, room_id=patient.room_id, inclusion_id=inclusion.id,
                               code=qn.code, status="programme", created_at=ctx.now, trail=[], told=[])
        ctx.session.add(run)
        await ctx.session.flush()
        await ctx.services.store.add_deadline(KIND_OPEN, f"{REF}:{run.id}", inclusion.included_at + timedelta(days=qn.jour),
                                              ctx.now, payload={"room_id": patient.room_id}, session=ctx.session)
        runs.append(run)
    return runs


async def on_exit(ctx, inclusion: Inclusion) -> None:
    """`!sortir`: the questionnaires not finished are dropped, their timers cancelled."""
    for run in await runs_of_inclusion(ctx.session, inclusion.id):
        if run.status != "termine":
            if run.status in ("en_cours", "en_pause") and run.current_ref and _is_poll(ctx, run):
                ctx.end_poll(run.room_id, run.current_ref, "Questionnaire arrêté : sortie du parcours.")
            run.status = "abandonne"
            await ctx.services.store.cancel_deadlines(f"{REF}:{run.id}", session=ctx.session)


async def addressee(ctx, patient: Patient, run: QuestionnaireRun, qn: Questionnaire) -> str:
    """Who answers, as the questionnaire file says (`destinataire`): the professional who holds the
    patient's request of this parcours, i.e. its last acceptor (`porteur`: the Vigie Référent), or
    its requester (`demandeur`: the médecin SOS, for J0); else the author of the inclusion. Only a
    current member of the cercle: someone who left it is not asked about the patient (decisions.md 10)."""
    members = {m.user_id for m in await cercle_members(ctx.session, patient.code)}
    rows = (await ctx.session.scalars(select(DemandeRow).where(DemandeRow.room_id == patient.room_id)
                                      .order_by(DemandeRow.id.desc()))).all()
    for row in rows:
        flow = ctx.services.flows.get(row.flow)
        if row.flow != qn.parcours and (flow is None or flow.parcours != qn.parcours):
            continue
        if qn.destinataire == "demandeur":
            d = demandes.read(ctx.store.cipher, row)
            who = d.pour_compte_de or d.demandeur  # a secretary's request belongs to her professional
        else:
            who = row.acceptee_par
        if who in members:
            return who
    inclusion = await ctx.session.get(Inclusion, run.inclusion_id)
    return inclusion.included_by


async def hours_of(ctx, user_id: str) -> NotificationHours:
    prof = await ctx.session.get(Professional, user_id)
    try:
        return NotificationHours.parse(prof.notification_hours if prof else None)
    except ValueError:  # a malformed entry must not block the questionnaire
        return ALWAYS


async def open_due(ctx, deadline) -> None:
    """The questionnaire's day (or the start of the addressee's hours): start it."""
    run = await ctx.session.get(QuestionnaireRun, int(deadline.ref.split(":")[1]))
    if run is None or run.status != "programme":
        return
    patient = await ctx.session.get(Patient, run.patient_code)
    if patient is None or patient.archived_at is not None or not patient.room_id:
        return
    qn = questionnaire_of(ctx, run)
    who = await addressee(ctx, patient, run, qn)
    when = (await hours_of(ctx, who)).next_allowed(ctx.now, ctx.services.tz)
    if when > ctx.now and deadline.kind == KIND_OPEN:
        await ctx.services.store.add_deadline(KIND_HOURS, deadline.ref, when, ctx.now,
                                              payload={"room_id": patient.room_id}, session=ctx.session)
        return
    await begin(ctx, patient, run, qn, who)


async def begin(ctx, patient: Patient, run: QuestionnaireRun, qn: Questionnaire, who: str) -> None:
    run.status, run.addressee, run.started_at = "en_cours", who, ctx.now
    noms = await names(ctx.session, [who])
    ctx.send(patient.room_id,
             f"📋 **Questionnaire {qn.nom}** · parcours {_parcours_nom(ctx, qn)} · pour {who} : "
             f"{len(qn.questions)} questions au plus, une à la fois.\n"
             "Répondez au sondage, ou tapez `!q <réponse>` (ou répondez au message de la question). "
             "`!questionnaire pause` pour l'interrompre, `!questionnaire reprendre` pour continuer.",
             mentions={who: noms.get(who, who)}, ref=f"{REF}:{run.id}:intro")
    await _ask_next(ctx, patient, run, qn, answers_of(ctx, run), ack=None)


def _parcours_nom(ctx, qn: Questionnaire) -> str:
    p = ctx.services.catalogue.get(qn.parcours)
    return p.nom if p else qn.parcours


def _next_ref(run: QuestionnaireRun, numero: int) -> str:
    asked = 0
    if run.current_ref and run.current == numero:
        asked = int(run.current_ref.rsplit(":", 1)[1]) + 1  # a question asked again (after a pause)
    return f"{REF}:{run.id}:{numero}:{asked}"


def _is_poll(ctx, run: QuestionnaireRun) -> bool:
    q = questionnaire_of(ctx, run).question(run.current or 0)
    return q is not None and q.a_choix


def ask(ctx, patient: Patient, run: QuestionnaireRun, qn: Questionnaire, q: Question, ack: str | None) -> None:
    ref = _next_ref(run, q.numero)
    run.current, run.current_ref = q.numero, ref
    head = f"{ack}\n\n" if ack else ""
    if q.a_choix:
        if ack:
            ctx.send(patient.room_id, ack)
        ctx.send_poll(patient.room_id, f"Q{q.numero}/{len(qn.questions)} · {q.texte}", list(q.choix), ref=ref,
                      max_selections=len(q.choix) if q.type == "choix_multiple" else 1)
        return
    ctx.send(patient.room_id, f"{head}**Q{q.numero}/{len(qn.questions)}** · {literal(q.texte)}\n"
                              f"Répondez à ce message, ou `!q <réponse>` ({attendu(q)}).",
             mentions={run.addressee: run.addressee}, ref=ref)


async def _ask_next(ctx, patient: Patient, run: QuestionnaireRun, qn: Questionnaire,
                    answers: dict[int, Reponse], ack: str | None) -> None:
    nxt = prochaine_question(qn, answers)
    if nxt is None:
        await finish(ctx, patient, run, qn, answers, ack)
    else:
        ask(ctx, patient, run, qn, nxt, ack)


async def finish(ctx, patient: Patient, run: QuestionnaireRun, qn: Questionnaire, answers: dict[int, Reponse],
                 ack: str | None) -> None:
    run.status, run.finished_at, run.current, run.current_ref = "termine", ctx.now, None, None
    noms = await names(ctx.session, [u["par"] for u in run.trail])
    by = ", ".join(sorted({noms.get(u["par"], u["par"]) for u in run.trail})) or "—"
    lines = ([ack, ""] if ack else []) + [f"✅ **Questionnaire {qn.nom} terminé** · {patient.code} · par {literal(by)}", ""]
    lines += resume(qn, answers).markdown()
    hits = indicateurs_atteints(qn, answers)
    if hits:
        lines += ["", "Signalé aux coordinateurs : " + ", ".join(h.libelle for h in hits) + "."]
    ctx.send(patient.room_id, "\n".join(lines))
    if hits:
        # Coordinators' room: the patient code only, never the identity nor the free-text answers.
        ctx.to_coordinators(f"⚠️ **{patient.code}** · questionnaire {qn.questionnaire} ({qn.titre}) : "
                            + ", ".join(h.libelle for h in hits) + ". Voir le cercle du patient.")


# --- answers -----------------------------------------------------------------------------------------
async def current_run(ctx, room_id: str) -> QuestionnaireRun | None:
    """The questionnaire of this room being answered (or paused), the most recent first."""
    return await ctx.session.scalar(select(QuestionnaireRun).where(
        QuestionnaireRun.room_id == room_id, QuestionnaireRun.status.in_(("en_cours", "en_pause")))
        .order_by(QuestionnaireRun.started_at.desc(), QuestionnaireRun.id.desc()))


async def record(ctx, run: QuestionnaireRun, reponse: Reponse, via: str) -> None:
    """One answer to the current question; the poll (if any) is ended with it, then the next question."""
    patient = await ctx.session.get(Patient, run.patient_code)
    qn = questionnaire_of(ctx, run)
    q = qn.question(reponse.question)
    answers = answers_of(ctx, run)
    answers[q.numero] = reponse
    # Answers to later questions that no longer apply (none in a forward walk) are not kept.
    _save_answers(ctx, run, answers)
    run.trail = [*run.trail, {"q": q.numero, "par": ctx.sender, "at": ctx.now.isoformat(), "via": via}]
    ack = None
    if q.a_choix:
        ctx.end_poll(patient.room_id, run.current_ref, f"Réponse : {reponse.affichage()}")
        await ctx.services.store.cancel_deadlines(run.current_ref, (KIND_SETTLE,), session=ctx.session)
    else:
        ack = f"✔️ Q{q.numero} : {literal(reponse.affichage())}"
    await _ask_next(ctx, patient, run, qn, answers, ack)


async def answer_typed(ctx, text: str) -> None:
    """`!q <réponse>` in the patient room."""
    run = await current_run(ctx, ctx.room_id)
    if run is None:
        ctx.refuse("aucun questionnaire en cours dans ce salon", usage=False)
    await _typed(ctx, run, text)


async def _typed(ctx, run: QuestionnaireRun, text: str) -> None:
    if run.status == "en_pause":
        ctx.refuse("le questionnaire est en pause : `!questionnaire reprendre` d'abord", usage=False)
    # A reply skips the dispatch's checks: the cercle is checked here, as for `!q`.
    await require_cercle(ctx, await ctx.session.get(Patient, run.patient_code))
    if ctx.sender != run.addressee:
        ctx.refuse(await _not_yours(ctx, run), usage=False)
    q = questionnaire_of(ctx, run).question(run.current)
    parsed = parse_reponse(q, text)
    if isinstance(parsed, ReponseInvalide):
        ctx.refuse(f"{parsed.raison} pour Q{q.numero}. Réponse attendue : {parsed.attendu}.", usage=False)
    await record(ctx, run, parsed, "texte")


async def _not_yours(ctx, run: QuestionnaireRun) -> str:
    noms = await names(ctx.session, [run.addressee])
    return (f"ce questionnaire est adressé à {literal(noms.get(run.addressee, run.addressee))}, qui porte la "
            "demande du patient : seules ses réponses sont comptées")


def _parse_ref(ref: str) -> tuple[int, int] | None:
    parts = ref.split(":")
    if len(parts) != 4 or not (parts[1].isdigit() and parts[2].isdigit()):
        return None
    return int(parts[1]), int(parts[2])


async def _run_for_ref(ctx, ref: str) -> QuestionnaireRun | None:
    """The run whose CURRENT question carries `ref`; None for an old, ended or unknown question."""
    ids = _parse_ref(ref)
    if ids is None:
        return None
    run = await ctx.session.get(QuestionnaireRun, ids[0])
    if run is None or run.status != "en_cours" or run.current_ref != ref:
        return None
    return run


async def on_vote(ctx, ref: str, answer_ids: list[str]) -> None:
    """POLL_HANDLERS: a vote on a question's poll."""
    run = await _run_for_ref(ctx, ref)
    if run is None:
        return  # an ended poll, a paused questionnaire, or not ours
    if not may_act_in_cercle(await actor(ctx, await ctx.session.get(Patient, run.patient_code), ctx.sender)):
        return  # a former member's vote (votes skip the dispatch's cercle check)
    if ctx.sender != run.addressee:
        told = f"{ref} {ctx.sender}"
        if told not in (run.told or []):  # once per voter and question: Element resends at each change
            run.told = [*(run.told or []), told]
            ctx.send(run.room_id, f"ℹ️ {ctx.sender} : votre vote n'est pas compté : {await _not_yours(ctx, run)}.",
                     mentions={ctx.sender: ctx.sender})
        return
    q = questionnaire_of(ctx, run).question(run.current)
    reponse = reponse_au_vote(q, answer_ids)
    if q.type == "choix_multiple":
        # Element sends one vote per tap: the selection counts once it has not changed for SETTLE.
        # The choices are an answer (health data): encrypted in the timer's plain JSON payload.
        chosen = base64.b64encode(ctx.store.cipher.encrypt_json(list(answer_ids), f"{ref}:vote")).decode()
        await postpone(ctx.session, KIND_SETTLE, ref, ctx.now + SETTLE, ctx.now,
                       {"room_id": run.room_id, "answers_enc": chosen, "par": ctx.sender})
        return
    if reponse is not None:
        await record(ctx, run, reponse, "vote")


async def vote_settled(ctx, deadline) -> None:
    """DEADLINE_HANDLERS: a multiple-choice selection unchanged for SETTLE is the answer."""
    run = await _run_for_ref(ctx, deadline.ref)
    if run is None:
        return
    chosen = deadline.payload.get("answers_enc")
    answer_ids = (ctx.store.cipher.decrypt_json(base64.b64decode(chosen), f"{deadline.ref}:vote") if chosen
                  else deadline.payload.get("answer_ids", []))  # a row planned before the choices were encrypted
    reponse = reponse_au_vote(questionnaire_of(ctx, run).question(run.current), answer_ids)
    if reponse is None:
        return  # the vote was withdrawn
    ctx.sender = deadline.payload.get("par", run.addressee)  # the trail names the voter, not the timer
    await record(ctx, run, reponse, "vote")


async def on_reply(ctx, ref: str, text: str) -> bool:
    """REPLY_HANDLERS: a plain reply to a question's message (or its poll) is a typed answer."""
    ids = _parse_ref(ref)
    if ids is None:
        return False
    run = await ctx.session.get(QuestionnaireRun, ids[0])
    if run is None:
        return False
    if run.current_ref != ref or run.status != "en_cours":
        ctx.reply("⚠️ Cette question n'attend plus de réponse" +
                  (" (questionnaire en pause : `!questionnaire reprendre`)." if run.status == "en_pause" else "."))
        return True
    await _typed(ctx, run, text)
    return True


# --- pause, resume, status -------------------------------------------------------------------------
async def pause(ctx, patient: Patient) -> None:
    run = await current_run(ctx, patient.room_id)
    if run is None or run.status != "en_cours":
        ctx.refuse("aucun questionnaire en cours à mettre en pause", usage=False)
    if _is_poll(ctx, run):
        ctx.end_poll(patient.room_id, run.current_ref, "Questionnaire en pause.")
        await ctx.services.store.cancel_deadlines(run.current_ref, (KIND_SETTLE,), session=ctx.session)
    run.status = "en_pause"
    qn = questionnaire_of(ctx, run)
    ctx.reply(f"⏸️ Questionnaire {qn.nom} en pause à la question {run.current}. `!questionnaire reprendre` pour continuer.")


async def resume_run(ctx, patient: Patient) -> None:
    run = await current_run(ctx, patient.room_id)
    if run is None or run.status != "en_pause":
        ctx.refuse("aucun questionnaire en pause dans ce salon", usage=False)
    run.status = "en_cours"
    qn = questionnaire_of(ctx, run)
    ctx.reply(f"▶️ Reprise du questionnaire {qn.nom}.")
    ask(ctx, patient, run, qn, qn.question(run.current), ack=None)


async def status_text(ctx, patient: Patient) -> str:
    runs = await runs_of_patient(ctx.session, patient.code)
    if not runs:
        return f"Aucun questionnaire pour {patient.code}."
    lines = [f"📋 Questionnaires de {patient.code} :"]
    labels = {"programme": "programmé", "en_cours": "en cours", "en_pause": "en pause", "termine": "terminé",
              "abandonne": "abandonné"}
    for run in runs:
        qn = questionnaire_of(ctx, run)
        when = run.finished_at or run.started_at
        extra = f" · question {run.current}" if run.status in ("en_cours", "en_pause") else ""
        at = f" · {format_french_datetime(when, ctx.services.tz, now=ctx.now)}" if when else ""
        lines.append(f"- {qn.nom} : {labels.get(run.status, run.status)}{extra}{at}")
    return "\n".join(lines)


# --- what answers what (merged by bot/wiring.compose) -------------------------------------------------
DEADLINE_HANDLERS = {KIND_OPEN: open_due, KIND_HOURS: open_due, KIND_SETTLE: vote_settled}
POLL_HANDLERS = {REF: on_vote}
REPLY_HANDLERS = {REF: on_reply}
