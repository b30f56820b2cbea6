"""Indemnities: the tariff rules (data/tarifs/*.yaml), the quarters, and the price of one act.

Pure: an act and its facts in, a state (éligible / en attente / non éligible), an amount and the
reason out. Amounts are integer cents. « + CPAM » is carried as a label to show, never added to
the CPTS amounts (spec §5.1). A rule set (barème) is a chain of versions, each in force from its
date (decisions.md 12); the version in force at the act's instant prices it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from enum import StrEnum
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml

from domain.rules_yaml import load_rules

ACTES = ("reperage", "inclusion", "declenchement", "acceptation", "red_flag", "alerte_critique", "suivi",
         "tcim_medecin", "tcim_infirmier")

# What a criterion means, and what the professional does to meet it (shown by `!indemnites`).
CRITERES: dict[str, tuple[str, str]] = {
    "administratif": ("partie administrative du dossier", "créer le cercle avec `!patient nouveau`"),
    "carte": ("carte « intégration parcours » remise", "`!inclure <parcours> carte=oui` dans le salon du patient"),
    "donnees_de_base": ("données de base", "renseigner les données de base du parcours dans le salon du patient"),
    "commentaire": ("raison en commentaire", "la commande exige le commentaire"),
    "element_de_suivi": ("élément de suivi", "renseigner un élément de suivi"),
    "photos": ("photos", "poster les photos de la plaie dans le salon du patient"),
    "fiche_suivi": ("fiche de suivi", "renseigner la fiche de suivi de pansement"),
    "cr": ("compte-rendu", "`!cr <n°> <compte-rendu>` dans le salon du patient"),
    "cloture": ("clôture de la fiche", "`!cloturer <n°>` dans le salon du patient"),
    "rdv": ("RDV donné", "`!rdv <n°> <horaire> teleconsultation` dans le salon du patient"),
    "ordonnance_recue": ("ordonnance reçue", "noter la bonne réception de l'ordonnance dans le salon du patient"),
    "attestation_amelipro": ("attestation AmeliPro", "`!indemnites attester <P-XXXX/n>` ici, après la déclaration du MT sur AmeliPro"),
    "validation_coordinateur": ("validation d'un coordinateur", "un coordinateur valide : `!bordereau attestation <P-XXXX/n>`"),
}

_ROOT = Path(__file__).resolve().parent.parent


class TarifsError(ValueError):
    """A malformed tariff file: one French line, `<file>: <key>: <reason>`."""


class Etat(StrEnum):
    ELIGIBLE = "eligible"
    EN_ATTENTE = "en_attente"
    NON_ELIGIBLE = "non_eligible"


ETAT_LIBELLE = {Etat.ELIGIBLE: "éligible", Etat.EN_ATTENTE: "en attente", Etat.NON_ELIGIBLE: "non éligible"}


# --- the rules ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Regle:
    code: str
    actes: frozenset[str]
    action: str
    montant_cents: int
    critere: str
    source: str
    parcours: frozenset[str] | None = None  # None: every parcours (and none)
    flux: frozenset[str] | None = None
    qui: frozenset[str] | None = None  # professions; None: tous
    via: frozenset[str] | None = None  # the requester must hold one of these directory roles
    cpam: str | None = None
    criteres: tuple[str, ...] = ()

    def cible(self, ligne: "Ligne") -> bool:
        """Does the rule speak of this act (before asking who did it)?"""
        return (ligne.acte in self.actes
                and (self.parcours is None or ligne.parcours in self.parcours)
                and (self.flux is None or ligne.flux in self.flux)
                and (self.via is None or bool(self.via & ligne.roles_demandeur)))

    def pour(self, profession: str | None) -> bool:
        return self.qui is None or profession in self.qui

    @property
    def precision(self) -> int:
        return sum(x is not None for x in (self.parcours, self.flux, self.via, self.qui))


@dataclass(frozen=True)
class Version:
    nom: str
    bareme: str
    depuis: date
    vote: str
    regles: tuple[Regle, ...]


@dataclass(frozen=True)
class Bareme:
    """A CPTS's tariff: its versions in date order (older rule sets first, through `avant`)."""

    nom: str
    libelle: str
    cpts: str
    versions: tuple[Version, ...]

    def version_au(self, instant: datetime, tz: ZoneInfo) -> Version | None:
        day = instant.astimezone(tz).date()  # a version starts at local midnight of its date
        current = None
        for v in self.versions:
            if v.depuis <= day:
                current = v
        return current


# --- one act and its facts -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Ligne:
    acte: str
    at: datetime
    parcours: str | None = None
    flux: str | None = None
    profession: str | None = None  # of the professional the line belongs to, None if unknown
    cotisation_jusqu_au: datetime | None = None
    roles_demandeur: frozenset[str] = frozenset()
    criteres: frozenset[str] = frozenset()  # the criteria already met
    annulee: bool = False  # its request was called off (!annuler, TCIM interrompue): nothing more will come


@dataclass(frozen=True)
class Tarif:
    etat: Etat
    montant_cents: int  # the rule's amount (0 when no rule pays); totals use it per état
    motif: str  # why not éligible, or what is missing; "" when éligible
    manque: tuple[str, ...] = ()  # missing criteria (codes of CRITERES)
    regle: str | None = None
    version: str | None = None
    cpam: str | None = None
    critere: str = ""
    action: str = ""

    @property
    def du_cents(self) -> int:
        """What the CPTS owes for the line now."""
        return self.montant_cents if self.etat is Etat.ELIGIBLE else 0


def tarifer(bareme: Bareme, ligne: Ligne, tz: ZoneInfo) -> Tarif:
    """The price of one act under the version in force at its instant."""
    version = bareme.version_au(ligne.at, tz)
    if version is None:
        return Tarif(Etat.NON_ELIGIBLE, 0, f"aucun barème en vigueur le {_jour(ligne.at, tz)}")
    visees = [r for r in version.regles if r.cible(ligne)]
    pour_lui = sorted((r for r in visees if r.pour(ligne.profession)), key=lambda r: -r.precision)
    if not pour_lui:
        if visees:
            qui = sorted({q for r in visees for q in (r.qui or ())})
            return Tarif(Etat.NON_ELIGIBLE, 0, "acte indemnisé seulement pour : " + ", ".join(qui).replace("_", " "),
                         version=version.nom)
        return Tarif(Etat.NON_ELIGIBLE, 0, "pas d'indemnité prévue pour cet acte", version=version.nom)
    r = pour_lui[0]
    common = dict(regle=r.code, version=version.nom, cpam=r.cpam, critere=r.critere, action=r.action)
    if r.montant_cents == 0:
        return Tarif(Etat.NON_ELIGIBLE, 0, f"non indemnisé (« {r.critere} », {r.source})", **common)
    if ligne.cotisation_jusqu_au is None or ligne.cotisation_jusqu_au < ligne.at:
        return Tarif(Etat.NON_ELIGIBLE, r.montant_cents,
                     f"cotisation non à jour le {_jour(ligne.at, tz)}", **common)
    manque = tuple(c for c in r.criteres if c not in ligne.criteres)
    if manque and ligne.annulee:
        return Tarif(Etat.NON_ELIGIBLE, r.montant_cents, "demande annulée avant : "
                     + ", ".join(CRITERES[c][0] for c in manque), **common)
    if manque:
        return Tarif(Etat.EN_ATTENTE, r.montant_cents,
                     "manque : " + ", ".join(CRITERES[c][0] for c in manque), manque=manque, **common)
    return Tarif(Etat.ELIGIBLE, r.montant_cents, "", **common)


def _jour(instant: datetime, tz: ZoneInfo) -> str:
    return instant.astimezone(tz).strftime("%d/%m/%Y")


# --- quarters (in the CPTS's time zone) ------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class Trimestre:
    annee: int
    numero: int  # 1..4

    def __str__(self) -> str:
        return f"{self.annee}-T{self.numero}"

    def debut(self, tz: ZoneInfo) -> datetime:
        """First instant, as an aware UTC datetime (local midnight of the first day)."""
        return datetime.combine(date(self.annee, 3 * self.numero - 2, 1), time(0), tzinfo=tz).astimezone(timezone.utc)

    def fin(self, tz: ZoneInfo) -> datetime:
        """First instant of the next quarter (exclusive bound)."""
        return self.suivant().debut(tz)

    def suivant(self) -> "Trimestre":
        return Trimestre(self.annee + 1, 1) if self.numero == 4 else Trimestre(self.annee, self.numero + 1)

    def precedent(self) -> "Trimestre":
        return Trimestre(self.annee - 1, 4) if self.numero == 1 else Trimestre(self.annee, self.numero - 1)

    def libelle(self) -> str:
        mois = {1: "janvier – mars", 2: "avril – juin", 3: "juillet – septembre", 4: "octobre – décembre"}
        return f"{self.numero}{'er' if self.numero == 1 else 'e'} trimestre {self.annee} ({mois[self.numero]})"

    def mois(self) -> list[tuple[int, int]]:
        return [(self.annee, 3 * self.numero - 2 + i) for i in range(3)]


def trimestre_de(instant: datetime, tz: ZoneInfo) -> Trimestre:
    local = instant.astimezone(tz)
    return Trimestre(local.year, (local.month - 1) // 3 + 1)


def dernier_trimestre_termine(now: datetime, tz: ZoneInfo) -> Trimestre:
    return trimestre_de(now, tz).precedent()


_TRIMESTRE = re.compile(r"^(?:(\d{4})[-/ ]?[tq]([1-4])|[tq]([1-4])[-/ ]?(\d{4}))$", re.IGNORECASE)


_TRIMESTRE_LIBRE = re.compile(r"^(?:\d{4}[-/ ]?[tq]\d+|[tq]\d+[-/ ]?\d{4})$", re.IGNORECASE)


def looks_like_trimestre(text: str) -> bool:
    """`2026-T5`: meant as a quarter, even an impossible one (answered as such, not as something else)."""
    return bool(_TRIMESTRE_LIBRE.match(text.strip()))


def parse_trimestre(text: str) -> Trimestre:
    """`2026-T3`, `2026T3`, `T3-2026`, `2026-Q3`; raises ValueError with a French message."""
    m = _TRIMESTRE.match(text.strip())
    if not m and looks_like_trimestre(text):
        raise ValueError(f"« {text} » n'est pas un trimestre : un trimestre va de T1 à T4 (par exemple 2026-T3)")
    if not m:
        raise ValueError(f"trimestre attendu sous la forme 2026-T3, pas « {text} »")
    annee, numero = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
    return Trimestre(int(annee), int(numero))


def prochain_debut_de_trimestre(now: datetime, tz: ZoneInfo, heure: time) -> datetime:
    """The next first-day-of-quarter at `heure` local (strictly after `now`)."""
    t = trimestre_de(now, tz)
    for q in (t, t.suivant()):
        at = datetime.combine(date(q.annee, 3 * q.numero - 2, 1), heure, tzinfo=tz).astimezone(timezone.utc)
        if at > now:
            return at
    raise AssertionError("unreachable")


def prochain_jour_de_semaine(now: datetime, tz: ZoneInfo, weekday: int, heure: time) -> datetime:
    """The next `weekday` (0 = lundi) at `heure` local, strictly after `now`."""
    local = now.astimezone(tz)
    for days in range(8):
        day = local.date() + timedelta(days=days)
        if day.weekday() == weekday:
            at = datetime.combine(day, heure, tzinfo=tz).astimezone(timezone.utc)
            if at > now:
                return at
    raise AssertionError("unreachable")


# --- money ---------------------------------------------------------------------------------------------
def euros(cents: int) -> str:
    """15,00 € ; 1 234,50 € (French grouping with a narrow no-break space)."""
    sign = "-" if cents < 0 else ""
    units, rest = divmod(abs(cents), 100)
    grouped = f"{units:,}".replace(",", "\u202f")
    return f"{sign}{grouped},{rest:02d} €"


def decimal_fr(cents: int) -> str:
    """1234,50 (for a French spreadsheet: decimal comma, no grouping)."""
    sign = "-" if cents < 0 else ""
    units, rest = divmod(abs(cents), 100)
    return f"{sign}{units},{rest:02d}"


# --- loading -------------------------------------------------------------------------------------------
def default_directory() -> Path:
    local = _ROOT / "data" / "tarifs"
    if local.is_dir():
        return local
    from importlib.resources import files

    return Path(str(files("data").joinpath("tarifs")))


_REGLE_KEYS = {"code", "acte", "parcours", "flux", "qui", "via", "action", "montant", "cpam", "criteres", "critere",
               "source"}
_FILE_KEYS = {"bareme", "libelle", "cpts", "avant", "versions"}
_VERSION_KEYS = {"version", "depuis", "vote", "regles"}


@dataclass
class _Raw:
    nom: str
    libelle: str
    cpts: str
    avant: str | None
    versions: list[Version] = field(default_factory=list)


def _set(value, where: str, fail, known: set[str] | None = None) -> frozenset[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        raise fail(where, "liste de codes attendue")
    if "tous" in items:
        if len(items) > 1:
            raise fail(where, "« tous » ne se combine pas avec d'autres valeurs")
        return None
    if known is not None:
        unknown = [i for i in items if i not in known]
        if unknown:
            raise fail(where, f"code inconnu : {', '.join(unknown)}")
    return frozenset(items)


def _read(path: Path, known: dict[str, set[str]]) -> _Raw:
    name = path.name

    def fail(key: str, reason: str) -> TarifsError:
        return TarifsError(f"{name}: {key}: {reason}")

    try:
        raw = load_rules(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise TarifsError(f"{name}: YAML invalide : {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise fail("(racine)", "un dictionnaire est attendu")
    extra = set(raw) - _FILE_KEYS
    if extra:
        raise fail(sorted(extra)[0], "clé inconnue")
    for key in ("bareme", "libelle", "cpts", "versions"):
        if not raw.get(key):
            raise fail(key, "clé obligatoire manquante")
    if raw["bareme"] != path.stem:
        raise fail("bareme", f"doit être le nom du fichier ({path.stem})")
    out = _Raw(raw["bareme"], raw["libelle"], raw["cpts"], raw.get("avant"))
    previous: date | None = None
    for i, v in enumerate(raw["versions"]):
        where = f"versions[{i}]"
        if not isinstance(v, dict):
            raise fail(where, "dictionnaire attendu")
        extra = set(v) - _VERSION_KEYS
        if extra:
            raise fail(f"{where}.{sorted(extra)[0]}", "clé inconnue")
        depuis = v.get("depuis")
        if not isinstance(depuis, date) or isinstance(depuis, datetime):
            raise fail(f"{where}.depuis", "date AAAA-MM-JJ attendue")
        if previous is not None and depuis <= previous:
            raise fail(f"{where}.depuis", "les versions doivent se suivre par date croissante")
        previous = depuis
        if not v.get("version") or not v.get("vote"):
            raise fail(where, "`version` et `vote` sont obligatoires")
        regles, codes = [], set()
        for j, r in enumerate(v.get("regles") or []):
            regles.append(_regle(r, f"{where}.regles[{j}]", fail, known, codes))
        if not regles:
            raise fail(f"{where}.regles", "au moins une règle")
        out.versions.append(Version(v["version"], out.nom, depuis, v["vote"], tuple(regles)))
    return out


def _regle(r, where: str, fail, known: dict[str, set[str]], codes: set[str]) -> Regle:
    if not isinstance(r, dict):
        raise fail(where, "dictionnaire attendu")
    extra = set(r) - _REGLE_KEYS
    if extra:
        raise fail(f"{where}.{sorted(extra)[0]}", "clé inconnue")
    for key in ("code", "acte", "action", "montant", "critere", "source"):
        if r.get(key) is None:
            raise fail(f"{where}.{key}", "clé obligatoire manquante")
    if r["code"] in codes:
        raise fail(f"{where}.code", f"code « {r['code']} » en double")
    codes.add(r["code"])
    montant = r["montant"]
    if isinstance(montant, bool) or not isinstance(montant, (int, float)) or montant < 0:
        raise fail(f"{where}.montant", "montant en euros attendu (0 pour « - »)")
    criteres = r.get("criteres") or []
    unknown = [c for c in criteres if c not in CRITERES]
    if unknown:
        raise fail(f"{where}.criteres", f"critère inconnu : {', '.join(unknown)} (connus : {', '.join(CRITERES)})")
    if montant == 0 and criteres:
        raise fail(f"{where}.criteres", "une règle non indemnisée n'a pas de critère")
    if r.get("cpam") is not None and not isinstance(r["cpam"], str):
        raise fail(f"{where}.cpam", "texte attendu : la part CPAM est affichée, jamais additionnée")
    actes = _set(r["acte"], f"{where}.acte", fail, set(ACTES))
    if actes is None:
        raise fail(f"{where}.acte", "un ou plusieurs actes, pas « tous »")
    return Regle(code=r["code"], actes=actes, action=str(r["action"]), montant_cents=round(montant * 100),
                 critere=str(r["critere"]), source=str(r["source"]),
                 parcours=_set(r.get("parcours"), f"{where}.parcours", fail, known.get("parcours")),
                 flux=_set(r.get("flux"), f"{where}.flux", fail, known.get("flux")),
                 qui=_set(r.get("qui", ["tous"]), f"{where}.qui", fail, known.get("professions")),
                 via=_set(r.get("via"), f"{where}.via", fail), cpam=r.get("cpam"), criteres=tuple(criteres))


def load_baremes(directory: Path | None = None, *, parcours: set[str] | None = None, flux: set[str] | None = None,
                 professions: set[str] | None = None) -> dict[str, Bareme]:
    """Every rule set of `data/tarifs`, each with its chain of versions (`avant`). Raises TarifsError.

    The known codes (parcours, flows, professions) check every rule's references when given."""
    directory = directory or default_directory()
    known = {k: v for k, v in (("parcours", parcours), ("flux", flux), ("professions", professions)) if v is not None}
    raws = {p.stem: _read(p, known) for p in sorted(directory.glob("*.yaml"))}
    out: dict[str, Bareme] = {}
    for nom, raw in raws.items():
        chain, seen, current = [], {nom}, raw
        while current.avant:
            if current.avant not in raws:
                raise TarifsError(f"{nom}.yaml: avant: barème inconnu « {current.avant} »")
            if current.avant in seen:
                raise TarifsError(f"{nom}.yaml: avant: boucle entre barèmes")
            seen.add(current.avant)
            current = raws[current.avant]
            chain = [*current.versions, *chain]
        first = raw.versions[0].depuis
        older = [v for v in chain if v.depuis < first]
        out[nom] = Bareme(nom, raw.libelle, raw.cpts, tuple(older + raw.versions))
    return out
