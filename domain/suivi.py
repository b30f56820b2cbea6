"""Suivi: données de base typed by the parcours data, forgiving names, relative red-flag measures,
and the follow-up schedules (échéancier) where the documents give an interval (decisions.md 16).

Pure: no I/O, no clock (instants and the time zone are passed in). The numbers live in
data/parcours/*.yaml: bounds of a typed value (`min`, `max`), the red-flag quantity a donnée
measures (`grandeur`), each élément's `rappel` (SA, periods, age phases). Only notation rules are
written here (a pressure under 30 is in cmHg, a date is JJ/MM/AAAA).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo

from domain.parcours import DonneeBase, ElementSuivi, Parcours, Periode, format_number, parse_periode
from domain.redflags import ThresholdHit, Valeur, check_valeurs
from domain.text import normalize, normalize_key

__all__ = [
    "HEURE_RAPPEL", "Echeance", "Fait", "SaisieError", "anniversaire", "age_le", "at_local", "echeance",
    "etat", "match_names", "mesures", "parse_date", "parse_donnee", "propose_red_flag", "redflag_token",
    "show_value",
]

# A reminder due on a calendar day (« 11 SA », « tous les 3 ans ») goes out at this local hour, then
# waits for each professional's notification hours (decisions.md 1). Cercle default: the start of
# the usual opening hours of the practices (S003 L664 « 8h – 18h »), not a clinical rule.
HEURE_RAPPEL = time(8, 0)


class SaisieError(ValueError):
    """A typed value refused: French, names the element, the value and the expected form."""


# --- forgiving names -------------------------------------------------------------------------------

def _prefix_words(typed: list[str], words: list[str]) -> bool:
    """Each typed word starts a word of the name, in order ("echo t1" ~ "echographie t1")."""
    i = 0
    for w in typed:
        while i < len(words) and not words[i].startswith(w):
            i += 1
        if i == len(words):
            return False
        i += 1
    return True


def match_names(typed: str, entries: list[tuple[str, list[str]]]) -> list[str]:
    """Codes whose names match `typed`, ignoring case, accents and separators: an exact name
    first (code, label or alias), else the names every typed word abbreviates."""
    key = normalize_key(typed)
    if not key:
        return []
    exact = [code for code, names in entries if key in {normalize_key(n) for n in names}]
    if exact:
        return list(dict.fromkeys(exact))
    words = key.replace("(", " ").replace(")", " ").split()
    found = [code for code, names in entries
             if any(_prefix_words(words, normalize_key(n).replace("(", " ").replace(")", " ").split()) for n in names)]
    return list(dict.fromkeys(found))


def names_of(item: DonneeBase | ElementSuivi) -> list[str]:
    return [item.code, item.libelle, *item.aliases]


# --- typed values ------------------------------------------------------------------------------------

_NUMBER = re.compile(r"^([+-]?\d+(?:[.,]\d+)?)\s*(.*)$")
_DATE = re.compile(r"^(\d{1,2})[/.-](\d{1,2})[/.-](\d{2}|\d{4})$")
_OUI = {"oui", "o", "yes", "positif", "positive", "+", "vrai", "fait"}
_NON = {"non", "n", "no", "negatif", "negative", "-", "faux"}


def _form(d: DonneeBase) -> str:
    example = {"nombre": "82.5", "entier": "72", "tension": "135/85 (ou 13/8)", "date": "JJ/MM/AAAA",
               "oui_non": "oui ou non", "texte": '"texte libre"'}.get(d.type)
    if d.type == "choix":
        example = " | ".join(d.options)
    unit = f" {d.unite}" if d.unite and d.type in ("nombre", "entier", "tension") else ""
    bounds = ""
    if d.min is not None and d.max is not None:
        bounds = f", de {format_number(d.min)} à {format_number(d.max)}{unit}"
    return f"{d.code}={example}{'' if d.type == 'choix' else ''}{bounds}"


def _fail(d: DonneeBase, raw: str, reason: str) -> SaisieError:
    return SaisieError(f"{d.libelle} : « {raw} » {reason}. Forme attendue : {_form(d)}")


def parse_date(text: str, today: date) -> date | None:
    """JJ/MM/AAAA (or JJ/MM/AA), « aujourd'hui », « hier »; None when unreadable."""
    key = normalize_key(text)
    if key in ("aujourd hui", "aujourdhui", "ce jour"):
        return today
    if key == "hier":
        return today - timedelta(days=1)
    m = _DATE.match(text.strip())
    if not m:
        return None
    year = int(m[3]) + (2000 if len(m[3]) == 2 else 0)
    if len(m[3]) == 2 and year > today.year:
        year -= 100
    try:
        return date(year, int(m[2]), int(m[1]))
    except ValueError:
        return None


def _number(d: DonneeBase, raw: str) -> float:
    m = _NUMBER.match(raw.strip())
    if not m:
        raise _fail(d, raw, "n'est pas un nombre")
    value, unit = float(m[1].replace(",", ".")), normalize(m[2]).replace(" ", "")
    if unit and (d.unite is None or unit != normalize(d.unite).replace(" ", "")):
        raise _fail(d, raw, f"unité « {m[2]} » inattendue" + (f" (en {d.unite})" if d.unite else ""))
    return value


def _bounds(d: DonneeBase, raw: str, *values: float) -> None:
    for v in values:
        if (d.min is not None and v < d.min) or (d.max is not None and v > d.max):
            raise _fail(d, raw, "est hors des valeurs possibles")


def parse_donnee(d: DonneeBase, raw: str, today: date):
    """The typed value as stored (JSON): float, int, [sys, dia], "AAAA-MM-JJ", bool, str."""
    raw = raw.strip()
    if not raw:
        raise _fail(d, raw, "est vide")
    if d.type in ("nombre", "entier"):
        v = _number(d, raw)
        if d.type == "entier":
            if v != int(v):
                raise _fail(d, raw, "n'est pas un nombre entier")
            v = int(v)
        _bounds(d, raw, v)
        return v
    if d.type == "tension":
        m = re.fullmatch(r"(\d+(?:[.,]\d+)?)\s*/\s*(\d+(?:[.,]\d+)?)\s*(mmhg|cmhg)?", normalize(raw))
        if not m:
            raise _fail(d, raw, "ne se lit pas systolique/diastolique")
        s, di = float(m[1].replace(",", ".")), float(m[2].replace(",", "."))
        if m[3] == "cmhg" or (m[3] is None and s < 30 and di < 30):
            s, di = round(s * 10, 1), round(di * 10, 1)  # « 12/8 » is written in cmHg
        elif m[3] is None and (s < 30) != (di < 30):
            raise _fail(d, raw, "mêle cmHg et mmHg")
        if s <= di:
            raise _fail(d, raw, ": la systolique (première valeur) doit dépasser la diastolique")
        _bounds(d, raw, s, di)
        return [int(s) if s == int(s) else s, int(di) if di == int(di) else di]
    if d.type == "date":
        day = parse_date(raw, today)
        if day is None:
            raise _fail(d, raw, "n'est pas une date qui existe")
        if day > today and not d.futur_permis:
            raise _fail(d, raw, "est dans le futur")
        if day.year < today.year - 125:
            raise _fail(d, raw, "est trop ancienne")
        return day.isoformat()
    if d.type == "oui_non":
        key = normalize(raw)
        if key in _OUI:
            return True
        if key in _NON:
            return False
        raise _fail(d, raw, "n'est ni oui ni non")
    if d.type == "choix":
        found = match_choice(d.options, raw)
        if len(found) != 1:
            raise _fail(d, raw, "est ambigu" if found else "n'est pas une valeur possible")
        return found[0]
    return raw


_ROMAN = {"1": "i", "2": "ii", "3": "iii", "4": "iv"}


def match_choice(options: list[str], typed: str) -> list[str]:
    """« III », « 3 », « nyha 3 », « stade 2 » against « NYHA III », « Stade 2 (50-79 %) »…"""
    key = normalize_key(typed)
    exact = [o for o in options if normalize_key(o) == key]
    if exact:
        return exact
    alt = " ".join(_ROMAN.get(w, w) for w in key.split())
    hits = []
    for o in options:
        words = normalize_key(o).replace("(", " ").replace(")", " ").split()
        if any(_prefix_words(k.split(), words) and (len(k.split()) > 1 or k in words or len(k) >= 3)
               for k in {key, alt}):
            hits.append(o)
    return hits


def show_value(d: DonneeBase, value) -> str:
    """French display of a stored value."""
    if d.type == "tension":
        return f"{format_number(value[0])}/{format_number(value[1])} mmHg"
    if d.type in ("nombre", "entier"):
        return format_number(value) + (f" {d.unite}" if d.unite else "")
    if d.type == "date":
        return date.fromisoformat(value).strftime("%d/%m/%Y")
    if d.type == "oui_non":
        return "oui" if value else "non"
    return str(value)


# --- measured values → red-flag proposals ------------------------------------------------------------

@dataclass(frozen=True)
class Mesure:
    """One recorded value of a donnée, with when it was recorded."""

    at: datetime
    value: object


def _grade(value) -> float | None:
    m = re.search(r"\d+", str(value))
    return float(m.group(0)) if m else None


def mesures(parcours: Parcours, code: str, value, history: list[Mesure], at: datetime) -> list[Valeur]:
    """The red-flag measurements a new value of donnée `code` makes: absolute (SpO₂, FC, Hb, TA) or
    relative to the recorded history (weight gain over a window, weight loss against the base
    weight, grade increase), as the parcours' thresholds express them. `history` is oldest first
    and excludes the new value."""
    d = next((x for x in parcours.donnees_de_base if x.code == code), None)
    if d is None or d.grandeur is None:
        return []
    g = d.grandeur
    raw = f"{code}={value}"
    if g in ("spo2", "fc", "hb", "vems_cvf"):
        unit = {"spo2": "%", "fc": "/min", "hb": "g/dl", "vems_cvf": "%"}[g]
        return [Valeur(code=g, raw=raw, value=float(value), unit=unit, window=None)]
    if g == "ta":
        return [Valeur(code="ta", raw=raw, value=(float(value[0]), float(value[1])), unit="mmHg", window=None)]
    if g == "grade_podologique":
        new, old = _grade(value), _grade(history[-1].value) if history else None
        if new is None or old is None:
            return []
        return [Valeur(code=g, raw=raw, value=new - old, unit=None, window=None)]
    if g != "poids" or not history:
        return []
    out: list[Valeur] = []
    seuils = [t for _, t in parcours.seuils() if t.grandeur == "poids"]
    for t in (t for t in seuils if t.unite == "kg" and t.fenetre is not None):
        # The largest change against a weight recorded within the window (S000 L300 « en 3 et 5 j »).
        within = [m for m in history if at - m.at <= t.fenetre]
        if within:
            ref = min(within, key=lambda m: m.value) if t.operateur in (">", ">=") else max(within, key=lambda m: m.value)
            days = max(1, math.ceil((at - ref.at) / timedelta(days=1)))
            out.append(Valeur(code="poids", raw=raw, value=round(float(value) - float(ref.value), 2), unit="kg",
                              window=min(timedelta(days=days), t.fenetre)))
    if any(t.unite == "%" for t in seuils):
        base = float(history[0].value)  # the poids de base: the first one recorded (S000 L433)
        if base > 0:
            out.append(Valeur(code="poids", raw=raw, value=round((float(value) - base) / base * 100, 1), unit="%",
                              window=None))
    return out


def redflag_token(v: Valeur) -> str:
    """The `!redflag` argument for a measurement: spo2=91, ta=155/95, poids=+2.4kg/4j, poids=-12%."""
    def num(x: float) -> str:
        return f"{x:g}"
    if v.code == "ta":
        return f"ta={num(v.value[0])}/{num(v.value[1])}"
    if v.code == "poids":
        sign = "+" if v.value >= 0 else "-"
        text = f"poids={sign}{num(abs(v.value))}{v.unit}"
        return text + (f"/{v.window.days}j" if v.window is not None else "")
    if v.code == "grade_podologique":
        return f"grade_podo={'+' if v.value >= 0 else '-'}{num(abs(v.value))}"
    return f"{v.code}={num(v.value)}"


def propose_red_flag(parcours: Parcours, valeurs: list[Valeur]) -> tuple[list[ThresholdHit], str | None]:
    """(thresholds crossed, the prepared `!redflag` command) — a proposal, never a red flag."""
    hits = [h for h in check_valeurs(parcours, valeurs).crossed if h.niveau == "red_flag"]
    if not hits:
        return [], None
    tokens = list(dict.fromkeys(redflag_token(h.valeur) for h in hits))
    return hits, f"!redflag parcours={parcours.code} {' '.join(tokens)} <votre inquiétude>"


# --- schedules ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fait:
    """An élément de suivi done: when (the instant it was done or its typed date) and its value."""

    at: datetime
    valeur: str | None = None


@dataclass(frozen=True)
class Echeance:
    """When an élément is due (début d'alerte) and, where the documents give a limit, overdue."""

    element: str
    due: datetime
    overdue: datetime | None = None
    texte: str = ""                              # the seed's wording of the rule


def at_local(day: date, tz: tzinfo, hour: time = HEURE_RAPPEL) -> datetime:
    """A calendar day's reminder instant, in wall time (8h stays 8h across DST)."""
    return datetime.combine(day, hour, tzinfo=tz)


def anniversaire(naissance: date, years: int) -> date:
    """The `years`-th birthday; born on 29 February: 28 February in a common year (Periode.apres)."""
    return Periode(nombre=years, unite="an").apres(naissance) if years else naissance


def _first_of_next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def age_le(naissance: date, day: date) -> int:
    """Age in whole years on `day`."""
    years = day.year - naissance.year
    if anniversaire(naissance, years) > day:
        years -= 1
    return years


def _condition_holds(condition: str | None, donnees: dict) -> bool | None:
    """A rappel's condition (« contraception orale », « implant ou stérilet ») against the données
    of the same words; None when the donnée is not filled."""
    if condition is None:
        return True
    value = donnees.get("contraception")
    if value is None:
        return None
    return normalize_key(str(value)) in normalize_key(condition) or any(
        w in normalize_key(str(value)).split() for w in normalize_key(condition).split() if len(w) > 3
        and w not in ("contraception",))


@dataclass
class Contexte:
    """What a schedule is computed from, for one patient in one parcours."""

    tz: tzinfo
    inclusion: datetime
    donnees: dict = field(default_factory=dict)          # latest value of each donnée (JSON form)
    faits: dict = field(default_factory=dict)            # élément code -> [Fait], oldest first
    naissance: date | None = None


def _date_of(value) -> date | None:
    try:
        return date.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def echeance(parcours: Parcours, e: ElementSuivi, c: Contexte) -> Echeance | None:
    """The next due (and overdue) instant of élément `e`, or None: done, no interval in the
    documents, anchor not filled yet, or outside the ages the documents give."""
    r = e.rappel
    if r is None:
        return None
    faits = c.faits.get(e.code, [])
    last = faits[-1] if faits else None

    def anchor() -> datetime | None:
        """`depart` as an instant: a date donnée (8h local), an élément's first done instant, inclusion."""
        if r.depart == "inclusion":
            return c.inclusion
        if r.depart == "dernier_realise":
            return last.at if last else c.inclusion
        day = _date_of(c.donnees.get(r.depart))
        if day is not None:
            return at_local(day, c.tz)
        done = c.faits.get(r.depart)
        return done[0].at if done else None

    def ended(due: datetime) -> bool:
        if r.jusqu_a is None:
            return False
        end = _date_of(c.donnees.get(r.jusqu_a))
        return end is not None and due.astimezone(c.tz).date() >= end

    holds = _condition_holds(r.condition, c.donnees)
    if not holds:
        return None
    start = anchor()
    if start is None:
        return None
    if r.sa is not None:                         # « Date de début d'alerte » N SA from the pregnancy start
        if faits:
            return None
        day = start.astimezone(c.tz).date() + timedelta(weeks=r.sa)
        return Echeance(e.code, at_local(day, c.tz), None, r.texte)
    if r.a is not None:                          # post-natal: N weeks after the delivery
        if any(f.at >= start for f in faits):
            return None
        return Echeance(e.code, at_local(r.a.apres(start.astimezone(c.tz).date()), c.tz), None, r.texte)
    if r.tous_les is not None:                   # monthly from the declaration; yearly oral-contraception check
        if last is None or (r.depart != "dernier_realise" and last.at < start):
            due = start
        else:
            due = at_local(r.tous_les.apres(last.at.astimezone(c.tz).date()), c.tz)
        return None if ended(due) else Echeance(e.code, due, None, r.texte)
    if r.tous_les_max is not None:               # plaie: every 10 to 30 days from the last fiche
        return Echeance(e.code, start + r.tous_les_min.approx(), start + r.tous_les_max.approx(), r.texte)
    if r.a_saisir is not None:                   # implant / stérilet: pose + the durée d'action typed with it
        if last is None:
            return Echeance(e.code, c.inclusion, None, r.texte)
        try:
            period = parse_periode(last.valeur or "")
        except ValueError:
            return None
        return Echeance(e.code, at_local(period.apres(last.at.astimezone(c.tz).date()), c.tz), None, r.texte)
    if r.phases:
        return _phased(e, r, c, faits)
    return None


def _phased(e: ElementSuivi, r, c: Contexte, faits: list[Fait]) -> Echeance | None:
    """Age-dependent intervals (gynécologie: frottis from 25, +1 an, then 3 ans to 30, 5 ans from 30
    to 65; mammographie every 2 ans from 50). The phase is the one of the patient's age at the last
    exam (the YAML's reading of spec §9 item 14); nothing is due at an age no phase covers."""
    if c.naissance is None:
        return None

    def phase_at(age: int):
        return next((p for p in r.phases if (p.age_min or 0) <= age and (p.age_max is None or age < p.age_max)), None)

    first_min = min(p.age_min or 0 for p in r.phases)
    inclusion_day = c.inclusion.astimezone(c.tz).date()
    last_day = faits[-1].at.astimezone(c.tz).date() if faits else None
    in_phase = [f for f in faits if age_le(c.naissance, f.at.astimezone(c.tz).date()) >= first_min]
    if last_day is None or age_le(c.naissance, last_day) < first_min:
        # Nothing in the screening ages yet: due from the first phase's birthday (or now, if past),
        # rounded up to the first of the next month: the timer row's instant is stored in clear, and
        # the birthday itself would give away the birth date (a screening « from 25 » is not to the day).
        day = max(_first_of_next_month(anniversaire(c.naissance, first_min)), last_day or inclusion_day,
                  inclusion_day)
        if phase_at(age_le(c.naissance, day)) is None:
            return None
        due = at_local(day, c.tz) if day > inclusion_day else c.inclusion
        return Echeance(e.code, due, None, r.texte)
    p = phase_at(age_le(c.naissance, last_day))
    if p is None:
        return None
    period = p.premier if (p.premier is not None and len(in_phase) == 1) else p.tous_les
    day = period.apres(last_day)
    if phase_at(age_le(c.naissance, day)) is None:
        return None                              # past the last phase (65 ans)
    return Echeance(e.code, at_local(day, c.tz), None, r.texte)


def etat(ech: Echeance | None, faits: list[Fait], now: datetime) -> str:
    """fait | a_venir | a_faire | en_retard | manquant (no interval: shown, never reminded)."""
    if ech is None:
        return "fait" if faits else "manquant"
    if ech.overdue is not None and now >= ech.overdue:
        return "en_retard"
    if now >= ech.due:
        return "a_faire"
    return "fait" if faits else "a_venir"
