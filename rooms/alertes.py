"""Red flags and the périnatalité alerte critique: checked against the patient's parcours data.

A red flag opens a request to the médecin traitant (rooms.demandes, flow `red_flag`); an alerte
critique asks the cercle to see the patient within the parcours' délai and, at its end, asks
whether she consulted (the `alerte.suivi` deadline, in DEADLINE_HANDLERS at the bottom).
"""
from __future__ import annotations

import base64
import re

from domain.markup import literal
from domain.parcours import Parcours, find_parcours
from domain.redflags import ValeurError, check_valeurs, explain_not_applicable, parse_valeur
from domain.text import format_duree, format_french_datetime, normalize
from rooms import demandes, indemnites, suivi
from rooms.directory import names
from rooms.patients import active_inclusions, cercle_members
from storage.models import Patient, Professional

VALEUR_TOKEN = re.compile(r"^[^\s=]+=\S+$")
# An absolute weight (poids=84, pds=84kg): compared with the weights recorded by `!donnees`.
ABSOLUTE_WEIGHT = re.compile(r"^(?:poids|pds)=(\d+(?:[.,]\d+)?)(?:kg)?$", re.I)


async def active_parcours(ctx, patient: Patient, *, needs: str) -> list[Parcours]:
    """The patient's current parcours that define `needs` (red_flags, alerte_critique)."""
    catalogue = ctx.services.catalogue
    codes = [i.parcours for i in await active_inclusions(ctx.session, patient.code)]
    return [catalogue[c] for c in codes if c in catalogue and getattr(catalogue[c], needs) is not None]


def split_input(ctx, text: str):
    """Observed values (k=v tokens) out of the free text; the rest is the comment."""
    valeurs, words = [], []
    for word in text.split():
        if VALEUR_TOKEN.match(word):
            try:
                valeurs.append(parse_valeur(word))
            except ValeurError as e:
                ctx.refuse(str(e))
        else:
            words.append(word)
    return valeurs, " ".join(words).strip()


def pick_signs(signes: str | None, constates) -> tuple[list[str], list[str]]:
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


def _signs(ctx, ref: str, known: list[str], free: list[str]) -> dict:
    """The ledger line's signs: the parcours' own labels in clear (data), the free-text ones
    encrypted (clinical text typed by a person; Act.details is a plain column, decisions.md 9)."""
    details = {"signes": known}
    if free:
        blob = ctx.store.cipher.encrypt_json(free, f"{ref}:signes")
        details["signes_libres_enc"] = base64.b64encode(blob).decode()
    return details


def signs_of(cipher, act) -> list[str]:
    """Every sign of a red-flag or alerte line, the free-text ones decrypted (cahier de liaison)."""
    free = act.details.get("signes_libres_enc")
    return [*(act.details.get("signes") or []),
            *(cipher.decrypt_json(base64.b64decode(free), f"{act.ref}:signes") if free else [])]


async def red_flag(ctx, patient: Patient, texte: str, *, signes: str | None, parcours: str | None,
                   confirme: bool) -> None:
    """`!redflag`: check the values against the parcours' thresholds, then ask the MT (8 h)."""
    weights = [w for w in texte.split() if ABSOLUTE_WEIGHT.match(w)]
    valeurs, comment = split_input(ctx, " ".join(w for w in texte.split() if w not in weights))
    if not comment:
        ctx.refuse("le commentaire est obligatoire : décrivez votre inquiétude après les valeurs")
    candidates = await active_parcours(ctx, patient, needs="red_flags")
    for w in weights:
        kg = float(ABSOLUTE_WEIGHT.match(w).group(1).replace(",", "."))
        found = [v for p in candidates for d in p.donnees_de_base if d.grandeur == "poids"
                 for v in await suivi.measures_from_history(ctx, patient, p, d.code, kg)]
        if not found:
            ctx.refuse(f"« {w} » : aucun poids antérieur enregistré (`!donnees poids=…`) pour calculer la "
                       "variation ; écrivez-la : poids=+2.4kg/4j ou poids=-12%")
        valeurs += found
    if parcours:
        chosen = find_parcours(ctx.services.catalogue, parcours)
        if chosen is None or chosen not in candidates:
            en_cours = ", ".join(p.nom for p in candidates) or "aucun"
            ctx.refuse(f"« {literal(parcours)} » n'est pas un parcours en cours du patient avec des red flags "
                       f"(en cours : {en_cours})")
        candidates = [chosen]
    hits, notes, known, free = [], [], [], []
    for p in candidates:
        result = check_valeurs(p, valeurs)
        hits += [h for h in result.crossed if h.niveau == "red_flag"]
        notes += [explain_not_applicable(p, m) for m in result.not_applicable]
        k, f = pick_signs(signes, p.red_flags.constates)
        known += k
        free = f
    if not candidates:
        free = [s.strip() for s in (signes or "").split(",") if s.strip()]
        notes.append("le patient n'est inclus dans aucun parcours avec des seuils : valeurs non vérifiées")
    if not hits and not known and not free and not confirme:
        checked = "; ".join(m.texte for m in valeurs) or "aucune valeur"
        seuils = "; ".join(t.texte for p in candidates for _, t in p.seuils()) or "aucun"
        ctx.refuse(f"aucun seuil franchi ({checked} ; seuils : {seuils}) et aucun signe constaté. "
                   "Pour lever le red flag quand même, ajoutez `confirme=oui`", usage=False)
    flow = ctx.services.flows["red_flag"]
    row, d = await demandes.create(ctx, patient, flow, commentaire=comment)
    await indemnites.record(ctx, user_id=ctx.sender, kind="red_flag", ref=f"demande:{row.id}",
                            patient_code=patient.code, parcours=candidates[0].code if candidates else None,
                            criteres=("commentaire",), flow=flow.code, seuils=[h.code for h in hits],
                            **_signs(ctx, f"demande:{row.id}", known, free))
    mt = patient.medecin_traitant
    ctx.reply(_red_flag_notice(ctx, patient, d, flow, candidates, hits, known + free, notes),
              mentions=await names(ctx.session, [mt] if mt else []), ref=f"demande:{row.id}:red_flag")


def _red_flag_notice(ctx, patient: Patient, d, flow, candidates, hits, signs: list[str], notes: list[str]) -> str:
    lines = [f"🚩 **RED FLAG · demande n°{d.numero}**"
             + (f" · parcours {', '.join(p.nom for p in candidates)}" if candidates else ""), ""]
    for h in hits:
        cond = f" (à confirmer : {h.condition})" if h.condition else ""
        lines.append(f"- seuil franchi : **{h.seuil_texte}** ({h.valeur.texte}){cond}")
    for s in signs:
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
    return "\n".join(lines)


async def alerte_critique(ctx, patient: Patient, texte: str, *, signes: str | None) -> None:
    """`!alerte` (périnatalité): the cercle is told to see the patient within the délai, then asked."""
    perinat = await active_parcours(ctx, patient, needs="alerte_critique")
    if not perinat:
        ctx.refuse("l'alerte critique concerne le parcours périnatalité, où la patiente n'est pas incluse "
                   "(`!inclure perinat`). Pour un autre signe d'alerte : `!redflag`", usage=False)
    p = perinat[0]
    rules = p.alerte_critique
    valeurs, comment = split_input(ctx, texte)
    if not comment:
        ctx.refuse("le commentaire est obligatoire : notez la raison de l'alerte critique")
    result = check_valeurs(p, valeurs)
    hits = [h for h in result.crossed if h.niveau == "alerte_critique"]
    known, free = pick_signs(signes, rules.constates)
    if not hits and not known and not free:
        ctx.refuse("indiquez au moins un signe (`signes=`) ou une valeur qui franchit un seuil "
                   f"(seuils : {'; '.join(t.texte for t in rules.mesures) or 'aucun'})")
    due = ctx.now + rules.delai_consultation
    mention = await _to_mention(ctx, patient, rules.mentionner)
    noms = await names(ctx.session, mention)
    lines = [f"🚨 **ALERTE CRITIQUE · périnatalité** : la patiente doit consulter **dans les "
             f"{format_duree(rules.delai_consultation)}** (avant {format_french_datetime(due, ctx.services.tz, now=ctx.now)}).", ""]
    lines += [f"- seuil franchi : **{h.seuil_texte}** ({h.valeur.texte})" for h in hits]
    lines += [f"- signe : {literal(s)}" for s in known + free]
    lines += ["", *[f"- {c}" for c in rules.consignes]]
    if mention:
        lines.append("\n" + " ".join(sorted(mention)))
    ctx.reply("\n".join(lines), mentions=noms)
    await indemnites.record(ctx, user_id=ctx.sender, kind="alerte_critique", ref=f"alerte:{ctx.event_id}",
                            patient_code=patient.code, parcours=p.code, criteres=("commentaire",),
                            seuils=[h.code for h in hits], **_signs(ctx, f"alerte:{ctx.event_id}", known, free))
    await ctx.services.store.add_deadline("alerte.suivi", f"alerte:{patient.code}:{ctx.event_id}", due, ctx.now,
                                          payload={"room_id": patient.room_id, "auteur": ctx.sender,
                                                   "mention": sorted(mention)}, session=ctx.session)


async def _to_mention(ctx, patient: Patient, mentionner) -> set[str]:
    """The cercle members the parcours names (sage-femme, médecin traitant)."""
    mention = set()
    for m in await cercle_members(ctx.session, patient.code):
        prof = await ctx.session.get(Professional, m.user_id)
        if prof and ("sage_femme" in mentionner and prof.profession == "sage_femme"
                     or "medecin_traitant" in mentionner and m.user_id == patient.medecin_traitant):
            mention.add(m.user_id)
    return mention


async def alerte_followup(ctx, deadline) -> None:
    """At the end of the consultation window: ask the cercle whether the patient consulted."""
    people = [deadline.payload.get("auteur"), *deadline.payload.get("mention", [])]
    noms = await names(ctx.session, people)
    ctx.send(deadline.payload["room_id"],
             "⏰ Les 8 h de l'alerte critique sont écoulées : la patiente a-t-elle consulté ? "
             "Notez-le dans ce salon. " + " ".join(u for u in people if u),
             mentions={u: noms.get(u, u) for u in people if u})


# --- what answers what (merged by bot/wiring.compose) -------------------------------------------------
DEADLINE_HANDLERS = {"alerte.suivi": alerte_followup}
