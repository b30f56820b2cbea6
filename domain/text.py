"""Text keys and durations shared by the rules data (parcours, flows): one implementation each."""
from __future__ import annotations

import re
import unicodedata
from datetime import timedelta
from typing import Any

_TYPO = str.maketrans({"’": "'", "‘": "'", "‐": "-", "‑": "-", "–": "-", "—": "-", "œ": "oe", "æ": "ae"})


def fold(text: str) -> str:
    """Case and accents folded, nothing else: "Périnatalité" → "perinatalite"."""
    folded = unicodedata.normalize("NFKD", str(text).casefold().translate(_TYPO))
    return "".join(c for c in folded if not unicodedata.combining(c))


def normalize_key(text: str) -> str:
    """Lookup key: case, accents and separators ignored ("sport-santé" == "Sport_Sante" == "sport sante")."""
    return " ".join(re.sub(r"[-_'/.]", " ", fold(text)).split())


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
    text = fold(value).replace(" ", "")
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
