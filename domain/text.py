"""Text: the one normalizer, and French durations and dates, read and written (one implementation each).

Every message shows a délai with `format_duree` and an instant with `format_french_datetime` in the
CPTS's configured time zone, so one message never mixes two clocks or two spellings of a délai.
"""
from __future__ import annotations

import re
import unicodedata
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

# Typographic variants that phone keyboards insert in place of the ASCII characters.
_TYPOGRAPHIC = str.maketrans({
    "’": "'", "‘": "'", "ʼ": "'", "‐": "-", "‑": "-", "‒": "-", "–": "-", "—": "-", "−": "-",
    "œ": "oe", "æ": "ae",
})


def normalize(word: str) -> str:
    """Casefold and strip accents (NFKD), for accent- and case-insensitive matching: the one text
    normalizer of the project ("Périnatalité" → "perinatalite").

    Also folds typographic apostrophes and dashes to ASCII and the œ/æ ligatures (NFKD keeps
    them), so "Aujourd’hui", "après‑demain" and "sœur" match what the code spells in ASCII.
    """
    # Decompose, fold case, decompose again: compatibility forms such as "ℌ" only become
    # letters after NFKD, and casefold can itself produce combining marks ("İ").
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", str(word)).casefold())
    return "".join(c for c in folded if not unicodedata.combining(c)).translate(_TYPOGRAPHIC)


def normalize_key(text: str) -> str:
    """Lookup key: case, accents and separators ignored ("sport-santé" == "Sport_Sante" == "sport sante")."""
    return " ".join(re.sub(r"[-_'/.]", " ", normalize(text)).split())


_UNITS = {
    "min": timedelta(minutes=1), "mn": timedelta(minutes=1), "minute": timedelta(minutes=1),
    "minutes": timedelta(minutes=1),
    "h": timedelta(hours=1), "heure": timedelta(hours=1), "heures": timedelta(hours=1),
    "j": timedelta(days=1), "jour": timedelta(days=1), "jours": timedelta(days=1), "d": timedelta(days=1),
    "sem": timedelta(weeks=1), "semaine": timedelta(weeks=1), "semaines": timedelta(weeks=1),
}
_PART = re.compile(r"(\d+(?:[.,]\d+)?)([a-z]+)?")
FORMS = "8h, 4j, 30min, 2sem, 2h30"


def parse_duration(value: Any) -> timedelta:
    """A délai written in the data files: "8h", "4j", "15min", "2h30", "30 jours", "1 j 12 h".

    A bare number is refused (hours or days? the source documents use both), and so is anything
    that is not a whole number of minutes. ValueError with a French message otherwise.
    """
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (bool, int, float)):
        raise ValueError(f"durée « {value} » sans unité (formes acceptées : {FORMS})")
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"durée attendue (formes acceptées : {FORMS}), reçu « {value} »")
    text = normalize(value).replace(" ", "")
    total, pos, last_unit = timedelta(0), 0, None
    while pos < len(text):
        m = _PART.match(text, pos)
        if not m:
            raise ValueError(f"durée invalide « {value} » (formes acceptées : {FORMS})")
        number, unit = float(m.group(1).replace(",", ".")), m.group(2)
        if unit is None:
            # "2h30": a trailing number after hours means minutes.
            if last_unit != timedelta(hours=1) or m.end() != len(text):
                raise ValueError(f"durée « {value} » sans unité (formes acceptées : {FORMS})")
            unit_td = timedelta(minutes=1)
        elif unit in _UNITS:
            unit_td = _UNITS[unit]
        else:
            raise ValueError(f"durée invalide « {value} » : unité inconnue « {unit} » (min, h, j, sem)")
        total += unit_td * number
        last_unit, pos = unit_td, m.end()
    if total <= timedelta(0):
        raise ValueError(f"durée nulle « {value} »")
    if total % timedelta(minutes=1):
        raise ValueError(f"durée « {value} » : un nombre entier de minutes est attendu")
    return total


def compact_duration(td: timedelta) -> str:
    """The data files' form, read back by parse_duration: "8h", "4j", "15min", "2sem"."""
    minutes = int(td.total_seconds() // 60)
    for size, unit in ((7 * 24 * 60, "sem"), (24 * 60, "j"), (60, "h")):
        if minutes and minutes % size == 0:
            return f"{minutes // size}{unit}"
    return f"{minutes}min"


# --- what clinicians read --------------------------------------------------------------------

def format_duree(td: timedelta) -> str:
    """A délai as clinicians say it: `8 h`, `48 h`, `4 jours`, `15 min`, `2 h 30`, `3 jours 12 h`.

    Under three days they count in hours (« 24h », « 48h »); beyond, in days. Seconds are dropped.
    The Duration argument type reads this text back.
    """
    if td < timedelta(0):
        raise ValueError("format_duree expects a non-negative timedelta")
    seconds = int(td.total_seconds())
    days, rest = divmod(seconds, 86400) if seconds >= 3 * 86400 else (0, seconds)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = []
    if days:
        parts.append(f"{days} jour" + ("s" if days > 1 else ""))
    if hours:
        parts.append(f"{hours} h")
    if minutes:
        parts.append(f"{minutes:02d}" if hours and not days else f"{minutes} min")
    return " ".join(parts) or "0 min"


WEEKDAY_NAMES = ("lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche")
MONTH_NAMES = ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août",
               "septembre", "octobre", "novembre", "décembre")


def format_clock(t: time) -> str:
    """"9h", "14h30", "9h05"."""
    return f"{t.hour}h" if t.minute == 0 else f"{t.hour}h{t.minute:02d}"


def day_month(day: date, with_year: bool = False) -> str:
    number = "1er" if day.day == 1 else str(day.day)  # French writes the first of the month "1er"
    text = f"{number} {MONTH_NAMES[day.month - 1]}"
    return f"{text} {day.year}" if with_year else text


def format_french_date(day: date, *, with_year: bool = False) -> str:
    """"jeudi 12 mars" (or "jeudi 12 mars 2027"); no locale, so it is French on every server."""
    return f"{WEEKDAY_NAMES[day.weekday()]} {day_month(day, with_year)}"


def format_french_datetime(dt: datetime, tz: ZoneInfo, *, with_year: bool = False,
                           now: datetime | None = None) -> str:
    """"jeudi 12 mars à 14h30", in the CPTS time zone `tz`. The DateTime argument reads it back.

    With `now`, the year is shown when it is not the current one ("samedi 2 janvier 2027 à 9h"
    written on 31 December): a date without its year would be read in the wrong year.
    """
    if dt.tzinfo is None:
        raise ValueError("format_french_datetime expects an aware datetime")
    local = dt.astimezone(tz)
    if now is not None:
        with_year = with_year or local.year != now.astimezone(tz).year
    return f"{format_french_date(local.date(), with_year=with_year)} à {format_clock(local.time())}"
