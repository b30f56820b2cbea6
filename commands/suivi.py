"""Suivi: donnees (données de base), suivi (checklist and recording), horaires (notification hours).

Each handler parses and calls its use case in rooms.suivi."""
from __future__ import annotations

from commands.arguments import ArgType, Text
from commands.cercle import current_patient
from commands.registry import PATIENT, CommandGroup, Param
from rooms import suivi


class Entries(ArgType):
    """Every remaining argument, one per token (a quoted value keeps its spaces: nom="a b")."""

    placeholder = "<élément=valeur …>"
    description = "des paires élément=valeur séparées par des espaces (texte avec espaces entre guillemets)"
    examples = ["poids=82.5 ta=135/85"]

    def parse(self, tokens, pos, ctx=None):
        return [t.text for t in tokens[pos:]], len(tokens)


group = CommandGroup()


@group.command(
    "donnees", aliases=["données", "db", "donnee", "donnée"],
    summary="renseigner ou voir les données de base du patient (typées par son parcours)",
    params=[Param("valeurs", Entries(), optional=True,
                  help="élément=valeur : poids=82.5, ta=135/85 (ou 13/8), nyha=III, debut_grossesse=JJ/MM/AAAA, "
                       'arythmie=oui, pathologie_preexistante="…" ; sans valeur : ce qui est renseigné et ce qui manque')],
    help=("Chaque valeur est vérifiée (unité, bornes, date passée) : si l'une est refusée, rien n'est enregistré. "
          "Chaque valeur garde qui l'a saisie, quand, et la valeur précédente. Une mesure qui franchit un seuil "
          "de red flag du parcours (prise de poids > 2 kg en 3 à 5 j, perte de 10 % du poids de base…) fait "
          "proposer la commande `!redflag` préparée : rien n'est levé automatiquement."),
    examples=["!donnees", "!donnees poids=82.5 fc=64 nyha=II", "!db debut_grossesse=02/09/2026"],
    scopes=[PATIENT], category="Parcours", passthrough_options=True,
)
async def donnees(ctx, valeurs=None):
    patient = await current_patient(ctx)
    await suivi.donnees(ctx, patient, valeurs or [])


@group.command(
    "suivi", aliases=["suivis", "checklist"],
    summary="voir la check-list de suivi du patient, ou noter un élément réalisé",
    params=[Param("element", Entries(placeholder="<élément> [<valeur>] [<JJ/MM/AAAA>]"), optional=True,
                  help="le nom de l'élément (abréviations acceptées : echo t1, frottis, fiche…), puis sa valeur "
                       "et sa date si ce n'est pas aujourd'hui")],
    help=("Sans argument : chaque parcours du patient en check-list (fait, à venir, à faire, en retard, non "
          "renseigné). Un formulaire (fiche suivi de pansement) se remplit en champ=valeur, vérifiés comme les "
          "données de base ; une réponse « fait » à un rappel note l'élément. Les rappels ne sont envoyés que là où les documents donnent un intervalle (périnatalité en "
          "SA, plaie tous les 10 à 30 jours, gynécologie), aux professionnels concernés du cercle et dans leurs "
          "horaires (`!horaires`). Noter un élément compte comme un acte de suivi pour l'indemnisation."),
    examples=["!suivi", "!suivi echo t1", "!suivi fiche 12/03/2027",
              "!suivi fiche longueur=3.5 largeur=2 photos=oui evolution=amelioration",
              "!suivi depistage combine positif",
              "!suivi implant 3ans 15/01/2026"],
    scopes=[PATIENT], category="Parcours", passthrough_options=True,
)
async def suivi_cmd(ctx, element=None):
    patient = await current_patient(ctx)
    if not element:
        await suivi.checklist(ctx, patient)
        return
    await suivi.record_suivi(ctx, patient, element)


@group.command(
    "horaires", aliases=["horaire", "notifications"],
    summary="vos horaires de réception des notifications non urgentes",
    params=[Param("plages", Text(placeholder="<plages|aucune>"), optional=True,
                  help="par exemple 8h-19h, ou 9h-12h30,14h-17h30, ou 20h-6h ; « aucune » : à toute heure")],
    help=("Les rappels de suivi et les récapitulatifs attendent le début de votre prochaine plage. Les red flags, "
          "les alertes critiques et les délais des demandes ne sont jamais retardés."),
    examples=["!horaires", "!horaires 8h-19h", "!horaires 9h-12h30,14h-17h30", "!horaires aucune"],
    category="Général",
)
async def horaires(ctx, plages=None):
    await suivi.set_hours(ctx, plages)
