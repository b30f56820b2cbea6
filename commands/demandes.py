"""Requests: dec (déclenchement), accepter, refuser, rdv, cr, cloturer, annuler, demandes.

Each handler parses, finds the request and calls its use case in rooms.demandes, which does the
effects (state, deadlines, notices)."""
from __future__ import annotations

import re

from commands.arguments import (
    ArgType,
    ArgumentError,
    Choice,
    Duration,
    Text,
    TimeSlot,
    Word,
)
from commands.cercle import current_patient, resolve_person
from commands.registry import DIRECT, PATIENT, CommandGroup, Option, Param
from domain.demandes import Etat
from domain.flows import Mode, find_flow
from domain.markup import literal
from domain.text import format_french_datetime
from rooms import demandes
from rooms.directory import find_profession, names, profession_label


class DemandeRef(ArgType):
    """n°3 in the patient room; P-7K3Q/3 anywhere (e.g. answering a pool notice in a direct chat)."""

    placeholder = "<n°>"
    description = "numéro de la demande (3, n°3) ; hors du salon du patient : P-XXXX/3"
    examples = ["3", "P-7K3Q/3"]

    def parse(self, tokens, pos, ctx=None):
        text = tokens[pos].text.strip()
        m = re.fullmatch(r"(?:(P-[2-9A-HJ-NP-Z]{4})/)?(?:n°|no|#)?(\d{1,5})", text, re.I)
        if not m:
            raise ArgumentError(f"« {literal(text)} » n'est pas un numéro de demande (3, n°3 ou P-XXXX/3)")
        return ((m[1] or "").upper() or None, int(m[2])), pos + 1


class FlowName(ArgType):
    """A request type from data/flows.yaml; anything else is left to the comment."""

    placeholder = "<soins>"
    description = "type de demande (consultation, vad, teleconsultation, conseil, snp, sport_sante…)"
    examples = ["vad"]

    def parse(self, tokens, pos, ctx=None):
        text = tokens[pos].text
        if tokens[pos].quoted or ctx is None or find_flow(ctx.flows, text) is None:
            raise ArgumentError(f"« {literal(text)} » n'est pas un type de demande")
        return text, pos + 1




MODES = {Mode.CABINET.value: ["cabinet", "lieu d'exercice"], Mode.DOMICILE.value: ["vad", "visite", "domicile"],
         Mode.TELECONSULTATION.value: ["tlc", "teleconsult", "visio", "téléconsultation"],
         Mode.TELEPHONE.value: ["tel", "téléphone", "conseil"]}


def _target(text: str):
    """A profession, a role (référent…), or None (then a person)."""
    prof = find_profession(text)
    if prof:
        return ("profession", prof.code)
    key = text.lower().replace("é", "e")
    if key in ("referent", "referent_parcours", "ref"):
        return ("role", "referent")
    return None


group = CommandGroup()


@group.command(
    "declenchement", aliases=["dec", "déclencher", "declencher"],
    summary="demander une prise en charge à un·e collègue ou à une profession",
    params=[Param("cible", Word(placeholder="<cible>"),
                  help="une profession (infirmier, kiné, médecin…), « referent », ou une personne (@id ou nom)"),
            Param("soins", FlowName(), optional=True,
                  help="type : consultation, vad, teleconsultation, conseil, snp, red_flag, sport_sante, "
                       "recherche_mt, referent_parcours, tcim… (consultation par défaut)"),
            Param("commentaire", Text(), help="la demande détaillée (obligatoire)")],
    options=[Option("reponse", Duration(), "délai de réponse (si le type le permet)"),
             Option("intervention", Duration(), "délai d'intervention, compté depuis l'acceptation"),
             Option("commune", Word(placeholder="<commune>"), "commune, pour élargir aux professionnels proches"),
             Option("motif", Choice({"renouvellement_ordonnance": ["renouvellement", "ordonnance"]}),
                    "SNP : renouvellement d'ordonnance (48 h)")],
    help=("La demande reçoit un numéro dans le salon. Le cercle est sollicité d'abord (le médecin traitant "
          "en premier pour un médecin) ; sans réponse à mi-délai, tous les professionnels de la profession "
          "dans la CPTS reçoivent une notification sans identité ; relance à 75 % ; à l'échéance, les "
          "coordinateurs sont prévenus."),
    examples=["!dec infirmier vad pansement quotidien plaie talon gauche, 10 jours",
              "!dec kine reponse=2j rééducation après chute",
              "!dec @ide.petit:localhost surveillance glycémie"],
    scopes=[PATIENT], category="Demandes",
)
async def declenchement(ctx, cible, soins, commentaire, reponse=None, intervention=None, commune=None,
                        motif=None):
    patient = await current_patient(ctx)
    flow = find_flow(ctx.services.flows, soins) if soins else ctx.services.flows["consultation"]
    if flow.code == "tcim":  # its eligibility is asked, not assumed (issue 12)
        ctx.refuse("une TCIM se demande avec `!tcim demande <snp|reevaluation> sans_mt=oui deplacement=non "
                   "<commentaire>` (critères d'éligibilité) ; détail : `!aide tcim demande`", usage=False)
    target = _target(cible)
    person = None
    if target is None:
        person = await resolve_person(ctx, cible)
    profession = target[1] if target and target[0] == "profession" else (person.profession if person else None)
    if target and target[0] == "role" and not flow.cible_role:
        flow = ctx.services.flows["referent_parcours"]
    d = await demandes.declencher(ctx, patient, flow, commentaire=commentaire, commune=commune, motif=motif,
                                  cible_profession=flow.cible_profession or profession,
                                  cible_personne=person.user_id if person else None,
                                  delai_reponse=reponse, delai_intervention=intervention)
    cible_txt = literal(person.display_name if person else (profession_label(profession) if profession else cible))
    ctx.reply(f"🆗 Demande **n°{d.numero}** créée ({flow.libelle} → {cible_txt}). "
              f"Réponse attendue avant {format_french_datetime(d.echeance_reponse, ctx.services.tz, now=ctx.now)}."
              if d.echeance_reponse else f"🆗 Demande **n°{d.numero}** créée ({flow.libelle}).")


@group.command(
    "accepter", aliases=["ok", "prendre"], summary="accepter une demande (la première acceptation l'emporte)",
    params=[Param("demande", DemandeRef(), optional=True)],
    examples=["!accepter 3", "accepter P-7K3Q/3"], scopes=[PATIENT, DIRECT], category="Demandes",
)
async def accepter(ctx, demande=None):
    patient, row = await demandes.resolve(ctx, demande, answering=True)
    await demandes.accept(ctx, patient, row)


@group.command(
    "refuser", aliases=["decliner", "décliner"], summary="décliner une demande (motif obligatoire)",
    params=[Param("demande", DemandeRef(), optional=True), Param("motif", Text(placeholder="<motif>"))],
    examples=["!refuser 3 pas de disponibilité avant lundi", "refuser P-7K3Q/3 hors secteur"],
    scopes=[PATIENT, DIRECT], category="Demandes",
)
async def refuser(ctx, motif, demande=None):
    patient, row = await demandes.resolve(ctx, demande, answering=True)
    await demandes.decline(ctx, patient, row, motif)


@group.command(
    "rdv", aliases=["rendez-vous", "rendezvous"], summary="fixer le rendez-vous d'une demande acceptée",
    params=[Param("demande", DemandeRef(), optional=True),
            Param("quand", TimeSlot(), help="date et heure (12/03 14h30, demain 9h) ou tranche (demain matin, 14h-16h)"),
            Param("lieu", Choice(MODES, placeholder="<cabinet|domicile|teleconsultation|telephone>")),
            Param("precisions", Text(min_length=1, placeholder="<précisions>"), optional=True,
                  help="éléments complémentaires, confidentialité (ex. : ne pas communiquer mon nom)")],
    examples=["!rdv 3 demain 9h domicile", "!rdv 12/03 14h30 cabinet", "!rdv 3 demain après-midi teleconsultation"],
    scopes=[PATIENT], category="Demandes",
)
async def rdv(ctx, quand, lieu, demande=None, precisions=None):
    patient, row = await demandes.resolve(ctx, demande, answering=False)
    slot = (quand.start, quand.end) if quand.end else quand.start
    await demandes.set_rdv(ctx, patient, row, slot, Mode(lieu), precisions)


@group.command(
    "cr", aliases=["compte-rendu", "compterendu"], summary="poster le compte-rendu d'une demande",
    params=[Param("demande", DemandeRef(), optional=True), Param("texte", Text(placeholder="<compte-rendu>"))],
    examples=["!cr 3 pansement refait, plaie propre, prochain passage jeudi"],
    scopes=[PATIENT], category="Demandes",
)
async def cr(ctx, texte, demande=None):
    patient, row = await demandes.resolve(ctx, demande, answering=False)
    await demandes.post_cr(ctx, patient, row, texte)


@group.command(
    "cloturer", aliases=["clore", "clôturer", "fermer"], summary="clôturer une demande",
    params=[Param("demande", DemandeRef(), optional=True)],
    examples=["!cloturer 3"], scopes=[PATIENT], category="Demandes",
)
async def cloturer(ctx, demande=None):
    patient, row = await demandes.resolve(ctx, demande, answering=False)
    await demandes.close(ctx, patient, row)


@group.command(
    "annuler", summary="annuler une demande (motif obligatoire)",
    params=[Param("demande", DemandeRef(), optional=True), Param("motif", Text(placeholder="<motif>"))],
    examples=["!annuler 3 patient hospitalisé"], scopes=[PATIENT], category="Demandes",
)
async def annuler(ctx, motif, demande=None):
    patient, row = await demandes.resolve(ctx, demande, answering=False)
    await demandes.cancel(ctx, patient, row, motif)


@group.command(
    "demandes", summary="les demandes en cours du salon (ou les vôtres, en conversation directe)",
    examples=["!demandes"], scopes=[PATIENT, DIRECT], category="Demandes",
)
async def en_cours(ctx):
    rows = await demandes.open_rows(ctx.session, ctx.room_id if ctx.room_kind == PATIENT else None)
    lines = []
    for row in rows:
        d = demandes.read(ctx.store.cipher, row)
        if ctx.room_kind != PATIENT and ctx.sender not in (*d.sollicites, d.demandeur):
            continue
        ref = f"n°{d.numero}" if ctx.room_kind == PATIENT else f"{row.patient_code}/{d.numero}"
        lines.append(await _demande_line(ctx, ref, d))
    ctx.reply("\n".join(["**Demandes en cours**", "", *lines]) if lines else "Aucune demande en cours.")


# Each state as `!demandes` says it to clinicians (not its code).
ETATS = {
    Etat.EN_ATTENTE: "en attente de réponse",
    Etat.EXPIREE: "sans preneur, coordinateurs prévenus",
    Etat.ACCEPTEE: "acceptée",
    Etat.RDV_FIXE: "rendez-vous fixé",
    Etat.CR_POSTE: "compte-rendu posté",
    Etat.CLOTUREE: "clôturée",
    Etat.ANNULEE: "annulée",
}


async def _demande_line(ctx, ref: str, d) -> str:
    """`n°1 · Visite à domicile → infirmier·e · en attente de réponse · réponse avant …`."""
    flow = ctx.services.flows.get(d.flow)
    libelle = d.libelle or (flow.libelle if flow else d.flow)
    noms = await names(ctx.session, [d.cible_personne, d.acceptee_par])
    if d.cible_personne:
        cible = noms[d.cible_personne]
    elif d.cible_profession:
        cible = profession_label(d.cible_profession)
    else:
        cible = (flow.intervenant if flow and flow.intervenant else None) or (d.cible_role or "?").replace("_", " ")
    etat = ETATS.get(d.etat, d.etat.value)
    if d.acceptee_par:
        etat += f" par {noms[d.acceptee_par]}"
    tz = ctx.services.tz
    if d.etat is Etat.EN_ATTENTE and d.echeance_reponse:
        etat += f" · réponse attendue avant {format_french_datetime(d.echeance_reponse, tz, now=ctx.now)}"
    elif d.etat is Etat.EXPIREE and d.echeance_reponse:
        etat += f" depuis {format_french_datetime(d.echeance_reponse, tz, now=ctx.now)}"
    elif d.etat is Etat.RDV_FIXE and d.rdv:
        etat += f" : {d.rdv.decrire()}"
    elif d.etat is Etat.ACCEPTEE and d.echeance_intervention:
        etat += f" · intervention attendue avant {format_french_datetime(d.echeance_intervention, tz, now=ctx.now)}"
    return f"- {ref} · {libelle} → {cible} · {etat}"
