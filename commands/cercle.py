"""Patients and their care circle: patient nouveau, cercle, acces, inclure, sortir."""
from __future__ import annotations

import functools

from commands.arguments import Choice, Text, Token, Word
from commands.people import BirthDate, PatientCode, PersonList, PersonRef, Phone
from commands.registry import COORDINATION, DIRECT, PATIENT, CommandGroup, Option, Param
from domain.markup import literal
from domain.parcours import find_parcours, load_catalogue
from rooms import indemnites, questionnaires, suivi
from rooms.advertise import advertise_commands
from rooms.directory import direct_room_of, has_role, profession_label
from rooms.patients import (
    Identity,
    active_inclusions,
    add_member,
    cercle_members,
    creation_request,
    encrypt_identity,
    invite_with_identity,
    new_code,
    patient_by_code,
    patient_by_room,
    pending_room,
    require_room,
    room_name,
)
from storage.models import BotState, CercleMember, Inclusion, Patient, Professional

SEXES = {"F": ["f", "femme", "feminin", "féminin"], "M": ["m", "h", "homme", "masculin"], "X": ["x", "autre", "nd"]}


async def resolve_person(ctx, ref: str) -> Professional:
    """A directory member from an @id or a name; refuses (French) when none or several match."""
    try:
        found = await ctx.services.directory.search(ctx.session, ref)
    except ValueError as e:
        ctx.refuse(f"« {literal(ref)} » : {e}")
    if not found:
        ctx.refuse(f"personne dans l'annuaire ne correspond à « {literal(ref)} »")
    if len(found) > 1:
        names = "\n".join(f"- {literal(p.display_name)} ({profession_label(p.profession)}) : `{p.user_id}`" for p in found[:10])
        ctx.refuse(f"plusieurs professionnels correspondent à « {literal(ref)} » ; précisez avec l'identifiant :\n{names}",
                   usage=False)
    return found[0]


async def current_patient(ctx) -> Patient:
    patient = await patient_by_room(ctx.session, ctx.room_id)
    if patient is None:
        ctx.refuse("ce salon n'est pas le cercle d'un patient", usage=False)
    if patient.archived_at is not None:
        ctx.refuse(f"le cercle {patient.code} est archivé", usage=False)
    return patient


async def is_member(ctx, patient: Patient, user_id: str) -> bool:
    return any(m.user_id == user_id for m in await cercle_members(ctx.session, patient.code))



@functools.lru_cache(maxsize=1)
def _carte_requise() -> str:
    """For `!aide inclure`: the parcours whose inclusion needs `carte=oui` (data/parcours)."""
    noms = [p.nom for p in load_catalogue().values() if p.inclusion.document_integration]
    return f"pour : {', '.join(noms)}" if noms else ""


group = CommandGroup()


@group.command(
    "patient", summary="créer le cercle de soins d'un patient (salon chiffré)",
    params=[Param("action", Choice({"nouveau": ["creer", "créer", "nouvelle", "new"]}, placeholder="nouveau"),
                  help="nouveau")],
    options=[Option("nom", Word(placeholder="<nom>"), "nom de naissance ou d'usage", required=True),
             Option("prenom", Word(placeholder="<prénom>"), "prénom", required=True),
             Option("naissance", BirthDate(), required=True),
             Option("sexe", Choice(SEXES), "F, M ou X", required=True),
             Option("tel", Phone(), required=True),
             Option("adresse", Word(placeholder='"<adresse>"'), "adresse, entre guillemets", required=True),
             Option("mt", PersonRef(), "médecin traitant (annuaire)"),
             Option("nir", Word(placeholder="<NIR>"), "numéro de sécurité sociale"),
             Option("commune", Word(placeholder="<commune>"), "commune du domicile (pour les notifications élargies)"),
             Option("pros", PersonList(), "autres professionnels habituels"),
             Option("consentement", Choice({"oui": ["o", "recueilli"]}),
                    "le consentement oral du patient a été recueilli (obligatoire)", required=True)],
    help=("Crée un salon chiffré pour le patient, nommé par un code pseudonyme (P-XXXX), et y invite "
          "le cercle. L'identité n'apparaît que dans la fiche d'identité chiffrée (épinglée), jamais "
          "dans le nom ou le sujet du salon. Tapez-la dans votre conversation directe avec Cercle : "
          "dans un salon partagé, le message (qui contient l'identité) est effacé et la réponse vous "
          "arrive en privé."),
    examples=['!patient nouveau nom=Dupont prenom=Marie naissance=12/03/1950 sexe=F tel=0612345678 '
              'adresse="3 rue des Lilas, 91220 Brétigny-sur-Orge" commune=Brétigny-sur-Orge mt=Martin '
              'consentement=oui'],
    scopes=[DIRECT, COORDINATION], category="Patients", carries_identity=True,
)
async def patient_nouveau(ctx, action, nom=None, prenom=None, naissance=None, sexe=None, tel=None,
                          adresse=None, mt=None, nir=None, commune=None, pros=None, consentement=None):
    creator = await ctx.services.directory.get(ctx.session, ctx.sender)
    mt_prof = await resolve_person(ctx, mt) if mt else None
    if mt_prof and mt_prof.profession != "medecin_generaliste":
        ctx.refuse(f"{literal(mt_prof.display_name)} n'est pas médecin généraliste : il ne peut pas être médecin traitant")
    others = [await resolve_person(ctx, p) for p in pros or []]
    invitees = {p.user_id: p for p in ([mt_prof] if mt_prof else []) + others}
    if creator and creator.profession != "autre":  # a coordinator alone does not join every cercle
        invitees.setdefault(creator.user_id, creator)

    code = await new_code(ctx.session)
    identity = Identity(nom=nom, prenom=prenom, naissance=naissance.isoformat(), sexe=sexe, telephone=tel,
                        adresse=adresse, nir=nir)
    # No room yet: the outbox creates it once this transaction has committed, so a command that
    # fails leaves nothing on the homeserver. Everything for the room is queued against its
    # creation key and goes out, in order, once the room exists.
    ctx.session.add(Patient(code=code, room_id=None, identity_enc=encrypt_identity(ctx.store.cipher, code, identity),
                            medecin_traitant=mt_prof.user_id if mt_prof else None, created_by=ctx.sender,
                            created_at=ctx.now, commune=commune, birth_year=naissance.year))
    for user_id in invitees:
        role = "medecin_traitant" if mt_prof and user_id == mt_prof.user_id else "habituel"
        await add_member(ctx.session, code, user_id, role, ctx.sender, ctx.now)
    room_id = pending_room(code)
    ctx.queue("create_room", room_id,
              creation_request(code, [u for u in invitees if u != ctx.services.bot_user_id], notify=ctx.room_id))

    card = identity.card(code, mt_prof.display_name if mt_prof else None)
    ctx.send(room_id, card + "\n\nTapez `!aide` pour les commandes du cercle.", ref=f"identity:{code}",
             mentions={u: p.display_name for u, p in invitees.items()})
    ctx.queue("pin", room_id, {"ref": f"identity:{code}"})

    await advertise_commands(ctx.services, ctx.session, room_id, PATIENT)
    members = ", ".join(literal(p.display_name) for p in invitees.values()) or "personne"
    ctx.reply(f"✅ Cercle **{code}** créé : le salon « {room_name(code, [])} » est en cours de création, "
              f"les invitations partent dans un instant. Invité·e·s : {members}.\n"
              f"Pour inclure le patient dans un parcours : `!inclure <parcours>` dans ce salon.")
    ctx.to_coordinators(f"🆕 Nouveau cercle **{code}** créé par {ctx.sender}"
                              f"{' ; médecin traitant : ' + literal(mt_prof.display_name) if mt_prof else ' ; sans médecin traitant'}.")


@group.command(
    "cercle", summary="voir, compléter ou réduire le cercle de soins du patient",
    params=[Param("action", Choice({"voir": ["liste", "lister"], "ajouter": ["ajout", "inviter"],
                                    "retirer": ["enlever", "supprimer"]}), optional=True,
                  help="voir (par défaut), ajouter ou retirer"),
            Param("personne", PersonRef(), optional=True)],
    examples=["!cercle", "!cercle ajouter Petit", "!cercle retirer @ide.durand:cpts.fr"],
    scopes=[PATIENT], category="Patients",
)
async def cercle(ctx, action=None, personne=None):
    patient = await current_patient(ctx)
    members = await cercle_members(ctx.session, patient.code)
    if action in (None, "voir"):
        lines = [f"**Cercle de soins {patient.code}**", ""]
        for m in members:
            prof = await ctx.session.get(Professional, m.user_id)
            label = f"{literal(prof.display_name)} ({profession_label(prof.profession)})" if prof else m.user_id
            role = {"medecin_traitant": " · médecin traitant", "intervenant": " · intervenant·e"}.get(m.role, "")
            lines.append(f"- {label}{role}")
        ctx.reply("\n".join(lines))
        return
    if not await is_member(ctx, patient, ctx.sender):
        ctx.refuse("seuls les membres du cercle peuvent le modifier", usage=False)
    if personne is None:
        ctx.refuse(f"précisez qui {action}")
    prof = await resolve_person(ctx, personne)
    if action == "ajouter":
        if not await add_member(ctx.session, patient.code, prof.user_id, "habituel", ctx.sender, ctx.now):
            ctx.refuse(f"{literal(prof.display_name)} fait déjà partie du cercle", usage=False)
        invite_with_identity(ctx, patient, prof.user_id, f"ajout par {ctx.sender}")
        ctx.reply(f"✅ {literal(prof.display_name)} ({profession_label(prof.profession)}) est invité·e dans le cercle.")
        return
    row = await ctx.session.get(CercleMember, (patient.code, prof.user_id))
    if row is None or row.removed_at is not None:
        ctx.refuse(f"{literal(prof.display_name)} ne fait pas partie du cercle", usage=False)
    if row.role == "medecin_traitant":
        ctx.refuse("le médecin traitant ne peut pas être retiré du cercle", usage=False)
    row.removed_at = ctx.now
    ctx.queue("kick", patient.room_id, {"user_id": prof.user_id, "reason": f"retiré du cercle par {ctx.sender}"})
    ctx.reply(f"✅ {literal(prof.display_name)} est retiré·e du cercle.")


@group.command(
    "acces", aliases=["accès"], summary="demander l'accès à un cercle, ou y répondre",
    params=[Param("action", Choice({"demander": ["demande"], "accepter": ["autoriser", "valider"],
                                    "refuser": ["rejeter"]})),
            Param("cible", Word(placeholder="<P-XXXX|personne>"), help="P-XXXX pour demander ; la personne pour accepter ou refuser")],
    help=("Hors du cercle : `!acces demander P-XXXX` (en conversation directe avec le bot). Le médecin "
          "traitant ou un référent parcours répond dans le salon du patient : `!acces accepter @personne`."),
    examples=["!acces demander P-7K3Q", "!acces accepter @ide.petit:cpts.fr"],
    category="Patients",
)
async def acces(ctx, action, cible):
    if action == "demander":
        code, _ = PatientCode().parse([Token(cible, False)], 0, None)
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
        return
    patient = await current_patient(ctx)
    if ctx.sender not in await _approvers(ctx, patient):
        ctx.refuse("seuls le médecin traitant et les référents parcours répondent aux demandes d'accès",
                   usage=False)
    prof = await resolve_person(ctx, cible)
    asked = await ctx.session.get(BotState, f"access:{patient.code}:{prof.user_id}")
    if asked is None:
        ctx.refuse(f"{literal(prof.display_name)} n'a pas demandé l'accès à ce cercle", usage=False)
    await ctx.session.delete(asked)
    if action == "refuser":
        ctx.send(await direct_room_of(ctx.session, prof.user_id) or patient.room_id,
                 f"Votre demande d'accès au cercle {patient.code} n'a pas été acceptée.")
        ctx.reply(f"Demande de {literal(prof.display_name)} refusée.")
        return
    await add_member(ctx.session, patient.code, prof.user_id, "habituel", ctx.sender, ctx.now)
    invite_with_identity(ctx, patient, prof.user_id, f"accès accordé par {ctx.sender}")
    ctx.reply(f"✅ Accès accordé à {literal(prof.display_name)}.")


@group.command(
    "inclure", aliases=["inclusion"], summary="inclure le patient dans un parcours",
    params=[Param("parcours", Word(placeholder="<parcours>"), help="le parcours : ic, bpco, dt2, plaie, perinat, gyneco, sport, …")],
    options=[Option("carte", Choice({"oui": ["remise", "o", "yes"], "non": ["n", "no"]}),
                    "carte (ou document) d'intégration remise au patient", required_when=_carte_requise())],
    examples=["!inclure ic carte=oui", "!inclure plaie carte=oui"],
    scopes=[PATIENT], category="Parcours",
)
async def inclure(ctx, parcours, carte=None):
    patient = await current_patient(ctx)
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


@group.command(
    "sortir", aliases=["sortie"], summary="sortir le patient d'un parcours (raison obligatoire)",
    params=[Param("parcours", Word(placeholder="<parcours>")),
            Param("raison", Text(placeholder="<raison>"), help="la raison de la sortie")],
    examples=["!sortir plaie cicatrisation obtenue"],
    scopes=[PATIENT], category="Parcours",
)
async def sortir(ctx, parcours, raison):
    patient = await current_patient(ctx)
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


async def _approvers(ctx, patient: Patient) -> set[str]:
    approvers = {patient.medecin_traitant} if patient.medecin_traitant else set()
    for prof in await ctx.services.directory.members(ctx.session):
        if has_role(prof, "referent"):
            approvers.add(prof.user_id)
    return approvers


async def _parcours_names(ctx, patient: Patient, extra: str | None = None) -> list[str]:
    codes = [i.parcours for i in await active_inclusions(ctx.session, patient.code)]
    names = [ctx.services.catalogue[c].nom for c in codes if c in ctx.services.catalogue]
    if extra and extra not in names:
        names.append(extra)
    return names
