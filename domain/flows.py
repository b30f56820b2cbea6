"""Request flows ("types de demande") as data: models, loader, lookup.

The values live in `data/flows.yaml`, one entry per flow, each value citing its source. This
module only validates and serves them: no Matrix, no database. `load_flows()` reads the file
(the only I/O here) and refuses a malformed one with a one-line French error that names the
file, the key and the reason, so that a coordinator editing the YAML sees at once what to fix.

Durations are written the way clinicians say them: `8h`, `4j`, `15min`, `2h30`, `30 jours`.
A bare number is refused (hours or days? the source documents use both).
"""
from __future__ import annotations

import re
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Iterable, Mapping

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from domain.rules_yaml import load_rules
from domain.text import format_duree, normalize_key, parse_duration

__all__ = [
    "DEFAULT_PATH", "Defauts", "Echelle", "Flow", "FlowsError", "Mode", "MEDECIN_TRAITANT", "find_flow",
    "load_flows", "parse_duree",
]

DATA = Path(__file__).resolve().parent.parent / "data"
DEFAULT_PATH = DATA / "flows.yaml"
PROFESSIONS_PATH = DATA / "professions.yaml"

# Pseudo-profession accepted in `mentions`: the médecin traitant of the patient's cercle.
MEDECIN_TRAITANT = "medecin_traitant"


class Mode(StrEnum):
    """How the care is given (S003 L657: « conseil téléphonique, téléconsultation, consultation au
    cabinet, visite à domicile »; S002 L77-118 « Mon lieu d'exercice / Lieu d'intervention »)."""

    CABINET = "cabinet"
    DOMICILE = "domicile"
    TELECONSULTATION = "teleconsultation"
    TELEPHONE = "telephone"


MODE_LABELS = {
    Mode.CABINET: "consultation au cabinet",
    Mode.DOMICILE: "visite à domicile",
    Mode.TELECONSULTATION: "téléconsultation",
    Mode.TELEPHONE: "conseil téléphonique",
}


# --- durations: one parser for all the rules data (domain.text) ----------------------------------

parse_duree = parse_duration



Duree = Annotated[timedelta, BeforeValidator(parse_duree)]


# --- names -------------------------------------------------------------------------------------

_STOPWORDS = {"d", "de", "du", "des", "l", "la", "le", "les", "un", "une"}


def _motif_key(text: str) -> str:
    """`Renouvellement d'ordonnance` = `renouvellement_ordonnance`."""
    return "_".join(w for w in normalize_key(text).split() if w not in _STOPWORDS)


# --- models ------------------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Echelle(_Strict):
    """Fractions of the délai de réponse at which the ladder moves (decisions.md 3)."""

    pool: float = Field(0.5, ge=0, le=1)
    relance: float = Field(0.75, ge=0, le=1)
    escalade: float = 1.0

    @model_validator(mode="after")
    def _order(self) -> "Echelle":
        if self.escalade != 1.0:
            raise ValueError("escalade doit valoir 1.0 : l'escalade a lieu à l'échéance du délai de réponse "
                             "(decisions.md 3.4)")
        if not self.pool <= self.relance < self.escalade:
            raise ValueError(f"paliers dans le désordre : il faut pool ≤ relance < escalade "
                             f"(reçu pool={self.pool}, relance={self.relance})")
        return self


class Flow(_Strict):
    """One type de demande. Timedeltas are calendar time (decisions.md 1)."""

    code: str
    libelle: str
    aliases: tuple[str, ...] = ()
    soins: str | None = None              # Entr'Actes « Soins » label
    type_pec: str | None = None           # Entr'Actes « Type PeC »
    intervenant: str | None = None        # Entr'Actes « Intervenant » label (display)
    parcours: str | None = None
    cible_profession: str | None = None   # code of data/professions.yaml
    cible_role: str | None = None         # directory role, e.g. "referent", "structure:etp"
    role_requis: str | None = None        # only holders of this directory role are asked (TCIM: "tcim")
    note_demande: str | None = None       # one line every notice of this flow carries
    medecin_traitant_d_abord: bool = False
    pool_immediat: bool = False           # no MT-first phase (patient without MT)
    delai_reponse: Duree | None = None    # None: no acceptance (alerte critique)
    delai_intervention: Duree | None = None
    delai_intervention_par_motif: dict[str, Duree] = Field(default_factory=dict)
    priorite_mt: Duree | None = None      # MT-only window; ends the CERCLE rung
    delai_consultation: Duree | None = None  # patient must consult within (alerte critique)
    durees_pec: dict[str, Duree] = Field(default_factory=dict)  # per profession (TCIM)
    delais_modifiables: bool = False      # may the requester change the délais at creation?
    commentaire_obligatoire: bool = True
    mode_defaut: Mode | None = None
    mentions: tuple[str, ...] = ()        # who is mentioned in the patient room
    questionnaires: tuple[str, ...] = ()
    echelle: Echelle | None = None        # None: no acceptance ladder
    consigne_escalade: str | None = None  # advice shown to the coordinators at the deadline
    delai_reponse_max: Duree | None = None       # longest délai a requester may type (default: `defauts`)
    delai_intervention_max: Duree | None = None

    @model_validator(mode="after")
    def _coherence(self) -> "Flow":
        for key, value, maximum in self._delais_et_plafonds():
            if value is not None and maximum is not None and value > maximum:
                raise ValueError(f"{key} ({format_duree(value)}) dépasse son plafond ({format_duree(maximum)})")
        if self.echelle is not None and self.delai_reponse is None:
            raise ValueError("une échelle de relance demande un delai_reponse")
        if self.delai_reponse is not None and self.echelle is None:
            raise ValueError("delai_reponse sans echelle : indiquer echelle (pool, relance, escalade)")
        if self.echelle is not None and not (self.consigne_escalade or "").strip():
            raise ValueError("consigne_escalade obligatoire quand il y a une échelle (decisions.md 3.4)")
        if self.priorite_mt is not None:
            if not self.medecin_traitant_d_abord:
                raise ValueError("priorite_mt demande medecin_traitant_d_abord: true")
            if self.delai_reponse is not None and self.priorite_mt > self.delai_reponse:
                raise ValueError(f"priorite_mt ({format_duree(self.priorite_mt)}) dépasse delai_reponse "
                                 f"({format_duree(self.delai_reponse)})")
        if self.cible_profession and self.cible_role:
            raise ValueError("cible_profession et cible_role sont exclusifs")
        if self.medecin_traitant_d_abord and self.pool_immediat:
            raise ValueError("medecin_traitant_d_abord et pool_immediat sont contradictoires")
        return self

    def _delais_et_plafonds(self):
        yield "delai_reponse", self.delai_reponse, self.delai_reponse_max
        yield "delai_intervention", self.delai_intervention, self.delai_intervention_max
        for motif, value in self.delai_intervention_par_motif.items():
            yield f"delai_intervention_par_motif.{motif}", value, self.delai_intervention_max

    def noms(self) -> set[str]:
        """Every normalized name this flow answers to (code, libellé, aliases)."""
        return {normalize_key(n) for n in (self.code, self.libelle, *self.aliases)}

    def delai_intervention_pour(self, motif: str | None = None) -> timedelta | None:
        """Délai d'intervention, with per-motif override (SNP renouvellement d'ordonnance: 48 h)."""
        if motif:
            key = _motif_key(motif)
            for k, v in self.delai_intervention_par_motif.items():
                if _motif_key(k) == key:
                    return v
        return self.delai_intervention

    def resume(self) -> str:
        """One French line for help texts: `Red flag · réponse 8 h`."""
        parts = [self.libelle]
        if self.delai_reponse:
            parts.append(f"réponse {format_duree(self.delai_reponse)}")
        if self.delai_intervention:
            parts.append(f"intervention {format_duree(self.delai_intervention)}")
        if self.delai_consultation:
            parts.append(f"consultation sous {format_duree(self.delai_consultation)}")
        return " · ".join(parts)


# --- loader ------------------------------------------------------------------------------------

class Defauts(_Strict):
    """The `defauts` entry of the flows file: values every flow gets unless it sets its own."""

    delai_reponse_max: Duree | None = None
    delai_intervention_max: Duree | None = None


DEFAUTS_KEY = "defauts"


class FlowsError(ValueError):
    """A malformed flows file. The message is one French line: `file: key: reason`."""


def _loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if p not in ("function-after", "function-before"))


def _reason(err: Mapping[str, Any]) -> str:
    msg = str(err.get("msg", ""))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if err.get("type") == "extra_forbidden":
        return "clé inconnue"
    if err.get("type") == "missing":
        return "clé obligatoire manquante"
    return msg


def _known_professions() -> set[str] | None:
    if not PROFESSIONS_PATH.exists():
        return None
    raw = load_rules(PROFESSIONS_PATH.read_text(encoding="utf-8")) or {}
    return set(raw) if isinstance(raw, dict) else None


def load_flows(path: str | Path | None = None, *, professions: Iterable[str] | None = None) -> dict[str, Flow]:
    """Read and validate the flows file (default `data/flows.yaml`).

    `professions`: the known profession codes (default: the keys of data/professions.yaml), used
    to check `cible_profession`, `durees_pec` and `mentions`. Raises FlowsError.
    """
    path = Path(path) if path is not None else DEFAULT_PATH
    name = path.name

    def fail(key: str, reason: str) -> FlowsError:
        reason = " ".join(reason.split())  # one line
        return FlowsError(f"{name}: {key}: {reason}" if key else f"{name}: {reason}")

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise fail("", f"lecture impossible ({e.strerror or e})") from None
    try:
        raw = load_rules(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"ligne {mark.line + 1}" if mark is not None else "?"
        raise fail(where, f"YAML invalide ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(raw, dict) or not raw:
        raise fail("", "le fichier doit contenir un dictionnaire code → type de demande")

    known = set(professions) if professions is not None else _known_professions()
    raw = dict(raw)
    defauts_raw = raw.pop(DEFAUTS_KEY, None) or {}
    if not isinstance(defauts_raw, dict):
        raise fail(DEFAUTS_KEY, "un dictionnaire de valeurs par défaut est attendu")
    try:
        defauts = Defauts.model_validate(defauts_raw).model_dump(exclude_none=True)
    except ValidationError as e:
        err = e.errors()[0]
        raise fail(f"{DEFAUTS_KEY}.{_loc(err['loc'])}", _reason(err)) from None
    if not raw:
        raise fail("", "le fichier doit contenir un dictionnaire code → type de demande")
    flows: dict[str, Flow] = {}
    owner: dict[str, str] = {}  # normalized name -> flow code
    for code, body in raw.items():
        if not isinstance(code, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", code):
            raise fail(str(code), "code invalide (minuscules, chiffres et _ uniquement)")
        if not isinstance(body, dict):
            raise fail(code, "un dictionnaire de propriétés est attendu")
        if "code" in body and body["code"] != code:
            raise fail(f"{code}.code", f"« {body['code']} » diffère de la clé « {code} »")
        try:
            flow = Flow.model_validate({**defauts, **body, "code": code})
        except ValidationError as e:
            err = e.errors()[0]
            loc = _loc(err["loc"])
            raise fail(f"{code}.{loc}" if loc else code, _reason(err)) from None
        if known is not None:
            checks = [("cible_profession", flow.cible_profession)] if flow.cible_profession else []
            checks += [(f"durees_pec.{p}", p) for p in flow.durees_pec]
            checks += [("mentions", p) for p in flow.mentions if p != MEDECIN_TRAITANT]
            for key, prof in checks:
                if prof not in known:
                    raise fail(f"{code}.{key}", f"profession inconnue « {prof} » (voir professions.yaml)")
        for n in flow.noms():
            if n in owner and owner[n] != code:
                raise fail(f"{code}.aliases", f"« {n} » désigne déjà le type « {owner[n]} »")
            owner[n] = code
        flows[code] = flow
    return flows


def find_flow(flows: Mapping[str, Flow], text: str) -> Flow | None:
    """The flow named by `text` (code, libellé or alias), accent-, case- and hyphen-insensitive."""
    key = normalize_key(text or "")
    if not key:
        return None
    for flow in flows.values():
        if key in flow.noms():
            return flow
    return None
