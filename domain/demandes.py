"""Requests (déclenchements, « demandes »): a small state machine on plain dataclasses.

Pure: no I/O, no Matrix, no clock (every function takes `now`). The storage layer persists
`Demande` (see storage.models.Demande) and must make `accepter` atomic (row lock or version
check), since "first acceptance wins" (decisions.md 4) is only as strong as that transaction.

States::

    en_attente ──accepter──▶ acceptee ──fixer_rdv──▶ rdv_fixe ──poster_cr──▶ cr_poste ──cloturer──▶ cloturee
        │  ▲                    │  └──────────── poster_cr ───────────────────▲       │
        │  └─(late accepter)─┐  └──────────────────── cloturer ───────────────────────┘
        └──escalade──▶ expiree (coordinators alerted; still acceptable: the late acceptance is recorded)
    en_attente / expiree / acceptee / rdv_fixe ──annuler──▶ annulee

Business refusals never raise: every function returns a typed outcome whose `message` (or
`texte(noms)` with display names) is the French text for the room. Only programming errors
(naive datetimes, unknown rung) raise.

Decisions taken where the documents are silent:
- A professional who declined may accept later (they changed their mind): the acceptance is
  recorded, the refusal is removed from `refus` and kept in the journal.
- The requester (`demandeur`, or `pour_compte_de` when a secretary created it) can neither
  accept nor decline their own request; they can cancel it.
- A secretary acting under delegation (decisions.md 11) may create requests and set
  appointments for their professional, never accept (acceptances belong to the professional),
  nor post a compte-rendu.
- A request addressed to one person can be accepted only by that person or by someone the
  ladder solicited since; a request addressed to a profession (or role) by anyone: checking
  the acceptor's profession against the directory is the caller's job.
- "The ladder moves on" when the MT declines during the cercle phase, or when everyone
  solicited so far has declined (rungs are cumulative, so this is "everyone of the current
  rung"): `Declinee.avancer_vers` is POOL from the cercle phase (ESCALADE for a request to one
  person, which has no pool), ESCALADE from the pool or relance phase.
- Closing without a compte-rendu is allowed (`Cloturee.sans_cr`): the indemnity ledger marks
  such lines « en attente » rather than the bot blocking the closure.
- An appointment may be moved (`RdvFixe.modifie`) until the compte-rendu is posted; a slot in
  the past is refused.
- Absences are half-open periods [début, fin); a naive ISO instant is read in Europe/Paris.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import ClassVar
from zoneinfo import ZoneInfo

from domain.clock import DEFAULT_TIMEZONE, PARIS
from domain.flows import MODE_LABELS, Flow, Mode
from domain.ladder import Rung, plan_intervention_deadline
from domain.markup import literal
from domain.text import format_clock, format_duree, format_french_datetime

__all__ = [
    "Acceptee", "Annulee", "CrPoste", "Cloturee", "Declinee", "DejaPrise", "Demande", "Escaladee",
    "Etat", "Evenement", "InterventionEnRetard", "Outcome", "PalierAtteint", "Raison", "Rdv",
    "RdvFixe", "Refus", "SansObjet", "accepter", "annuler", "cloturer", "creer_demande",
    "echeance_intervention", "est_absent", "fixer_rdv", "passer_au_palier",
    "mt_indisponible", "poster_cr", "refuser", "solliciter",
]


class Etat(StrEnum):
    EN_ATTENTE = "en_attente"
    ACCEPTEE = "acceptee"
    RDV_FIXE = "rdv_fixe"
    CR_POSTE = "cr_poste"
    CLOTUREE = "cloturee"
    EXPIREE = "expiree"
    ANNULEE = "annulee"


ACCEPTABLE = frozenset({Etat.EN_ATTENTE, Etat.EXPIREE})
PRISE = frozenset({Etat.ACCEPTEE, Etat.RDV_FIXE, Etat.CR_POSTE, Etat.CLOTUREE})


@dataclass(frozen=True)
class Rdv:
    """« Formulaire de RDV » (S002 L77-118): date et horaire, tranche horaire or saisie libre."""

    mode: Mode
    debut: datetime | None = None
    fin: datetime | None = None          # tranche horaire
    texte: str | None = None             # saisie libre / éléments complémentaires
    fixe_par: str | None = None          # who typed it (a secretary, decisions.md 11)
    fixe_at: datetime | None = None
    fuseau: str = DEFAULT_TIMEZONE         # the CPTS time zone, for display

    def decrire(self) -> str:
        parts = [MODE_LABELS[self.mode]]
        if self.debut and self.fin:
            parts.append(f"{_quand(self.debut, self.fixe_at, self.fuseau)} – "
                         f"{format_clock(self.fin.astimezone(ZoneInfo(self.fuseau)).time())}")
        elif self.debut:
            parts.append(_quand(self.debut, self.fixe_at, self.fuseau))
        if self.texte:
            parts.append(self.texte)
        return ", ".join(parts)


@dataclass(frozen=True)
class Evenement:
    at: datetime
    par: str | None
    action: str
    detail: str = ""


@dataclass
class Demande:
    numero: int
    flow: str
    demandeur: str
    created_at: datetime
    delai_reponse: timedelta | None
    delai_intervention: timedelta | None = None
    libelle: str | None = None               # flow label, for messages
    commentaire: str = ""
    cible_profession: str | None = None
    cible_role: str | None = None
    cible_personne: str | None = None
    role_requis: str | None = None           # only holders of this directory role may be asked (TCIM)
    pour_compte_de: str | None = None        # the professional a secretary created it for
    medecin_traitant: str | None = None      # MT of the cercle, solicited first
    motif: str | None = None                 # e.g. "renouvellement_ordonnance" (SNP 48 h)
    commune: str | None = None               # `commune=`: only that commune's professionals may answer
    fuseau: str = DEFAULT_TIMEZONE             # the CPTS time zone (cpts.timezone), for every date shown
    etat: Etat = Etat.EN_ATTENTE
    rung: Rung = Rung.CERCLE
    sollicites: set[str] = field(default_factory=set)
    refus: dict[str, str] = field(default_factory=dict)
    acceptee_par: str | None = None
    accepted_at: datetime | None = None
    acceptation_tardive: bool = False
    rdv: Rdv | None = None
    cr: str | None = None
    cr_at: datetime | None = None
    cloturee_par: str | None = None
    closed_at: datetime | None = None
    expired_at: datetime | None = None
    intervention_en_retard: bool = False
    annulee_par: str | None = None
    motif_annulation: str | None = None
    journal: list[Evenement] = field(default_factory=list)

    @property
    def titre(self) -> str:
        return f"demande n°{self.numero}"

    @property
    def demandeurs(self) -> set[str]:
        """The requester and, for a secretary's request, the professional behind it."""
        return {u for u in (self.demandeur, self.pour_compte_de) if u}

    @property
    def par_profession(self) -> bool:
        """Addressed to a profession or role (has a pool), not to one person."""
        return self.cible_personne is None and bool(self.cible_profession or self.cible_role)

    @property
    def echeance_reponse(self) -> datetime | None:
        # UTC arithmetic: real elapsed time even if storage hands back Paris-aware datetimes.
        return _utc(self.created_at) + self.delai_reponse if self.delai_reponse else None

    @property
    def echeance_intervention(self) -> datetime | None:
        if self.accepted_at is None or not self.delai_intervention:
            return None
        return _utc(self.accepted_at) + self.delai_intervention

    def _log(self, at: datetime, par: str | None, action: str, detail: str = "") -> None:
        self.journal.append(Evenement(at, par, action, detail))

    def noter(self, at: datetime, par: str | None, action: str, detail: str = "") -> None:
        """An entry in the request's history from a flow built on it (TCIM steps: `tcim:<step>`)."""
        self._log(_utc(at), par, action, detail)


# --- formatting --------------------------------------------------------------------------------

def _quand(dt: datetime, now: datetime | None, fuseau: str) -> str:
    """`jeudi 12 mars à 14h30` in the CPTS time zone, with the year when it is not the year of
    `now`, the moment the text is written (domain.text: the one French date formatter)."""
    return format_french_datetime(dt, ZoneInfo(fuseau), now=now)


def _reste(td: timedelta) -> str:
    """Time left, to the nearest minute: 30 s left is « moins d'une minute », never « 0 min »."""
    if td < timedelta(minutes=1):
        return "moins d'une minute"
    return format_duree(timedelta(minutes=round(td / timedelta(minutes=1))))


def _nom(noms: Mapping[str, str] | None, user: str | None) -> str:
    if user is None:
        return "?"
    return (noms or {}).get(user) or user


def _check_aware(instant: datetime) -> None:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"instant must be timezone-aware, got naive {instant!r}")


def _utc(instant: datetime) -> datetime:
    """Aware → UTC (adding a timedelta to a ZoneInfo datetime is wall-clock arithmetic)."""
    _check_aware(instant)
    return instant.astimezone(timezone.utc)


# --- outcomes ----------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Outcome:
    """Result of an operation. `ok` is False for refusals; `message` is the French room text."""

    numero: int
    ok: ClassVar[bool] = True

    def texte(self, noms: Mapping[str, str] | None = None) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def message(self) -> str:
        return self.texte()


class Raison(StrEnum):
    ETAT = "etat"                      # transition not allowed from the current state
    MOTIF_MANQUANT = "motif_manquant"
    TEXTE_MANQUANT = "texte_manquant"
    CRENEAU = "creneau"                # bad or past slot
    MODE = "mode"
    CIBLE = "cible"
    DELAI = "delai"


@dataclass(frozen=True, kw_only=True)
class Refus(Outcome):
    """A business refusal. `gabarit` uses {placeholders} filled from `personnes` (user ids)."""

    raison: Raison
    gabarit: str
    personnes: Mapping[str, str] = field(default_factory=dict)
    ok: ClassVar[bool] = False

    def texte(self, noms=None) -> str:
        return self.gabarit.format(**{k: _nom(noms, v) for k, v in self.personnes.items()})


@dataclass(frozen=True, kw_only=True)
class DejaPrise(Outcome):
    par: str
    vous: bool = False
    ok: ClassVar[bool] = False

    def texte(self, noms=None) -> str:
        if self.vous:
            return f"Vous avez déjà accepté la demande n°{self.numero}."
        return f"La demande n°{self.numero} est déjà prise en charge par {_nom(noms, self.par)}."


@dataclass(frozen=True, kw_only=True)
class Acceptee(Outcome):
    par: str
    at: datetime
    tardive: bool = False
    avait_decline: bool = False
    a_informer: frozenset[str] = frozenset()   # told « pris en charge », notice closed (decisions.md 4)
    echeance_intervention: datetime | None = None
    fuseau: str = DEFAULT_TIMEZONE

    @property
    def notifier_coordination(self) -> bool:
        """A late acceptance ends an escalation the coordinators received."""
        return self.tardive

    def texte(self, noms=None) -> str:
        msg = f"✅ Demande n°{self.numero} prise en charge par {_nom(noms, self.par)}"
        msg += " (acceptation après l'échéance du délai de réponse)." if self.tardive else "."
        if self.echeance_intervention:
            msg += f" Intervention attendue avant {_quand(self.echeance_intervention, self.at, self.fuseau)}."
        return msg


@dataclass(frozen=True, kw_only=True)
class Declinee(Outcome):
    par: str
    motif: str
    avancer_vers: Rung | None = None   # apply passer_au_palier(d, avancer_vers, now) at once
    tous_ont_decline: bool = False
    par_medecin_traitant: bool = False

    def texte(self, noms=None) -> str:
        msg = f"Demande n°{self.numero} déclinée par {_nom(noms, self.par)} (motif : {literal(self.motif)})."
        if self.avancer_vers is Rung.POOL:
            qui = "Le médecin traitant a décliné" if self.par_medecin_traitant else "Tout le cercle a décliné"
            msg += f" {qui} : la demande est proposée dès maintenant à toute la profession dans la CPTS."
        elif self.avancer_vers is Rung.ESCALADE:
            msg += " Plus personne à solliciter : les coordinateurs sont prévenus."
        return msg


@dataclass(frozen=True, kw_only=True)
class RdvFixe(Outcome):
    par: str
    rdv: Rdv
    modifie: bool = False

    def texte(self, noms=None) -> str:
        verbe = "déplacé" if self.modifie else "fixé"
        return f"📅 Demande n°{self.numero} : rendez-vous {verbe} par {_nom(noms, self.par)} : {literal(self.rdv.decrire())}."


@dataclass(frozen=True, kw_only=True)
class CrPoste(Outcome):
    par: str
    at: datetime
    dans_les_delais: bool = True

    def texte(self, noms=None) -> str:
        msg = f"📝 Demande n°{self.numero} : compte-rendu posté par {_nom(noms, self.par)}."
        if not self.dans_les_delais:
            msg += " (après le délai d'intervention)"
        return msg


@dataclass(frozen=True, kw_only=True)
class Cloturee(Outcome):
    par: str
    sans_cr: bool = False

    def texte(self, noms=None) -> str:
        msg = f"✔️ Demande n°{self.numero} clôturée par {_nom(noms, self.par)}."
        if self.sans_cr:
            msg += " Aucun compte-rendu n'a été posté."
        return msg


@dataclass(frozen=True, kw_only=True)
class Annulee(Outcome):
    par: str
    motif: str
    a_informer: frozenset[str] = frozenset()

    def texte(self, noms=None) -> str:
        return f"Demande n°{self.numero} annulée par {_nom(noms, self.par)} (motif : {literal(self.motif)})."


@dataclass(frozen=True, kw_only=True)
class PalierAtteint(Outcome):
    """POOL or RELANCE reached. `a_relancer`: who gets the reminder (RELANCE only)."""

    rung: Rung
    a_relancer: frozenset[str] = frozenset()
    restant: timedelta | None = None

    def texte(self, noms=None) -> str:
        reste = f" ; il reste {_reste(self.restant)}" if self.restant else ""
        if self.rung is Rung.POOL:
            return (f"⏳ Demande n°{self.numero} toujours sans réponse : elle est proposée à toute "
                    f"la profession dans la CPTS{reste}.")
        return f"⏳ Relance : la demande n°{self.numero} attend toujours une réponse{reste}."


@dataclass(frozen=True, kw_only=True)
class Escaladee(Outcome):
    """Deadline reached with nobody: coordinator room + requester (decisions.md 3.4).

    `texte()` is for the patient room / requester; `texte_coordination()` for the coordinator
    room: no patient identity and no refusal motifs (they may carry clinical details).
    """

    libelle: str
    delai: timedelta | None
    consigne: str | None
    nb_sollicites: int
    nb_refus: int
    demandeurs: frozenset[str] = frozenset()

    def texte(self, noms=None) -> str:
        apres = f" après {format_duree(self.delai)}" if self.delai else ""
        return (f"⚠️ Demande n°{self.numero} ({self.libelle}) sans preneur{apres} : les coordinateurs "
                f"de la CPTS sont prévenus. Elle reste ouverte : une acceptation est encore possible.")

    def texte_coordination(self, noms=None, *, salon: str | None = None) -> str:
        apres = f" après {format_duree(self.delai)}" if self.delai else ""
        ou = f" ({salon})" if salon else ""
        msg = (f"⚠️ Demande n°{self.numero}{ou} · {self.libelle} : personne n'a accepté{apres}. "
               f"{self.nb_sollicites} professionnel(s) sollicité(s), {self.nb_refus} refus.")
        if self.consigne:
            msg += f" À faire : {self.consigne}"
        return msg


@dataclass(frozen=True, kw_only=True)
class InterventionEnRetard(Outcome):
    acceptant: str
    echeance: datetime
    at: datetime | None = None  # when it is signalled (the year is shown if it differs)
    fuseau: str = DEFAULT_TIMEZONE

    def texte(self, noms=None) -> str:
        return (f"⏰ Demande n°{self.numero} : le délai d'intervention est dépassé depuis "
                f"{_quand(self.echeance, self.at, self.fuseau)} et aucun compte-rendu n'est posté "
                f"({_nom(noms, self.acceptant)} a accepté).")


@dataclass(frozen=True, kw_only=True)
class SansObjet(Outcome):
    """A timer fired for a request that no longer needs it (accepted, cancelled…): do nothing."""

    raison: str
    ok: ClassVar[bool] = False

    def texte(self, noms=None) -> str:
        return self.raison


# --- refusal helpers ---------------------------------------------------------------------------

_ETAT_TEXTE = {
    Etat.EN_ATTENTE: "n'est pas encore acceptée",
    Etat.EXPIREE: "n'est pas encore acceptée",
    Etat.ACCEPTEE: "est acceptée",
    Etat.RDV_FIXE: "a un rendez-vous fixé",
    Etat.CR_POSTE: "a déjà son compte-rendu",
    Etat.CLOTUREE: "est clôturée",
    Etat.ANNULEE: "est annulée",
}


def _refus(d: Demande, raison: Raison, gabarit: str, **personnes: str | None) -> Refus:
    return Refus(numero=d.numero, raison=raison, gabarit=gabarit,
                 personnes={k: v for k, v in personnes.items() if v is not None})


def _refus_etat(d: Demande, suite: str = "") -> Refus:
    return _refus(d, Raison.ETAT, f"La demande n°{d.numero} {_ETAT_TEXTE[d.etat]}{suite}")


def _esc(text: object) -> str:
    """Escape user or data text put into a Refus gabarit (str.format)."""
    return str(text).replace("{", "{{").replace("}", "}}")


def _motif(text: str | None) -> str:
    return " ".join((text or "").split())


# --- creation ----------------------------------------------------------------------------------

def creer_demande(numero: int, flow: Flow, demandeur: str, now: datetime, *, commentaire: str,
                  cible_profession: str | None = None, cible_personne: str | None = None,
                  pour_compte_de: str | None = None, medecin_traitant: str | None = None,
                  motif: str | None = None, delai_reponse: timedelta | None = None,
                  delai_intervention: timedelta | None = None, commune: str | None = None,
                  fuseau: str = DEFAULT_TIMEZONE) -> Demande | Refus:
    """A new request in state en_attente, or a Refus (missing comment, no target, fixed délais…).

    `demandeur` is who typed the command; when a secretary acts under delegation, pass the
    professional as `pour_compte_de` (decisions.md 11). The caller solicits the cercle next
    (`solliciter`) and plans the ladder (`domain.ladder.plan_for_flow`).
    """
    now = _utc(now)
    probe = Demande(numero=numero, flow=flow.code, demandeur=demandeur, created_at=now, delai_reponse=None)
    if flow.echelle is None or flow.delai_reponse is None:
        return _refus(probe, Raison.ETAT,
                      f"« {_esc(flow.libelle)} » ne s'adresse pas à un·e professionnel·le qui accepte : "
                      f"ce n'est pas une demande.")
    commentaire = (commentaire or "").strip()
    if flow.commentaire_obligatoire and not commentaire:
        return _refus(probe, Raison.TEXTE_MANQUANT,
                      "Le commentaire détaillant la demande de prise en charge est obligatoire.")
    if (delai_reponse or delai_intervention) and not flow.delais_modifiables:
        return _refus(probe, Raison.DELAI,
                      f"Les délais de « {_esc(flow.libelle)} » sont fixés par la CPTS "
                      f"(réponse {format_duree(flow.delai_reponse)}) et ne se modifient pas à la création.")
    for name, value, maximum in (("réponse", delai_reponse, flow.delai_reponse_max),
                                 ("intervention", delai_intervention, flow.delai_intervention_max)):
        if value is not None and value <= timedelta(0):
            return _refus(probe, Raison.DELAI, f"Le délai de {name} doit être positif.")
        if value is not None and maximum is not None and value > maximum:
            return _refus(probe, Raison.DELAI,
                          f"Le délai de {name} ne peut pas dépasser {format_duree(maximum)} pour "
                          f"« {_esc(flow.libelle)} » (demandé : {format_duree(value)}).")
    profession = None if cible_personne else (cible_profession or flow.cible_profession)
    role = None if (cible_personne or profession) else flow.cible_role
    if not (cible_personne or profession or role):
        return _refus(probe, Raison.CIBLE,
                      "Précisez à qui s'adresse la demande : une profession ou une personne.")
    if cible_personne and cible_personne in {demandeur, pour_compte_de}:
        return _refus(probe, Raison.CIBLE, "Vous ne pouvez pas vous adresser une demande à vous-même.")
    d = Demande(
        numero=numero, flow=flow.code, libelle=flow.libelle, demandeur=demandeur, created_at=now,
        delai_reponse=delai_reponse or flow.delai_reponse,
        delai_intervention=delai_intervention or flow.delai_intervention_pour(motif),
        commentaire=commentaire, cible_profession=profession, cible_role=role,
        cible_personne=cible_personne, pour_compte_de=pour_compte_de, role_requis=flow.role_requis,
        medecin_traitant=medecin_traitant if flow.medecin_traitant_d_abord else None, motif=motif,
        commune=commune, fuseau=fuseau,
    )
    d._log(now, demandeur, "creation", flow.code)
    return d


def solliciter(d: Demande, users: Iterable[str], now: datetime) -> frozenset[str]:
    """Record who is notified; returns only the newcomers (never the requester, never twice).

    Declined users are not notified again. Allowed while en_attente or expiree.
    """
    if d.etat not in ACCEPTABLE:
        return frozenset()
    new = frozenset(u for u in users if u not in d.sollicites and u not in d.demandeurs and u not in d.refus)
    if new:
        d.sollicites |= new
        d._log(now, None, "sollicitation", ",".join(sorted(new)))
    return new


# --- acceptance / refusal ----------------------------------------------------------------------

def accepter(d: Demande, user: str, now: datetime) -> Acceptee | DejaPrise | Refus:
    """First acceptance wins (decisions.md 4). Who may accept is decided by domain.permissions."""
    now = _utc(now)
    if d.etat is Etat.ANNULEE:
        return _refus_etat(d, " : elle ne peut plus être acceptée.")
    if d.acceptee_par is not None or d.etat in PRISE:
        return DejaPrise(numero=d.numero, par=d.acceptee_par or "?", vous=d.acceptee_par == user)
    tardive = d.etat is Etat.EXPIREE or (d.echeance_reponse is not None and now > d.echeance_reponse)
    avait_decline = d.refus.pop(user, None) is not None
    d.etat, d.acceptee_par, d.accepted_at, d.acceptation_tardive = Etat.ACCEPTEE, user, now, tardive
    d._log(now, user, "acceptation", "tardive" if tardive else "")
    echeance = plan_intervention_deadline(now, d.delai_intervention).due_at if d.delai_intervention else None
    return Acceptee(numero=d.numero, par=user, at=now, tardive=tardive, avait_decline=avait_decline, fuseau=d.fuseau,
                    a_informer=frozenset(d.sollicites - {user}), echeance_intervention=echeance)


def refuser(d: Demande, user: str, motif: str, now: datetime) -> Declinee | DejaPrise | Refus:
    """Decline with a mandatory motif; says whether the ladder must move on at once."""
    now = _utc(now)
    motif = _motif(motif)
    if d.etat in (Etat.ANNULEE, Etat.CLOTUREE):
        return _refus_etat(d, " : il n'y a plus rien à décliner.")
    if d.acceptee_par is not None:
        if d.acceptee_par == user:
            return _refus(d, Raison.ETAT,
                          f"Vous avez accepté la demande n°{d.numero} : pour vous désister, prévenez "
                          f"le demandeur, qui peut l'annuler.")
        return DejaPrise(numero=d.numero, par=d.acceptee_par)
    if not motif:
        return _refus(d, Raison.MOTIF_MANQUANT, "Le motif du refus est obligatoire.")
    # Not added to `sollicites`: that list holds only those the ladder asked (issue 8: declining
    # must never become a way around the profession check).
    d.refus[user] = motif
    d._log(now, user, "refus", motif)

    avancer, par_mt = None, False
    tous = all(u in d.refus for u in d.sollicites)
    if d.etat is Etat.EN_ATTENTE:
        if d.rung is Rung.CERCLE:
            par_mt = d.par_profession and user == d.medecin_traitant
            if par_mt or tous:
                avancer = Rung.POOL if d.par_profession else Rung.ESCALADE
        elif d.rung in (Rung.POOL, Rung.RELANCE) and tous:
            avancer = Rung.ESCALADE
    return Declinee(numero=d.numero, par=user, motif=motif, avancer_vers=avancer, tous_ont_decline=tous,
                    par_medecin_traitant=par_mt)


# --- ladder application ------------------------------------------------------------------------

def passer_au_palier(d: Demande, rung: Rung, now: datetime, *, consigne: str | None = None
                     ) -> PalierAtteint | Escaladee | SansObjet:
    """Apply a ladder rung (timer fired, or `Declinee.avancer_vers`). Idempotent.

    POOL: the caller then notifies the profession without identity and `solliciter()`s them.
    RELANCE: `a_relancer` lists who to remind. ESCALADE: state becomes expiree, the caller
    posts `texte_coordination()` in the coordinator room and `texte()` to the requester.
    """
    now = _utc(now)
    if rung not in (Rung.POOL, Rung.RELANCE, Rung.ESCALADE):
        raise ValueError(f"passer_au_palier: rung {rung!r} is not a response rung")
    if d.etat is not Etat.EN_ATTENTE:
        return SansObjet(numero=d.numero, raison=f"La demande n°{d.numero} {_ETAT_TEXTE[d.etat]} : palier ignoré.")
    if rung.rank <= d.rung.rank:
        return SansObjet(numero=d.numero, raison=f"Palier « {rung.libelle} » déjà atteint.")
    if rung is Rung.POOL and not d.par_profession:
        return SansObjet(numero=d.numero, raison="Demande adressée à une personne : pas de pool.")
    d.rung = rung
    d._log(now, None, f"palier:{rung.value}")
    restant = (d.echeance_reponse - now) if d.echeance_reponse and d.echeance_reponse > now else None
    if rung is Rung.ESCALADE:
        d.etat, d.expired_at = Etat.EXPIREE, now
        return Escaladee(numero=d.numero, libelle=d.libelle or d.flow, delai=d.delai_reponse,
                         consigne=consigne, nb_sollicites=len(d.sollicites), nb_refus=len(d.refus),
                         demandeurs=frozenset(d.demandeurs))
    a_relancer = frozenset(d.sollicites - set(d.refus)) if rung is Rung.RELANCE else frozenset()
    return PalierAtteint(numero=d.numero, rung=rung, a_relancer=a_relancer, restant=restant)


def echeance_intervention(d: Demande, now: datetime) -> InterventionEnRetard | SansObjet:
    """INTERVENTION rung: accepted, délai d'intervention over, no CR and not closed. Once only."""
    now = _utc(now)
    echeance = d.echeance_intervention
    if d.etat not in (Etat.ACCEPTEE, Etat.RDV_FIXE) or echeance is None:
        return SansObjet(numero=d.numero, raison=f"La demande n°{d.numero} {_ETAT_TEXTE[d.etat]} : rien à vérifier.")
    if now < echeance:
        return SansObjet(numero=d.numero, raison="Délai d'intervention pas encore atteint.")
    if d.intervention_en_retard:
        return SansObjet(numero=d.numero, raison="Retard d'intervention déjà signalé.")
    d.intervention_en_retard = True
    d._log(now, None, "palier:intervention")
    return InterventionEnRetard(numero=d.numero, acceptant=d.acceptee_par or "?", echeance=echeance, at=now,
                                fuseau=d.fuseau)


# --- after acceptance --------------------------------------------------------------------------

Slot = datetime | tuple[datetime, datetime] | str


def fixer_rdv(d: Demande, user: str, slot: Slot, mode: Mode | str, now: datetime, *,
              au_nom_de: str | None = None) -> RdvFixe | Refus:
    """Set or move the appointment (who may: domain.permissions). `au_nom_de`: the professional
    a secretary acts for."""
    now = _utc(now)
    acting = au_nom_de or user
    if d.etat in ACCEPTABLE:
        return _refus_etat(d, " : le rendez-vous se fixe après l'acceptation.")
    if d.etat not in (Etat.ACCEPTEE, Etat.RDV_FIXE):
        return _refus_etat(d, " : le rendez-vous ne peut plus être modifié.")
    try:
        mode = Mode(mode)
    except ValueError:
        choix = ", ".join(m.value for m in Mode)
        return _refus(d, Raison.MODE, f"Mode de rendez-vous inconnu « {literal(_esc(mode))} » (choix : {choix}).")
    debut = fin = texte = None
    if isinstance(slot, tuple):
        debut, fin = _utc(slot[0]), _utc(slot[1])
        if fin <= debut:
            return _refus(d, Raison.CRENEAU, "La fin de la tranche horaire doit suivre son début.")
        if fin <= now:
            return _refus(d, Raison.CRENEAU, f"La tranche horaire ({_quand(debut, now, d.fuseau)}) est déjà passée.")
    elif isinstance(slot, datetime):
        debut = _utc(slot)
        if debut < now:
            return _refus(d, Raison.CRENEAU, f"Le créneau du {_quand(debut, now, d.fuseau)} est déjà passé.")
    else:
        texte = _motif(slot)
        if not texte:
            return _refus(d, Raison.CRENEAU, "Indiquez la date du rendez-vous (date et heure, tranche ou texte libre).")
    modifie = d.rdv is not None
    d.rdv = Rdv(mode=mode, debut=debut, fin=fin, texte=texte, fixe_par=user, fixe_at=now, fuseau=d.fuseau)
    d.etat = Etat.RDV_FIXE
    d._log(now, user, "rdv_modifie" if modifie else "rdv", d.rdv.decrire())
    return RdvFixe(numero=d.numero, par=acting, rdv=d.rdv, modifie=modifie)


def poster_cr(d: Demande, user: str, texte: str, now: datetime) -> CrPoste | Refus:
    """The compte-rendu (who may: domain.permissions)."""
    now = _utc(now)
    if d.etat in ACCEPTABLE:
        return _refus_etat(d, " : le compte-rendu vient après l'acceptation.")
    if d.etat is Etat.CR_POSTE:
        return _refus_etat(d, " : ajoutez un complément dans le salon du patient.")
    if d.etat not in (Etat.ACCEPTEE, Etat.RDV_FIXE):
        return _refus_etat(d, ".")
    texte = (texte or "").strip()
    if not texte:
        return _refus(d, Raison.TEXTE_MANQUANT, "Le compte-rendu est vide.")
    echeance = d.echeance_intervention
    d.cr, d.cr_at, d.etat = texte, now, Etat.CR_POSTE
    d._log(now, user, "cr")
    return CrPoste(numero=d.numero, par=user, at=now, dans_les_delais=echeance is None or now <= echeance)


def cloturer(d: Demande, user: str, now: datetime) -> Cloturee | Refus:
    """Close the request once it was accepted (who may: domain.permissions)."""
    now = _utc(now)
    if d.etat in ACCEPTABLE:
        return _refus_etat(d, " : pour l'arrêter, annulez-la (avec un motif).")
    if d.etat in (Etat.CLOTUREE, Etat.ANNULEE):
        return _refus_etat(d, ".")
    sans_cr = d.cr is None
    d.etat, d.cloturee_par, d.closed_at = Etat.CLOTUREE, user, now
    d._log(now, user, "cloture", "sans CR" if sans_cr else "")
    return Cloturee(numero=d.numero, par=user, sans_cr=sans_cr)


def annuler(d: Demande, user: str, motif: str, now: datetime) -> Annulee | Refus:
    """Cancel, with a motif, until the CR is posted (who may: domain.permissions)."""
    now = _utc(now)
    motif = _motif(motif)
    if d.etat in (Etat.CR_POSTE,):
        return _refus_etat(d, " : clôturez-la plutôt que de l'annuler.")
    if d.etat in (Etat.CLOTUREE, Etat.ANNULEE):
        return _refus_etat(d, ".")
    if not motif:
        return _refus(d, Raison.MOTIF_MANQUANT, "Le motif de l'annulation est obligatoire.")
    informer = (d.sollicites | ({d.acceptee_par} if d.acceptee_par else set())) - {user}
    d.etat, d.annulee_par, d.motif_annulation = Etat.ANNULEE, user, motif
    d._log(now, user, "annulation", motif)
    return Annulee(numero=d.numero, par=user, motif=motif, a_informer=frozenset(informer))


# --- absences (decisions.md 3.2) ---------------------------------------------------------------

Periode = tuple[datetime | str, datetime | str]


def _instant(value: datetime | str) -> datetime:
    dt = datetime.fromisoformat(value) if isinstance(value, str) else value
    return _utc(dt.replace(tzinfo=PARIS) if dt.tzinfo is None else dt)


def est_absent(absences: Iterable[Periode] | None, now: datetime) -> bool:
    """True if `now` falls in one of the [début, fin) periods (ISO strings or datetimes)."""
    now = _utc(now)
    return any(_instant(start) <= now < _instant(end) for start, end in absences or ())


def mt_indisponible(medecin_traitant: str | None, absences_mt: Iterable[Periode] | None, now: datetime) -> bool:
    """Skip the MT-first phase: no MT in the cercle, or the MT is absent now (decisions.md 3.2).

    Pass the result as `pool_now` to the ladder planner.
    """
    return medecin_traitant is None or est_absent(absences_mt, now)
