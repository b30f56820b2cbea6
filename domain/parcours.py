"""Parcours de soins as data: pydantic models, loader and lookup.

One YAML file per parcours lives in `data/parcours/<code>.yaml`; every value there cites its
source (`# S000 L301` = seeds/000_*.txt line 301). This module only validates and serves them:
no clinical number is written here. `load_catalogue()` refuses a malformed file with a one-line
French error naming the file, the key path and the reason, e.g.

    data/parcours/bpco.yaml: red_flags.mesures[0].seuil: valeur manquante

Durations (délais) are written `8h`, `4j`, `30min`, `2sem` (calendar time, decisions.md 1).
Reminder periods (rappels) are calendar periods: `10j`, `3sem`, `1mois`, `3ans`.
"""
from __future__ import annotations

import calendar
import re
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    model_validator,
)

from domain.rules_yaml import load_rules
from domain.text import compact_duration, format_duree, normalize, normalize_key, parse_duration

__all__ = [
    "ActionConditionnelle", "AlerteCritique", "CatalogueError", "ChecklistItem", "Constate", "Delai",
    "DonneeBase", "ElementSuivi", "Fin", "GRANDEURS", "Grandeur", "Inclusion", "Seuil", "Parcours", "Periode",
    "Phase", "Rappel", "RedFlags", "Tcim", "default_directory", "find_parcours",
    "load_catalogue", "load_parcours_file", "parse_duration", "parse_periode",
]

# --- durations (fixed lengths: délais) ------------------------------------------------------------

_DURATION_UNITS = {"min": timedelta(minutes=1), "h": timedelta(hours=1), "j": timedelta(days=1),
                   "sem": timedelta(weeks=1)}


def _duree(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    return parse_duration(value)


Duree = Annotated[timedelta, BeforeValidator(_duree), PlainSerializer(compact_duration, return_type=str)]


# --- calendar periods (rappels) -------------------------------------------------------------------

_PERIOD_UNITS = {
    "j": "j", "jour": "j", "jours": "j",
    "sem": "sem", "semaine": "sem", "semaines": "sem",
    "mois": "mois",
    "an": "an", "ans": "an", "annee": "an", "annees": "an",
}
_PERIOD_RE = re.compile(r"^(\d+)\s*([a-z]+)$")
_PERIOD_FORMS = "10j, 3sem, 1mois, 3ans"


class Periode(BaseModel):
    """A calendar period for reminders: months and years follow the calendar (1mois after 31 janv. = 28/29 févr.)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    nombre: int = Field(gt=0)
    unite: Literal["j", "sem", "mois", "an"]

    def __str__(self) -> str:
        return f"{self.nombre}{'ans' if self.unite == 'an' and self.nombre > 1 else self.unite}"

    def apres(self, d: date) -> date:
        """`d` + this period."""
        if self.unite == "j":
            return d + timedelta(days=self.nombre)
        if self.unite == "sem":
            return d + timedelta(weeks=self.nombre)
        months = self.nombre * (12 if self.unite == "an" else 1)
        y, m = divmod(d.month - 1 + months, 12)
        year, month = d.year + y, m + 1
        return date(year, month, min(d.day, calendar.monthrange(year, month)[1]))

    def approx(self) -> timedelta:
        """An approximate length (30 j a month, 365 j a year), for ordering checks only."""
        days = {"j": 1, "sem": 7, "mois": 30, "an": 365}[self.unite]
        return timedelta(days=self.nombre * days)


def parse_periode(text: Any) -> Periode:
    if isinstance(text, Periode):
        return text
    if not isinstance(text, str):
        raise ValueError(f"période « {text} » sans unité (formes acceptées : {_PERIOD_FORMS})")
    m = _PERIOD_RE.match(normalize(text).replace(" ", ""))
    if not m or m.group(2) not in _PERIOD_UNITS or int(m.group(1)) == 0:
        raise ValueError(f"période invalide « {text} » (formes acceptées : {_PERIOD_FORMS})")
    return Periode(nombre=int(m.group(1)), unite=_PERIOD_UNITS[m.group(2)])


PeriodeField = Annotated[Periode, BeforeValidator(parse_periode), PlainSerializer(str, return_type=str)]


# --- measured quantities (the grammar, not the thresholds) ----------------------------------------

class Grandeur(BaseModel):
    """A measurable quantity: its display symbol, unit(s) and the kind of value it takes."""

    model_config = ConfigDict(frozen=True)

    code: str
    symbole: str
    unites: tuple[str | None, ...]
    nature: Literal["nombre", "paire", "booleen", "variation"]


# Units are canonical spellings; the YAML must use them so a measure and a threshold compare.
GRANDEURS: dict[str, Grandeur] = {g.code: g for g in (
    Grandeur(code="spo2", symbole="SpO₂", unites=("%",), nature="nombre"),
    Grandeur(code="tas", symbole="TA systolique", unites=("mmHg",), nature="nombre"),
    Grandeur(code="tad", symbole="TA diastolique", unites=("mmHg",), nature="nombre"),
    Grandeur(code="ta", symbole="TA", unites=("mmHg",), nature="paire"),
    Grandeur(code="fc", symbole="FC", unites=("/min",), nature="nombre"),
    Grandeur(code="hb", symbole="Hb", unites=("g/dl",), nature="nombre"),
    Grandeur(code="poids", symbole="variation de poids", unites=("kg", "%"), nature="variation"),
    Grandeur(code="cetonurie", symbole="cétonurie", unites=(None,), nature="booleen"),
    Grandeur(code="vems_cvf", symbole="VEMS/CVF", unites=("%",), nature="nombre"),
    Grandeur(code="grade_podologique", symbole="grade podologique", unites=(None,), nature="variation"),
)}

OPERATEURS = {"<": "<", "<=": "≤", ">": ">", ">=": "≥", "=": "="}


def format_number(x: float) -> str:
    """94.0 → "94", 2.5 → "2,5" (French decimal comma)."""
    return (f"{x:g}" if float(x) != int(x) else str(int(x))).replace(".", ",")


# --- models -----------------------------------------------------------------------------------------

Code = Annotated[str, Field(pattern=r"^[a-z0-9_]+$")]
Texte = Annotated[str, Field(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _KeyedError(ValueError):
    """A validator error about one sub-key: the loader appends `key` to the error path."""

    def __init__(self, key: str, reason: str):
        super().__init__(reason)
        self.key, self.reason = key, reason


def _unique_codes(items: list[Any], key: str) -> None:
    seen: set[str] = set()
    for i, item in enumerate(items):
        if item.code in seen:
            raise _KeyedError(f"{key}[{i}].code", f"code « {item.code} » en double")
        seen.add(item.code)


class Inclusion(_Strict):
    qui: list[Code] = Field(min_length=1)        # professions (data/professions.yaml) or roles
    medecin_traitant_requis: bool
    document_integration: str | None = None      # None: nothing to hand over
    criteres: Texte
    entrees: list[Texte] = []                    # périnatalité: the two entry points


class DonneeBase(_Strict):
    code: Code
    libelle: Texte
    type: Literal["nombre", "entier", "tension", "texte", "date", "oui_non", "choix"]
    unite: str | None = None
    options: list[Texte] = []
    note: str | None = None
    defaut_configurable: bool = False            # decisions.md 17: not listed in the seeds
    hors_livret: bool = False                    # added by Cercle (e.g. an anchor date), not in the seed
    aliases: list[Texte] = []                    # other names a clinician may type (ddr, accouchement…)
    min: float | None = None                     # plausible range of a typed number (notation check,
    max: float | None = None                     # not a clinical threshold: those are red_flags.mesures)
    futur_permis: bool = False                   # a date may lie ahead (otherwise: today or before)
    grandeur: Code | None = None                 # the red-flag quantity this value measures (GRANDEURS)

    @model_validator(mode="after")
    def _options(self) -> "DonneeBase":
        if self.type == "choix" and not self.options:
            raise _KeyedError("options", "une donnée de type choix demande des options")
        if self.type != "choix" and self.options:
            raise _KeyedError("options", f"options réservées au type choix (type : {self.type})")
        if self.unite is not None and self.type not in ("nombre", "entier", "tension", "texte"):
            raise _KeyedError("unite", f"unité sans objet pour le type {self.type}")
        if (self.min is not None or self.max is not None) and self.type not in ("nombre", "entier", "tension"):
            raise _KeyedError("min", f"bornes sans objet pour le type {self.type}")
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise _KeyedError("max", f"max ({self.max}) doit dépasser min ({self.min})")
        if self.futur_permis and self.type != "date":
            raise _KeyedError("futur_permis", "réservé au type date")
        if self.grandeur is not None and self.grandeur not in GRANDEURS:
            raise _KeyedError("grandeur", f"grandeur inconnue « {self.grandeur} » (connues : {', '.join(GRANDEURS)})")
        return self


class Phase(_Strict):
    """Age-dependent interval (gynécologie: 1 an, then 3 ans until 30, then 5 ans from 30 to 65)."""

    age_min: int | None = Field(default=None, ge=0)
    age_max: int | None = Field(default=None, ge=0)
    premier: PeriodeField | None = None          # interval before the first control of the phase
    tous_les: PeriodeField

    @model_validator(mode="after")
    def _ages(self) -> "Phase":
        if self.age_min is not None and self.age_max is not None and self.age_min >= self.age_max:
            raise _KeyedError("age_max", f"age_max ({self.age_max}) doit dépasser age_min ({self.age_min})")
        return self


class Rappel(_Strict):
    """When a follow-up item is due. Only where the documents give an interval (decisions.md 16).

    Exactly one timing: `sa` (N semaines d'aménorrhée from `depart`), `a` (one due date
    `depart` + a), `tous_les` (recurring), `tous_les_min`/`tous_les_max` (a window, plaie),
    `phases` (age-dependent intervals) or `a_saisir` (the interval is entered with the item,
    e.g. the durée d'action of an implant).
    """

    texte: Texte                                 # seed wording
    depart: Code                                 # inclusion, dernier_realise, a date donnée de base or an élément de suivi
    sa: int | None = Field(default=None, gt=0, le=45)
    a: PeriodeField | None = None
    tous_les: PeriodeField | None = None
    tous_les_min: PeriodeField | None = None
    tous_les_max: PeriodeField | None = None
    jusqu_a: Code | None = None
    phases: list[Phase] = []
    a_saisir: str | None = None
    condition: str | None = None

    @model_validator(mode="after")
    def _one_timing(self) -> "Rappel":
        timings = [k for k, v in (("sa", self.sa), ("a", self.a), ("tous_les", self.tous_les),
                                  ("tous_les_max", self.tous_les_max), ("phases", self.phases or None),
                                  ("a_saisir", self.a_saisir)) if v is not None]
        if len(timings) != 1:
            raise ValueError("un seul réglage de temps attendu parmi sa, a, tous_les, tous_les_min/tous_les_max, "
                             f"phases, a_saisir (trouvé : {', '.join(timings) or 'aucun'})")
        if (self.tous_les_min is None) != (self.tous_les_max is None):
            raise _KeyedError("tous_les_min", "tous_les_min et tous_les_max vont ensemble")
        if self.tous_les_min and self.tous_les_min.approx() > self.tous_les_max.approx():
            raise _KeyedError("tous_les_min", f"tous_les_min ({self.tous_les_min}) dépasse tous_les_max "
                                              f"({self.tous_les_max})")
        return self

    @property
    def delai_sa(self) -> timedelta | None:
        """`sa` as a duration from the start of the pregnancy (the SA anchor)."""
        return timedelta(weeks=self.sa) if self.sa is not None else None


class ActionConditionnelle(_Strict):
    libelle: Texte
    declencher: Code | None = None               # profession/role to trigger, if any


class ElementSuivi(_Strict):
    code: Code
    libelle: Texte
    aliases: list[Texte] = []                    # other names a clinician may type (« echo t1 », « frottis »)
    concerne: list[Code] = []                    # professions / roles reminded; empty: the whole cercle
    rappel: Rappel | None = None                 # None: no interval in the documents (decisions.md 16)
    si_positif: list[ActionConditionnelle] = []  # périnatalité: suggested déclenchements
    champs: list[DonneeBase] = []                # fields of a named form (plaie: fiche suivi de pansement)

    @model_validator(mode="after")
    def _codes(self) -> "ElementSuivi":
        _unique_codes(self.champs, "champs")
        return self


class Constate(_Strict):
    code: Code
    libelle: Texte
    note: str | None = None


def _seuil(value: Any) -> Any:
    if value is None:
        raise ValueError("valeur manquante")
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return (float(value[0]), float(value[1]))
    raise ValueError(f"seuil « {value} » : nombre, paire [systolique, diastolique] ou booléen attendu")


Borne = Annotated[float | tuple[float, float] | bool, BeforeValidator(_seuil)]


class Seuil(_Strict):
    """A measured red-flag threshold: the sign is present when `grandeur operateur seuil` holds."""

    code: Code
    libelle: Texte                               # seed wording
    grandeur: Code
    operateur: Literal["<", "<=", ">", ">=", "="]
    seuil: Borne
    unite: str | None = None
    fenetre: Duree | None = None                 # variation over at most this long (poids)
    combinaison: Literal["ou", "et"] | None = None  # for a pair: either component, or both
    condition: str | None = None                 # a non-measured condition that must also hold
    seuil_texte: str | None = None               # display override; generated otherwise
    details: str | None = None
    rubrique_source: Literal["mesures", "constates"] = "mesures"  # where the seed lists it

    @model_validator(mode="after")
    def _coherent(self) -> "Seuil":
        g = GRANDEURS.get(self.grandeur)
        if g is None:
            raise _KeyedError("grandeur", f"grandeur inconnue « {self.grandeur} » (connues : "
                                          f"{', '.join(GRANDEURS)})")
        if self.unite not in g.unites:
            raise _KeyedError("unite", f"unité « {self.unite} » incompatible avec {self.grandeur} (attendu : "
                                       f"{' ou '.join(str(u) for u in g.unites)})")
        if g.nature == "booleen":
            if self.operateur != "=" or not isinstance(self.seuil, bool):
                raise _KeyedError("seuil", f"{self.grandeur} se compare par « = » à true/false")
        else:
            if self.operateur == "=" or isinstance(self.seuil, bool):
                raise _KeyedError("operateur", f"{self.grandeur} se compare par <, <=, > ou >= à un nombre")
            if (g.nature == "paire") != isinstance(self.seuil, tuple):
                raise _KeyedError("seuil", "une paire [systolique, diastolique] est attendue pour ta"
                                  if g.nature == "paire" else f"un nombre est attendu pour {self.grandeur}")
        if isinstance(self.seuil, tuple) and self.combinaison is None:
            raise _KeyedError("combinaison", "combinaison (ou | et) obligatoire pour un seuil en paire")
        if not isinstance(self.seuil, tuple) and self.combinaison is not None:
            raise _KeyedError("combinaison", "combinaison réservée aux seuils en paire")
        if self.fenetre is not None and g.nature != "variation":
            raise _KeyedError("fenetre", "fenêtre réservée aux variations (poids, grade)")
        if self.seuil_texte is not None and not isinstance(self.seuil, bool):
            values = self.seuil if isinstance(self.seuil, tuple) else (self.seuil,)
            for v in values:
                shown = {format_number(abs(v)), format_number(abs(v)).replace(",", ".")}
                if not any(s in self.seuil_texte for s in shown):
                    raise _KeyedError("seuil_texte", f"« {self.seuil_texte} » ne montre pas le seuil "
                                                     f"{format_number(abs(v))}")
        return self

    @property
    def texte(self) -> str:
        """"SpO₂ < 94 %", "TA ≥ 140/90 mmHg", or the YAML's seuil_texte."""
        if self.seuil_texte:
            return self.seuil_texte
        g = GRANDEURS[self.grandeur]
        if isinstance(self.seuil, bool):
            value = "positive" if self.seuil else "négative"
            return f"{g.symbole} {value}"
        if isinstance(self.seuil, tuple):
            value = "/".join(format_number(v) for v in self.seuil)
        else:
            value = format_number(self.seuil)
        text = f"{g.symbole} {OPERATEURS[self.operateur]} {value}" + (f" {self.unite}" if self.unite else "")
        if self.fenetre is not None:
            text += f" en {format_duree(self.fenetre)} au plus"
        return text


class RedFlags(_Strict):
    delai_acceptation: Duree                     # the doctor has this long to accept
    cible: Code                                  # who is triggered first
    repli: Code                                  # fallback « si celui-ci n'est pas disponible »
    commentaire_obligatoire: bool = True
    constates: list[Constate] = []
    mesures: list[Seuil] = []

    @model_validator(mode="after")
    def _codes(self) -> "RedFlags":
        if not self.constates and not self.mesures:
            raise _KeyedError("constates", "au moins un signe constaté ou mesuré est attendu")
        _unique_codes(self.constates, "constates")
        _unique_codes(self.mesures, "mesures")
        return self


class AlerteCritique(_Strict):
    delai_consultation: Duree                    # the patient must consult within
    consignes: list[Texte] = Field(min_length=1)
    mentionner: list[Code] = []                  # who is mentioned in the room (decisions.md 7)
    constates: list[Constate] = []
    mesures: list[Seuil] = []

    @model_validator(mode="after")
    def _codes(self) -> "AlerteCritique":
        _unique_codes(self.constates, "constates")
        _unique_codes(self.mesures, "mesures")
        return self


class Delai(_Strict):
    libelle: Texte
    demandeur: str | None = None
    intervenant: str | None = None
    soins: str | None = None                     # Entr'Actes « Soins » label
    type_pec: str | None = None
    reponse: Duree | None = None                 # time to accept or decline (from creation)
    intervention: Duree | None = None            # time to carry out the care (from acceptance)
    prise_en_charge: Duree | None = None         # overall PEC window (SNP)
    duree_estimee: Duree | None = None           # estimated length of the act (TCIM)
    details: str | None = None

    @model_validator(mode="after")
    def _some(self) -> "Delai":
        if not any((self.reponse, self.intervention, self.prise_en_charge, self.duree_estimee)):
            raise ValueError("au moins un délai attendu (reponse, intervention, prise_en_charge, duree_estimee)")
        return self


class ChecklistItem(_Strict):
    code: Code
    libelle: Texte                               # verbatim
    reference: str | None = None                 # article of the code de la santé publique
    obligatoire: bool                            # « devra » (true) vs « il est souhaitable » (false)


class Tcim(_Strict):
    eligibilite: list[Texte] = Field(min_length=1)
    toutes_requises: bool                        # every eligibility criterion must hold
    motifs_compatibles: list[Texte] = Field(min_length=1)
    charte_avant: list[ChecklistItem] = Field(min_length=1)
    charte_fin: list[ChecklistItem] = Field(min_length=1)
    interruption: list[Texte] = []
    notes: list[Texte] = []
    cpam: list[Texte] = []                       # CPAM fees, shown for information only (never CPTS amounts)

    @model_validator(mode="after")
    def _codes(self) -> "Tcim":
        _unique_codes(self.charte_avant, "charte_avant")
        _unique_codes(self.charte_fin, "charte_fin")
        return self


class Fin(_Strict):
    texte: Texte
    raison_obligatoire: bool
    archiver: bool
    evenement: str | None = None                 # the event that closes it (SNP « fiche close » …)
    par_defaut: bool                             # true: Cercle's documented default, not a seed rule


class Parcours(_Strict):
    code: Code
    nom: Texte
    aliases: list[Texte] = []
    categorie: Literal["chronique", "suivi", "prevention", "adressage", "ponctuel", "acces_aux_soins"]
    sources: list[Texte] = Field(min_length=1)
    inclusion: Inclusion
    donnees_de_base: list[DonneeBase] = []
    elements_de_suivi: list[ElementSuivi] = []
    red_flags: RedFlags | None = None
    alerte_critique: AlerteCritique | None = None
    delais: dict[Code, Delai] = {}
    tcim: Tcim | None = None
    fin: Fin

    @model_validator(mode="after")
    def _references(self) -> "Parcours":
        _unique_codes(self.donnees_de_base, "donnees_de_base")
        _unique_codes(self.elements_de_suivi, "elements_de_suivi")
        dates = {d.code for d in self.donnees_de_base if d.type == "date"}
        anchors = {"inclusion", "dernier_realise"} | dates | {e.code for e in self.elements_de_suivi}
        for i, e in enumerate(self.elements_de_suivi):
            r = e.rappel
            if r is None:
                continue
            if r.depart not in anchors:
                raise _KeyedError(f"elements_de_suivi[{i}].rappel.depart",
                                  f"« {r.depart} » n'est ni inclusion, ni dernier_realise, ni une date des données "
                                  "de base, ni un élément de suivi")
            if r.jusqu_a is not None and r.jusqu_a not in anchors:
                raise _KeyedError(f"elements_de_suivi[{i}].rappel.jusqu_a", f"« {r.jusqu_a} » inconnu")
            if r.sa is not None and r.depart not in dates:
                raise _KeyedError(f"elements_de_suivi[{i}].rappel.sa",
                                  "un rappel en SA part d'une date des données de base (début de grossesse)")
        if self.red_flags is not None and self.alerte_critique is not None:
            codes = {c.code for c in self.red_flags.mesures} & {c.code for c in self.alerte_critique.mesures}
            if codes:
                raise _KeyedError("alerte_critique.mesures", f"codes déjà utilisés par red_flags : {sorted(codes)}")
        return self

    # -- convenience ------------------------------------------------------------------------------

    def noms(self) -> set[str]:
        """Every normalized name this parcours answers to (code, nom, aliases)."""
        return {normalize_key(n) for n in (self.code, self.nom, *self.aliases)}

    def seuils(self) -> list[tuple[str, Seuil]]:
        """Every measured threshold with its level: ("red_flag" | "alerte_critique", Seuil)."""
        out: list[tuple[str, Seuil]] = []
        if self.red_flags:
            out += [("red_flag", m) for m in self.red_flags.mesures]
        if self.alerte_critique:
            out += [("alerte_critique", m) for m in self.alerte_critique.mesures]
        return out

    def element(self, code: str) -> ElementSuivi | None:
        return next((e for e in self.elements_de_suivi if e.code == code), None)



# --- loader -------------------------------------------------------------------------------------

class CatalogueError(ValueError):
    """A malformed parcours file. One French line: `<file>: <key path>: <reason>`."""



_ROLES = {"medecin_traitant", "referent_parcours", "coordinateur", "operateur_snp", "tous"}
_ROOT = Path(__file__).resolve().parent.parent


def default_directory() -> Path:
    """`data/parcours` next to the package (works from the repository and from an installed wheel)."""
    local = _ROOT / "data" / "parcours"
    if local.is_dir():
        return local
    from importlib.resources import files

    return Path(str(files("data").joinpath("parcours")))


def _known_codes() -> set[str] | None:
    """Professions of data/professions.yaml plus the directory roles; None if the file is absent."""
    path = _ROOT / "data" / "professions.yaml"
    try:
        raw = load_rules(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    return set(raw) | _ROLES


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(_ROOT))
    except ValueError:
        return str(path)


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(racine)"


def _reason(err: Mapping[str, Any]) -> tuple[str, str]:
    """(extra key path, French reason) for one pydantic error."""
    kind, ctx = err["type"], err.get("ctx") or {}
    exc = ctx.get("error")
    if isinstance(exc, _KeyedError):
        return exc.key, exc.reason
    if isinstance(exc, Exception):
        return "", str(exc)
    given = err.get("input")
    if kind == "missing":
        return "", "valeur manquante"
    if kind == "extra_forbidden":
        return "", "clé inconnue"
    if kind == "literal_error":
        return "", f"valeur « {given} » non autorisée (valeurs possibles : {ctx.get('expected')})"
    if kind.startswith("bool"):
        return "", f"« {given} » : true ou false attendu"
    if kind.startswith(("int", "float")):
        return "", f"« {given} » : nombre attendu"
    if kind.startswith("string_pattern"):
        return "", f"« {given} » : code en minuscules sans accent attendu (lettres, chiffres, _)"
    if kind.startswith("string"):
        return "", f"« {given} » : texte attendu" if kind == "string_type" else "texte vide"
    if kind in ("list_type", "tuple_type"):
        return "", "liste attendue"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "", "objet (clé: valeur) attendu"
    if kind == "too_short":
        return "", "liste vide ou trop courte"
    if kind.startswith(("greater", "less")):
        return "", f"« {given} » hors bornes ({err.get('msg')})"
    return "", err.get("msg", kind)


def _error(file: str, path: str, reason: str) -> CatalogueError:
    return CatalogueError(f"{file}: {path}: {reason}")


def load_parcours_file(path: Path, *, known_codes: set[str] | None = None) -> Parcours:
    """Read and validate one parcours file. Raises CatalogueError (one French line)."""
    path = Path(path)
    file = _display(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise _error(file, "(fichier)", f"lecture impossible ({exc.strerror or exc})") from exc
    try:
        raw = load_rules(text)
    except yaml.MarkedYAMLError as exc:
        line = f" (ligne {exc.problem_mark.line + 1})" if exc.problem_mark else ""
        raise _error(file, "(yaml)", f"YAML invalide : {exc.problem}{line}") from exc
    except yaml.YAMLError as exc:
        raise _error(file, "(yaml)", f"YAML invalide : {exc}") from exc
    if raw is None:
        raise _error(file, "(racine)", "fichier vide")
    if not isinstance(raw, dict):
        raise _error(file, "(racine)", "un objet (clé: valeur) est attendu")
    try:
        parcours = Parcours.model_validate(raw)
    except ValidationError as exc:
        messages = []
        for err in exc.errors():
            key, reason = _reason(err)
            loc = _loc(err["loc"])
            if key:
                loc = f"{loc}.{key}" if loc != "(racine)" else key
            messages.append(f"{loc}: {reason}")
        first, more = messages[0], len(messages) - 1
        raise CatalogueError(f"{file}: {first}" + (f" (et {more} autre(s) erreur(s) : "
                                                    f"{' ; '.join(messages[1:])})" if more else "")) from None
    codes = _known_codes() if known_codes is None else known_codes
    if codes:
        checks = [("inclusion.qui", parcours.inclusion.qui)]
        if parcours.red_flags:
            checks += [("red_flags.cible", [parcours.red_flags.cible]), ("red_flags.repli", [parcours.red_flags.repli])]
        if parcours.alerte_critique:
            checks.append(("alerte_critique.mentionner", parcours.alerte_critique.mentionner))
        for i, e in enumerate(parcours.elements_de_suivi):
            if e.concerne:
                checks.append((f"elements_de_suivi[{i}].concerne", e.concerne))
            for j, a in enumerate(e.si_positif):
                if a.declencher:
                    checks.append((f"elements_de_suivi[{i}].si_positif[{j}].declencher", [a.declencher]))
        for key, values in checks:
            for i, value in enumerate(values):
                if value not in codes:
                    where = f"{key}[{i}]" if key in ("inclusion.qui", "alerte_critique.mentionner") \
                        or key.endswith(".concerne") else key
                    raise _error(file, where, f"profession ou rôle inconnu « {value} » (professions de "
                                              "data/professions.yaml ou rôles : " + ", ".join(sorted(_ROLES)) + ")")
    return parcours


def load_catalogue(directory: Path | None = None) -> dict[str, Parcours]:
    """Every `*.yaml` of the directory, keyed by code. Refuses duplicate codes and clashing names."""
    directory = Path(directory) if directory is not None else default_directory()
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise CatalogueError(f"{_display(directory)}: (dossier): aucun fichier de parcours *.yaml")
    codes = _known_codes()
    catalogue: dict[str, Parcours] = {}
    origin: dict[str, Path] = {}
    names: dict[str, str] = {}
    for path in files:
        p = load_parcours_file(path, known_codes=codes)
        if p.code in catalogue:
            raise _error(_display(path), "code", f"code « {p.code} » déjà défini par {_display(origin[p.code])}")
        for name in sorted(p.noms()):
            other = names.get(name)
            if other is not None and other != p.code:
                raise _error(_display(path), "aliases", f"« {name} » désigne déjà le parcours {other}")
            names[name] = p.code
        catalogue[p.code] = p
        origin[p.code] = path
    for code, path in origin.items():
        if code != path.stem:
            raise _error(_display(path), "code", f"le code « {code} » doit être le nom du fichier ({code}.yaml)")
    return catalogue


def find_parcours(catalogue: Mapping[str, Parcours], text: str) -> Parcours | None:
    """By code, nom or alias, ignoring case, accents, hyphens and underscores ("IC", "périnat", "dt2").

    Failing an exact match, a prefix of at least 4 letters that designates a single parcours
    ("diab", "perinatal") is accepted.
    """
    key = normalize_key(text or "")
    if not key:
        return None
    for p in catalogue.values():
        if key in p.noms():
            return p
    if len(key) >= 4:
        hits = {p.code for p in catalogue.values() for n in p.noms() if n.startswith(key)}
        if len(hits) == 1:
            return catalogue[hits.pop()]
    return None
