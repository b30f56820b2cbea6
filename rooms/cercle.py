"""Who is in a patient's cercle: `!cercle` (voir, ajouter, retirer) and `!acces` (demander,
accepter, refuser). The commands (commands/cercle.py) parse and call these use cases."""
from __future__ import annotations

from domain.markup import literal
from rooms import suivi
from rooms.directory import direct_room_of, has_role, profession_label, resolve_person
from rooms.patients import (
    add_member,
    cercle_members,
    invite_with_identity,
    is_member,
    patient_by_code,
    require_room,
)
from storage.models import BotState, CercleMember, Patient, Professional


async def show_cercle(ctx, patient: Patient) -> None:
    """The members, médecin traitant and intervenant·e·s marked."""
    lines = [f"**Cercle de soins {patient.code}**", ""]
    for m in await cercle_members(ctx.session, patient.code):
        prof = await ctx.session.get(Professional, m.user_id)
        label = f"{literal(prof.display_name)} ({profession_label(prof.profession)})" if prof else m.user_id
        role = {"medecin_traitant": " · médecin traitant", "intervenant": " · intervenant·e"}.get(m.role, "")
        lines.append(f"- {label}{role}")
    ctx.reply("\n".join(lines))


async def require_member(ctx, patient: Patient) -> None:
    if not await is_member(ctx, patient, ctx.sender):
        ctx.refuse("seuls les membres du cercle peuvent le modifier", usage=False)


async def add_to_cercle(ctx, patient: Patient, prof: Professional) -> None:
    if not await add_member(ctx.session, patient.code, prof.user_id, "habituel", ctx.sender, ctx.now):
        ctx.refuse(f"{literal(prof.display_name)} fait déjà partie du cercle", usage=False)
    invite_with_identity(ctx, patient, prof.user_id, f"ajout par {ctx.sender}")
    ctx.reply(f"✅ {literal(prof.display_name)} ({profession_label(prof.profession)}) est invité·e dans le cercle.")
    await suivi.replan(ctx, patient)  # the follow-up reminders now concern them too


async def remove_from_cercle(ctx, patient: Patient, prof: Professional) -> None:
    row = await ctx.session.get(CercleMember, (patient.code, prof.user_id))
    if row is None or row.removed_at is not None:
        ctx.refuse(f"{literal(prof.display_name)} ne fait pas partie du cercle", usage=False)
    if row.role == "medecin_traitant":
        ctx.refuse("le médecin traitant ne peut pas être retiré du cercle", usage=False)
    row.removed_at = ctx.now
    ctx.queue("kick", patient.room_id, {"user_id": prof.user_id, "reason": f"retiré du cercle par {ctx.sender}"})
    ctx.reply(f"✅ {literal(prof.display_name)} est retiré·e du cercle.")
    await suivi.replan(ctx, patient)  # their pending follow-up reminders about this patient are cancelled


async def request_access(ctx, code: str) -> None:
    """Someone outside the cercle asks (in their direct chat); the room hears it, approvers mentioned."""
    patient = await patient_by_code(ctx.session, code)
    if patient is None or patient.archived_at:
        ctx.refuse(f"aucun cercle actif ne porte le code {code}", usage=False)
    if await is_member(ctx, patient, ctx.sender):
        ctx.refuse(f"vous faites déjà partie du cercle {code}", usage=False)
    require_room(ctx, patient)
    prof = await ctx.services.directory.get(ctx.session, ctx.sender)
    approvers = await _approvers(ctx, patient)
    ctx.send(patient.room_id,
             f"🔑 {literal(prof.display_name)} ({profession_label(prof.profession)}, {ctx.sender}) demande l'accès "
             f"à ce cercle.\nLe médecin traitant ou un référent parcours peut répondre : "
             f"`!acces accepter {ctx.sender}` ou `!acces refuser {ctx.sender}`.",
             mentions={u: u for u in approvers})
    await ctx.session.merge(BotState(key=f"access:{code}:{ctx.sender}", value=ctx.now.isoformat()))
    ctx.reply(f"✅ Demande transmise au cercle {code}. Vous serez invité·e si elle est acceptée.")


async def answer_access(ctx, patient: Patient, cible: str, *, accept: bool) -> None:
    """The médecin traitant or a référent answers, in the patient's room."""
    if ctx.sender not in await _approvers(ctx, patient):
        ctx.refuse("seuls le médecin traitant et les référents parcours répondent aux demandes d'accès",
                   usage=False)
    prof = await resolve_person(ctx, cible)
    asked = await ctx.session.get(BotState, f"access:{patient.code}:{prof.user_id}")
    if asked is None:
        ctx.refuse(f"{literal(prof.display_name)} n'a pas demandé l'accès à ce cercle", usage=False)
    await ctx.session.delete(asked)
    if not accept:
        ctx.send(await direct_room_of(ctx.session, prof.user_id) or patient.room_id,
                 f"Votre demande d'accès au cercle {patient.code} n'a pas été acceptée.")
        ctx.reply(f"Demande de {literal(prof.display_name)} refusée.")
        return
    await add_member(ctx.session, patient.code, prof.user_id, "habituel", ctx.sender, ctx.now)
    invite_with_identity(ctx, patient, prof.user_id, f"accès accordé par {ctx.sender}")
    ctx.reply(f"✅ Accès accordé à {literal(prof.display_name)}.")
    await suivi.replan(ctx, patient)


async def _approvers(ctx, patient: Patient) -> set[str]:
    approvers = {patient.medecin_traitant} if patient.medecin_traitant else set()
    for prof in await ctx.services.directory.members(ctx.session):
        if has_role(prof, "referent"):
            approvers.add(prof.user_id)
    return approvers
