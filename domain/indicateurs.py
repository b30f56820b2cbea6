"""Activity indicators (tableau de bord, issue 18): periods, the small-count rule, quantiles,
report dates. Pure: no I/O; every function takes its instants and its time zone.

- A period is a month (`2026-11`), a quarter (`2026-T4`) or a year (`2026`); the default is the
  month before `now`. Its boundaries are the CPTS's local midnights (Europe/Paris), turned into
  UTC instants for the queries: a request made at 00:30 on 1 December in Paris (23:30 UTC on
  30 November) belongs to December.
- Small counts: a count of 1 to 4 is shown « < 5 » (no patient can be singled out), and so is a
  rate, a median or a p90 computed on fewer than 5 rows. Zero stays « 0 »: it singles no one out.
- Quantiles interpolate linearly between closest ranks (PostgreSQL's percentile_cont, numpy's
  default), so the same rows give the same figure whichever computes it.
- Reports are posted on the first working day (Monday to Friday, French public holidays off) of
  the month after the period.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from domain.rules_yaml import load_rules

SEUIL_PETIT_EFFECTIF = 5  # « < 5 » below (issue 18: « e.g. fewer than 5 patients »)
MASQUE = "< 5"
MOIS = ["janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre",
        "octobre", "novembre", "décembre"]
MOIS_COURTS = ["janv.", "févr.", "mars", "avr.", "mai", "juin", "juil.", "août", "sept.", "oct.",
               "nov.", "déc."]


class PeriodeError(ValueError):
    """A period the command cannot read; the message is the French text for the room."""


@dataclass(frozen=True)
class Mois:
    annee: int
    mois: int

    @property
    def cle(self) -> str:
        return f"{self.annee:04d}-{self.mois:02d}"

    @property
    def libelle_court(self) -> str:
        return f"{MOIS_COURTS[self.mois - 1]} {self.annee % 100:02d}"

    def suivant(self) -> "Mois":
        return Mois(self.annee + self.mois // 12, self.mois % 12 + 1)

    def precedent(self) -> "Mois":
        return Mois(self.annee - (self.mois == 1), (self.mois - 2) % 12 + 1)

    def debut(self, tz: ZoneInfo) -> datetime:
        """Local midnight of the 1st, as an aware UTC instant."""
        return datetime.combine(date(self.annee, self.mois, 1), time(0), tz).astimezone(timezone.utc)


@dataclass(frozen=True)
class Periode:
    code: str          # 2026-11, 2026-T4, 2026
    libelle: str       # novembre 2026, 4e trimestre 2026, année 2026
    mois: tuple[Mois, ...]

    def bornes(self, tz: ZoneInfo) -> tuple[datetime, datetime]:
        """[start, end) in UTC."""
        return self.mois[0].debut(tz), self.mois[-1].suivant().debut(tz)

    def fenetre(self, minimum: int = 6) -> tuple[Mois, ...]:
        """The months the chart shows: the period, widened backwards to `minimum` months so that a
        single month is seen against its trend."""
        months = list(self.mois)
        while len(months) < minimum:
            months.insert(0, months[0].precedent())
        return tuple(months)


def mois_de(instant: datetime, tz: ZoneInfo) -> Mois:
    local = instant.astimezone(tz)
    return Mois(local.year, local.month)


def periode_mois(m: Mois) -> Periode:
    return Periode(m.cle, f"{MOIS[m.mois - 1]} {m.annee}", (m,))


def periode_trimestre(annee: int, t: int) -> Periode:
    return Periode(f"{annee}-T{t}", f"{t}{'er' if t == 1 else 'e'} trimestre {annee}",
                   tuple(Mois(annee, 3 * (t - 1) + k) for k in (1, 2, 3)))


def periode_annee(annee: int) -> Periode:
    return Periode(str(annee), f"année {annee}", tuple(Mois(annee, k) for k in range(1, 13)))


def mois_precedent(now: datetime, tz: ZoneInfo) -> Periode:
    return periode_mois(mois_de(now, tz).precedent())


FORMATS = "2026-11 (un mois), 2026-T4 (un trimestre) ou 2026 (une année)"


def lire_periode(texte: str | None, now: datetime, tz: ZoneInfo) -> Periode:
    """`2026-11`, `11/2026`, `2026-T4` (or `T4-2026`, `2026-Q4`), `2026`; None: the last month.
    A period that has not started yet is refused (nothing to count)."""
    if texte is None or not texte.strip():
        return mois_precedent(now, tz)
    t = texte.strip().upper()
    if m := re.fullmatch(r"(\d{4})-(\d{1,2})", t) or re.fullmatch(r"(\d{1,2})/(\d{4})", t):
        annee, mois = (int(m[1]), int(m[2])) if len(m[1]) == 4 else (int(m[2]), int(m[1]))
        if not 1 <= mois <= 12:
            raise PeriodeError(f"« {texte} » : le mois doit aller de 01 à 12")
        periode = periode_mois(Mois(annee, mois))
    elif m := re.fullmatch(r"(\d{4})-[TQ]([1-4])", t) or re.fullmatch(r"[TQ]([1-4])-(\d{4})", t):
        annee, tri = (int(m[1]), int(m[2])) if len(m[1]) == 4 else (int(m[2]), int(m[1]))
        periode = periode_trimestre(annee, tri)
    elif re.fullmatch(r"\d{4}", t):
        periode = periode_annee(int(t))
    else:
        raise PeriodeError(f"« {texte} » n'est pas une période : {FORMATS}")
    if not 2000 <= periode.mois[0].annee <= 2100:
        raise PeriodeError(f"« {texte} » : année hors des limites")
    if periode.mois[0].debut(tz) > now:
        raise PeriodeError(f"la période {periode.libelle} n'a pas commencé")
    return periode


# --- the small-count rule and the figures shown ------------------------------------------------

def masquer(n: int, seuil: int = SEUIL_PETIT_EFFECTIF) -> str:
    """A count as shown: 1..seuil-1 becomes « < 5 »."""
    return MASQUE if 0 < n < seuil else str(n)


def est_masque(n: int, seuil: int = SEUIL_PETIT_EFFECTIF) -> bool:
    return 0 < n < seuil


def quantile(valeurs: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (percentile_cont); None for no value."""
    if not valeurs:
        return None
    s = sorted(valeurs)
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def nombre_fr(x: float, decimales: int = 1) -> str:
    """French decimal comma, no thousands separator (spreadsheets read it as a number)."""
    return f"{x:.{decimales}f}".replace(".", ",")


@dataclass(frozen=True)
class Valeur:
    """One figure of one indicator for one month (or the period), before the small-count rule.

    `n` is the count (or the numerator of a rate); `base` the number of rows a rate or a quantile
    is computed on (the denominator); `x` the computed figure (a rate in %, hours) or None.
    """

    n: int = 0
    base: int | None = None
    x: float | None = None

    @property
    def masquee(self) -> bool:
        return est_masque(self.n if self.base is None else self.base)

    def affichee(self, decimales: int = 1) -> str:
        """As shown in the table and the CSV."""
        if self.base is None:
            return masquer(self.n)
        if self.masquee:
            return MASQUE
        if self.x is None:
            return "–"
        return nombre_fr(self.x, decimales)

    def tracee(self) -> float | None:
        """As drawn on the chart: a masked figure is not drawn (a gap, never a guess)."""
        if self.masquee:
            return None
        if self.base is None:
            return float(self.n)
        return self.x


def taux(n: int, base: int) -> Valeur:
    return Valeur(n=n, base=base, x=100.0 * n / base if base else None)


def quantile_heures(durees_s: Sequence[float], q: float) -> Valeur:
    v = quantile(durees_s, q)
    return Valeur(n=len(durees_s), base=len(durees_s), x=None if v is None else v / 3600)


# --- when the reports are posted --------------------------------------------------------------

def _paques(annee: int) -> date:
    """Easter Sunday (anonymous Gregorian algorithm)."""
    a, b, c = annee % 19, annee // 100, annee % 100
    d, e = b // 4, b % 4
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    l_ = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * l_) // 451
    mois = (h + l_ - 7 * m + 114) // 31
    jour = (h + l_ - 7 * m + 114) % 31 + 1
    return date(annee, mois, jour)


def jours_feries(annee: int) -> set[date]:
    """French public holidays (Code du travail L3133-1), metropolitan France."""
    paques = _paques(annee)
    fixes = [(1, 1), (5, 1), (5, 8), (7, 14), (8, 15), (11, 1), (11, 11), (12, 25)]
    return {date(annee, m, j) for m, j in fixes} | {paques + timedelta(days=1), paques + timedelta(days=39),
                                                    paques + timedelta(days=50)}


def premier_jour_ouvre(m: Mois) -> date:
    d = date(m.annee, m.mois, 1)
    feries = jours_feries(m.annee)
    while d.weekday() >= 5 or d in feries:
        d += timedelta(days=1)
    return d


HEURE_RAPPORT = time(8, 0)  # défaut Cercle, configurable : au début de la matinée des coordinateurs


def date_rapport(periode_finie: Mois, tz: ZoneInfo) -> datetime:
    """When the report for a finished month is posted: 08:00 local on the next month's first
    working day, as an aware UTC instant."""
    jour = premier_jour_ouvre(periode_finie.suivant())
    return datetime.combine(jour, HEURE_RAPPORT, tz).astimezone(timezone.utc)


def trimestre_de(m: Mois) -> Periode | None:
    """The quarter `m` closes, if it closes one."""
    return periode_trimestre(m.annee, m.mois // 3) if m.mois % 3 == 0 else None


# --- the indicators, as data (data/indicateurs.yaml) -------------------------------------------

DATA_PATH = Path(__file__).resolve().parent.parent / "data" / "indicateurs.yaml"
MESURES = ("effectif", "taux", "mediane", "p90")


class IndicateursError(ValueError):
    pass


@dataclass(frozen=True)
class Indicateur:
    code: str
    libelle: str
    definition: str
    famille: str
    requete: str | None  # None: declared, waiting for its data (en_attente)
    mesure: str | None
    petit_effectif: str = "masquer"
    requiert: str | None = None


@dataclass(frozen=True)
class Catalogue:
    familles: dict[str, str]
    indicateurs: tuple[Indicateur, ...]
    en_attente: tuple[Indicateur, ...]

    def par_famille(self) -> dict[str, list[Indicateur]]:
        out: dict[str, list[Indicateur]] = {f: [] for f in self.familles}
        for i in self.indicateurs:
            out[i.famille].append(i)
        return out


def load_indicateurs(path: str | Path | None = None) -> Catalogue:
    path = Path(path) if path else DATA_PATH
    raw = load_rules(path.read_text(encoding="utf-8")) or {}
    familles = raw.get("familles") or {}

    def one(code: str, d: dict, attente: bool) -> Indicateur:
        where = f"{path.name}: {code}"
        for key in ("libelle", "definition", "famille", "source"):
            if not d.get(key):
                raise IndicateursError(f"{where}: « {key} » manque")
        if attente:
            if not d.get("requiert"):
                raise IndicateursError(f"{where}: « requiert » manque (quelles données attend-il ?)")
            return Indicateur(code, d["libelle"], d["definition"], d["famille"], None, None,
                              requiert=d["requiert"])
        if d["famille"] not in familles:
            raise IndicateursError(f"{where}: famille inconnue « {d['famille']} »")
        if d.get("mesure") not in MESURES:
            raise IndicateursError(f"{where}: mesure « {d.get('mesure')} » (attendu : {', '.join(MESURES)})")
        if d.get("petit_effectif") != "masquer":
            raise IndicateursError(f"{where}: petit_effectif doit être « masquer » (aucun patient identifiable)")
        if not d.get("requete"):
            raise IndicateursError(f"{where}: « requete » manque")
        return Indicateur(code, d["libelle"], d["definition"], d["famille"], d["requete"], d["mesure"])

    return Catalogue(familles=dict(familles),
                     indicateurs=tuple(one(c, d, False) for c, d in (raw.get("indicateurs") or {}).items()),
                     en_attente=tuple(one(c, d, True) for c, d in (raw.get("en_attente") or {}).items()))


# --- from query rows to figures ---------------------------------------------------------------

@dataclass(frozen=True)
class Ligne:
    """What a query gives for one month (and one breakdown value, e.g. a flow): additive parts
    only, so that a quarter is the sum of its months. `durees`: seconds, for the quantiles."""

    mois: str
    n: int = 0
    base: int | None = None
    durees: tuple[float, ...] = ()
    detail: str = ""


def valeur(mesure: str, lignes: Sequence[Ligne]) -> Valeur:
    """One figure from the rows of one month (or of every month of the period)."""
    if mesure == "effectif":
        return Valeur(n=sum(ligne.n for ligne in lignes))
    if mesure == "taux":
        return taux(sum(ligne.n for ligne in lignes), sum(ligne.base or 0 for ligne in lignes))
    durees = [d for ligne in lignes for d in ligne.durees]
    return quantile_heures(durees, 0.5 if mesure == "mediane" else 0.9)


@dataclass(frozen=True)
class Resultat:
    """An indicator over a window of months: one figure per month and one for the period."""

    indicateur: Indicateur
    par_mois: dict[str, Valeur]
    periode: Valeur
    detail: dict[str, Valeur]  # breakdown (type, cible, parcours…) over the period


def resultat(ind: Indicateur, lignes: Sequence[Ligne], fenetre: Sequence[Mois], periode: Periode) -> Resultat:
    cles = {m.cle for m in periode.mois}
    by_month: dict[str, list[Ligne]] = {}
    for x in lignes:
        by_month.setdefault(x.mois, []).append(x)
    par_mois = {m.cle: valeur(ind.mesure, by_month.get(m.cle, [])) for m in fenetre}
    dans = [x for x in lignes if x.mois in cles]
    details = sorted({x.detail for x in dans if x.detail})
    return Resultat(ind, par_mois, valeur(ind.mesure, dans),
                    {d: valeur(ind.mesure, [x for x in dans if x.detail == d]) for d in details})
