"""A patient in the parcours: `!inclure` and `!sortir`. The rules are data (domain.parcours,
data/parcours); these use cases check them, record the inclusion and its ledger lines, rename
the room (codes and parcours names only), and hand over to questionnaires and suivi."""
from __future__ import annotations

from domain.markup import literal
from domain.parcours import find_parcours
from rooms import indemnites, questionnaires, suivi
from rooms.directory import has_role
from rooms.patients import active_inclusions, room_name
from storage.models import Inclusion, Patient, Professional


async def include_in_parcours(ctx, patient: Patient, parcours: str, carte: str | None = None) -> None:
    catalogue = ctx.services.catalogue
    p = find_parcours(catalogue, parcours)
    if p is None:
        names = ", ".join(sorted(catalogue))
        ctx.refuse(f"parcours inconnu : « {literal(parcours)} ». Parcours disponibles : {names}")
    prof = await ctx.services.directory.get(ctx.session, ctx.sender)
    if p.inclusion.medecin_traitant_requis and not patient.medecin_traitant:
        ctx.refuse(f"le parcours {p.nom} demande un médecin traitant identifié (« Seuls les patients qui ont "
                   "un médecin traitant identifié peuvent intégrer un parcours de soins »). Déclarez-le "
                   "d'abord, ou orientez vers la recherche de médecin traitant.", usage=False)
    allowed = _may_include(p, prof, patient)
    if not allowed:
        ctx.refuse(f"l'inclusion dans le parcours {p.nom} est faite par : {', '.join(p.inclusion.qui)}",
                   usage=False)
    if await active_inclusions(ctx.session, patient.code, p.code):
        ctx.refuse(f"le patient est déjà inclus dans le parcours {p.nom}", usage=False)
    needs_card = bool(p.inclusion.document_integration)
    if needs_card and carte != "oui":
        ctx.refuse(f"confirmez que {p.inclusion.document_integration} a été remis(e) au patient : "
                   f"`!inclure {p.code} carte=oui`")
    inclusion = Inclusion(patient_code=patient.code, parcours=p.code, included_by=ctx.sender,
                          included_at=ctx.now, attestation="remise" if carte == "oui" else None)
    ctx.session.add(inclusion)
    await ctx.session.flush()  # its id names the ledger lines and the questionnaires' rows
    planned = await questionnaires.on_inclusion(ctx, patient, inclusion)
    # Ledger: the repérage belongs to whoever identified the patient (created the cercle, whose
    # administrative part `!patient nouveau` requires), the inclusion to whoever includes.
    await indemnites.record(ctx, user_id=patient.created_by, kind="reperage", ref=f"inclusion:{inclusion.id}",
                            patient_code=patient.code, parcours=p.code, criteres=("administratif",),
                            consentement_oral="attesté à la création du cercle")
    await indemnites.record(ctx, user_id=ctx.sender, kind="inclusion", ref=f"inclusion:{inclusion.id}",
                            patient_code=patient.code, parcours=p.code,
                            criteres=("carte",) if carte == "oui" else (), attestation=carte == "oui")
    names = await _parcours_names(ctx, patient, extra=p.nom)
    ctx.queue("state", patient.room_id, {"type": "m.room.name", "state_key": "",
                                         "content": {"name": room_name(patient.code, names)}})
    base = "\n".join(f"- {d.libelle}" + (f" ({d.unite})" if d.unite else "") for d in p.donnees_de_base)
    text = f"✅ Patient **{patient.code}** inclus dans le parcours **{p.nom}**."
    if base:
        text += f"\n\nDonnées de base à renseigner (`!donnees élément=valeur`) :\n\n{base}"
    if planned:
        text += "\n\nQuestionnaires prévus : " + ", ".join(
            f"{q.questionnaire} ({'dès maintenant' if q.jour == 0 else f'J+{q.jour}'})"
            for q in questionnaires.for_parcours(ctx.services, p.code)) + "."
    ctx.reply(text)
    ctx.to_coordinators(f"📥 Inclusion de **{patient.code}** dans le parcours {p.nom} par {ctx.sender}.")
    await suivi.replan(ctx, patient)  # reminders counted from the inclusion (plaie, gynécologie), digests


async def exit_parcours(ctx, patient: Patient, parcours: str, raison: str) -> None:
    """The reason is stored encrypted; without any parcours left, the cercle is archived."""
    p = find_parcours(ctx.services.catalogue, parcours)
    if p is None:
        ctx.refuse(f"parcours inconnu : « {literal(parcours)} »")
    inclusions = await active_inclusions(ctx.session, patient.code, p.code)
    if not inclusions:
        ctx.refuse(f"le patient n'est pas inclus dans le parcours {p.nom}", usage=False)
    inclusion = inclusions[0]
    inclusion.ended_at = ctx.now
    inclusion.end_reason_enc = ctx.services.store.cipher.encrypt_text(raison, f"inclusion:{inclusion.id}")
    await questionnaires.on_exit(ctx, inclusion)
    await ctx.session.flush()
    await suivi.replan(ctx, patient)  # that parcours' pending reminders are cancelled (its éléments are no longer planned)
    names = await _parcours_names(ctx, patient)
    if names:
        ctx.queue("state", patient.room_id, {"type": "m.room.name", "state_key": "",
                                             "content": {"name": room_name(patient.code, names)}})
        ctx.reply(f"✅ Sortie du parcours {p.nom} notée. Parcours en cours : {', '.join(names)}.")
    else:
        patient.archived_at = ctx.now
        ctx.queue("state", patient.room_id, {"type": "m.room.name", "state_key": "",
                                             "content": {"name": f"Cercle {patient.code} · archivé"}})
        ctx.reply(f"✅ Sortie du parcours {p.nom} notée. Plus aucun parcours : le cercle {patient.code} est archivé.")
    ctx.to_coordinators(f"📤 Sortie de **{patient.code}** du parcours {p.nom}.")


def _may_include(p, prof: Professional | None, patient: Patient) -> bool:
    if prof is None:
        return False
    who = {w.lower() for w in p.inclusion.qui}
    if "medecin_traitant" in who and prof.user_id == patient.medecin_traitant:
        return True
    if prof.profession in who or has_role(prof, "referent") or has_role(prof, "coordinateur"):
        return True
    return "tous" in who


async def _parcours_names(ctx, patient: Patient, extra: str | None = None) -> list[str]:
    codes = [i.parcours for i in await active_inclusions(ctx.session, patient.code)]
    names = [ctx.services.catalogue[c].nom for c in codes if c in ctx.services.catalogue]
    if extra and extra not in names:
        names.append(extra)
    return names
