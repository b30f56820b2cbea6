"""Patients and their care circle: patient nouveau, cercle, acces, inclure, sortir.

Declarations and parsing; the use cases are in rooms.patients, rooms.cercle and rooms.parcours."""
from __future__ import annotations

import functools

from commands.arguments import Choice, Text, Token, Word
from commands.people import BirthDate, PatientCode, PersonList, PersonRef, Phone
from commands.registry import COORDINATION, DIRECT, PATIENT, CommandGroup, Option, Param
from domain.parcours import load_catalogue
from rooms.cercle import (
    add_to_cercle,
    answer_access,
    remove_from_cercle,
    request_access,
    require_member,
    show_cercle,
)
from rooms.directory import resolve_person
from rooms.parcours import exit_parcours, include_in_parcours
from rooms.patients import create_cercle, current_patient

SEXES = {"F": ["f", "femme", "feminin", "féminin"], "M": ["m", "h", "homme", "masculin"], "X": ["x", "autre", "nd"]}


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
    await create_cercle(ctx, nom=nom, prenom=prenom, naissance=naissance, sexe=sexe, tel=tel, adresse=adresse,
                        mt=mt, nir=nir, commune=commune, pros=pros)


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
    if action in (None, "voir"):
        await show_cercle(ctx, patient)
        return
    await require_member(ctx, patient)
    if personne is None:
        ctx.refuse(f"précisez qui {action}")
    prof = await resolve_person(ctx, personne)
    await (add_to_cercle if action == "ajouter" else remove_from_cercle)(ctx, patient, prof)


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
        await request_access(ctx, code)
        return
    await answer_access(ctx, await current_patient(ctx), cible, accept=action == "accepter")


@group.command(
    "inclure", aliases=["inclusion"], summary="inclure le patient dans un parcours",
    params=[Param("parcours", Word(placeholder="<parcours>"), help="le parcours : ic, bpco, dt2, plaie, perinat, gyneco, sport, …")],
    options=[Option("carte", Choice({"oui": ["remise", "o", "yes"], "non": ["n", "no"]}),
                    "carte (ou document) d'intégration remise au patient", required_when=_carte_requise())],
    examples=["!inclure ic carte=oui", "!inclure plaie carte=oui"],
    scopes=[PATIENT], category="Parcours",
)
async def inclure(ctx, parcours, carte=None):
    await include_in_parcours(ctx, await current_patient(ctx), parcours, carte)


@group.command(
    "sortir", aliases=["sortie"], summary="sortir le patient d'un parcours (raison obligatoire)",
    params=[Param("parcours", Word(placeholder="<parcours>")),
            Param("raison", Text(placeholder="<raison>"), help="la raison de la sortie")],
    examples=["!sortir plaie cicatrisation obtenue"],
    scopes=[PATIENT], category="Parcours",
)
async def sortir(ctx, parcours, raison):
    await exit_parcours(ctx, await current_patient(ctx), parcours, raison)
