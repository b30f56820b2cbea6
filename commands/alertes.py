"""Red flags and the périnatalité alerte critique, checked against the patient's parcours data."""
from __future__ import annotations

import re

from sqlalchemy import select

from commands.arguments import (
    Choice,
    Text,
    Word,
)
from commands.cercle import current_patient
from commands.registry import PATIENT, CommandRegistry, Option, Param
from domain.demandes import Refus, creer_demande
from domain.markup import literal
from domain.parcours import find_parcours
from domain.redflags import ValeurError, check_valeurs, explain_not_applicable, parse_valeur
from domain.text import format_duree, format_french_datetime, normalize
from rooms import demandes as store
from rooms.patients import cercle_members
from storage.models import Act, Inclusion, Professional

MEASURE_TOKEN = re.compile(r"^[^\s=]+=\S+$")


async def active_parcours(ctx, patient, *, needs: str):
    codes = (await ctx.session.scalars(select(Inclusion.parcours).where(
        Inclusion.patient_code == patient.code, Inclusion.ended_at.is_(None)))).all()
    return [ctx.services.catalogue[c] for c in codes if c in ctx.services.catalogue
            and getattr(ctx.services.catalogue[c], needs) is not None]


def split_input(ctx, text: str):
    """Measurements (k=v tokens) out of the free text; the rest is the comment."""
    measurements, words = [], []
    for word in text.split():
        if MEASURE_TOKEN.match(word):
            try:
                measurements.append(parse_valeur(word))
            except ValeurError as e:
                ctx.refuse(str(e))
        else:
            words.append(word)
    return measurements, " ".join(words).strip()


def pick_signs(ctx, signes: str | None, constates) -> tuple[list[str], list[str]]:
    """(labels of known observed signs, free-text signs) from `signes=a,b`."""
    if not signes:
        return [], []
    by_code = {normalize(c.code): c.libelle for c in constates}
    by_label = {normalize(c.libelle): c.libelle for c in constates}
    known, free = [], []
    for item in (s.strip() for s in signes.split(",") if s.strip()):
        key = normalize(item).replace(" ", "_")
        label = by_code.get(key) or by_label.get(normalize(item))
        (known if label else free).append(label or item)
    return known, free


def register(registry: CommandRegistry) -> None:
    @registry.command(
        "redflag", aliases=["rf", "red-flag", "red_flag"],
        summary="signaler un red flag : le médecin traitant a 8 h pour accepter",
        params=[Param("texte", Text(placeholder="<mesures et commentaire>"),
                      help="valeurs mesurées (spo2=91, ta=155/95, fc=45, hb=9.2, poids=+2.4kg/4j…) "
                           "et votre inquiétude en clair (obligatoire)")],
        options=[Option("signes", Word(placeholder="<signes>"),
                        "signes constatés : codes du parcours ou texte, séparés par des virgules"),
                 Option("parcours", Word(placeholder="<parcours>"), "si le patient suit plusieurs parcours"),
                 Option("confirme", Choice({"oui": ["o", "yes"]}), "lever le red flag même sans seuil franchi")],
        help=("Les valeurs mesurées sont comparées aux seuils du parcours du patient. Le médecin traitant est "
              "sollicité avec 8 h pour accepter ; sans réponse à 4 h, un autre médecin généraliste de la CPTS ; "
              "à 8 h, les coordinateurs."),
        examples=["!redflag spo2=91 essoufflement au moindre effort depuis hier",
                  "!rf signes=majoration_omi,majoration_dyspnee poids=+2.4kg/4j oedèmes des chevilles"],
        scopes=[PATIENT], category="Alertes", passthrough_options=True,
    )
    async def redflag(ctx, texte, signes=None, parcours=None, confirme=None):
        patient = await current_patient(ctx)
        measurements, comment = split_input(ctx, texte)
        if not comment:
            ctx.refuse("le commentaire est obligatoire : décrivez votre inquiétude après les valeurs")
        candidates = await active_parcours(ctx, patient, needs="red_flags")
        if parcours:
            chosen = find_parcours(ctx.services.catalogue, parcours)
            if chosen is None or chosen not in candidates:
                names = ", ".join(p.nom for p in candidates) or "aucun"
                ctx.refuse(f"« {literal(parcours)} » n'est pas un parcours en cours du patient avec des red flags "
                           f"(en cours : {names})")
            candidates = [chosen]
        hits, notes, known, free = [], [], [], []
        for p in candidates:
            result = check_valeurs(p, measurements)
            hits += [h for h in result.crossed if h.niveau == "red_flag"]
            notes += [explain_not_applicable(p, m) for m in result.not_applicable]
            k, f = pick_signs(ctx, signes, p.red_flags.constates)
            known += k
            free = f
        if not candidates:
            free = [s.strip() for s in (signes or "").split(",") if s.strip()]
            notes.append("le patient n'est inclus dans aucun parcours avec des seuils : valeurs non vérifiées")
        if not hits and not known and not free and confirme != "oui":
            checked = "; ".join(m.texte for m in measurements) or "aucune valeur"
            seuils = "; ".join(t.texte for p in candidates for _, t in p.seuils()) or "aucun"
            ctx.refuse(f"aucun seuil franchi ({checked} ; seuils : {seuils}) et aucun signe constaté. "
                       "Pour lever le red flag quand même, ajoutez `confirme=oui`", usage=False)
        flow = ctx.services.flows["red_flag"]
        numero = await store.next_numero(ctx.session, ctx.room_id)
        d = creer_demande(numero, flow, ctx.sender, ctx.now, commentaire=comment,
                          medecin_traitant=patient.medecin_traitant, fuseau=ctx.services.timezone)
        if isinstance(d, Refus):
            ctx.refuse(d.texte())
        row = await store.start(ctx, patient, d, flow, None)
        ctx.session.add(Act(user_id=ctx.sender, kind="red_flag", patient_code=patient.code,
                            parcours=candidates[0].code if candidates else None, ref=f"demande:{row.id}",
                            at=ctx.now, details={"seuils": [h.code for h in hits], "signes": known + free}))
        lines = [f"🚩 **RED FLAG · demande n°{d.numero}**"
                 + (f" · parcours {', '.join(p.nom for p in candidates)}" if candidates else ""), ""]
        for h in hits:
            cond = f" (à confirmer : {h.condition})" if h.condition else ""
            lines.append(f"- seuil franchi : **{h.seuil_texte}** ({h.valeur.texte}){cond}")
        for s in known + free:
            lines.append(f"- signe constaté : {literal(s)}")
        for n in notes:
            lines.append(f"- {n}")
        mt = patient.medecin_traitant
        deadline = format_french_datetime(d.echeance_reponse, ctx.services.tz, now=ctx.now)
        if mt:
            lines.append(f"\n{mt} : vous avez {format_duree(flow.delai_reponse)} pour accepter (avant {deadline}) : "
                         f"`!accepter {d.numero}`.")
        else:
            lines.append(f"\nPas de médecin traitant : les médecins généralistes de la CPTS sont sollicités "
                         f"(avant {deadline}).")
        noms = await store.names(ctx.session, [mt] if mt else [])
        ctx.reply("\n".join(lines), mentions=noms)

    @registry.command(
        "alerte", aliases=["alerte-critique", "ac"],
        summary="alerte critique (périnatalité) : la patiente doit consulter dans les 8 h",
        params=[Param("texte", Text(placeholder="<mesures et commentaire>"), help="valeurs (ta=145/92) et raison")],
        options=[Option("signes", Word(placeholder="<signes>"), "signes constatés, séparés par des virgules")],
        examples=["!alerte signes=metrorragies saignement depuis ce matin",
                  "!alerte ta=150/95 céphalées ne cédant pas au paracétamol"],
        scopes=[PATIENT], category="Alertes", passthrough_options=True,
    )
    async def alerte(ctx, texte, signes=None):
        patient = await current_patient(ctx)
        perinat = [p for p in await active_parcours(ctx, patient, needs="alerte_critique")]
        if not perinat:
            ctx.refuse("l'alerte critique concerne le parcours périnatalité, où la patiente n'est pas incluse "
                       "(`!inclure perinat`). Pour un autre signe d'alerte : `!redflag`", usage=False)
        p = perinat[0]
        rules = p.alerte_critique
        measurements, comment = split_input(ctx, texte)
        if not comment:
            ctx.refuse("le commentaire est obligatoire : notez la raison de l'alerte critique")
        result = check_valeurs(p, measurements)
        hits = [h for h in result.crossed if h.niveau == "alerte_critique"]
        known, free = pick_signs(ctx, signes, rules.constates)
        if not hits and not known and not free:
            ctx.refuse("indiquez au moins un signe (`signes=`) ou une valeur qui franchit un seuil "
                       f"(seuils : {'; '.join(t.texte for t in rules.mesures) or 'aucun'})")
        due = ctx.now + rules.delai_consultation
        members = await cercle_members(ctx.session, patient.code)
        mention = set()
        for m in members:
            prof = await ctx.session.get(Professional, m.user_id)
            if prof and ("sage_femme" in rules.mentionner and prof.profession == "sage_femme"
                         or "medecin_traitant" in rules.mentionner and m.user_id == patient.medecin_traitant):
                mention.add(m.user_id)
        noms = await store.names(ctx.session, mention)
        lines = [f"🚨 **ALERTE CRITIQUE · périnatalité** : la patiente doit consulter **dans les "
                 f"{format_duree(rules.delai_consultation)}** (avant {format_french_datetime(due, ctx.services.tz, now=ctx.now)}).", ""]
        lines += [f"- seuil franchi : **{h.seuil_texte}** ({h.valeur.texte})" for h in hits]
        lines += [f"- signe : {literal(s)}" for s in known + free]
        lines += ["", *[f"- {c}" for c in rules.consignes]]
        if mention:
            lines.append("\n" + " ".join(sorted(mention)))
        ctx.reply("\n".join(lines), mentions=noms)
        ctx.session.add(Act(user_id=ctx.sender, kind="alerte_critique", patient_code=patient.code,
                            parcours=p.code, at=ctx.now, details={"signes": known + free,
                                                                  "seuils": [h.code for h in hits]}))
        await ctx.services.store.add_deadline("alerte.suivi", f"alerte:{patient.code}:{ctx.event_id}", due, ctx.now,
                                         payload={"room_id": patient.room_id, "auteur": ctx.sender,
                                                  "mention": sorted(mention)}, session=ctx.session)


async def alerte_followup(ctx, deadline) -> None:
    """At the end of the consultation window: ask the cercle whether the patient consulted."""
    people = [deadline.payload.get("auteur"), *deadline.payload.get("mention", [])]
    noms = await store.names(ctx.session, people)
    ctx.send(deadline.payload["room_id"],
             "⏰ Les 8 h de l'alerte critique sont écoulées : la patiente a-t-elle consulté ? "
             "Notez-le dans ce salon. " + " ".join(u for u in people if u),
             mentions={u: noms.get(u, u) for u in people if u})
