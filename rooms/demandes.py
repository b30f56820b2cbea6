"""Requests (déclenchements) on Matrix: persistence, notices, and the ladder's timers.

The rules live in domain.demandes / domain.ladder; this module only stores their state, turns
their outcomes into messages (patient room, direct chats, coordinators' room) and timers.
"""
from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from domain.demandes import (
    Acceptee,
    Demande,
    Escaladee,
    Etat,
    Evenement,
    InterventionEnRetard,
    PalierAtteint,
    Rdv,
    SansObjet,
    echeance_intervention,
    est_absent,
    mt_indisponible,
    passer_au_palier,
    solliciter,
)
from domain.flows import Mode
from domain.ladder import Rung, plan_for_flow
from domain.markup import literal
from domain.text import format_french_datetime
from rooms.directory import profession_label
from rooms.messages import render
from rooms.patients import add_member, cercle_members, invite_with_identity
from storage.crypto import FieldCipher
from storage.models import Demande as DemandeRow
from storage.models import Patient, Professional

LADDER_KINDS = ("demande.pool", "demande.relance", "demande.escalade")


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


# --- names and audiences ---------------------------------------------------------------------
async def names(session: AsyncSession, users) -> dict[str, str]:
    out = {}
    for u in users:
        if u:
            prof = await session.get(Professional, u)
            out[u] = literal(prof.display_name) if prof else u  # directory text: shown as typed
    return out


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
        holders = [p.user_id for p in await ctx.services.directory.members(ctx.session)
                   if any(r == d.cible_role or r.startswith(d.cible_role + ":") for r in p.roles or [])]
        return [u for u in holders if u != d.demandeur]
    members = await cercle_members(ctx.session, patient.code)
    profs = [await ctx.session.get(Professional, m.user_id) for m in members]
    same = [p for p in profs if p and p.active and p.profession == d.cible_profession
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
             if p.user_id != d.demandeur and not est_absent(p.absences, ctx.now)]
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
    if pool:
        # No patient identity: commune, age band, motif (the flow), délai only (decisions.md 3.2).
        return (f"📣 **Demande de prise en charge {demande_ref(patient, d)}** · {cible} · "
                f"{patient.commune or 'commune non précisée'} · patient·e {age_band(patient, ctx.now)} · "
                f"{flow.libelle} · {deadline}.\n"
                f"Pour la prendre : `accepter {demande_ref(patient, d)}` (ou réagissez ✅ à ce message) ; "
                f"sinon `refuser {demande_ref(patient, d)} <motif>`. L'identité du patient vous sera "
                f"transmise dans son cercle si vous acceptez.")
    return (f"📣 **Demande n°{d.numero}** · {flow.libelle} → {cible} · {deadline}.\n"
            f"Répondez `!accepter {d.numero}` (ou ✅ sur ce message) ou `!refuser {d.numero} <motif>`.")


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


# --- lifecycle ------------------------------------------------------------------------------------------
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


async def on_accepted(ctx, patient: Patient, row: DemandeRow, d: Demande, flow, outcome: Acceptee) -> None:
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
    ctx.send(patient.room_id, outcome.texte(noms), mentions=requesters)
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
        new = solliciter(d, await pool_targets(ctx, d, deadline.payload.get("commune")), ctx.now)
        text = outcome.texte(noms)
        if new:
            text += f"\nDemande élargie à {len(new)} {profession_label(d.cible_profession, pluriel=len(new) > 1)} de la CPTS (sans identité)."
            await notify(ctx, patient, row, d, flow, sorted(new), pool=True)
        else:
            text += "\nPersonne d'autre dans l'annuaire pour cette profession."
        ctx.send(patient.room_id, text)
    elif isinstance(outcome, PalierAtteint):  # relance
        members = {m.user_id for m in await cercle_members(ctx.session, patient.code)}
        targets = sorted(outcome.a_relancer)
        in_room = [u for u in targets if u in members]
        ctx.send(patient.room_id, outcome.texte(noms) + ("\n" + " ".join(in_room) if in_room else ""),
                 mentions={u: noms.get(u, u) for u in in_room})
        for u in targets:
            if u not in members:
                queue_direct(ctx, u, "⏰ Relance : " + notice_text(ctx, patient, d, flow, pool=True),
                             ref=f"notice:{row.id}:{u}")
    elif isinstance(outcome, Escaladee):
        ctx.send(patient.room_id, outcome.texte(noms), mentions={d.demandeur: noms.get(d.demandeur, d.demandeur)})

        room = ctx.services.coordinator_room
        if room:
            ctx.send(room, outcome.texte_coordination() + f"\nPatient : **{patient.code}** (cercle de soins).")
    elif isinstance(outcome, InterventionEnRetard):
        people = {outcome.acceptant, d.demandeur}
        ctx.send(patient.room_id, outcome.texte(noms), mentions={u: noms.get(u, u) for u in people})
    write(ctx.store.cipher, row, d)
