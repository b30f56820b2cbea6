"""Questionnaires and the cahier de liaison: declarations; the use cases are in rooms.questionnaires
and rooms.journal."""
from __future__ import annotations

from commands.arguments import Choice, Text
from commands.cercle import current_patient
from commands.registry import PATIENT, CommandGroup, Param
from rooms import journal, questionnaires

group = CommandGroup()


@group.command(
    "q", aliases=["reponse", "réponse"],
    summary="répondre à la question en cours d'un questionnaire",
    params=[Param("reponse", Text(placeholder="<réponse>"),
                  help="le numéro ou le libellé d'un choix (plusieurs séparés par des virgules), un nombre "
                       "avec son unité, une date JJ/MM/AAAA, ou du texte")],
    help=("Les questions à choix arrivent aussi en sondage : votez-y. Répondre au message d'une question "
          "revient au même que `!q`. Seul·e le ou la professionnel·le à qui le questionnaire est adressé y répond."),
    examples=["!q 2", "!q oui", "!q 1, 3", "!q 78 kg", "!q sous 48 h"],
    scopes=[PATIENT], category="Parcours",
)
async def q(ctx, reponse):
    await current_patient(ctx)
    await questionnaires.answer_typed(ctx, reponse)


@group.command(
    "questionnaire", aliases=["questionnaires"],
    summary="voir les questionnaires du patient, mettre en pause ou reprendre celui en cours",
    params=[Param("action", Choice({"voir": ["liste"], "pause": ["suspendre", "interrompre"],
                                    "reprendre": ["reprise", "continuer"]}), optional=True)],
    examples=["!questionnaire", "!questionnaire pause", "!questionnaire reprendre"],
    scopes=[PATIENT], category="Parcours",
)
async def questionnaire(ctx, action=None):
    patient = await current_patient(ctx)
    if action == "pause":
        await questionnaires.pause(ctx, patient)
    elif action == "reprendre":
        await questionnaires.resume_run(ctx, patient)
    else:
        ctx.reply(await questionnaires.status_text(ctx, patient))


@group.command(
    "journal", aliases=["cahier", "liaison"],
    summary="cahier de liaison du patient : qui a fait quoi et quand ; export PDF et CSV",
    params=[Param("filtre", Text(placeholder="<export|depuis JJ/MM/AAAA|parcours|page n>"), optional=True,
                  help="`export` (PDF et CSV chiffrés), `depuis <date>`, un parcours, `page <n>` ; combinables")],
    examples=["!journal", "!journal depuis 01/12/2026 vigie", "!journal page 2", "!journal export"],
    scopes=[PATIENT], category="Parcours",
)
async def journal_(ctx, filtre=None):
    patient = await current_patient(ctx)
    await journal.show(ctx, patient, filtre)
