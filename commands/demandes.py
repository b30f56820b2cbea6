"""Requests: dec (déclenchement), accepter, refuser, rdv, cr, cloturer, annuler, demandes."""
from __future__ import annotations

import dataclasses
import re

from sqlalchemy import select

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
from commands.registry import DIRECT, PATIENT, CommandRegistry, Option, Param
from domain.demandes import (
    Declinee,
    DejaPrise,
    Etat,
    Refus,
    accepter,
    annuler,
    cloturer,
    creer_demande,
    fixer_rdv,
    poster_cr,
    refuser,
)
from domain.flows import Mode, find_flow
from domain.markup import literal
from domain.permissions import Action
from domain.text import format_french_datetime
from rooms import demandes as store
from rooms.access import authorize
from rooms.directory import find_profession, profession_label
from storage.models import Act, OutboxItem, Patient
from storage.models import Demande as DemandeRow


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


async def _candidates(ctx, *, answering: bool) -> list[DemandeRow]:
    room = ctx.room_id if ctx.room_kind == PATIENT else None
    rows = await store.open_rows(ctx.session, room)
    picked = []
    for row in rows:
        d = store.read(ctx.store.cipher, row)
        if answering and ctx.sender in d.sollicites and d.etat in (Etat.EN_ATTENTE, Etat.EXPIREE):
            picked.append(row)
        elif not answering and ctx.sender in (d.acceptee_par, d.demandeur, d.pour_compte_de):
            picked.append(row)
    return picked


async def resolve(ctx, ref, *, answering: bool) -> tuple[Patient, DemandeRow]:
    """The request a command is about: by number, by P-XXXX/n, or the only one that fits."""
    if ref is None:
        rows = await _candidates(ctx, answering=answering)
        if not rows:
            ctx.refuse("aucune demande en cours ne vous concerne ici", usage=False)
        if len(rows) > 1:
            listed = ", ".join(f"n°{r.numero}" if ctx.room_kind == PATIENT else f"{r.patient_code}/{r.numero}"
                               for r in rows)
            ctx.refuse(f"plusieurs demandes vous concernent ({listed}) : précisez laquelle")
        row = rows[0]
    else:
        code, numero = ref
        if code:
            patient = await ctx.session.get(Patient, code)
            row = await store.find(ctx.session, patient.room_id, numero) if patient else None
        elif ctx.room_kind == PATIENT:
            row = await store.find(ctx.session, ctx.room_id, numero)
        else:
            ctx.refuse("hors du salon du patient, donnez la référence complète, par exemple P-7K3Q/3")
        if row is None:
            ctx.refuse(f"demande « {(code + '/') if code else 'n°'}{numero} » inconnue")
    patient = await ctx.session.get(Patient, row.patient_code)
    return patient, row


async def _answer(ctx, outcome, patient, row, d) -> None:
    """Business refusals are answers without side effects; successes are saved."""
    if isinstance(outcome, Refus):
        ctx.refuse(outcome.texte(await store.names(ctx.session, outcome.personnes.values())), usage=False)
    store.write(ctx.store.cipher, row, d)


def _target(text: str):
    """A profession, a role (référent…), or None (then a person)."""
    prof = find_profession(text)
    if prof:
        return ("profession", prof.code)
    key = text.lower().replace("é", "e")
    if key in ("referent", "referent_parcours", "ref"):
        return ("role", "referent")
    return None


def register(registry: CommandRegistry) -> None:
    @registry.command(
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
        target = _target(cible)
        person = None
        if target is None:
            person = await resolve_person(ctx, cible)
        profession = target[1] if target and target[0] == "profession" else (person.profession if person else None)
        kwargs = dict(cible_profession=flow.cible_profession or profession,
                      cible_personne=person.user_id if person else None)
        if target and target[0] == "role" and not flow.cible_role:
            flow = ctx.services.flows["referent_parcours"]
        demandeur, pour = ctx.sender, None
        me = await ctx.services.directory.get(ctx.session, ctx.sender)
        for role in me.roles or []:
            if role.startswith("secretaire:"):  # decisions.md 11: on behalf of a professional
                pour = role.split(":", 1)[1]
        numero = await store.next_numero(ctx.session, ctx.room_id)
        d = creer_demande(numero, flow, demandeur, ctx.now, commentaire=commentaire, pour_compte_de=pour,
                          medecin_traitant=patient.medecin_traitant, motif=motif, delai_reponse=reponse,
                          delai_intervention=intervention, commune=commune,
                          fuseau=ctx.services.timezone, **kwargs)
        if isinstance(d, Refus):
            ctx.refuse(d.texte())
        row = await store.start(ctx, patient, d, flow, commune)
        ctx.session.add(Act(user_id=pour or ctx.sender, kind="declenchement", patient_code=patient.code,
                            parcours=flow.parcours, ref=f"demande:{row.id}", at=ctx.now,
                            details={"flow": flow.code, "par": ctx.sender}))
        cible_txt = literal(person.display_name if person else (profession_label(profession) if profession else cible))
        ctx.reply(f"🆗 Demande **n°{d.numero}** créée ({flow.libelle} → {cible_txt}). "
                  f"Réponse attendue avant {format_french_datetime(d.echeance_reponse, ctx.services.tz, now=ctx.now)}."
                  if d.echeance_reponse else f"🆗 Demande **n°{d.numero}** créée ({flow.libelle}).")

    @registry.command(
        "accepter", aliases=["ok", "prendre"], summary="accepter une demande (la première acceptation l'emporte)",
        params=[Param("demande", DemandeRef(), optional=True)],
        examples=["!accepter 3", "accepter P-7K3Q/3"], scopes=[PATIENT, DIRECT], category="Demandes",
    )
    async def accepter_cmd(ctx, demande=None):
        patient, row = await resolve(ctx, demande, answering=True)
        await accept(ctx, patient, row)

    @registry.command(
        "refuser", aliases=["decliner", "décliner"], summary="décliner une demande (motif obligatoire)",
        params=[Param("demande", DemandeRef(), optional=True), Param("motif", Text(placeholder="<motif>"))],
        examples=["!refuser 3 pas de disponibilité avant lundi", "refuser P-7K3Q/3 hors secteur"],
        scopes=[PATIENT, DIRECT], category="Demandes",
    )
    async def refuser_cmd(ctx, motif, demande=None):
        patient, row = await resolve(ctx, demande, answering=True)
        d = store.read(ctx.store.cipher, row)
        await authorize(ctx, Action.REFUSER, patient, d)
        outcome = refuser(d, ctx.sender, motif, ctx.now)
        if isinstance(outcome, DejaPrise):
            ctx.reply(outcome.texte(await store.names(ctx.session, [outcome.par])))
            return
        await _answer(ctx, outcome, patient, row, d)
        noms = await store.names(ctx.session, [ctx.sender, *d.demandeurs])
        ctx.send(patient.room_id, outcome.texte(noms), mentions={u: noms[u] for u in d.demandeurs})
        if ctx.room_id != patient.room_id:
            ctx.reply(f"Refus noté pour la demande {patient.code}/{d.numero}. Merci.")
        if isinstance(outcome, Declinee) and outcome.avancer_vers:
            # The MT declined, or everyone asked did: the next rung now, not at its planned time.
            await ctx.services.store.bring_forward(ctx.session, f"demande.{outcome.avancer_vers.value}",
                                              f"demande:{row.id}", ctx.now, ctx.now,
                                              payload={"room_id": patient.room_id, "commune": patient.commune})

    @registry.command(
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
        patient, row = await resolve(ctx, demande, answering=False)
        d = store.read(ctx.store.cipher, row)
        permission = await authorize(ctx, Action.RDV, patient, d)
        slot = (quand.start, quand.end) if quand.end else quand.start
        outcome = fixer_rdv(d, ctx.sender, slot, Mode(lieu), ctx.now, au_nom_de=permission.acting_for)
        if precisions and not isinstance(outcome, Refus):
            d.rdv = dataclasses.replace(d.rdv, texte=precisions)
        await _answer(ctx, outcome, patient, row, d)
        noms = await store.names(ctx.session, [ctx.sender, permission.acting_for, *d.demandeurs])
        ctx.reply(outcome.texte(noms) + (f"\n{literal(precisions)}" if precisions else ""),
                  mentions={u: noms[u] for u in d.demandeurs})

    @registry.command(
        "cr", aliases=["compte-rendu", "compterendu"], summary="poster le compte-rendu d'une demande",
        params=[Param("demande", DemandeRef(), optional=True), Param("texte", Text(placeholder="<compte-rendu>"))],
        examples=["!cr 3 pansement refait, plaie propre, prochain passage jeudi"],
        scopes=[PATIENT], category="Demandes",
    )
    async def cr(ctx, texte, demande=None):
        patient, row = await resolve(ctx, demande, answering=False)
        d = store.read(ctx.store.cipher, row)
        await authorize(ctx, Action.CR, patient, d)
        outcome = poster_cr(d, ctx.sender, texte, ctx.now)
        await _answer(ctx, outcome, patient, row, d)
        await ctx.services.store.cancel_deadlines(f"demande:{row.id}", ("demande.intervention",), session=ctx.session)
        noms = await store.names(ctx.session, [ctx.sender, *d.demandeurs])
        ctx.reply(outcome.texte(noms), mentions={u: noms[u] for u in d.demandeurs})

    @registry.command(
        "cloturer", aliases=["clore", "clôturer", "fermer"], summary="clôturer une demande",
        params=[Param("demande", DemandeRef(), optional=True)],
        examples=["!cloturer 3"], scopes=[PATIENT], category="Demandes",
    )
    async def cloturer_cmd(ctx, demande=None):
        patient, row = await resolve(ctx, demande, answering=False)
        d = store.read(ctx.store.cipher, row)
        await authorize(ctx, Action.CLOTURER, patient, d)
        outcome = cloturer(d, ctx.sender, ctx.now)
        await _answer(ctx, outcome, patient, row, d)
        await ctx.services.store.cancel_deadlines(f"demande:{row.id}", session=ctx.session)
        ctx.reply(outcome.texte(await store.names(ctx.session, [ctx.sender])))

    @registry.command(
        "annuler", summary="annuler une demande (motif obligatoire)",
        params=[Param("demande", DemandeRef(), optional=True), Param("motif", Text(placeholder="<motif>"))],
        examples=["!annuler 3 patient hospitalisé"], scopes=[PATIENT], category="Demandes",
    )
    async def annuler_cmd(ctx, motif, demande=None):
        patient, row = await resolve(ctx, demande, answering=False)
        d = store.read(ctx.store.cipher, row)
        await authorize(ctx, Action.ANNULER, patient, d)
        outcome = annuler(d, ctx.sender, motif, ctx.now)
        await _answer(ctx, outcome, patient, row, d)
        await ctx.services.store.cancel_deadlines(f"demande:{row.id}", session=ctx.session)
        ctx.reply(outcome.texte(await store.names(ctx.session, [ctx.sender])))

    @registry.command(
        "demandes", summary="les demandes en cours du salon (ou les vôtres, en conversation directe)",
        examples=["!demandes"], scopes=[PATIENT, DIRECT], category="Demandes",
    )
    async def demandes_cmd(ctx):
        rows = await store.open_rows(ctx.session, ctx.room_id if ctx.room_kind == PATIENT else None)
        lines = []
        for row in rows:
            d = store.read(ctx.store.cipher, row)
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
    noms = await store.names(ctx.session, [d.cible_personne, d.acceptee_par])
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


async def accept(ctx, patient: Patient, row: DemandeRow) -> None:
    d = store.read(ctx.store.cipher, row)
    await authorize(ctx, Action.ACCEPTER, patient, d)
    outcome = accepter(d, ctx.sender, ctx.now)
    if isinstance(outcome, DejaPrise):
        ctx.reply(outcome.texte(await store.names(ctx.session, [outcome.par])))
        return
    await _answer(ctx, outcome, patient, row, d)
    flow = ctx.services.flows[d.flow]
    await store.on_accepted(ctx, patient, row, d, flow, outcome)
    ctx.session.add(Act(user_id=ctx.sender, kind="acceptation", patient_code=patient.code, parcours=flow.parcours,
                        ref=f"demande:{row.id}", at=ctx.now, details={"flow": flow.code, "tardive": outcome.tardive}))
    if ctx.room_id != patient.room_id:
        ctx.reply(f"✅ C'est noté : vous prenez en charge la demande {patient.code}/{d.numero}. "
                  f"Vous êtes invité·e dans le cercle {patient.code}, où se trouve la fiche du patient.")
    if outcome.tardive:

        room = ctx.services.coordinator_room
        if room:
            ctx.send(room, f"✅ Demande {patient.code}/{d.numero} finalement prise en charge (après l'échéance).")


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
    prof = await ctx.services.directory.get(ctx.session, ctx.sender)
    if prof is None:
        return
    patient = await ctx.session.get(Patient, row.patient_code)
    await accept(ctx, patient, row)
