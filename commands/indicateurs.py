"""Tableau de bord: indicateurs (coordinators' room) and activite (a professional's direct chat).
The use cases are in rooms.indicateurs."""
from __future__ import annotations

from commands.arguments import Word
from commands.registry import COORDINATION, DIRECT, CommandGroup, Param
from domain.indicateurs import FORMATS, PeriodeError, lire_periode
from domain.markup import literal
from domain.parcours import find_parcours
from rooms import indicateurs

group = CommandGroup()


def _periode(ctx, texte):
    try:
        return lire_periode(texte, ctx.now, ctx.services.tz)
    except PeriodeError as e:
        ctx.refuse(str(e))


@group.command(
    "indicateurs", aliases=["tableau-de-bord", "tdb", "stats"],
    summary="indicateurs d'activité de la CPTS : tableau, graphique et CSV",
    params=[Param("periode", Word(placeholder="<période>"), optional=True,
                  help=f"{FORMATS} ; par défaut le mois dernier"),
            Param("parcours", Word(placeholder="<parcours>"), optional=True,
                  help="un parcours (ic, bpco, perinat…) ; par défaut tous")],
    help=("Agrégats seulement : aucune identité ni code patient ; un effectif de 1 à 4 s'affiche « < 5 ». "
          "Le rapport du mois écoulé est aussi posté automatiquement le premier jour ouvré de chaque mois "
          "(et celui du trimestre écoulé en début de trimestre)."),
    examples=["!indicateurs", "!indicateurs 2026-11", "!indicateurs 2026-T4 ic", "!indicateurs 2026"],
    scopes=[COORDINATION], requires="coordinateur", category="Coordination",
)
async def indicateurs_cmd(ctx, periode=None, parcours=None):
    catalogue = ctx.services.catalogue
    if periode is not None and parcours is None and find_parcours(catalogue, periode) is not None \
            and not periode[:1].isdigit():
        periode, parcours = None, periode  # `!indicateurs ic`: the last month of that parcours
    p = None
    if parcours is not None:
        p = find_parcours(catalogue, parcours)
        if p is None:
            ctx.refuse(f"parcours inconnu : « {literal(parcours)} ». Parcours : {', '.join(sorted(catalogue))}")
    await indicateurs.publier(ctx, _periode(ctx, periode), p.code if p else None)


@group.command(
    "activite", aliases=["activité", "mon-activite"],
    summary="votre activité : vos demandes, vos acceptations et vos délais",
    params=[Param("periode", Word(placeholder="<période>"), optional=True,
                  help=f"{FORMATS} ; par défaut le mois dernier")],
    examples=["!activite", "!activite 2026-T4"],
    scopes=[DIRECT], category="Général",
)
async def activite(ctx, periode=None):
    ctx.reply(await indicateurs.mon_activite(ctx, _periode(ctx, periode)))
