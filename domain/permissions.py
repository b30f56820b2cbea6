"""Who may act on a request: the one place that decides (pure, no I/O).

Each request action has one rule below. Handlers build an `Actor` from the directory and the
patient's cercle, ask `authorize(action, demande, actor)`, and act only on `Permission.granted`.
The state machine (domain.demandes) then decides whether the request's *state* allows the action;
it never decides *who*.

Sources: decisions.md 3 (the ladder asks the cercle, then the profession), 4 (first acceptance
wins), 10 (only the cercle acts on the patient), 11 (a secretary acts for one professional: she may
create requests and set appointments, never accept: acceptances belong to the professional).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from domain.demandes import Demande
from domain.markup import literal
from domain.text import normalize


class Action(StrEnum):
    ACCEPTER = "accepter"
    REFUSER = "refuser"
    RDV = "rdv"
    CR = "cr"
    CLOTURER = "cloturer"
    ANNULER = "annuler"
    # TCIM (issue 12), a flow on top of the request: who may do each step of the teleconsultation.
    TCIM_DEMANDE = "tcim_demande"
    TCIM_CONFIRMER = "tcim_confirmer"
    TCIM_PROPOSER = "tcim_proposer"
    TCIM_CHARTE = "tcim_charte"
    TCIM_DEBUT = "tcim_debut"
    TCIM_FIN = "tcim_fin"
    TCIM_INTERROMPRE = "tcim_interrompre"
    TCIM_ORDONNANCE = "tcim_ordonnance"


def holds_role(roles, role: str) -> bool:
    """`referent` matches `referent` and `referent:<parcours>`: the one place roles are matched."""
    return any(r == role or r.startswith(role + ":") for r in roles or ())


@dataclass(frozen=True)
class Actor:
    """What the rules need to know of the person typing the command."""

    user_id: str
    in_directory: bool = True
    profession: str | None = None
    roles: frozenset[str] = frozenset()
    communes: frozenset[str] = frozenset()
    cercle_member: bool = False  # a current member of the patient's cercle (not a former one)

    @property
    def delegation_for(self) -> str | None:
        """The professional a secretary works for (role `secretaire:<user id>`), if any."""
        return next((r.split(":", 1)[1] for r in self.roles if r.startswith("secretaire:")), None)

    @property
    def coordinateur(self) -> bool:
        return self.has_role("coordinateur")

    def has_role(self, role: str) -> bool:
        return holds_role(self.roles, role)

    def practises_in(self, commune: str) -> bool:
        return normalize(commune) in {normalize(c) for c in self.communes}


@dataclass(frozen=True)
class Permission:
    granted: bool
    reason: str = ""  # French, for the refusal; empty when granted
    acting_for: str | None = None  # a secretary's professional, when she acts under delegation
    mentions: dict[str, str] = field(default_factory=dict)  # user ids quoted in `reason`

    def __bool__(self) -> bool:
        return self.granted


ALLOWED = Permission(True)


def _no(reason: str, **mentions: str) -> Permission:
    return Permission(False, reason, mentions={k: v for k, v in mentions.items() if v})


def _addressed_to(d: Demande, actor: Actor, profession_label) -> Permission:
    """Is the request addressed to this person? The target person, anyone the ladder asked, a
    professional of the target profession (of the request's commune when it names one), or a
    holder of the target role."""
    if actor.user_id in d.sollicites:
        return ALLOWED
    if d.cible_personne:
        if actor.user_id == d.cible_personne:
            return ALLOWED
        return _no(f"la demande n°{d.numero} est adressée à {d.cible_personne} : seule cette personne peut y répondre",
                   cible=d.cible_personne)
    if d.cible_role:
        if actor.has_role(d.cible_role):
            return ALLOWED
        return _no(f"la demande n°{d.numero} s'adresse aux {d.cible_role}s de parcours : vous n'avez pas ce rôle "
                   "dans l'annuaire")
    if d.cible_profession:
        label = profession_label(d.cible_profession)
        if actor.profession != d.cible_profession:
            return _no(f"la demande n°{d.numero} s'adresse à un·e {label}")
        if d.role_requis and not actor.has_role(d.role_requis):
            return _no(f"la demande n°{d.numero} s'adresse aux signataires du protocole {d.role_requis.upper()} "
                       "de la CPTS : demandez votre inscription aux coordinateurs")
        if d.commune and not actor.practises_in(d.commune):
            return _no(f"la demande n°{d.numero} s'adresse à un·e {label} exerçant à {literal(d.commune)}")
        return ALLOWED
    return _no(f"la demande n°{d.numero} ne vous est pas adressée")


def may_accept(d: Demande, actor: Actor, profession_label=str) -> Permission:
    if actor.delegation_for:  # whatever the request, even one she typed for her doctor
        return _no(f"une acceptation appartient au professionnel : {actor.delegation_for} doit accepter "
                   "lui-même ou elle-même ; vous pourrez ensuite fixer le rendez-vous",
                   pro=actor.delegation_for)
    if actor.user_id in d.demandeurs:
        return _no("vous ne pouvez pas accepter votre propre demande")
    return _addressed_to(d, actor, profession_label)


def may_decline(d: Demande, actor: Actor, profession_label=str) -> Permission:
    if actor.user_id in d.demandeurs:
        return _no("vous ne pouvez pas décliner votre propre demande : annulez-la (avec un motif)")
    if actor.delegation_for:
        return _no(f"la réponse à une demande appartient au professionnel : {actor.delegation_for} doit "
                   "répondre lui-même ou elle-même", pro=actor.delegation_for)
    return _addressed_to(d, actor, profession_label)


def may_act_in_cercle(actor: Actor) -> Permission:
    """Any command in a patient's room: a current member of the cercle, or a coordinator."""
    if not actor.in_directory:
        return _no("accès réservé")
    if not actor.cercle_member and not actor.coordinateur:
        return _no("vous ne faites pas (ou plus) partie du cercle de ce patient")
    return ALLOWED


def _in_cercle(actor: Actor) -> Permission | None:
    permission = may_act_in_cercle(actor)
    return None if permission else permission


def may_set_rdv(d: Demande, actor: Actor, profession_label=str) -> Permission:
    """The acceptor, or the acceptor's secretary (decisions.md 11)."""
    if (refused := _in_cercle(actor)) is not None:
        return refused
    if d.acceptee_par is None:
        return ALLOWED  # the state machine answers « le rendez-vous se fixe après l'acceptation »
    if actor.user_id == d.acceptee_par:
        return ALLOWED
    if actor.delegation_for and actor.delegation_for == d.acceptee_par:
        return Permission(True, acting_for=d.acceptee_par)
    return _no(f"seul·e {d.acceptee_par}, qui a accepté la demande n°{d.numero}, peut fixer le rendez-vous",
               acceptant=d.acceptee_par)


def may_post_cr(d: Demande, actor: Actor, profession_label=str) -> Permission:
    """The acceptor only: a compte-rendu is clinical content (no delegation)."""
    if (refused := _in_cercle(actor)) is not None:
        return refused
    if d.acceptee_par is None or actor.user_id == d.acceptee_par:
        return ALLOWED
    return _no(f"seul·e {d.acceptee_par}, qui a accepté la demande n°{d.numero}, peut poster le compte-rendu",
               acceptant=d.acceptee_par)


def may_close(d: Demande, actor: Actor, profession_label=str) -> Permission:
    """The acceptor, the requester (or the professional behind a secretary's request), or a coordinator."""
    if (refused := _in_cercle(actor)) is not None:
        return refused
    if actor.user_id in (d.acceptee_par, *d.demandeurs) or actor.coordinateur:
        return ALLOWED
    return _no(f"seul·e {d.acceptee_par or 'la personne qui l’a acceptée'} ou le demandeur peut clôturer "
               f"la demande n°{d.numero}", acceptant=d.acceptee_par)


def may_cancel(d: Demande, actor: Actor, profession_label=str) -> Permission:
    """The requester, the professional behind a secretary's request, or a coordinator."""
    if (refused := _in_cercle(actor)) is not None:
        return refused
    if actor.user_id in d.demandeurs or actor.coordinateur:
        return ALLOWED
    if actor.delegation_for and actor.delegation_for in d.demandeurs:
        return ALLOWED
    demandeur = d.pour_compte_de or d.demandeur
    return _no(f"seul le demandeur ({demandeur}) ou un·e coordinateur·rice peut annuler la demande n°{d.numero}",
               demandeur=demandeur)


# --- TCIM (issue 12; S000 L926-930, L963-981) -------------------------------------------------------
def tcim_infirmier(d: Demande) -> str:
    """The nurse of a TCIM: the one it was asked for (a référent's or coordinator's request), or
    the nurse who asked (rooms.tcim puts the nurse in `pour_compte_de` when someone else asks)."""
    return d.pour_compte_de or d.demandeur


def may_request_tcim(d: Demande, actor: Actor, profession_label=str) -> Permission:
    """An infirmier·e of the cercle, a référent parcours, or a coordinator (S000 L926 « RÉF.
    PARCOURS … +/- cercle de soins »; issue 12)."""
    if (refused := _in_cercle(actor)) is not None:
        return refused
    if actor.profession == "infirmier" or actor.has_role("referent") or actor.coordinateur:
        return ALLOWED
    return _no("une TCIM est demandée par l'infirmier·e du patient, un·e référent·e parcours ou un·e coordinateur·rice")


def _tcim_nurse(d: Demande, actor: Actor, what: str) -> Permission:
    if (refused := _in_cercle(actor)) is not None:
        return refused
    nurse = tcim_infirmier(d)
    if actor.user_id == nurse:
        return ALLOWED
    return _no(f"seul·e {nurse}, l'infirmier·e de la TCIM n°{d.numero}, peut {what}", infirmier=nurse)


def _tcim_doctor(d: Demande, actor: Actor, what: str) -> Permission:
    if (refused := _in_cercle(actor)) is not None:
        return refused
    if d.acceptee_par is None:
        return _no(f"la TCIM n°{d.numero} n'a pas encore de médecin : {what} viendra après son acceptation")
    if actor.user_id == d.acceptee_par:
        return ALLOWED
    return _no(f"seul·e {d.acceptee_par}, médecin de la TCIM n°{d.numero}, peut {what}", medecin=d.acceptee_par)


def may_confirm_tcim(d: Demande, actor: Actor, profession_label=str) -> Permission:
    return _tcim_nurse(d, actor, "confirmer le créneau")


def may_propose_tcim(d: Demande, actor: Actor, profession_label=str) -> Permission:
    return _tcim_nurse(d, actor, "proposer un autre créneau")


def may_tick_tcim_charter(d: Demande, actor: Actor, profession_label=str) -> Permission:
    """The charter binds the doctor (S000 L963 « le médecin devra »)."""
    return _tcim_doctor(d, actor, "cocher la charte")


def may_start_tcim(d: Demande, actor: Actor, profession_label=str) -> Permission:
    return _tcim_doctor(d, actor, "démarrer la téléconsultation")


def may_end_tcim(d: Demande, actor: Actor, profession_label=str) -> Permission:
    return _tcim_doctor(d, actor, "terminer la téléconsultation")


def may_interrupt_tcim(d: Demande, actor: Actor, profession_label=str) -> Permission:
    """Either side (S000 L977 the doctor; L979 the patient asks, through the nurse at home)."""
    if (refused := _in_cercle(actor)) is not None:
        return refused
    if actor.user_id in (d.acceptee_par, tcim_infirmier(d)):
        return ALLOWED
    return _no(f"seuls le médecin et l'infirmier·e de la TCIM n°{d.numero} peuvent l'interrompre")


def may_record_prescription(d: Demande, actor: Actor, profession_label=str) -> Permission:
    """The nurse's part ends « jusqu'à bonne réception de l'ordonnance » (S000 L929)."""
    return _tcim_nurse(d, actor, "noter la réception de l'ordonnance")


RULES = {
    Action.ACCEPTER: may_accept,
    Action.REFUSER: may_decline,
    Action.RDV: may_set_rdv,
    Action.CR: may_post_cr,
    Action.CLOTURER: may_close,
    Action.ANNULER: may_cancel,
    Action.TCIM_DEMANDE: may_request_tcim,
    Action.TCIM_CONFIRMER: may_confirm_tcim,
    Action.TCIM_PROPOSER: may_propose_tcim,
    Action.TCIM_CHARTE: may_tick_tcim_charter,
    Action.TCIM_DEBUT: may_start_tcim,
    Action.TCIM_FIN: may_end_tcim,
    Action.TCIM_INTERROMPRE: may_interrupt_tcim,
    Action.TCIM_ORDONNANCE: may_record_prescription,
}


def authorize(action: Action, d: Demande, actor: Actor, profession_label=str) -> Permission:
    """The only place that decides who may do `action` on request `d`."""
    if not actor.in_directory:
        return _no("accès réservé")
    return RULES[action](d, actor, profession_label)
