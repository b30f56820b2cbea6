"""Typed arguments for French chat commands: tokenizer, argument types, French formatting.

Pure code, no I/O. The command registry tokenizes a message, pulls out `clé=valeur` options
with split_options(), then lets each parameter type consume tokens from a position. Every
mistake the clinician can make ends as an ArgumentError whose French message quotes what was
typed, because the bot answers in a chat and the reader must see at once what to correct.

Conventions worth knowing:
- Instants are aware UTC datetimes; what users type is read in ParseContext.tz (Europe/Paris).
- Matching of words is accent- and case-insensitive (normalize), since phone keyboards and
  hurried typing drop accents ("apres-midi", "Reponse=4H").
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from fractions import Fraction
from typing import Any, Mapping
from zoneinfo import ZoneInfo

from domain.clock import PARIS
from domain.markup import literal, unmark
from domain.text import (
    MONTH_NAMES,
    WEEKDAY_NAMES,
    day_month,
    format_clock,
    format_duree,
    format_french_date,
    format_french_datetime,
    normalize,
)

__all__ = [
    "ArgType", "ArgumentError", "Choice", "DateTime", "Duration", "Integer", "ParseContext", "Slot",
    "Text", "TimeSlot", "Token", "Word", "parse_option_value", "split_options", "tokenize",
]




class ArgumentError(Exception):
    """Bad user input. `message` is French, names the offending input, and is shown as is.

    `markup` is the same text with the user's input wrapped in literal() (for render())."""

    def __init__(self, message: str, *, final: bool = False):
        super().__init__(unmark(message))
        self.message = unmark(message)
        self.markup = message
        self.final = final  # the word is of this type but wrong: an optional parameter does not pass it on


# --- tokens ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Token:
    """One argument. `text` is unquoted; `quoted` is True only when the whole token was quoted.

    A `clé="valeur avec espaces"` token is glued: Token("clé=valeur avec espaces", quoted=False).
    It stays unquoted so that split_options still recognises it as an option, while a fully
    quoted `"a=b"` is a literal and never taken for an option.
    """

    text: str
    quoted: bool = False


# Opening quote -> the closing characters it accepts. Phones auto-correct only one side of a
# pair sometimes, so straight and curly double quotes close each other.
_QUOTE_PAIRS = {'"': '"”', "“": '"”', "«": "»"}


def tokenize(text: str) -> list[Token]:
    """Split on whitespace; "…", “…” and « … » group words. Apostrophes are ordinary letters.

    Quotes glued to other characters concatenate like in a shell (`commune="Saint Michel"` is
    one token). Whitespace just inside the quotes is dropped, since French typography puts
    (non-breaking) spaces inside guillemets; inner spacing is kept. A quote that is never
    closed raises ArgumentError rather than guessing where the argument ends.
    """
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        parts: list[str] = []
        has_bare, has_quoted = False, False
        while i < n and not text[i].isspace():
            opener = text[i]
            if opener in _QUOTE_PAIRS:
                closers = _QUOTE_PAIRS[opener]
                end = next((j for j in range(i + 1, n) if text[j] in closers), -1)
                if end == -1:
                    raise ArgumentError(_unterminated_quote_message(opener, text[i + 1:]))
                parts.append(text[i + 1:end].strip())
                has_quoted = True
                i = end + 1
            else:
                start = i
                while i < n and not text[i].isspace() and text[i] not in _QUOTE_PAIRS:
                    i += 1
                parts.append(text[start:i])
                has_bare = True
        tokens.append(Token("".join(parts), quoted=has_quoted and not has_bare))
    return tokens


def _unterminated_quote_message(opener: str, rest: str) -> str:
    closer = _QUOTE_PAIRS[opener][0]
    excerpt = " ".join(rest.split())
    if not excerpt:
        return f"un guillemet {opener} en fin de message n'est pas refermé"
    if len(excerpt) > 30:
        excerpt = excerpt[:30].rstrip() + "…"
    return f"le guillemet {opener} ouvert devant « {literal(excerpt)} » n'est pas refermé (ajoutez {closer})"


def _phrase_key(text: str) -> str:
    """normalize(), with hyphens as spaces and runs of spaces collapsed: "après-midi" == "apres  midi"."""
    return " ".join(normalize(text).replace("-", " ").split())


def _typed(tokens: list[Token], start: int, end: int) -> str:
    return " ".join(t.text for t in tokens[start:end])


# --- context and base type -----------------------------------------------------------------

@dataclass
class ParseContext:
    """When "now" is (an aware instant from the injectable clock), the users' time zone, and the
    request types (data/flows.yaml) the CPTS runs, for arguments that name one."""

    now: datetime
    tz: ZoneInfo = PARIS
    flows: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.now.tzinfo is None or self.now.utcoffset() is None:
            raise ValueError("ParseContext.now must be timezone-aware")

    @property
    def today(self) -> date:
        """The users' calendar date, which differs from the UTC date around midnight."""
        return self.now.astimezone(self.tz).date()


def _require_ctx(ctx: ParseContext | None) -> ParseContext:
    if ctx is None:
        raise ValueError("this argument type needs a ParseContext (pass ctx=...)")
    return ctx


class ArgType:
    """Base of argument types. Subclasses set the class defaults and implement parse()."""

    placeholder: str = "<valeur>"
    description: str = "une valeur"
    examples: list[str] = []

    def __init__(self, *, placeholder: str | None = None, description: str | None = None,
                 examples: list[str] | None = None):
        # Instance copies so that a command can rename its parameter in usage lines.
        self.placeholder = placeholder if placeholder is not None else type(self).placeholder
        self.description = description if description is not None else type(self).description
        self.examples = list(examples if examples is not None else type(self).examples)

    def parse(self, tokens: list[Token], pos: int, ctx: ParseContext | None = None) -> tuple[object, int]:
        """Consume tokens from tokens[pos:] and return (value, new_pos); never read past the value."""
        raise NotImplementedError

    def choices(self, ctx: ParseContext | None = None) -> list[tuple[str, str]] | None:
        """The values a closed set offers, as (value typed, label shown), for a poll; None if open."""
        return None

    def _token_at(self, tokens: list[Token], pos: int) -> Token:
        if pos >= len(tokens):
            raise ArgumentError(f"il manque {self.placeholder} ({self.description})")
        return tokens[pos]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(placeholder={self.placeholder!r})"


# --- simple types ------------------------------------------------------------------------

class Word(ArgType):
    """One token, as typed (a quoted group counts as one word)."""

    placeholder = "<mot>"
    description = "un mot (plusieurs mots entre guillemets)"
    examples = ["infirmier"]

    def parse(self, tokens, pos, ctx=None):
        return self._token_at(tokens, pos).text, pos + 1


_NUMBER_SIGNS = ("n°", "no", "#")  # "n°3", "nº3" (º folds to o), "#3"
_INTEGER = re.compile(r"(?:n°|no|#)?([+-]?[0-9]+)")


class Integer(ArgType):
    """A whole number; "n°3", "n° 3" and "#3" are read as 3 (how patients are numbered aloud)."""

    placeholder = "<nombre>"
    description = "un nombre entier"
    examples = ["3"]

    def __init__(self, min: int | None = None, max: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.min, self.max = min, max
        if "description" not in kwargs and self._bounds():
            self.description = f"un nombre entier ({self._bounds()})"

    def _bounds(self) -> str:
        if self.min is not None and self.max is not None:
            return f"entre {self.min} et {self.max}"
        if self.min is not None:
            return f"au moins {self.min}"
        return f"au plus {self.max}" if self.max is not None else ""

    def parse(self, tokens, pos, ctx=None):
        token = self._token_at(tokens, pos)
        word, end = normalize(token.text), pos + 1
        if word in _NUMBER_SIGNS and end < len(tokens):  # "n° 3"
            word, end = normalize(tokens[end].text), end + 1
        match = _INTEGER.fullmatch(word)
        typed = _typed(tokens, pos, end)
        if not match:
            raise ArgumentError(f"« {literal(typed)} » n'est pas un nombre entier")
        digits = match.group(1)
        if len(digits.lstrip("+-")) > 12:
            raise ArgumentError(f"« {literal(typed)} » : nombre trop grand")
        value = int(digits)
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise ArgumentError(f"« {literal(typed)} » : le nombre doit être {self._bounds()}")
        return value, end


class Choice(ArgType):
    """One of a fixed set: {canonical: [aliases]}; returns the canonical value.

    Matching uses normalize() on the canonical name and on every alias; aliases may have
    several words ("après midi"), typed as one quoted token or as separate words.
    """

    def __init__(self, options: dict[str, list[str]], **kwargs):
        super().__init__(**kwargs)
        if not options:
            raise ValueError("Choice needs at least one option")
        self.options = {canonical: list(aliases) for canonical, aliases in options.items()}
        self._index: dict[str, str] = {}
        for canonical, aliases in self.options.items():
            for name in (canonical, *aliases):
                existing = self._index.setdefault(_phrase_key(name), canonical)
                if existing != canonical:
                    raise ValueError(f"alias {name!r} used for both {existing!r} and {canonical!r}")
        self._max_words = max(len(key.split()) for key in self._index)
        names = list(self.options)
        if "placeholder" not in kwargs:
            self.placeholder = "<" + "|".join(names) + ">"
        if "description" not in kwargs:
            self.description = "au choix : " + ", ".join(names)
        if "examples" not in kwargs:
            self.examples = names[:2]

    def choices(self, ctx=None):
        return [(name, name) for name in self.options]

    def parse(self, tokens, pos, ctx=None):
        token = self._token_at(tokens, pos)
        # Longest alias first, so that "après midi" is not cut after "après".
        for width in range(min(self._max_words, len(tokens) - pos), 0, -1):
            key = _phrase_key(_typed(tokens, pos, pos + width))
            if key in self._index:
                return self._index[key], pos + width
        message = f"« {literal(token.text)} » n'est pas une valeur possible ; valeurs possibles : {', '.join(self.options)}"
        close = difflib.get_close_matches(_phrase_key(token.text), list(self._index), n=1, cutoff=0.75)
        if close:
            message += f" (vouliez-vous dire « {self._index[close[0]]} » ?)"
        raise ArgumentError(message)


class Text(ArgType):
    """The rest of the message, words joined by one space (quoted groups keep their spacing).

    The placeholder starts with "<comment" because the registry prints such parameters last.
    """

    placeholder = "<commentaire>"
    description = "texte libre jusqu'à la fin du message"
    examples = ["pansement quotidien, plaie au talon"]

    def __init__(self, min_length: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.min_length = min_length

    def parse(self, tokens, pos, ctx=None):
        text = _typed(tokens, pos, len(tokens)).strip()
        if len(text) < self.min_length:
            if not text:
                raise ArgumentError("le commentaire est obligatoire")
            raise ArgumentError(f"« {literal(text)} » : le commentaire est trop court (au moins {self.min_length} caractères)")
        return text, max(pos, len(tokens))


# --- durations -----------------------------------------------------------------------------

_UNIT_MINUTES = {"sem": 7 * 24 * 60, "j": 24 * 60, "h": 60, "min": 1}
_UNIT_ALIASES = {
    "min": "min", "mn": "min", "m": "min", "mins": "min", "minute": "min", "minutes": "min",
    "h": "h", "heure": "h", "heures": "h",
    "j": "j", "jour": "j", "jours": "j",
    "sem": "sem", "semaine": "sem", "semaines": "sem",
}
# Calendar units have no fixed length; refusing them beats silently picking 30 or 365 days.
_CALENDAR_UNITS = {"mois", "an", "ans", "annee", "annees"}
_UNIT_ORDER = ("sem", "j", "h", "min")
_SEGMENT = re.compile(r"([0-9]+(?:[.,][0-9]+)?)([a-z]*)")
_MAX_DIGITS = 9  # keeps Fraction/timedelta arithmetic cheap and below timedelta's limits


class Duration(ArgType):
    """A positive length of time, as a timedelta.

    Forms: 30min, 30 min, 15m, 2h, 2 h, 1h30, 1,5h, 4j, 4 jours, 1sem, 2 semaines, and the
    output of format_duree() ("3 jours 12 h", "2 h 30"). Units must come from largest to smallest; a
    bare two-digit number right after hours means minutes ("1h30", "1 h 05"). A number alone
    is refused: "4" could be hours or days and the difference matters for care.
    The value must be a whole number of minutes.
    """

    placeholder = "<durée>"
    description = "durée : 30min, 2h, 4j, 1sem"
    examples = ["2h", "4j"]

    def __init__(self, min: timedelta | None = None, max: timedelta | None = None, **kwargs):
        super().__init__(**kwargs)
        self.min, self.max = min, max

    def parse(self, tokens, pos, ctx=None):
        first = self._token_at(tokens, pos)
        head = normalize(first.text)
        if head[:1] in "-+" and head[1:2].isdigit():
            if head[0] == "-":
                raise ArgumentError(f"« {literal(first.text)} » : la durée doit être positive")
            head = head[1:]
        if not head[:1].isdigit():
            raise ArgumentError(f"« {literal(first.text)} » n'est pas une durée (exemples : 30min, 2h, 4j, 1sem)")

        total, last_unit, i = Fraction(0), None, pos
        while i < len(tokens):
            step = self._read_step(tokens, i, last_unit, strict=(i == pos))
            if step is None:
                break
            segments, i = step
            for number, unit in segments:
                total += number * _UNIT_MINUTES[unit]
                last_unit = unit
        typed = _typed(tokens, pos, i)

        if total <= 0:
            raise ArgumentError(f"« {literal(typed)} » : la durée doit être supérieure à zéro")
        if total.denominator != 1:
            raise ArgumentError(f"« {literal(typed)} » : la durée doit tomber sur une minute entière")
        try:
            value = timedelta(minutes=int(total))
        except OverflowError:
            raise ArgumentError(f"« {literal(typed)} » : durée trop longue") from None
        if self.min is not None and value < self.min:
            raise ArgumentError(f"« {literal(typed)} » : la durée minimale est {format_duree(self.min)}")
        if self.max is not None and value > self.max:
            raise ArgumentError(f"« {literal(typed)} » : la durée maximale est {format_duree(self.max)}")
        return value, i

    @staticmethod
    def _read_step(tokens: list[Token], i: int, last_unit: str | None, *, strict: bool):
        """One token (or number + unit word) of the duration, as [(number, unit)], and the next index.

        The first step (`strict`) raises on anything malformed. Later steps only continue the
        duration when they fit cleanly, and otherwise return None so the words are left to the
        next argument.
        """
        token = tokens[i]
        if token.quoted and not strict:
            return None
        word = normalize(token.text).lstrip("+") if strict else normalize(token.text)

        def fail(message: str):
            if strict:
                raise ArgumentError(message)
            return None

        raw: list[tuple[str, str]] = []
        at = 0
        while at < len(word):
            match = _SEGMENT.match(word, at)
            if not match:
                return fail(f"« {literal(token.text)} » n'est pas une durée (exemples : 30min, 2h, 4j, 1sem)")
            raw.append(match.groups())
            at = match.end()
        if not raw:
            return None

        consumed = 1
        number, unit_word = raw[-1]
        if not unit_word:
            next_word = normalize(tokens[i + 1].text) if i + 1 < len(tokens) else ""
            previous_unit = _UNIT_ALIASES.get(raw[-2][1]) if len(raw) > 1 else last_unit
            if len(raw) == 1 and next_word in _UNIT_ALIASES and not tokens[i + 1].quoted:
                raw[-1], consumed = (number, next_word), 2  # "30 min"
            elif len(raw) == 1 and next_word in _CALENDAR_UNITS:
                return fail(_calendar_unit_message(f"{token.text} {tokens[i + 1].text}"))
            elif previous_unit == "h" and re.fullmatch(r"[0-9]{2}", number):
                raw[-1] = (number, "min")  # "1h30", "1 h 30"
            elif previous_unit == "h":
                return fail(f"« {literal(token.text)} » : écrivez les minutes sur deux chiffres, par exemple 1h05")
            else:
                return fail(f"« {literal(token.text)} » : précisez l'unité, par exemple {number}h ou {number}j")

        segments: list[tuple[Fraction, str]] = []
        for number, unit_word in raw:
            unit = _UNIT_ALIASES.get(unit_word)
            if unit is None:
                if unit_word in _CALENDAR_UNITS:
                    return fail(_calendar_unit_message(token.text))
                return fail(f"« {literal(token.text)} » : unité « {literal(unit_word)} » inconnue ; utilisez min, h, j ou sem")
            if len(number.replace(",", "").replace(".", "")) > _MAX_DIGITS:
                return fail(f"« {literal(token.text)} » : durée trop longue")
            if last_unit is not None and _UNIT_ORDER.index(unit) <= _UNIT_ORDER.index(last_unit):
                return fail(f"« {literal(token.text)} » : écrivez les unités de la plus grande à la plus petite, par exemple 2h30")
            segments.append((Fraction(number.replace(",", ".")), unit))
            last_unit = unit
        return segments, i + consumed


def _calendar_unit_message(typed: str) -> str:
    return (f"« {literal(typed)} » : les mois et les années n'ont pas une durée fixe ; "
            f"exprimez la durée en jours ou en semaines, par exemple 12sem")


# --- dates and times -----------------------------------------------------------------------

_RELATIVE_DAYS = {"aujourd'hui": 0, "aujourdhui": 0, "auj": 0, "demain": 1, "apres-demain": 2}
_WEEKDAY_INDEX = {normalize(name): index for index, name in enumerate(WEEKDAY_NAMES)}
_MONTH_INDEX = {normalize(name): index + 1 for index, name in enumerate(MONTH_NAMES)} | {
    "janv": 1, "fev": 2, "fevr": 2, "avr": 4, "juil": 7, "sept": 9, "oct": 10, "nov": 11, "dec": 12,
}
_NUMERIC_DATE = re.compile(r"([0-9]{1,2})/([0-9]{1,2})(?:/([0-9]+))?")
_DATE_LIKE = re.compile(r"[0-9]+/[0-9/]*")
_CLOCK = re.compile(r"([0-9]{1,2})(?:h([0-9]{2})?|:([0-9]{2}))")
_CLOCK_LIKE = re.compile(r"[0-9]+[h:][0-9]*")
_CONNECTORS = {"a"}  # "à", once accents are stripped; "12/03 à 14h30"
DATE_ONLY_HOUR = time(9, 0)  # date_only_ok: a bare date means that day at 9h, a sensible start of rounds


@dataclass(frozen=True)
class _DayRef:
    day: date
    roll_weekly: bool  # a bare weekday naming today: if the moment is already past, mean next week


def _make_date(day: int, month: int, year: int | None, typed: str, today: date, allow_past: bool) -> date:
    invalid = f"« {literal(typed)} » n'est pas une date valide"
    if not 1 <= month <= 12:
        raise ArgumentError(f"{invalid} (il n'y a que 12 mois)")
    if not 1 <= day <= 31:
        raise ArgumentError(f"{invalid} (un mois compte au plus 31 jours)")
    if year is None:
        year = _infer_year(day, month, today, allow_past)
    try:
        return date(year, month, day)
    except ValueError:
        if month == 2 and day == 29:
            raise ArgumentError(f"{invalid} (il n'y a pas de 29 février en {year})") from None
        raise ArgumentError(f"{invalid} ({MONTH_NAMES[month - 1]} n'a pas {day} jours)") from None


def _infer_year(day: int, month: int, today: date, allow_past: bool) -> int:
    """The year of a date typed without one.

    For future events: this year unless the date is more than one day ago, then next year
    (yesterday stays this year so that the past-instant check can say so instead of silently
    jumping a year). When the past is allowed (recording what happened), the nearest one.
    """
    if allow_past:
        candidates = []
        for year in (today.year - 1, today.year, today.year + 1):
            try:
                candidates.append(date(year, month, day))
            except ValueError:
                continue
        if candidates:
            return min(candidates, key=lambda d: abs(d - today)).year
    yesterday = today - timedelta(days=1)
    return yesterday.year if (month, day) >= (yesterday.month, yesterday.day) else yesterday.year + 1


def _year_from_text(text: str, typed: str) -> int:
    if len(text) == 2:
        return 2000 + int(text)
    if len(text) == 4:
        return int(text)
    raise ArgumentError(f"« {literal(typed)} » n'est pas une date valide (l'année s'écrit 27 ou 2027)")


def _read_explicit_date(tokens: list[Token], i: int, today: date, allow_past: bool) -> tuple[date | None, int]:
    """"12/03", "12/03/27", "12/03/2027", "12 mars", "1er mars 2027"."""
    if i >= len(tokens):
        return None, i
    word = normalize(tokens[i].text)
    match = _NUMERIC_DATE.fullmatch(word)
    if match:
        day, month, year = match.groups()
        typed = tokens[i].text
        parsed_year = _year_from_text(year, typed) if year is not None else None
        return _make_date(int(day), int(month), parsed_year, typed, today, allow_past), i + 1
    if _DATE_LIKE.fullmatch(word):
        raise ArgumentError(f"« {literal(tokens[i].text)} » n'est pas une date valide (écrivez jj/mm ou jj/mm/aaaa)")
    day_number = 1 if word == "1er" else int(word) if re.fullmatch(r"[0-9]{1,2}", word) else None
    if day_number is None or i + 1 >= len(tokens):
        return None, i
    month = _MONTH_INDEX.get(normalize(tokens[i + 1].text).rstrip("."))
    if month is None:
        return None, i
    end, year = i + 2, None
    if end < len(tokens) and re.fullmatch(r"[0-9]{4}", tokens[end].text):
        year, end = int(tokens[end].text), end + 1
    return _make_date(day_number, month, year, _typed(tokens, i, end), today, allow_past), end


def _read_day(tokens: list[Token], i: int, ctx: ParseContext, allow_past: bool) -> tuple[_DayRef | None, int]:
    """The optional day part of a date: relative word, weekday, or explicit date."""
    if i >= len(tokens):
        return None, i
    today = ctx.today
    word = normalize(tokens[i].text)
    if word == "le":  # "le 12/03", "le jeudi 12 mars"
        ref, end = _read_day(tokens, i + 1, ctx, allow_past)
        return (ref, end) if ref is not None else (None, i)
    if word in _RELATIVE_DAYS:
        return _DayRef(today + timedelta(days=_RELATIVE_DAYS[word]), False), i + 1
    if word == "apres" and i + 1 < len(tokens) and normalize(tokens[i + 1].text) == "demain":
        return _DayRef(today + timedelta(days=2), False), i + 2
    if word in _WEEKDAY_INDEX:
        weekday = _WEEKDAY_INDEX[word]
        explicit, end = _read_explicit_date(tokens, i + 1, today, allow_past)
        if explicit is not None:
            # "jeudi 12/03": both were typed, so a mismatch is a typo we must not guess around.
            if explicit.weekday() != weekday:
                raise ArgumentError(
                    f"« {literal(_typed(tokens, i, end))} » : le {day_month(explicit, True)} est un "
                    f"{WEEKDAY_NAMES[explicit.weekday()]}, pas un {WEEKDAY_NAMES[weekday]}")
            return _DayRef(explicit, False), end
        ahead = (weekday - today.weekday()) % 7
        end = i + 1
        if end < len(tokens) and normalize(tokens[end].text) == "prochain":
            end += 1
            ahead = ahead or 7  # "jeudi prochain" said on a Thursday means next week
        return _DayRef(today + timedelta(days=ahead), roll_weekly=(ahead == 0)), end
    explicit, end = _read_explicit_date(tokens, i, today, allow_past)
    return (_DayRef(explicit, False), end) if explicit is not None else (None, i)


def _clock_from_text(word: str, typed: str) -> time | None:
    """A normalized time of day ("14h30", "9:30", "14h", "midi"); None if it is not one.

    Raises when the word is clearly meant as a time but impossible (25h, 14h75, 9h5).
    """
    if word == "midi":
        return time(12, 0)
    match = _CLOCK.fullmatch(word)
    if match is None:
        if _CLOCK_LIKE.fullmatch(word):
            hour_text, minute_text = re.split(r"[h:]", word, maxsplit=1)
            if int(hour_text) > 23:
                raise ArgumentError(f"« {literal(typed)} » n'est pas une heure valide (les heures vont de 0h à 23h)")
            raise ArgumentError(f"« {literal(typed)} » n'est pas une heure valide (écrivez les minutes sur deux chiffres, "
                                f"par exemple {int(hour_text)}h05)")
        return None
    hour = int(match.group(1))
    minute = int(match.group(2) or match.group(3) or 0)
    if hour > 23:
        raise ArgumentError(f"« {literal(typed)} » n'est pas une heure valide (les heures vont de 0h à 23h)")
    if minute > 59:
        raise ArgumentError(f"« {literal(typed)} » n'est pas une heure valide (les minutes vont de 00 à 59)")
    return time(hour, minute)


def _read_clock(tokens: list[Token], i: int) -> tuple[time | None, int]:
    """An optional time of day, possibly after "à"."""
    if i >= len(tokens):
        return None, i
    word = normalize(tokens[i].text)
    if word in _CONNECTORS and i + 1 < len(tokens):
        clock = _clock_from_text(normalize(tokens[i + 1].text), tokens[i + 1].text)
        return (clock, i + 2) if clock is not None else (None, i)
    clock = _clock_from_text(word, tokens[i].text)
    return (clock, i + 1) if clock is not None else (None, i)


def _localize(day: date, clock: time, tz: ZoneInfo, typed: str) -> datetime:
    """The UTC instant of a wall-clock time in tz.

    A time skipped by the spring change does not exist: refuse it rather than shift it. A time
    repeated in autumn takes its first occurrence (fold=0, still summer time).
    """
    naive = datetime.combine(day, clock)
    instant = naive.replace(tzinfo=tz).astimezone(timezone.utc)
    if instant.astimezone(tz).replace(tzinfo=None) != naive:
        raise ArgumentError(f"« {literal(typed)} » : {format_clock(clock)} n'existe pas le {format_french_date(day)} "
                            f"(changement d'heure) ; choisissez une autre heure")
    return instant


def _is_past(instant: datetime, now: datetime) -> bool:
    # Minute resolution: "14h30" typed at 14:30:20 is still "now", not the past.
    return instant < now.replace(second=0, microsecond=0)


def _shows_year(day: date, ctx: ParseContext) -> bool:
    return day.year != ctx.today.year


class DateTime(ArgType):
    """A moment typed in French, as an aware UTC datetime.

    Forms (read in ctx.tz, relative to ctx.now): "12/03 14h30", "12/03/2027 9h", "12/03/27 9h",
    "12/03 à 14h30", "le 12 mars à 14h", "demain 9h", "aujourd'hui 14h", "après-demain 10h30",
    "lundi 10h" (next occurrence; today only if the time is still ahead), "lundi prochain 10h",
    "jeudi 12/03 9h" (weekday checked against the date), "14h30", "9:30", "midi".

    A date without a time is refused, unless date_only_ok: then it means that day at 9h local,
    and the past check compares days only (so "aujourd'hui" stays valid after 9h).
    """

    placeholder = "<date>"
    description = "date et heure : demain 9h, 12/03 14h30, lundi 10h"
    examples = ["demain 9h", "12/03 14h30"]

    def __init__(self, allow_past: bool = False, date_only_ok: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.allow_past = allow_past
        self.date_only_ok = date_only_ok

    def parse(self, tokens, pos, ctx=None):
        ctx = _require_ctx(ctx)
        first = self._token_at(tokens, pos)
        day_ref, after_day = _read_day(tokens, pos, ctx, self.allow_past)
        clock, end = _read_clock(tokens, after_day)
        if day_ref is None and clock is None:
            raise ArgumentError(f"« {literal(first.text)} » n'est pas une date (exemples : demain 9h, 12/03 14h30, lundi 10h)")
        if clock is None:
            typed = _typed(tokens, pos, after_day)
            if not self.date_only_ok:
                raise ArgumentError(f"« {literal(typed)} » : précisez l'heure, par exemple « {literal(typed)} 9h »")
            if not self.allow_past and day_ref.day < ctx.today:
                raise ArgumentError(f"« {literal(typed)} » est dans le passé ({format_french_date(day_ref.day, with_year=True)})")
            return _localize(day_ref.day, DATE_ONLY_HOUR, ctx.tz, typed), after_day
        return _resolve_moment(day_ref, clock, _typed(tokens, pos, end), ctx, self.allow_past), end


def _resolve_moment(day_ref: _DayRef | None, clock: time, typed: str, ctx: ParseContext, allow_past: bool) -> datetime:
    day = day_ref.day if day_ref is not None else ctx.today
    instant = _localize(day, clock, ctx.tz, typed)
    if day_ref is not None and day_ref.roll_weekly and _is_past(instant, ctx.now):
        day += timedelta(days=7)
        instant = _localize(day, clock, ctx.tz, typed)
    if not allow_past and _is_past(instant, ctx.now):
        if day_ref is None:
            raise ArgumentError(f"« {literal(typed)} » : {format_clock(clock)} est déjà passé aujourd'hui ; "
                                f"précisez le jour, par exemple « demain {literal(typed)} »")
        raise ArgumentError(f"« {literal(typed)} » est dans le passé ({format_french_datetime(instant, ctx.tz, with_year=True)})")
    return instant


# --- time slots ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Slot:
    """When an appointment happens: a precise moment (end None) or a window [start, end)."""

    start: datetime
    end: datetime | None
    label: str  # French display: "jeudi 12 mars à 14h30", "jeudi 12 mars, 14h–16h"

    @property
    def kind(self) -> str:
        return "Date et horaire" if self.end is None else "Tranche horaire"


# Named parts of the day, as commonly meant for home visits.
_PERIODS = {
    "matin": (time(8), time(12), "matin"),
    "matinee": (time(8), time(12), "matin"),
    "apres midi": (time(14), time(18), "après-midi"),
    "aprem": (time(14), time(18), "après-midi"),
    "soir": (time(18), time(21), "soir"),
    "soiree": (time(18), time(21), "soir"),
}
_THIS = {"ce", "cet", "cette"}  # "ce matin", "cet après-midi": today
_RANGE_PREFIXES = {"de", "entre", "a"}  # "a" is "à" without its accent
_RANGE_SEPARATORS = {"-", "a", "et"}  # "14h - 16h", "14h à 16h", "entre 14h et 16h"
_RANGE_TOKEN = re.compile(r"([0-9][0-9h:]*)-([0-9][0-9h:]*)")


def _read_period(tokens: list[Token], i: int, with_this: bool) -> tuple[tuple[time, time, str] | None, int]:
    start = i
    if with_this and i < len(tokens) and normalize(tokens[i].text) in _THIS:
        i += 1
    for width in (2, 1):
        if i + width <= len(tokens):
            key = _phrase_key(_typed(tokens, i, i + width))
            if key in _PERIODS:
                return _PERIODS[key], i + width
    return None, start


def _read_clock_range(tokens: list[Token], i: int) -> tuple[tuple[time, time] | None, int]:
    """"14h-16h", "14-16h", "14h30–16h", "14h - 16h", "de 14h à 16h", "entre 14h et 16h"."""
    start = i
    if i < len(tokens) and normalize(tokens[i].text) in _RANGE_PREFIXES:
        i += 1
    if i >= len(tokens):
        return None, start
    word = normalize(tokens[i].text)
    match = _RANGE_TOKEN.fullmatch(word)
    if match:
        left, right = match.groups()
        if left.isdigit() and right.isdigit():
            return None, start  # "8-12" could be anything; a range needs at least one "h"
        # "14-16h": the unit written once applies to both ends.
        left = left + "h" if left.isdigit() else left
        right = right + "h" if right.isdigit() else right
        typed = tokens[i].text
        begin, finish = _clock_from_text(left, typed), _clock_from_text(right, typed)
        if begin is not None and finish is not None:
            return (begin, finish), i + 1
        return None, start
    if i + 2 < len(tokens) and normalize(tokens[i + 1].text) in _RANGE_SEPARATORS:
        begin = _clock_from_text(word, tokens[i].text)
        finish = _clock_from_text(normalize(tokens[i + 2].text), tokens[i + 2].text) if begin else None
        if begin is not None and finish is not None:
            return (begin, finish), i + 3
    return None, start


class TimeSlot(ArgType):
    """A Slot: a DateTime moment, or a window on a day.

    Windows: "matin" (8h–12h), "après-midi" (14h–18h), "soir" (18h–21h), "14h-16h", each
    optionally after a day ("demain matin", "jeudi 14h-16h", "12/03 8h-12h"). Without a day
    it is today; a window is refused only once it has entirely passed.
    """

    placeholder = "<horaire>"
    description = "horaire : demain 9h, 12/03 14h30, demain matin, jeudi 14h-16h"
    examples = ["demain 9h", "jeudi 14h-16h"]

    def __init__(self, allow_past: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.allow_past = allow_past

    def parse(self, tokens, pos, ctx=None):
        ctx = _require_ctx(ctx)
        first = self._token_at(tokens, pos)
        day_ref, after_day = _read_day(tokens, pos, ctx, self.allow_past)

        period, end = _read_period(tokens, after_day, with_this=day_ref is None)
        if period is not None:
            begin, finish, name = period
            window = f"{name} ({format_clock(begin)}–{format_clock(finish)})"
            return self._window(day_ref, begin, finish, window, _typed(tokens, pos, end), ctx), end

        clock_range, end = _read_clock_range(tokens, after_day)
        if clock_range is not None:
            begin, finish = clock_range
            window = f"{format_clock(begin)}–{format_clock(finish)}"
            return self._window(day_ref, begin, finish, window, _typed(tokens, pos, end), ctx), end

        clock, end = _read_clock(tokens, after_day)
        if clock is None:
            if day_ref is None:
                raise ArgumentError(f"« {literal(first.text)} » n'est pas un horaire "
                                    f"(exemples : demain 9h, demain matin, jeudi 14h-16h)")
            typed = _typed(tokens, pos, after_day)
            raise ArgumentError(f"« {literal(typed)} » : précisez une heure ou une tranche horaire, "
                                f"par exemple « {literal(typed)} 9h », « {literal(typed)} matin » ou « {literal(typed)} 14h-16h »")
        instant = _resolve_moment(day_ref, clock, _typed(tokens, pos, end), ctx, self.allow_past)
        local_day = instant.astimezone(ctx.tz).date()
        return Slot(instant, None, format_french_datetime(instant, ctx.tz, with_year=_shows_year(local_day, ctx))), end

    def _window(self, day_ref: _DayRef | None, begin: time, finish: time, window: str, typed: str,
                ctx: ParseContext) -> Slot:
        if finish <= begin:
            raise ArgumentError(f"« {literal(typed)} » : la fin doit être après le début")
        day = day_ref.day if day_ref is not None else ctx.today
        start, end = _localize(day, begin, ctx.tz, typed), _localize(day, finish, ctx.tz, typed)
        if day_ref is not None and day_ref.roll_weekly and _is_past(end, ctx.now):
            day += timedelta(days=7)
            start, end = _localize(day, begin, ctx.tz, typed), _localize(day, finish, ctx.tz, typed)
        if not self.allow_past and _is_past(end, ctx.now):
            raise ArgumentError(f"« {literal(typed)} » est déjà passé ({format_french_date(day, with_year=_shows_year(day, ctx))}, "
                                f"{window}) ; précisez le jour, par exemple « demain {window.split(' (')[0]} »")
        label = f"{format_french_date(day, with_year=_shows_year(day, ctx))}, {window}"
        return Slot(start, end, label)


# --- key=value options -----------------------------------------------------------------------

_OPTION = re.compile(r"([^\W\d_][\w-]*)=(.*)", re.DOTALL)


def split_options(tokens: list[Token], known: dict[str, ArgType], *, passthrough_unknown: bool = False,
                  ctx: ParseContext | None = None) -> tuple[list[Token], dict[str, object]]:
    """Pull `clé=valeur` tokens out of the arguments, wherever they are, and parse their values.

    Keys match with normalize() ("réponse=4h" and "Reponse=4h" give "reponse"); the result is
    keyed by the spelling used in `known`. A quoted value may be glued (`commune="Saint Michel"`)
    or follow a bare `commune=`. Fully quoted tokens are never options. An unknown key is an
    error, unless passthrough_unknown: then the token stays positional (measurements such as
    spo2=91 in a comment). `ctx` is needed only when an option is a date or a time slot.
    """
    by_key = {normalize(key): key for key in known}
    positional: list[Token] = []
    values: dict[str, object] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        match = None if token.quoted else _OPTION.fullmatch(token.text)
        if match is None:
            positional.append(token)
            continue
        typed_key, raw = match.groups()
        key = by_key.get(normalize(typed_key))
        if key is None:
            if passthrough_unknown:
                positional.append(token)
                continue
            raise ArgumentError(_unknown_option_message(typed_key, list(known)))
        if key in values:
            raise ArgumentError(f"l'option {key}= est donnée deux fois")
        if raw == "" and i < len(tokens) and tokens[i].quoted:  # commune= "Saint Michel"
            raw = tokens[i].text
            i += 1
        if not raw.strip():
            example = known[key].examples[0] if known[key].examples else "…"
            raise ArgumentError(f"« {literal(token.text)} » : il manque la valeur après le signe =, par exemple {key}={example}")
        values[key] = parse_option_value(key, known[key], raw, ctx)
    return positional, values


def parse_option_value(key: str, arg_type: ArgType, raw: str, ctx: ParseContext | None) -> object:
    """Parse an option value, which must be used entirely by its type.

    A quoted value with spaces is tried as one token (a commune name) and then as separate
    words (reponse="30 min", rdv="demain 9h").
    """
    attempts = [[Token(raw, quoted=" " in raw)]]
    words = raw.split()
    if len(words) > 1:
        attempts.append([Token(word) for word in words])
    error: ArgumentError | None = None
    for candidate in attempts:
        try:
            value, end = arg_type.parse(candidate, 0, ctx)
        except ArgumentError as exc:
            error = exc
            continue
        if end == len(candidate):
            return value
        error = ArgumentError(f"je ne comprends pas « {literal(_typed(candidate, end, len(candidate)))} » dans {key}=")
    assert error is not None
    raise ArgumentError(f"{error.markup} (option {key}=)")


def _unknown_option_message(typed_key: str, known: list[str]) -> str:
    if not known:
        return f"option inconnue « {literal(typed_key)}= » : cette commande n'accepte pas d'option clé=valeur"
    message = f"option inconnue « {literal(typed_key)}= » ; options possibles : {', '.join(k + '=' for k in known)}"
    close = difflib.get_close_matches(normalize(typed_key), [normalize(k) for k in known], n=1, cutoff=0.7)
    if close:
        spelled = next(k for k in known if normalize(k) == close[0])
        message += f" (vouliez-vous dire {spelled}= ?)"
    return message
