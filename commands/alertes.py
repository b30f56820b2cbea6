"""Red flags and the périnatalité alerte critique: declarations; the use cases are in rooms.alertes."""
from __future__ import annotations

from commands.arguments import Choice, Text, Word
from commands.cercle import current_patient
from commands.registry import PATIENT, CommandGroup, Option, Param
from rooms import alertes

group = CommandGroup()


@group.command(
    "redflag", aliases=["rf", "red-flag", "red_flag"],
    summary="signaler un red flag : le médecin traitant a 8 h pour accepter",
    params=[Param("texte", Text(placeholder="<mesures et commentaire>"),
                  help="valeurs mesurées (spo2=91, ta=155/95, fc=45, hb=9.2, poids=+2.4kg/4j, ou poids=84 "
                       "comparé aux poids notés par !donnees…) "
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
    await alertes.red_flag(ctx, patient, texte, signes=signes, parcours=parcours, confirme=confirme == "oui")


@group.command(
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
    await alertes.alerte_critique(ctx, patient, texte, signes=signes)
