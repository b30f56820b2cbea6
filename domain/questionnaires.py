"""Questionnaires as data, and the engine that walks them (pure: no I/O but reading the rules files).

One YAML file per questionnaire in `data/questionnaires/` (vigie-j0, vigie-j7, vigie-j30: spec §6),
every question citing its seed line. This module validates them (same strictness and one-line
French errors as the parcours loader), then answers the questions a use case asks:
- which question comes next, given the answers so far (conditional questions are skipped when
  their condition is false, spec §6 « Condition - … »);
- what a typed answer means (« 2 », « Oui », « 1,3 », « 78 kg », « 12/03/2026 », free text), and
  what a poll vote means (answer ids "1", "2"… are positions in `choix`, like a typed number);
- which answers need a coordinator (the `indicateurs` listed beside the questions);
- the summary.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from domain.markup import literal
from domain.rules_yaml import load_rules
from domain.text import normalize

__all__ = [
    "Condition", "Indicateur", "Question", "Questionnaire", "QuestionnaireError", "Reponse", "ReponseInvalide",
    "default_directory", "indicateurs_atteints", "load_questionnaire_file", "load_questionnaires",
    "parse_reponse", "prochaine_question", "reponse_au_vote", "resume", "s_applique",
]

Texte = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
_ROOT = Path(__file__).resolve().parent.parent
MAX_CHOIX = 20  # a poll holds at most 20 answers (PRIMITIVES: send_poll)


class QuestionnaireError(ValueError):
    """A malformed questionnaire file. One French line: `<file>: <key path>: <reason>`."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Condition(_Strict):
    """Ask only if question `question` was answered `egal`, or with something outside `sauf`."""

    question: int = Field(gt=0)
    egal: str | None = None
    sauf: list[str] = []
    deduite: bool = True  # the seed names the condition, not its trigger (spec §6)

    @model_validator(mode="after")
    def _one(self) -> "Condition":
        if (self.egal is None) == (not self.sauf):
            raise ValueError("condition : indiquer soit egal, soit sauf")
        return self


class Question(_Strict):
    numero: int = Field(gt=0)
    texte: Texte  # verbatim
    type: Literal["choix_unique", "choix_multiple", "texte_libre", "nombre", "date"]
    type_imprime: Texte | None = None  # as printed in the seed: « Condition - Choix unique »
    choix: list[Texte] = []
    unite: str | None = None  # for `nombre`: « kg »
    condition: Condition | None = None
    source: Texte  # « S002 L271-275 »

    @property
    def a_choix(self) -> bool:
        return self.type in ("choix_unique", "choix_multiple")

    @model_validator(mode="after")
    def _shape(self) -> "Question":
        if self.a_choix and not 2 <= len(self.choix) <= MAX_CHOIX:
            raise ValueError(f"une question à choix a de 2 à {MAX_CHOIX} choix")
        if not self.a_choix and self.choix:
            raise ValueError(f"pas de choix pour une question de type {self.type}")
        if self.unite and self.type != "nombre":
            raise ValueError("une unité ne va qu'avec le type nombre")
        if len({normalize(c) for c in self.choix}) != len(self.choix):
            raise ValueError("deux choix identiques")
        return self


class Indicateur(_Strict):
    """An answer that needs a coordinator's attention (issue 15 §4), posted by patient code only."""

    code: Annotated[str, Field(pattern=r"^[a-z0-9_]+$")]
    libelle: Texte
    question: int = Field(gt=0)
    si: list[Texte] = Field(min_length=1)  # any of these choices
    source: Texte


class Questionnaire(_Strict):
    code: Annotated[str, Field(pattern=r"^[a-z0-9-]+$")]  # "vigie-j7" (the file's name)
    parcours: Annotated[str, Field(pattern=r"^[a-z0-9_]+$")]
    questionnaire: Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+$")]  # "J7", as printed
    titre: Texte
    jour: int = Field(ge=0)  # counted from the inclusion in the parcours
    # Who answers: the requester of the parcours' request (« demandeur ») or whoever accepted it
    # (« porteur »); either way the author of the inclusion when there is no such request.
    destinataire: Literal["demandeur", "porteur"]
    sources: list[Texte] = Field(min_length=1)
    questions: list[Question] = Field(min_length=1)
    indicateurs: list[Indicateur] = []

    @property
    def nom(self) -> str:
        return f"{self.questionnaire} · {self.titre}"

    def question(self, numero: int) -> Question | None:
        return self.questions[numero - 1] if 0 < numero <= len(self.questions) else None

    @model_validator(mode="after")
    def _references(self) -> "Questionnaire":
        for i, q in enumerate(self.questions):
            if q.numero != i + 1:
                raise _Keyed(f"questions[{i}].numero", f"numéro {q.numero}, {i + 1} attendu")
            if q.condition is not None:
                _check_values(self, f"questions[{i}].condition", q.condition.question, q.numero,
                              [q.condition.egal] if q.condition.egal is not None else q.condition.sauf)
        codes = set()
        for i, ind in enumerate(self.indicateurs):
            if ind.code in codes:
                raise _Keyed(f"indicateurs[{i}].code", f"« {ind.code} » en double")
            codes.add(ind.code)
            _check_values(self, f"indicateurs[{i}]", ind.question, None, ind.si)
        return self


class _Keyed(ValueError):
    def __init__(self, key: str, reason: str):
        super().__init__(reason)
        self.key, self.reason = key, reason


def _check_values(qn: Questionnaire, key: str, numero: int, before: int | None, values: list[str]) -> None:
    target = qn.question(numero)
    if target is None or (before is not None and numero >= before):
        where = f"qui ne précède pas Q{before}" if before else "inconnue"
        raise _Keyed(f"{key}.question", f"renvoie à Q{numero}, {where}")
    if not target.a_choix:
        raise _Keyed(f"{key}.question", f"Q{numero} n'est pas une question à choix")
    for v in values:
        if v not in target.choix:
            raise _Keyed(key, f"« {v} » n'est pas un choix de Q{numero}")


# --- loader ------------------------------------------------------------------------------------------

def default_directory() -> Path:
    local = _ROOT / "data" / "questionnaires"
    if local.is_dir():
        return local
    from importlib.resources import files

    return Path(str(files("data").joinpath("questionnaires")))


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out or "(racine)"


def _reason(err: dict) -> tuple[str, str]:
    exc = (err.get("ctx") or {}).get("error")
    if isinstance(exc, _Keyed):
        return exc.key, exc.reason
    if isinstance(exc, Exception):
        return "", str(exc)
    kind, given = err["type"], err.get("input")
    if kind == "missing":
        return "", "valeur manquante"
    if kind == "extra_forbidden":
        return "", "clé inconnue"
    if kind == "literal_error":
        return "", f"valeur « {given} » non autorisée ({err['ctx'].get('expected')})"
    if kind == "string_pattern_mismatch":
        return "", f"« {given} » : code invalide"
    if kind == "too_short":
        return "", "liste vide ou trop courte"
    return "", err.get("msg", kind)


def load_questionnaire_file(path: Path) -> Questionnaire:
    """Read and validate one file. Raises QuestionnaireError (one French line)."""
    path = Path(path)
    try:
        shown = str(path.resolve().relative_to(_ROOT))
    except ValueError:
        shown = str(path)
    try:
        raw = load_rules(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise QuestionnaireError(f"{shown}: (fichier): lecture impossible ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        raise QuestionnaireError(f"{shown}: (yaml): YAML invalide : {exc}") from exc
    if not isinstance(raw, dict):
        raise QuestionnaireError(f"{shown}: (racine): un objet (clé: valeur) est attendu")
    try:
        qn = Questionnaire.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key, reason = _reason(err)
        loc = _loc(err["loc"])
        if key:
            loc = f"{loc}.{key}" if loc != "(racine)" else key
        raise QuestionnaireError(f"{shown}: {loc}: {reason}") from None
    if qn.code != path.stem:
        raise QuestionnaireError(f"{shown}: code: « {qn.code} » doit être le nom du fichier ({qn.code}.yaml)")
    return qn


def load_questionnaires(directory: Path | None = None) -> dict[str, Questionnaire]:
    """Every `*.yaml` of the directory, keyed by code; one (parcours, questionnaire) pair each."""
    directory = Path(directory) if directory is not None else default_directory()
    out: dict[str, Questionnaire] = {}
    pairs: set[tuple[str, str]] = set()
    for path in sorted(directory.glob("*.yaml")):
        qn = load_questionnaire_file(path)
        if (qn.parcours, qn.questionnaire) in pairs:
            raise QuestionnaireError(f"{path.name}: questionnaire: {qn.questionnaire} déjà défini pour {qn.parcours}")
        pairs.add((qn.parcours, qn.questionnaire))
        out[qn.code] = qn
    return out


# --- answers -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reponse:
    """One answer. `choix` for choice questions (labels, in the questionnaire's order)."""

    question: int
    choix: tuple[str, ...] = ()
    texte: str | None = None
    nombre: float | None = None
    unite: str | None = None
    jour: date | None = None

    def affichage(self) -> str:
        if self.choix:
            return ", ".join(self.choix)
        if self.nombre is not None:
            n = f"{self.nombre:g}".replace(".", ",")
            return f"{n} {self.unite}" if self.unite else n
        if self.jour is not None:
            return self.jour.strftime("%d/%m/%Y")
        return self.texte or ""

    def to_json(self) -> dict:
        out: dict[str, Any] = {"q": self.question}
        if self.choix:
            out["choix"] = list(self.choix)
        if self.texte is not None:
            out["texte"] = self.texte
        if self.nombre is not None:
            out["nombre"], out["unite"] = self.nombre, self.unite
        if self.jour is not None:
            out["jour"] = self.jour.isoformat()
        return out

    @classmethod
    def from_json(cls, data: dict) -> "Reponse":
        return cls(question=data["q"], choix=tuple(data.get("choix", ())), texte=data.get("texte"),
                   nombre=data.get("nombre"), unite=data.get("unite"),
                   jour=date.fromisoformat(data["jour"]) if data.get("jour") else None)


@dataclass(frozen=True)
class ReponseInvalide:
    """A typed answer that does not fit the question: the French reason, and how to answer."""

    raison: str
    attendu: str


def attendu(q: Question) -> str:
    """How to answer `q`, in French."""
    if q.type == "choix_unique":
        return "le numéro ou le libellé d'un choix : " + ", ".join(f"{i} = {c}" for i, c in enumerate(q.choix, 1))
    if q.type == "choix_multiple":
        return ("un ou plusieurs numéros ou libellés séparés par des virgules : "
                + ", ".join(f"{i} = {c}" for i, c in enumerate(q.choix, 1)))
    if q.type == "nombre":
        return f"un nombre{' en ' + q.unite if q.unite else ''}, par exemple « 78{' ' + q.unite if q.unite else ''} »"
    if q.type == "date":
        return "une date JJ/MM/AAAA"
    return "du texte libre"


def _one_choice(q: Question, typed: str) -> str | None:
    t = normalize(typed).strip(" .")
    if re.fullmatch(r"\d{1,2}", t):
        i = int(t)
        return q.choix[i - 1] if 1 <= i <= len(q.choix) else None
    exact = [c for c in q.choix if normalize(c) == t]
    if exact:
        return exact[0]
    prefix = [c for c in q.choix if t and normalize(c).startswith(t)]
    return prefix[0] if len(prefix) == 1 else None


_NUMBER = re.compile(r"^([+-]?\d+(?:[.,]\d+)?)\s*([^\d\s].*)?$")
_DATE = re.compile(r"^(\d{1,2})[/.-](\d{1,2})[/.-](\d{2}|\d{4})$")


def parse_reponse(q: Question, typed: str) -> Reponse | ReponseInvalide:
    """What a typed answer means for `q`: a choice by number or label, a number with its unit, a
    date, or free text."""
    text = typed.strip()
    if not text:
        return ReponseInvalide("réponse vide", attendu(q))
    if q.type == "choix_unique":
        c = _one_choice(q, text)
        if c is None:
            return ReponseInvalide(f"« {text} » n'est pas un des choix", attendu(q))
        return Reponse(q.numero, choix=(c,))
    if q.type == "choix_multiple":
        parts = [p for p in re.split(r"[,;]|\s+et\s+|\s+(?=\d)", text) if p.strip()]
        picked = []
        for p in parts:
            c = _one_choice(q, p)
            if c is None:
                return ReponseInvalide(f"« {p.strip()} » n'est pas un des choix", attendu(q))
            picked.append(c)
        return Reponse(q.numero, choix=tuple(c for c in q.choix if c in picked))
    if q.type == "nombre":
        m = _NUMBER.match(text)
        if not m:
            return ReponseInvalide(f"« {text} » n'est pas un nombre", attendu(q))
        unit = (m.group(2) or "").strip() or None
        if unit and q.unite and normalize(unit) != normalize(q.unite):
            return ReponseInvalide(f"unité « {unit} » : {q.unite} attendu", attendu(q))
        return Reponse(q.numero, nombre=float(m.group(1).replace(",", ".")), unite=q.unite or unit)
    if q.type == "date":
        m = _DATE.match(text)
        if not m:
            return ReponseInvalide(f"« {text} » n'est pas une date", attendu(q))
        day, month, year = int(m[1]), int(m[2]), int(m[3])
        year += 2000 if year < 100 else 0
        try:
            return Reponse(q.numero, jour=date(year, month, day))
        except ValueError:
            return ReponseInvalide(f"« {text} » : date impossible", attendu(q))
    return Reponse(q.numero, texte=text)


def reponse_au_vote(q: Question, answer_ids: list[str]) -> Reponse | None:
    """A poll vote: answer ids are 1-based positions in `choix` (PRIMITIVES: send_poll). None when
    the vote names no valid choice (an empty vote retracts; a single-choice poll takes one)."""
    picked = []
    for a in answer_ids:
        if not (isinstance(a, str) and a.isdigit() and 1 <= int(a) <= len(q.choix)):
            return None
        picked.append(q.choix[int(a) - 1])
    if not picked or (q.type == "choix_unique" and len(set(picked)) != 1):
        return None
    return Reponse(q.numero, choix=tuple(c for c in q.choix if c in picked))


# --- the walk -----------------------------------------------------------------------------------------

def s_applique(q: Question, reponses: dict[int, Reponse]) -> bool:
    """A conditional question applies only when the question it depends on was answered so."""
    c = q.condition
    if c is None:
        return True
    earlier = reponses.get(c.question)
    if earlier is None:
        return False  # skipped or unanswered: its follow-up is skipped too
    if c.egal is not None:
        return c.egal in earlier.choix
    return any(choice not in c.sauf for choice in earlier.choix)


def prochaine_question(qn: Questionnaire, reponses: dict[int, Reponse]) -> Question | None:
    """The first question, in order, not answered yet and whose condition holds; None: finished."""
    for q in qn.questions:
        if q.numero not in reponses and s_applique(q, reponses):
            return q
    return None


def indicateurs_atteints(qn: Questionnaire, reponses: dict[int, Reponse]) -> list[Indicateur]:
    return [i for i in qn.indicateurs if i.question in reponses and set(i.si) & set(reponses[i.question].choix)]


@dataclass(frozen=True)
class LigneResume:
    numero: int
    texte: str
    reponse: str | None  # None: skipped (sans objet)


@dataclass(frozen=True)
class Resume:
    lignes: list[LigneResume] = field(default_factory=list)

    def markdown(self) -> list[str]:
        """One line per question; answers shown verbatim (they may be typed text)."""
        return [f"- Q{li.numero}. {literal(li.texte)} → "
                + (f"**{literal(li.reponse)}**" if li.reponse is not None else "sans objet") for li in self.lignes]


def resume(qn: Questionnaire, reponses: dict[int, Reponse]) -> Resume:
    return Resume([LigneResume(q.numero, q.texte, reponses[q.numero].affichage() if q.numero in reponses else None)
                   for q in qn.questions])
