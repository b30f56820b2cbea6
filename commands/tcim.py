"""TCIM (téléconsultation conjointe infirmier/médecin): `!tcim demande | confirmer | proposer |
charte | debut | fin | interrompre | ordonnance | voir`. The request's own steps stay `!accepter`,
`!rdv` and `!cr` (commands/demandes.py); each handler here parses and calls rooms.tcim."""
from __future__ import annotations

from commands.arguments import Choice, Text, TimeSlot, Word
from commands.cercle import current_patient, resolve_person
from commands.demandes import DemandeRef
from commands.people import PersonRef
from commands.registry import PATIENT, CommandGroup, Option, Param
from rooms import tcim as cases

group = CommandGroup()
HERE = {"scopes": [PATIENT], "category": "TCIM"}
OUI_NON = {"oui": ["o", "yes"], "non": ["n", "no"]}


def _ref():
    return Param("tcim", DemandeRef(), optional=True, help="numéro de la demande TCIM, s'il y en a plusieurs en cours")


group.family(
    "tcim", aliases=["ccim", "visio_ccim"],
    summary="téléconsultation conjointe infirmier/médecin (TCIM), de l'éligibilité à l'ordonnance reçue",
    help=("Déroulé : l'infirmier·e (ou le référent parcours, un·e coordinateur·rice) fait la demande avec les "
          "critères d'éligibilité ; les médecins signataires du protocole TCIM sont sollicités (`!accepter`) ; "
          "le médecin propose le créneau (`!rdv <n°> <horaire> teleconsultation`), l'infirmier·e le confirme ; "
          "le médecin coche la charte et démarre ; à la fin, le médecin poste son compte-rendu (`!cr`) et "
          "l'infirmier·e note l'ordonnance reçue : la TCIM est alors close."),
    **HERE,
)


@group.command(
    "tcim demande", aliases=["demander", "nouvelle"],
    summary="demander une TCIM (critères d'éligibilité obligatoires)",
    params=[Param("motif", Choice({"snp": ["soin_non_programme", "non_programme"],
                                   "reevaluation": ["réévaluation", "traitement"]}, placeholder="<snp|reevaluation>"),
                  help="soin non programmé, ou réévaluation du traitement"),
            Param("commentaire", Text(), help="la demande détaillée (obligatoire)")],
    options=[Option("sans_mt", Choice(OUI_NON), required=True,
                    help="oui : le patient n'a pas de médecin traitant, ou son médecin traitant est indisponible "
                         "sur le moyen ou long terme"),
             Option("deplacement", Choice(OUI_NON), required=True,
                    help="non : le patient ne peut pas se déplacer dans un cabinet médical par ses propres moyens"),
             Option("infirmier", PersonRef(),
                    help="l'infirmier·e du cercle qui sera auprès du patient (si vous n'êtes pas l'infirmier·e)")],
    help=("Les deux critères sont obligatoires (protocole TCIM) : sans_mt=oui et deplacement=non. "
          "La participation n'engage pas le médecin à devenir le médecin traitant du patient."),
    examples=["!tcim demande snp sans_mt=oui deplacement=non toux fébrile depuis 3 jours, patiente alitée",
              "!tcim demande reevaluation sans_mt=oui deplacement=non infirmier=@ide.petit:cpts.fr "
              "douleurs mal soulagées"],
    **HERE,
)
async def demande(ctx, motif, commentaire, sans_mt, deplacement, infirmier=None):
    patient = await current_patient(ctx)
    nurse = (await resolve_person(ctx, infirmier)).user_id if infirmier else None
    await cases.request(ctx, patient, motif=motif, sans_mt=sans_mt == "oui", deplacement_possible=deplacement == "oui",
                       commentaire=commentaire, infirmier=nurse)


@group.command(
    "tcim confirmer", aliases=["confirme", "ok"], summary="infirmier·e : confirmer le créneau proposé par le médecin",
    params=[_ref()], examples=["!tcim confirmer"], **HERE,
)
async def confirmer(ctx, tcim=None):
    await cases.confirm(ctx, await current_patient(ctx), tcim)


@group.command(
    "tcim proposer", aliases=["autre", "contre"], summary="infirmier·e : proposer un autre créneau au médecin",
    params=[_ref(), Param("quand", TimeSlot(), help="date et heure (demain 14h) ou tranche (jeudi 14h-16h)")],
    examples=["!tcim proposer demain 14h", "!tcim proposer jeudi 14h-16h"], **HERE,
)
async def proposer(ctx, quand, tcim=None):
    await cases.propose(ctx, await current_patient(ctx), tcim, quand.label)


@group.command(
    "tcim charte", aliases=["cocher"], summary="médecin : cocher des éléments de la charte avant de démarrer",
    params=[_ref(), Param("elements", Text(placeholder="<éléments>"),
                          help="identite, consentement, capacite, confidentialite (ou « tout »)")],
    examples=["!tcim charte identite consentement", "!tcim charte tout"], **HERE,
)
async def charte(ctx, elements, tcim=None):
    await cases.tick(ctx, await current_patient(ctx), tcim, elements)


@group.command(
    "tcim debut", aliases=["début", "demarrer", "démarrer"],
    summary="médecin : démarrer la téléconsultation (les 4 éléments de la charte doivent être cochés)",
    params=[_ref(), Param("elements", Text(placeholder="<éléments>"), optional=True,
                          help="éléments de la charte à cocher en même temps (identite consentement capacite "
                               "confidentialite, ou « tout »)")],
    help=("Avant de démarrer, le médecin doit : s'assurer de l'identité du patient et se présenter ; recueillir "
          "son consentement oral ; s'assurer de sa capacité à communiquer à distance ; s'assurer de la "
          "confidentialité des deux lieux. Sans ces quatre éléments, la TCIM ne démarre pas."),
    examples=["!tcim debut", "!tcim debut identite consentement capacite confidentialite"], **HERE,
)
async def debut(ctx, tcim=None, elements=None):
    await cases.start(ctx, await current_patient(ctx), tcim, elements)


@group.command(
    "tcim fin", aliases=["terminer"], summary="médecin : terminer la téléconsultation (lieu du patient, présents)",
    params=[_ref()],
    options=[Option("lieu", Word(placeholder='"<lieu>"'), "localisation du patient pendant la téléconsultation"),
             Option("presents", Word(placeholder='"<personnes>"'),
                    "personnes présentes auprès du patient (professionnels ou non)")],
    examples=['!tcim fin lieu=domicile presents="infirmière, sa fille"'], **HERE,
)
async def fin(ctx, tcim=None, lieu=None, presents=None):
    await cases.end(ctx, await current_patient(ctx), tcim, lieu, presents)


@group.command(
    "tcim interrompre", aliases=["interruption", "stop"],
    summary="médecin ou infirmier·e : interrompre la TCIM (motif tracé), une autre prise en charge est proposée",
    params=[_ref(), Param("motif", Text(placeholder="<motif>"))],
    examples=["!tcim interrompre patiente trop dyspnéique pour une téléconsultation"], **HERE,
)
async def interrompre(ctx, motif, tcim=None):
    await cases.interrupt(ctx, await current_patient(ctx), tcim, motif)


@group.command(
    "tcim ordonnance", summary="infirmier·e : ordonnance reçue (fin de votre prise en charge)",
    params=[_ref(), Param("recue", Choice({"recue": ["reçue", "recu", "reçu"]}, placeholder="recue"))],
    examples=["!tcim ordonnance recue"], **HERE,
)
async def ordonnance(ctx, recue, tcim=None):
    await cases.prescription_received(ctx, await current_patient(ctx), tcim)


@group.command(
    "tcim voir", aliases=["historique", "etat"], summary="l'état et l'historique des TCIM du salon",
    params=[_ref()], examples=["!tcim voir"], **HERE,
)
async def voir(ctx, tcim=None):
    await cases.show(ctx, await current_patient(ctx), tcim)
