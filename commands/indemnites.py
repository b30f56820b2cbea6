"""Indemnities: `!indemnites` (a professional, in the direct chat) and `!bordereau` (the coordinators).

The use cases are in rooms.indemnites; this module parses and answers (decisions.md 12-15).
"""
from __future__ import annotations

import re

from commands.arguments import ArgType, ArgumentError, Choice
from commands.cercle import resolve_person
from commands.demandes import DemandeRef
from commands.registry import COORDINATION, DIRECT, CommandGroup, Param
from domain.indemnites import (
    Trimestre,
    dernier_trimestre_termine,
    euros,
    looks_like_trimestre,
    parse_trimestre,
    trimestre_de,
)
from domain.markup import literal
from rooms import indemnites

group = CommandGroup()


class Quarter(ArgType):
    placeholder = "<trimestre>"
    description = "un trimestre, par exemple 2026-T3"
    examples = ["2026-T3"]

    def parse(self, tokens, pos, ctx=None):
        text = tokens[pos].text
        try:
            return parse_trimestre(text), pos + 1
        except ValueError as e:
            raise ArgumentError(str(e), final=looks_like_trimestre(text)) from None


class Target(ArgType):
    """A professional (@id or name) for `valider`, or a request P-XXXX/n for `attestation`."""

    placeholder = "<professionnel|P-XXXX/n>"
    description = "le professionnel (@identifiant ou nom), ou la demande P-XXXX/n"
    examples = ["@dr.martin:cpts.fr", "P-7K3Q/2"]

    def parse(self, tokens, pos, ctx=None):
        text = tokens[pos].text.strip()
        try:
            parse_trimestre(text)
        except ValueError as e:
            if looks_like_trimestre(text):  # 2026-T9: an impossible quarter, not a professional
                raise ArgumentError(str(e), final=True) from None
            return text, pos + 1
        raise ArgumentError("un trimestre n'est pas un professionnel")


_REF = re.compile(r"(P-[2-9A-HJ-NP-Z]{4})/(?:n°|no|#)?(\d{1,5})", re.I)


async def _demande_ref(ctx, text: str) -> str:
    m = _REF.fullmatch(text or "")
    if not m:
        ctx.refuse("donnez la demande sous la forme P-XXXX/n (le code du patient et le numéro de la demande)")
    ref = await indemnites.ref_of(ctx, m[1].upper(), int(m[2]))
    if ref is None:
        ctx.refuse(f"demande « {literal(text)} » inconnue", usage=False)
    return ref


@group.command(
    "indemnites", aliases=["indemnités", "indemnite", "indemnité", "mes-indemnites"],
    summary="vos indemnités CPTS du trimestre : lignes, totaux, et quoi faire pour les lignes en attente",
    params=[Param("action", Choice({"attester": ["attestation", "atteste"]}), optional=True,
                  help="attester : vous avez déclaré le MT sur AmeliPro (recherche médecin traitant)"),
            Param("trimestre", Quarter(), optional=True, help="par défaut le trimestre en cours"),
            Param("demande", DemandeRef(), optional=True, help="pour attester : la demande P-XXXX/n")],
    help=("Montants de la CPTS selon son barème (parts « + CPAM » affichées, jamais additionnées). Une ligne "
          "en attente dit ce qui manque et la commande pour le compléter. Recherche médecin traitant (150 €) : "
          "après la déclaration sur AmeliPro, `!indemnites attester P-XXXX/n`, puis un coordinateur valide."),
    examples=["!indemnites", "!indemnites 2026-T3", "!indemnites attester P-7K3Q/2"],
    scopes=[DIRECT], category="Indemnités",
)
async def indemnites_cmd(ctx, action=None, trimestre: Trimestre | None = None, demande=None):
    if action == "attester":
        if demande is None or demande[0] is None:
            ctx.refuse("précisez la demande : `!indemnites attester P-XXXX/n`")
        ref = await _demande_ref(ctx, f"{demande[0]}/{demande[1]}")
        acts = await indemnites.add_criterion(ctx, ref, "attestation_amelipro", user_id=ctx.sender,
                                              kinds=("acceptation",))
        if not acts:
            ctx.refuse(f"vous n'avez pas accepté la demande {demande[0]}/{demande[1]}", usage=False)
        ctx.reply(f"✅ Attestation AmeliPro notée pour {demande[0]}/{demande[1]}. "
                  f"{_state(acts[0])}")
        return
    if demande is not None:
        ctx.refuse("une demande ne se donne qu'avec `attester`")
    trimestre = trimestre or trimestre_de(ctx.now, ctx.services.tz)
    ctx.reply(await indemnites.my_lines_text(ctx, ctx.sender, trimestre))


def _state(act) -> str:
    if act.etat == "eligible":
        return f"Ligne éligible : {euros(act.montant_cents)}."
    return f"Ligne {act.etat.replace('_', ' ')} : {literal(act.motif or '')}."


@group.command(
    "bordereau", aliases=["bordereaux"],
    summary="bordereaux d'indemnisation du trimestre (PDF par professionnel, CSV, graphique) ; valider un bordereau",
    params=[Param("action", Choice({"valider": ["payer", "paye", "payé"],
                                    "attestation": ["valider-attestation", "confirmer"]}), optional=True,
                  help="valider : le bordereau est payé et figé ; attestation : valider une recherche MT attestée"),
            Param("cible", Target(), optional=True, help="le professionnel (valider) ou la demande P-XXXX/n"),
            Param("trimestre", Quarter(), optional=True, help="par défaut le dernier trimestre terminé")],
    help=("Sans argument : le résumé par professionnel du dernier trimestre terminé, un PDF par professionnel, "
          "le CSV de toutes les lignes (tableur : point-virgule, virgule décimale) et un graphique, en pièces "
          "jointes chiffrées. Codes patients seulement. `!bordereau valider <professionnel> <trimestre>` fige le "
          "bordereau payé : un changement ultérieur devient une correction sur le trimestre suivant."),
    examples=["!bordereau", "!bordereau 2026-T3", "!bordereau valider @dr.martin:cpts.fr 2026-T3",
              "!bordereau attestation P-7K3Q/2"],
    scopes=[COORDINATION], requires="coordinateur", category="Coordination",
)
async def bordereau(ctx, action=None, cible=None, trimestre: Trimestre | None = None):
    default = dernier_trimestre_termine(ctx.now, ctx.services.tz)
    if action is None:
        if cible is not None:
            ctx.refuse(f"« {literal(cible)} » : sans `valider`, donnez seulement un trimestre (ex. {default})")
        await indemnites.post_bordereau(ctx, ctx.room_id, trimestre or default, reply_to=ctx.event_id)
        return
    if action == "attestation":
        ref = await _demande_ref(ctx, cible)
        acts = [a for a in await indemnites.add_criterion(ctx, ref, "validation_coordinateur", kinds=("acceptation",))]
        if not acts:
            ctx.refuse(f"aucune acceptation au registre pour {literal(cible)}", usage=False)
        ctx.reply(f"✅ Recherche médecin traitant {literal(cible)} validée. {_state(acts[0])}")
        return
    if cible is None or trimestre is None:
        ctx.refuse("précisez le professionnel et le trimestre : `!bordereau valider <professionnel> <trimestre>`")
    prof = await resolve_person(ctx, cible)
    b = await indemnites.validate(ctx, prof.user_id, trimestre)
    ctx.reply(f"✅ Bordereau {trimestre} de {literal(prof.display_name)} validé : **{euros(b.total_cents)}** "
              f"({b.lignes} ligne(s)). Il est figé : un changement ultérieur passera en correction sur un "
              "trimestre ouvert.")
