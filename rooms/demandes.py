"""Requests (déclenchements): the use cases, their persistence, notices and the ladder's timers.

The rules live in domain.demandes / domain.ladder; this module stores their state and, for each
outcome type, does its effects in one place (deadlines, messages to the patient room, direct
chats, the coordinators' room). Commands (commands/demandes.py) parse and call a use case here;
timers and ✅ reactions arrive through the DEADLINE_HANDLERS and REACTION_HANDLERS tables at
the bottom.
"""
from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from domain.demandes import (
    Acceptee,
    Annulee,
    Cloturee,
    CrPoste,
    Declinee,
    DejaPrise,
    Demande,
    Escaladee,
    Etat,
    Evenement,
    InterventionEnRetard,
    PalierAtteint,
    Rdv,
    RdvFixe,
    Refus,
    SansObjet,
    accepter,
    annuler,
    cloturer,
    commenter,
    creer_demande,
    echeance_intervention,
    est_absent,
    fixer_rdv,
    mt_indisponible,
    passer_au_palier,
    poster_cr,
    refuser,
    solliciter,
)
from domain.flows import Flow, Mode
from domain.ladder import Rung, plan_for_flow
from domain.markup import literal
from domain.permissions import Action
from domain.text import format_french_datetime
from rooms import indemnites
from rooms.access import actor, authorize
from rooms.directory import has_role, names, profession_label
from rooms.messages import render
from rooms.patients import add_member, cercle_members, invite_with_identity
from storage.crypto import FieldCipher
from storage.models import Demande as DemandeRow
from storage.models import OutboxItem, Patient, Professional

LADDER_KINDS = ("demande.pool", "demande.relance", "demande.escalade")
ACCEPT_REACTIONS = ("✅", "✔️", "☑️", "👍")


# --- codec: the domain object <-> JSON (encrypted at rest) -----------------------------------
def _encode(value):
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, timedelta):
        return {"$td": value.total_seconds()}
    if isinstance(value, (set, frozenset)):
        return {"$set": sorted(value)}
    if isinstance(value, Rdv):
        return {"$rdv": {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, Evenement):
        return {"$ev": {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    return value  # str (StrEnum included), int, float, bool, None


def _decode(value):
    if isinstance(value, dict):
        if "$dt" in value:
            return datetime.fromisoformat(value["$dt"])
        if "$td" in value:
            return timedelta(seconds=value["$td"])
        if "$set" in value:
            return set(value["$set"])
        if "$rdv" in value:
            fields = {k: _decode(v) for k, v in value["$rdv"].items()}
            return Rdv(**{**fields, "mode": Mode(fields["mode"])})
        if "$ev" in value:
            return Evenement(**{k: _decode(v) for k, v in value["$ev"].items()})
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def dump(d: Demande) -> dict:
    return {f.name: _encode(getattr(d, f.name)) for f in dataclasses.fields(d)}


def load(data: dict) -> Demande:
    fields = {k: _decode(v) for k, v in data.items()}
    fields["etat"] = Etat(fields["etat"])
    fields["rung"] = Rung(fields["rung"])
    return Demande(**fields)


# --- rows ----------------------------------------------------------------------------------------
def _purpose(room_id: str, numero: int) -> str:
    return f"demande:{room_id}:{numero}"


def read(cipher: FieldCipher, row: DemandeRow) -> Demande:
    return load(cipher.decrypt_json(row.data_enc, _purpose(row.room_id, row.numero)))


def write(cipher: FieldCipher, row: DemandeRow, d: Demande) -> None:
    row.data_enc = cipher.encrypt_json(dump(d), _purpose(row.room_id, row.numero))
    row.etat = d.etat.value
    row.acceptee_par = d.acceptee_par


async def next_numero(session: AsyncSession, room_id: str) -> int:
    current = await session.scalar(select(func.max(DemandeRow.numero)).where(DemandeRow.room_id == room_id))
    return (current or 0) + 1


async def find(session: AsyncSession, room_id: str, numero: int) -> DemandeRow | None:
    return await session.scalar(select(DemandeRow).where(DemandeRow.room_id == room_id,
                                                         DemandeRow.numero == numero))


async def open_rows(session: AsyncSession, room_id: str | None = None) -> list[DemandeRow]:
    stmt = select(DemandeRow).where(DemandeRow.etat.not_in((Etat.CLOTUREE.value, Etat.ANNULEE.value)))
    if room_id:
        stmt = stmt.where(DemandeRow.room_id == room_id)
    return list((await session.scalars(stmt.order_by(DemandeRow.id))).all())


# --- audiences -------------------------------------------------------------------------------------
def age_band(patient: Patient, now: datetime) -> str:
    if not patient.birth_year:
        return "âge non précisé"
    age = now.year - patient.birth_year
    if age < 18:
        return "mineur·e"
    low = age // 10 * 10
    return f"{low}-{low + 9} ans"


async def cercle_targets(ctx, patient: Patient, d: Demande, flow) -> list[str]:
    """First rung: the cercle's professionals of the target profession, the MT first (or only,
    for flows where the MT has priority); a named person; or the role holders."""
    if d.cible_personne:
        return [d.cible_personne]
    if d.cible_role:
        holders = [p.user_id for p in await ctx.services.directory.members(ctx.session) if has_role(p, d.cible_role)]
        return [u for u in holders if u != d.demandeur]
    members = await cercle_members(ctx.session, patient.code)
    profs = [await ctx.session.get(Professional, m.user_id) for m in members]
    same = [p for p in profs if p and p.active and p.profession == d.cible_profession
            and (not d.role_requis or has_role(p, d.role_requis))
            and p.user_id != d.demandeur and not est_absent(p.absences, ctx.now)]
    mt = patient.medecin_traitant
    if flow.medecin_traitant_d_abord and mt and any(p.user_id == mt for p in same):
        return [mt]  # the MT first, alone; the others come with the pool
    return sorted((p.user_id for p in same), key=lambda u: u != mt)


async def pool_targets(ctx, d: Demande, commune: str | None) -> list[str]:
    """Every directory professional of the profession in the CPTS (the commune's first, if any)."""
    if not d.cible_profession:
        return []
    profs = [p for p in await ctx.services.directory.members(ctx.session, d.cible_profession)
             if p.user_id not in d.demandeurs and not est_absent(p.absences, ctx.now)
             and (not d.role_requis or has_role(p, d.role_requis))]  # TCIM: the protocol's signatories
    if commune:
        local = [p for p in profs if commune.casefold() in {c.casefold() for c in p.communes or []}]
        profs = local or profs
    return [p.user_id for p in profs]


# --- messages --------------------------------------------------------------------------------------
def demande_ref(patient: Patient, d: Demande) -> str:
    return f"{patient.code}/{d.numero}"


def notice_text(ctx, patient: Patient, d: Demande, flow, *, pool: bool) -> str:
    echeance = d.echeance_reponse
    deadline = f"réponse attendue avant {format_french_datetime(echeance, ctx.services.tz, now=ctx.now)}" if echeance else ""
    cible = profession_label(d.cible_profession) if d.cible_profession else "vous"
    note = f"\n{flow.note_demande}" if flow.note_demande else ""
    if pool:
        # No patient identity: commune, age band, motif (the flow), délai only (decisions.md 3.2).
        return (f"📣 **Demande de prise en charge {demande_ref(patient, d)}** · {cible} · "
                f"{patient.commune or 'commune non précisée'} · patient·e {age_band(patient, ctx.now)} · "
                f"{flow.libelle} · {deadline}.\n"
                f"Pour la prendre : `accepter {demande_ref(patient, d)}` (ou réagissez ✅ à ce message) ; "
                f"sinon `refuser {demande_ref(patient, d)} <motif>`. L'identité du patient vous sera "
                f"transmise dans son cercle si vous acceptez." + note)
    return (f"📣 **Demande n°{d.numero}** · {flow.libelle} → {cible} · {deadline}.\n"
            f"Répondez `!accepter {d.numero}` (ou ✅ sur ce message) ou `!refuser {d.numero} <motif>`." + note)


def queue_direct(ctx, user_id: str, md_text: str, ref: str | None = None) -> None:
    """A message in the user's direct chat with the bot (created at send time if needed)."""
    ctx.queue("direct", "", {"user_id": user_id, "content": render(md_text, mentions={user_id: user_id})}, ref=ref)


async def notify(ctx, patient: Patient, row: DemandeRow, d: Demande, flow, users, *, pool: bool) -> None:
    """Cercle members are mentioned in the patient room; others get a direct notice."""
    members = {m.user_id for m in await cercle_members(ctx.session, patient.code)}
    in_room = [u for u in users if u in members]
    outside = [u for u in users if u not in members]
    noms = await names(ctx.session, users)
    if in_room:
        mentions = " ".join(in_room)
        ctx.send(patient.room_id, f"{notice_text(ctx, patient, d, flow, pool=False)}\n{mentions}",
                 mentions={u: noms[u] for u in in_room}, ref=f"notice:{row.id}:room")
    for u in outside:
        queue_direct(ctx, u, notice_text(ctx, patient, d, flow, pool=True), ref=f"notice:{row.id}:{u}")



# --- which request a command is about ---------------------------------------------------------------
async def candidates(ctx, *, answering: bool) -> list[DemandeRow]:
    """Open requests here that were asked of the sender (answering), or that are theirs."""
    rows = await open_rows(ctx.session, ctx.room_id if ctx.in_patient_room else None)
    picked = []
    for row in rows:
        d = read(ctx.store.cipher, row)
        if answering and ctx.sender in d.sollicites and d.etat in (Etat.EN_ATTENTE, Etat.EXPIREE):
            picked.append(row)
        elif not answering and ctx.sender in (d.acceptee_par, d.demandeur, d.pour_compte_de):
            picked.append(row)
    return picked


async def resolve(ctx, ref, *, answering: bool) -> tuple[Patient, DemandeRow]:
    """The request a command is about: by number, by P-XXXX/n, or the only one that fits."""
    if ref is None:
        rows = await candidates(ctx, answering=answering)
        if not rows:
            ctx.refuse("aucune demande en cours ne vous concerne ici", usage=False)
        if len(rows) > 1:
            listed = ", ".join(f"n°{r.numero}" if ctx.in_patient_room else f"{r.patient_code}/{r.numero}"
                               for r in rows)
            ctx.refuse(f"plusieurs demandes vous concernent ({listed}) : précisez laquelle")
        row = rows[0]
    else:
        code, numero = ref
        if code:
            patient = await ctx.session.get(Patient, code)
            row = await find(ctx.session, patient.room_id, numero) if patient else None
        elif ctx.in_patient_room:
            row = await find(ctx.session, ctx.room_id, numero)
        else:
            ctx.refuse("hors du salon du patient, donnez la référence complète, par exemple P-7K3Q/3")
        if row is None:
            ctx.refuse(f"demande « {(code + '/') if code else 'n°'}{numero} » inconnue")
    patient = await ctx.session.get(Patient, row.patient_code)
    return patient, row


# --- use cases: decide (domain), save, then the outcome's effects ------------------------------------
async def _save(ctx, outcome, row: DemandeRow, d: Demande) -> None:
    """A business refusal aborts the command (nothing written) with its French text; else `d` is saved."""
    if isinstance(outcome, Refus):
        ctx.refuse(outcome.texte(await names(ctx.session, outcome.personnes.values())), usage=False)
    write(ctx.store.cipher, row, d)


async def create(ctx, patient: Patient, flow: Flow, *, commune: str | None = None,
                 **creation) -> tuple[DemandeRow, Demande]:
    """A new request from the sender in the patient's room, its first notices and its timers."""
    numero = await next_numero(ctx.session, patient.room_id)
    d = creer_demande(numero, flow, ctx.sender, ctx.now, medecin_traitant=patient.medecin_traitant,
                      commune=commune, fuseau=ctx.services.timezone, **creation)
    if isinstance(d, Refus):
        ctx.refuse(d.texte())
    return await start(ctx, patient, d, flow, commune), d


async def declencher(ctx, patient: Patient, flow: Flow, **creation) -> Demande:
    """`!dec`: a secretary's request is made on behalf of her professional (decisions.md 11)."""
    pour = (await actor(ctx, patient, ctx.sender)).delegation_for
    row, d = await create(ctx, patient, flow, pour_compte_de=pour, **creation)
    await indemnites.record(ctx, user_id=pour or ctx.sender, kind="declenchement", ref=f"demande:{row.id}",
                            patient_code=patient.code, parcours=flow.parcours, flow=flow.code, par=ctx.sender,
                            demandeur=pour or ctx.sender, cible=await _cible(ctx, d))
    return d


async def _cible(ctx, d: Demande) -> str | None:
    """The target as a profession or role code (a named person: their profession), for the
    indicators' « déclenchements par cible » (no person's name in the ledger line)."""
    if d.cible_personne:
        prof = await ctx.session.get(Professional, d.cible_personne)
        return prof.profession if prof else None
    return d.cible_profession or d.cible_role


async def accept(ctx, patient: Patient, row: DemandeRow) -> None:
    d = read(ctx.store.cipher, row)
    await authorize(ctx, Action.ACCEPTER, patient, d)
    outcome = accepter(d, ctx.sender, ctx.now)
    if isinstance(outcome, DejaPrise):
        ctx.reply(outcome.texte(await names(ctx.session, [outcome.par])))
        return
    await _save(ctx, outcome, row, d)
    await on_accepted(ctx, patient, row, d, outcome)


async def accept_by_reaction(ctx, target_event_id: str | None) -> None:
    """✅ on a notice: the notice's outbox ref says which request it was."""
    if not target_event_id:
        return
    ref = await ctx.session.scalar(select(OutboxItem.ref).where(OutboxItem.event_id == target_event_id))
    if not ref or not ref.startswith("notice:"):
        return
    row = await ctx.session.get(DemandeRow, int(ref.split(":")[1]))
    if row is None:
        return
    if await ctx.services.directory.get(ctx.session, ctx.sender) is None:
        return
    patient = await ctx.session.get(Patient, row.patient_code)
    await accept(ctx, patient, row)


async def decline(ctx, patient: Patient, row: DemandeRow, motif: str) -> None:
    d = read(ctx.store.cipher, row)
    await authorize(ctx, Action.REFUSER, patient, d)
    outcome = refuser(d, ctx.sender, motif, ctx.now)
    if isinstance(outcome, DejaPrise):
        ctx.reply(outcome.texte(await names(ctx.session, [outcome.par])))
        return
    await _save(ctx, outcome, row, d)
    await on_declined(ctx, patient, row, d, outcome)


async def set_rdv(ctx, patient: Patient, row: DemandeRow, slot, mode: Mode, precisions: str | None) -> None:
    d = read(ctx.store.cipher, row)
    permission = await authorize(ctx, Action.RDV, patient, d)
    outcome = fixer_rdv(d, ctx.sender, slot, mode, ctx.now, au_nom_de=permission.acting_for)
    if precisions and not isinstance(outcome, Refus):
        d.rdv = dataclasses.replace(d.rdv, texte=precisions)
    await _save(ctx, outcome, row, d)
    await on_rdv_set(ctx, d, outcome, precisions)
    await indemnites.add_criterion(ctx, f"demande:{row.id}", "rdv")
    await _flow_hook(ctx, "rdv", patient, row, d)


async def post_cr(ctx, patient: Patient, row: DemandeRow, texte: str) -> None:
    d = read(ctx.store.cipher, row)
    await authorize(ctx, Action.CR, patient, d)
    outcome = poster_cr(d, ctx.sender, texte, ctx.now)
    await _save(ctx, outcome, row, d)
    await on_cr_posted(ctx, row, d, outcome)
    await indemnites.add_criterion(ctx, f"demande:{row.id}", "cr")  # a pending acceptance becomes éligible
    await _flow_hook(ctx, "cr", patient, row, d)


async def close(ctx, patient: Patient, row: DemandeRow) -> None:
    d = read(ctx.store.cipher, row)
    await authorize(ctx, Action.CLOTURER, patient, d)
    outcome = cloturer(d, ctx.sender, ctx.now)
    await _save(ctx, outcome, row, d)
    await on_closed(ctx, row, outcome)
    await indemnites.add_criterion(ctx, f"demande:{row.id}", "cloture")  # « à condition que la fiche soit close »
    await _flow_hook(ctx, "closed", patient, row, d)


async def comment(ctx, patient: Patient, row: DemandeRow, texte: str) -> None:
    """A comment in the request's history, shown in the patient's room (encrypted, the cercle's)."""
    d = read(ctx.store.cipher, row)
    await authorize(ctx, Action.COMMENTER, patient, d)
    outcome = commenter(d, ctx.sender, texte, ctx.now)
    write(ctx.store.cipher, row, d)
    noms = await names(ctx.session, [ctx.sender])
    ctx.send(patient.room_id, outcome.texte(noms), ref=f"demande:{row.id}:commentaire")
    if ctx.room_id != patient.room_id:
        ctx.reply(f"💬 Commentaire ajouté à la demande {patient.code}/{d.numero}.")


async def cancel(ctx, patient: Patient, row: DemandeRow, motif: str) -> None:
    d = read(ctx.store.cipher, row)
    await authorize(ctx, Action.ANNULER, patient, d)
    outcome = annuler(d, ctx.sender, motif, ctx.now)
    await _save(ctx, outcome, row, d)
    await on_closed(ctx, row, outcome)
    await close_notices(ctx, patient, d)
    await indemnites.call_off(ctx, f"demande:{row.id}")
    await _flow_hook(ctx, "cancelled", patient, row, d)


async def close_notices(ctx, patient: Patient, d: Demande) -> None:
    """Called off: those asked outside the cercle (pool, direct notices) are told their notice is
    closed, as they are when someone accepts; code only, not the reason (clinical, for the cercle)."""
    if d.acceptee_par is not None:
        return  # their notices were closed at the acceptance (on_accepted)
    members = {m.user_id for m in await cercle_members(ctx.session, patient.code)}
    for u in sorted(set(d.sollicites) - members):
        queue_direct(ctx, u, f"✖️ La demande {demande_ref(patient, d)} a été annulée. Merci, votre notification "
                             "est close.")


async def _flow_hook(ctx, step: str, patient: Patient, row: DemandeRow, d: Demande) -> bool:
    """What the request's flow adds to this step (Services.flow_hooks, e.g. rooms.tcim); it may refuse,
    which rolls back the whole command. True if the flow has a hook for this step."""
    hook = ctx.services.flow_hooks.get((d.flow, step))
    if hook is not None:
        await hook(ctx, patient, row, d)
    return hook is not None


# --- lifecycle: one function per outcome type -----------------------------------------------------------
async def start(ctx, patient: Patient, d: Demande, flow, commune: str | None) -> DemandeRow:
    row = DemandeRow(patient_code=patient.code, room_id=patient.room_id, numero=d.numero, flow=d.flow,
                     etat=d.etat.value, demandeur=d.demandeur, created_at=d.created_at, data_enc=b"")
    d_commune = commune or patient.commune
    first = await cercle_targets(ctx, patient, d, flow)
    mt_out = False
    if flow.medecin_traitant_d_abord and patient.medecin_traitant:
        mt = await ctx.session.get(Professional, patient.medecin_traitant)
        mt_out = mt is None or mt_indisponible(mt.user_id, mt.absences, ctx.now)
    pool_now = not first or mt_out or flow.pool_immediat
    plan = plan_for_flow(flow, d.created_at, pool_now=pool_now, delai_reponse=d.delai_reponse)
    ctx.session.add(row)
    await ctx.session.flush()  # row.id for the timers' refs
    new = solliciter(d, first, ctx.now)
    if new:
        await notify(ctx, patient, row, d, flow, sorted(new, key=lambda u: u != patient.medecin_traitant), pool=False)
    for step in plan:
        if step.rung != Rung.CERCLE:
            await ctx.services.store.add_deadline(f"demande.{step.rung.value}", f"demande:{row.id}", step.due_at,
                                             ctx.now, payload={"room_id": patient.room_id, "commune": d_commune},
                                             session=ctx.session)
    write(ctx.store.cipher, row, d)
    return row


async def on_accepted(ctx, patient: Patient, row: DemandeRow, d: Demande, outcome: Acceptee) -> None:
    await ctx.services.store.cancel_deadlines(f"demande:{row.id}", LADDER_KINDS, session=ctx.session)
    if outcome.echeance_intervention:
        await ctx.services.store.add_deadline("demande.intervention", f"demande:{row.id}", outcome.echeance_intervention,
                                         ctx.now, payload={"room_id": patient.room_id}, session=ctx.session)
    noms = await names(ctx.session, {outcome.par, *outcome.a_informer})
    members = {m.user_id for m in await cercle_members(ctx.session, patient.code)}
    if outcome.par not in members:
        await add_member(ctx.session, patient.code, outcome.par, "intervenant", ctx.sender, ctx.now)
        invite_with_identity(ctx, patient, outcome.par, f"prise en charge de la demande n°{d.numero}")
    requesters = await names(ctx.session, d.demandeurs)
    ctx.send(patient.room_id, outcome.texte(noms), mentions=requesters, ref=f"demande:{row.id}:acceptee")
    others = [u for u in outcome.a_informer if u != outcome.par]
    for u in others:
        if u not in members:
            queue_direct(ctx, u, f"✔️ La demande {demande_ref(patient, d)} est prise en charge par "
                                 f"{noms.get(outcome.par, outcome.par)}. Merci, votre notification est close.")
    in_room = [u for u in others if u in members]
    if in_room:
        ctx.send(patient.room_id, f"✔️ Demande n°{d.numero} prise en charge par {noms.get(outcome.par)} : "
                                  f"notifications closes pour " + " ".join(in_room),
                 mentions={u: noms[u] for u in in_room})
    flow = ctx.services.flows[d.flow]
    if not await _flow_hook(ctx, "accepted", patient, row, d):  # a flow with a hook records its own acts
        await indemnites.record(ctx, user_id=ctx.sender, kind="acceptation", ref=f"demande:{row.id}",
                                patient_code=patient.code, parcours=flow.parcours, flow=flow.code,
                                tardive=outcome.tardive, demandeur=d.demandeur, pour_compte_de=d.pour_compte_de)
    if ctx.room_id != patient.room_id:
        ctx.reply(f"✅ C'est noté : vous prenez en charge la demande {patient.code}/{d.numero}. "
                  f"Vous êtes invité·e dans le cercle {patient.code}, où se trouve la fiche du patient.")
    if outcome.notifier_coordination:
        ctx.to_coordinators(f"✅ Demande {patient.code}/{d.numero} finalement prise en charge (après l'échéance).")


async def on_declined(ctx, patient: Patient, row: DemandeRow, d: Demande, outcome: Declinee) -> None:
    noms = await names(ctx.session, [ctx.sender, *d.demandeurs])
    ctx.send(patient.room_id, outcome.texte(noms), mentions={u: noms[u] for u in d.demandeurs})
    if ctx.room_id != patient.room_id:
        ctx.reply(f"Refus noté pour la demande {patient.code}/{d.numero}. Merci.")
    if outcome.avancer_vers:
        # The MT declined, or everyone asked did: the next rung now, not at its planned time.
        await ctx.services.store.bring_forward(ctx.session, f"demande.{outcome.avancer_vers.value}",
                                               f"demande:{row.id}", ctx.now, ctx.now,
                                               payload={"room_id": patient.room_id, "commune": patient.commune})


async def on_rdv_set(ctx, d: Demande, outcome: RdvFixe, precisions: str | None) -> None:
    noms = await names(ctx.session, [ctx.sender, outcome.par, *d.demandeurs])
    ctx.reply(outcome.texte(noms) + (f"\n{literal(precisions)}" if precisions else ""),
              mentions={u: noms[u] for u in d.demandeurs})


async def on_cr_posted(ctx, row: DemandeRow, d: Demande, outcome: CrPoste) -> None:
    await ctx.services.store.cancel_deadlines(f"demande:{row.id}", ("demande.intervention",), session=ctx.session)
    noms = await names(ctx.session, [ctx.sender, *d.demandeurs])
    ctx.reply(outcome.texte(noms), mentions={u: noms[u] for u in d.demandeurs})


async def on_closed(ctx, row: DemandeRow, outcome: Cloturee | Annulee) -> None:
    """Closed or cancelled: no timer is left."""
    await ctx.services.store.cancel_deadlines(f"demande:{row.id}", session=ctx.session)
    ctx.reply(outcome.texte(await names(ctx.session, [ctx.sender])))


async def fire(ctx, deadline) -> None:
    """A ladder or intervention timer (rows of storage.models.Deadline)."""
    row = await ctx.session.get(DemandeRow, int(deadline.ref.split(":")[1]))
    if row is None:
        return
    patient = await ctx.session.get(Patient, row.patient_code)
    d = read(ctx.store.cipher, row)
    flow = ctx.services.flows[d.flow]
    rung = Rung(deadline.kind.split(".")[1])
    if rung == Rung.INTERVENTION:
        outcome = echeance_intervention(d, ctx.now)
    else:
        outcome = passer_au_palier(d, rung, ctx.now, consigne=flow.consigne_escalade)
    if isinstance(outcome, SansObjet):
        return
    noms = await names(ctx.session, {*d.sollicites, d.demandeur, d.acceptee_par})
    if isinstance(outcome, PalierAtteint) and outcome.rung == Rung.POOL:
        await on_pool_reached(ctx, patient, row, d, flow, outcome, deadline.payload.get("commune"))
    elif isinstance(outcome, PalierAtteint):
        await on_relance(ctx, patient, row, d, flow, outcome, noms)
    elif isinstance(outcome, Escaladee):
        on_escalated(ctx, patient, d, outcome, noms)
    elif isinstance(outcome, InterventionEnRetard):
        people = {outcome.acceptant, d.demandeur}
        ctx.send(patient.room_id, outcome.texte(noms), mentions={u: noms.get(u, u) for u in people})
    write(ctx.store.cipher, row, d)


async def on_pool_reached(ctx, patient: Patient, row: DemandeRow, d: Demande, flow, outcome: PalierAtteint,
                          commune: str | None) -> None:
    new = solliciter(d, await pool_targets(ctx, d, commune), ctx.now)
    text = outcome.texte()
    if d.role_requis:  # TCIM: not the whole profession, the protocol's signatories
        protocole = f"du protocole {d.role_requis.upper()} de la CPTS"
        text = (f"📣 Demande n°{d.numero} proposée à {len(new)} signataire{'s' if len(new) > 1 else ''} {protocole} "
                "(sans identité)." if new else
                f"⏳ Demande n°{d.numero} : aucun autre signataire {protocole} dans l'annuaire ; les coordinateurs "
                "seront prévenus à l'échéance.")
        if new:
            await notify(ctx, patient, row, d, flow, sorted(new), pool=True)
    elif new:
        text += (f"\nDemande élargie à {len(new)} {profession_label(d.cible_profession, pluriel=len(new) > 1)} "
                 "de la CPTS (sans identité).")
        await notify(ctx, patient, row, d, flow, sorted(new), pool=True)
    else:
        text += "\nPersonne d'autre dans l'annuaire pour cette profession."
    ctx.send(patient.room_id, text)


async def on_relance(ctx, patient: Patient, row: DemandeRow, d: Demande, flow, outcome: PalierAtteint,
                     noms: dict[str, str]) -> None:
    members = {m.user_id for m in await cercle_members(ctx.session, patient.code)}
    targets = sorted(outcome.a_relancer)
    in_room = [u for u in targets if u in members]
    ctx.send(patient.room_id, outcome.texte(noms) + ("\n" + " ".join(in_room) if in_room else ""),
             mentions={u: noms.get(u, u) for u in in_room})
    for u in targets:
        if u not in members:
            queue_direct(ctx, u, "⏰ Relance : " + notice_text(ctx, patient, d, flow, pool=True),
                         ref=f"notice:{row.id}:{u}")


def on_escalated(ctx, patient: Patient, d: Demande, outcome: Escaladee, noms: dict[str, str]) -> None:
    ctx.send(patient.room_id, outcome.texte(noms), mentions={d.demandeur: noms.get(d.demandeur, d.demandeur)})
    ctx.to_coordinators(outcome.texte_coordination() + f"\nPatient : **{patient.code}** (cercle de soins).")


# --- what answers what (merged by bot/wiring.compose) -------------------------------------------------
DEADLINE_HANDLERS = {f"demande.{rung.value}": fire
                     for rung in (Rung.POOL, Rung.RELANCE, Rung.ESCALADE, Rung.INTERVENTION)}
REACTION_HANDLERS = {key: accept_by_reaction for key in ACCEPT_REACTIONS}
