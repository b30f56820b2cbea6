"""TCIM (téléconsultation conjointe infirmier/médecin): the rules on top of a request, pure.

The request itself (ask, ladder, first acceptance wins, `!rdv`, `!cr`) is domain.demandes; this
module holds what TCIM adds (issue 12, data/parcours/tcim.yaml): eligibility, the slot confirmed
by the nurse, the teleconsultation charter as a checklist, the interruption, the prescription
received, and when the whole is closed. No I/O; every function takes `now`.

States::

    demandee ─(request accepted)─▶ acceptee ─(!rdv)─▶ creneau_propose ─(!tcim confirmer)─▶ confirmee
        ─(!tcim debut, charter ticked)─▶ en_cours ─(!tcim fin)─▶ realisee
        ─(!cr and !tcim ordonnance recue, in any order)─▶ close
    any state but close ──(!tcim interrompre)──▶ interrompue

Decisions where the documents are silent:
- The nurse proposing another slot (`!tcim proposer`) leaves the doctor's slot unconfirmed; the
  doctor answers with a new `!rdv`, which the nurse confirms.
- The compte-rendu and the prescription come after `!tcim fin` (the teleconsultation took place).
- An interruption ends the TCIM (the request is cancelled with the motif) and proposes another
  path (S000 L977 « une prise en charge mieux adaptée »).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from domain.parcours import ChecklistItem, Tcim
from domain.text import normalize

# `!tcim demande <motif>`: the two compatible motifs (S000 L1004-1007), by the word clinicians type.
MOTIFS = {"snp": 0, "reevaluation": 1}  # index in tcim.motifs_compatibles
MOTIF_ALIASES = {"snp": ["soin_non_programme", "soins_non_programmes", "non_programme"],
                 "reevaluation": ["réévaluation", "reevaluation_traitement", "traitement"]}

# What a doctor may type for each charter item (codes of data/parcours/tcim.yaml charte_avant).
CHARTER_WORDS = {
    "identite": ["identité", "presentation", "présentation", "identite_presentation"],
    "consentement": ["consentement_oral", "consent", "accord"],
    "capacite_communiquer": ["capacite", "capacité", "communication", "communiquer", "distance"],
    "confidentialite": ["confidentialité", "confidentiel", "confidentialite_lieux"],
}
ALL_ITEMS = ("tout", "tous", "toutes", "all")


class Etat(StrEnum):
    DEMANDEE = "demandee"
    ACCEPTEE = "acceptee"
    CRENEAU_PROPOSE = "creneau_propose"
    CONFIRMEE = "confirmee"
    EN_COURS = "en_cours"
    REALISEE = "realisee"
    CLOSE = "close"
    INTERROMPUE = "interrompue"


ETAT_TEXTE = {
    Etat.DEMANDEE: "en attente d'un médecin",
    Etat.ACCEPTEE: "acceptée, en attente du créneau du médecin",
    Etat.CRENEAU_PROPOSE: "créneau proposé, en attente de la confirmation de l'infirmier·e",
    Etat.CONFIRMEE: "créneau confirmé",
    Etat.EN_COURS: "téléconsultation en cours",
    Etat.REALISEE: "téléconsultation réalisée",
    Etat.CLOSE: "close",
    Etat.INTERROMPUE: "interrompue",
}
AVANT_DEBUT = frozenset({Etat.DEMANDEE, Etat.ACCEPTEE, Etat.CRENEAU_PROPOSE, Etat.CONFIRMEE})


def motif_libelle(rules: Tcim, motif: str) -> str:
    return rules.motifs_compatibles[MOTIFS[motif]]


def eligibility_failures(rules: Tcim, *, sans_mt: bool, deplacement_possible: bool) -> list[str]:
    """The criteria not met, in the charter's words (S000 L1000-1002: both are required)."""
    failed = []
    if not sans_mt:
        failed.append(rules.eligibilite[0])
    if deplacement_possible:
        failed.append(rules.eligibilite[1])
    return failed


def charter_item(rules: Tcim, word: str) -> str | None:
    """The charte_avant code a typed word names, or None."""
    key = normalize(word).replace("-", "_")
    for item in rules.charte_avant:
        names = {item.code, *CHARTER_WORDS.get(item.code, ())}
        if key in {normalize(n).replace("-", "_") for n in names}:
            return item.code
    return None


def missing_items(rules: Tcim, ticked) -> list[ChecklistItem]:
    """The mandatory « avant de démarrer » items not ticked yet (S000 L963-968)."""
    return [item for item in rules.charte_avant if item.obligatoire and item.code not in set(ticked)]


def video_link(base: str, token: str) -> str:
    """One room per consultation under the configured server: `https://meet.jit.si/tcim-<token>`.

    The token is random (`secrets.token_urlsafe`): nothing of the patient, their code or the
    request is in it, so the link reveals nothing and cannot be guessed from another."""
    return f"{base if base.endswith(('/', '=', '#')) else base + '/'}tcim-{token}"


@dataclass
class TcimState:
    """What TCIM adds to a request (stored encrypted, keyed by the request's id)."""

    motif: str
    sans_mt: bool
    deplacement_possible: bool
    infirmier: str
    lien: str
    etat: Etat = Etat.DEMANDEE
    medecin: str | None = None
    creneau: datetime | None = None          # the doctor's slot (start), once `!rdv` is given
    creneau_texte: str | None = None
    confirme_par: str | None = None
    confirme_at: datetime | None = None
    contre_proposition: str | None = None    # the nurse's other slot, as she typed it
    charte: list[str] = field(default_factory=list)
    debut_at: datetime | None = None
    fin_at: datetime | None = None
    lieu: str | None = None                  # S000 L972 localisation du patient
    presents: str | None = None              # S000 L973 accompagnants
    interrompue_par: str | None = None
    interrompue_at: datetime | None = None
    motif_interruption: str | None = None
    cr_at: datetime | None = None
    ordonnance_at: datetime | None = None
    closed_at: datetime | None = None
    retard_signale: bool = False

    # --- transitions: each returns None when done, else the French reason it is refused -----
    def accepter(self, medecin: str) -> None:
        self.medecin, self.etat = medecin, Etat.ACCEPTEE

    def proposer_creneau(self, debut: datetime | None, texte: str) -> str | None:
        if self.etat not in (Etat.ACCEPTEE, Etat.CRENEAU_PROPOSE, Etat.CONFIRMEE):
            return f"la TCIM est {ETAT_TEXTE[self.etat]} : le créneau ne se change plus"
        self.creneau, self.creneau_texte, self.etat = debut, texte, Etat.CRENEAU_PROPOSE
        self.confirme_par = self.confirme_at = self.contre_proposition = None
        return None

    def confirmer(self, par: str, now: datetime) -> str | None:
        if self.etat is Etat.CONFIRMEE:
            return "le créneau est déjà confirmé"
        if self.etat is not Etat.CRENEAU_PROPOSE:
            return f"la TCIM est {ETAT_TEXTE[self.etat]} : il n'y a pas de créneau à confirmer"
        self.confirme_par, self.confirme_at, self.etat = par, now, Etat.CONFIRMEE
        self.retard_signale = False  # a new slot: its own escalation if it passes too
        return None

    def contre_proposer(self, texte: str) -> str | None:
        if self.etat not in (Etat.CRENEAU_PROPOSE, Etat.CONFIRMEE):
            return f"la TCIM est {ETAT_TEXTE[self.etat]} : il n'y a pas de créneau à remplacer"
        self.contre_proposition, self.etat = texte, Etat.CRENEAU_PROPOSE
        self.confirme_par = self.confirme_at = None
        return None

    def cocher(self, codes) -> str | None:
        if self.etat not in AVANT_DEBUT:
            return f"la TCIM est {ETAT_TEXTE[self.etat]} : la charte se coche avant le début"
        self.charte = sorted(set(self.charte) | set(codes))
        return None

    def demarrer(self, rules: Tcim, now: datetime) -> str | None:
        if self.etat is not Etat.CONFIRMEE:
            if self.etat in (Etat.ACCEPTEE, Etat.CRENEAU_PROPOSE):
                return "le créneau n'est pas encore confirmé par l'infirmier·e (`!tcim confirmer`)"
            return f"la TCIM est {ETAT_TEXTE[self.etat]}"
        if missing_items(rules, self.charte):
            return "charte"
        self.debut_at, self.etat = now, Etat.EN_COURS
        return None

    def terminer(self, now: datetime, lieu: str | None, presents: str | None) -> str | None:
        if self.etat is not Etat.EN_COURS:
            return f"la TCIM est {ETAT_TEXTE[self.etat]} : `!tcim fin` suit `!tcim debut`"
        self.fin_at, self.lieu, self.presents, self.etat = now, lieu, presents, Etat.REALISEE
        return None

    def interrompre(self, par: str, motif: str, now: datetime) -> str | None:
        if self.etat in (Etat.CLOSE, Etat.INTERROMPUE, Etat.REALISEE):
            return f"la TCIM est {ETAT_TEXTE[self.etat]} : il n'y a plus rien à interrompre"
        if not motif.strip():
            return "le motif de l'interruption est obligatoire (il est tracé)"
        self.interrompue_par, self.interrompue_at, self.motif_interruption = par, now, motif.strip()
        self.etat = Etat.INTERROMPUE
        return None

    def poster_cr(self, now: datetime) -> str | None:
        if self.etat in AVANT_DEBUT or self.etat is Etat.EN_COURS:
            return "le compte-rendu de la TCIM suit la fin de la téléconsultation (`!tcim fin`)"
        if self.etat is Etat.INTERROMPUE:
            return "la TCIM a été interrompue"
        self.cr_at = now
        return None

    def ordonnance_recue(self, now: datetime) -> str | None:
        if self.etat in AVANT_DEBUT or self.etat is Etat.EN_COURS:
            return "l'ordonnance se note après la téléconsultation (`!tcim fin`)"
        if self.etat is Etat.INTERROMPUE:
            return "la TCIM a été interrompue"
        if self.ordonnance_at is not None:
            return "la réception de l'ordonnance est déjà notée"
        self.ordonnance_at = now
        return None

    def clore_si_complete(self, now: datetime) -> bool:
        """Closed when the doctor's CR and the nurse's prescription are both there (S000 L928-929)."""
        if self.etat is Etat.REALISEE and self.cr_at and self.ordonnance_at:
            self.etat, self.closed_at = Etat.CLOSE, now
            return True
        return False
