"""Measured red-flag values: parse what a clinician types, check it against a parcours' thresholds.

Glossary: a `Valeur` is what was observed (spo2=91); a `Seuil` (domain.parcours) is the rule it
is checked against (SpO₂ < 94 %).

`parse_valeur("spo2=91")` understands the notation (units, signs, windows, cmHg) and nothing
clinical; `check_valeurs(parcours, valeurs)` compares with the thresholds of the
parcours YAML (`red_flags.mesures`, `alerte_critique.mesures`). No clinical number lives here:
the only numbers are unit conversions and notation sanity checks (a percentage is ≤ 100, a
pressure under 30 is written in cmHg).
"""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from datetime import timedelta

from domain.parcours import (
    GRANDEURS,
    Parcours,
    Seuil,
    format_number,
    parse_duration,
)
from domain.text import format_duree, normalize_key

__all__ = [
    "CheckResult", "Valeur", "ValeurError", "ThresholdHit", "check_valeurs", "explain_not_applicable",
    "known_codes", "parse_valeur", "parse_valeurs",
]


class ValeurError(ValueError):
    """A value that cannot be read safely. The message is French and shows the right form."""


@dataclass(frozen=True)
class Valeur:
    code: str                                    # canonical: spo2, ta, tas, tad, fc, hb, poids, cetonurie, vems_cvf, grade_podologique
    raw: str                                     # as typed
    value: float | tuple[float, float] | bool    # poids and grade: signed variation
    unit: str | None                             # %, mmHg, /min, g/dl, kg, or None
    window: timedelta | None                     # the period of a variation (poids=+2.4kg/4j)
    note: str | None = None                      # e.g. a unit conversion the user should see

    @property
    def texte(self) -> str:
        """"SpO₂ 91 %", "TA 155/95 mmHg", "variation de poids +2,4 kg en 4j", "cétonurie positive"."""
        g = GRANDEURS[self.code]
        if isinstance(self.value, bool):
            return f"{g.symbole} {'positive' if self.value else 'négative'}"
        if isinstance(self.value, tuple):
            value = "/".join(format_number(v) for v in self.value)
        elif g.nature == "variation":
            value = ("+" if self.value >= 0 else "-") + format_number(abs(self.value))
        else:
            value = format_number(self.value)
        text = f"{g.symbole} {value}" + (f" {self.unit}" if self.unit else "")
        if self.window is not None:
            text += f" en {format_duree(self.window)}"
        return text


@dataclass(frozen=True)
class ThresholdHit:
    code: str                                    # the threshold's code in the parcours YAML
    libelle: str                                 # the seed's wording, e.g. « SpO2 < 94% »
    seuil_texte: str                              # e.g. "SpO₂ < 94 %"
    niveau: str = "red_flag"                     # "red_flag" or "alerte_critique" (périnatalité)
    condition: str | None = None                 # a non-measured condition to confirm (« + carence en fer »)
    valeur: Valeur | None = None


class CheckResult(tuple):
    """`(crossed, not_crossed)`, so `hits, ok = check_valeurs(...)` works.

    `not_crossed` holds every measurement that crossed nothing, including those the parcours has
    no threshold for; those are also listed in `.not_applicable`.
    """

    def __new__(cls, crossed: list[ThresholdHit], not_crossed: list[Valeur], not_applicable: list[Valeur]):
        obj = super().__new__(cls, (crossed, not_crossed))
        obj.not_applicable = not_applicable
        return obj

    @property
    def crossed(self) -> list[ThresholdHit]:
        return self[0]

    @property
    def not_crossed(self) -> list[Valeur]:
        return self[1]


# --- parsing -----------------------------------------------------------------------------------------

_ALIASES: dict[str, list[str]] = {
    "spo2": ["spo2", "spo₂", "sat", "sato2", "saturation"],
    "ta": ["ta", "pa", "tension", "tension arterielle", "pression arterielle"],
    "tas": ["tas", "pas", "systolique", "ta systolique", "tasys"],
    "tad": ["tad", "pad", "diastolique", "ta diastolique", "tadia"],
    "fc": ["fc", "pouls", "frequence cardiaque", "freq"],
    "hb": ["hb", "hg", "hemoglobine"],
    "poids": ["poids", "pds"],
    "cetonurie": ["cetonurie", "cetones", "acetonurie", "bu cetones"],
    "vems_cvf": ["vems cvf", "vemscvf", "tiffeneau"],
    "grade_podologique": ["grade podologique", "grade podo", "podo"],
}
_KEYS = {normalize_key(alias): code for code, aliases in _ALIASES.items() for alias in aliases}

_EXAMPLES = {
    "spo2": "spo2=91", "ta": "ta=155/95", "tas": "tas=85", "tad": "tad=95", "fc": "fc=45", "hb": "hb=9.2",
    "poids": "poids=+2.4kg/4j ou poids=-12%", "cetonurie": "cetonurie=positive", "vems_cvf": "vems_cvf=45%",
    "grade_podologique": "grade_podo=+1",
}
_SHORT = {"grade_podologique": "grade_podo"}

_NUMBER = r"(\d+(?:\.\d+)?)"
_TRUE = {"positive", "positif", "pos", "+", "++", "+++", "oui", "o", "presente", "present"}
_FALSE = {"negative", "negatif", "neg", "-", "0", "non", "n", "absente", "absent"}


def known_codes() -> list[str]:
    """The parameter names a clinician can type, in display order."""
    return [_SHORT.get(c, c) for c in _ALIASES]


def _fail(raw: str, reason: str, code: str | None = None) -> ValeurError:
    example = f" Exemple : {_EXAMPLES[code]}." if code else ""
    return ValeurError(f"« {raw} » : {reason}.{example}")


def _number(text: str) -> float:
    return float(text)


def _percent(raw: str, code: str, value: str) -> tuple[float, str | None]:
    m = re.fullmatch(_NUMBER + r"(%)?", value)
    if not m:
        raise _fail(raw, f"valeur illisible pour {_SHORT.get(code, code)} (un pourcentage est attendu)", code)
    v = _number(m.group(1))
    if v > 100:
        raise _fail(raw, "un pourcentage ne dépasse pas 100", code)
    if v <= 1 and not m.group(2):
        raise _fail(raw, f"« {value} » est ambigu : écrivez le pourcentage (91 et non 0.91)", code)
    return v, None


def _pressure(raw: str, code: str, value: str) -> tuple[float | tuple[float, float], str | None]:
    if code == "ta":
        m = re.fullmatch(_NUMBER + "/" + _NUMBER + r"(mmhg|cmhg)?", value)
        if not m:
            raise _fail(raw, "la tension s'écrit systolique/diastolique", code)
        sys_, dia, unit = _number(m.group(1)), _number(m.group(2)), m.group(3)
        small = (sys_ < 30, dia < 30)
        if unit is None and small[0] != small[1]:
            raise _fail(raw, "valeurs mêlant cmHg et mmHg : écrivez ta=155/95 (mmHg) ou ta=15.5/9.5 (cmHg)", code)
        if sys_ < dia:
            raise _fail(raw, "la systolique (première valeur) doit dépasser la diastolique", code)
        if unit == "cmhg" or (unit is None and small[0]):
            converted = (round(sys_ * 10, 1), round(dia * 10, 1))
            note = (f"{format_number(sys_)}/{format_number(dia)} lu en cmHg, converti en "
                    f"{format_number(converted[0])}/{format_number(converted[1])} mmHg")
            return converted, note
        return (sys_, dia), None
    m = re.fullmatch(_NUMBER + r"(mmhg|cmhg)?", value)
    if not m:
        raise _fail(raw, f"valeur illisible pour {code} (un nombre en mmHg est attendu)", code)
    v, unit = _number(m.group(1)), m.group(2)
    if unit == "cmhg" or (unit is None and v < 30):
        converted = round(v * 10, 1)
        return converted, f"{format_number(v)} lu en cmHg, converti en {format_number(converted)} mmHg"
    return v, None


def _heart_rate(raw: str, value: str) -> tuple[float, str | None]:
    m = re.fullmatch(_NUMBER + r"(/min|/mn|bpm|bat/min|bat/mn)?", value)
    if not m:
        raise _fail(raw, "la fréquence cardiaque s'écrit en battements par minute", "fc")
    return _number(m.group(1)), None


def _hemoglobin(raw: str, value: str) -> tuple[float, str | None]:
    m = re.fullmatch(_NUMBER + r"(g/dl|g/l)?", value)
    if not m:
        raise _fail(raw, "l'hémoglobine s'écrit en g/dl (ou en g/l avec l'unité)", "hb")
    v, unit = _number(m.group(1)), m.group(2)
    if unit == "g/l":
        converted = round(v / 10, 2)
        return converted, f"{format_number(v)} g/l converti en {format_number(converted)} g/dl"
    if unit is None and v > 25:
        raise _fail(raw, f"{format_number(v)} est ambigu (g/l ou g/dl ?) : écrivez hb=9.2 (g/dl) ou "
                         f"hb={format_number(v)}g/l", "hb")
    return v, None


_WEIGHT_HELP = ("précisez le sens (+ prise, - perte), l'unité et, en kg, la durée : poids=+2.4kg/4j (prise de "
                "2,4 kg en 4 jours) ou poids=-12% (perte de 12 % du poids de base)")


def _weight(raw: str, value: str) -> tuple[float, str, timedelta | None]:
    m = re.fullmatch(r"([+-])" + _NUMBER + r"(kg|%)(?:(?:/|en|sur)(.+))?", value)
    if not m:
        raise ValeurError(f"« {raw} » est ambigu : {_WEIGHT_HELP}.")
    sign, amount, unit, window_text = m.groups()
    v = _number(amount) * (-1 if sign == "-" else 1)
    window = None
    if window_text:
        try:
            window = parse_duration(window_text)
        except ValueError as exc:
            raise ValeurError(f"« {raw} » : {exc} ; {_WEIGHT_HELP}.") from None
    if unit == "kg" and window is None:
        raise ValeurError(f"« {raw} » : sur combien de temps ? {_WEIGHT_HELP}.")
    return v, unit, window


def parse_valeur(token: str) -> Valeur:
    """One `code=valeur` token → Valeur. ValeurError (French, with an example) otherwise."""
    raw = (token or "").strip()
    m = re.fullmatch(r"([^=:]+)[=:](.*)", raw)
    if not m:
        raise ValeurError(f"« {raw} » : écrivez paramètre=valeur, par exemple spo2=91 ou ta=155/95 "
                               f"(paramètres : {', '.join(known_codes())}).")
    key, value = normalize_key(m.group(1)), m.group(2)
    code = _KEYS.get(key) or _KEYS.get(key.replace(" ", ""))
    if code is None:
        raise ValeurError(f"« {raw} » : paramètre inconnu « {m.group(1).strip()} ». Paramètres connus : "
                               f"{', '.join(known_codes())}. Exemple : spo2=91.")
    value = re.sub(r"\s+", "", value).lower().replace(",", ".")
    if not value:
        raise _fail(raw, "valeur manquante", code)
    window = note = None
    if code in ("spo2", "vems_cvf"):
        if value[0] in "+-":
            raise _fail(raw, "une valeur mesurée s'écrit sans signe", code)
        v, note = _percent(raw, code, value)
        parsed, unit = v, "%"
    elif code in ("ta", "tas", "tad"):
        parsed, note = _pressure(raw, code, value)
        unit = "mmHg"
    elif code == "fc":
        parsed, note = _heart_rate(raw, value)
        unit = "/min"
    elif code == "hb":
        parsed, note = _hemoglobin(raw, value)
        unit = "g/dl"
    elif code == "poids":
        parsed, unit, window = _weight(raw, value)
    elif code == "cetonurie":
        plain = normalize_key(value) or value
        if plain in _TRUE or value in _TRUE:
            parsed = True
        elif plain in _FALSE or value in _FALSE:
            parsed = False
        else:
            raise _fail(raw, "la cétonurie s'écrit positive ou negative (ou +, -, oui, non)", code)
        unit = None
    else:  # grade_podologique
        mg = re.fullmatch(r"([+-])(\d+)", value)
        if not mg:
            raise _fail(raw, "grade actuel ou variation ? Écrivez la variation par rapport au grade de base, "
                             "avec son signe", code)
        parsed, unit = float(mg.group(2)) * (-1 if mg.group(1) == "-" else 1), None
    return Valeur(code=code, raw=raw, value=parsed, unit=unit, window=window, note=note)


def parse_valeurs(text: str) -> list[Valeur]:
    """Several tokens separated by spaces or « ; »: "spo2=91 fc=45"."""
    return [parse_valeur(t) for t in re.split(r"[\s;]+", text.strip()) if t]


# --- checking ----------------------------------------------------------------------------------------

_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "=": operator.eq}


def _evaluate(t: Seuil, m: Valeur) -> bool | None:
    """True/False when threshold `t` applies to measurement `m`, None when it does not apply."""
    cmp = _OPS[t.operateur]
    if t.grandeur == m.code:
        if t.unite != m.unit:
            return None                                  # poids in kg vs a threshold in %
        if t.fenetre is not None and (m.window is None or m.window > t.fenetre):
            return False                                 # a variation over a longer period
        if isinstance(t.seuil, tuple):
            results = [cmp(v, s) for v, s in zip(m.value, t.seuil)]
            return any(results) if t.combinaison == "ou" else all(results)
        return bool(cmp(m.value, t.seuil))
    if t.grandeur in ("tas", "tad") and m.code == "ta":
        return bool(cmp(m.value[0 if t.grandeur == "tas" else 1], t.seuil))
    if t.grandeur == "ta" and m.code in ("tas", "tad") and t.combinaison == "ou":
        return bool(cmp(m.value, t.seuil[0 if m.code == "tas" else 1]))
    return None


def check_valeurs(parcours: Parcours, valeurs: list[Valeur]) -> CheckResult:
    """(crossed, not crossed) against the parcours' thresholds; see CheckResult.not_applicable."""
    hits: list[ThresholdHit] = []
    not_crossed: list[Valeur] = []
    not_applicable: list[Valeur] = []
    for m in valeurs:
        applicable = crossed = False
        for niveau, t in parcours.seuils():
            result = _evaluate(t, m)
            if result is None:
                continue
            applicable = True
            if result:
                crossed = True
                hits.append(ThresholdHit(code=t.code, libelle=t.libelle, seuil_texte=t.texte, niveau=niveau,
                                         condition=t.condition, valeur=m))
        if not crossed:
            not_crossed.append(m)
        if not applicable:
            not_applicable.append(m)
    return CheckResult(hits, not_crossed, not_applicable)


def explain_not_applicable(parcours: Parcours, m: Valeur) -> str:
    """French sentence for a measurement the parcours has no threshold for."""
    seuils = [t.texte for _, t in parcours.seuils()]
    same = [t.texte for _, t in parcours.seuils() if t.grandeur == m.code]
    if same:
        return (f"{m.raw} : non applicable, le parcours {parcours.nom} définit ce seuil autrement "
                f"({' ; '.join(same)}).")
    if not seuils:
        return f"{m.raw} : non applicable, le parcours {parcours.nom} n'a pas de seuil mesuré."
    return (f"{m.raw} : non applicable, pas de seuil pour ce paramètre dans le parcours {parcours.nom} "
            f"(seuils : {' ; '.join(seuils)}).")
