"""Unit and property tests for commands.arguments (pure code: no Matrix, no database)."""
from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from commands.arguments import (
    ArgType,
    ArgumentError,
    Choice,
    DateTime,
    Duration,
    Integer,
    ParseContext,
    Slot,
    Text,
    TimeSlot,
    Token,
    Word,
    split_options,
    tokenize,
)
from domain.text import format_clock, format_duree, format_french_date, format_french_datetime, normalize

PARIS = ZoneInfo("Europe/Paris")
UTC = timezone.utc
# Thursday 12 March 2026, 10:00 in Paris (UTC+1): the FakeClock default.
NOW = datetime(2026, 3, 12, 9, 0, tzinfo=UTC)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def paris(*args) -> datetime:
    """A Paris wall-clock time as the UTC instant the parsers return."""
    return datetime(*args, tzinfo=PARIS).astimezone(UTC)


def parse(arg_type: ArgType, text: str, now: datetime = NOW):
    """(value, tokens consumed)."""
    return arg_type.parse(tokenize(text), 0, ParseContext(now))


def parse_all(arg_type: ArgType, text: str, now: datetime = NOW):
    tokens = tokenize(text)
    value, end = arg_type.parse(tokens, 0, ParseContext(now))
    assert end == len(tokens), f"{text!r}: consumed {end} of {len(tokens)} tokens"
    return value


def error(arg_type: ArgType, text: str, now: datetime = NOW) -> str:
    with pytest.raises(ArgumentError) as caught:
        parse(arg_type, text, now)
    return caught.value.message


# --- ArgumentError, tokenize, normalize ------------------------------------------------------

def test_argument_error_carries_its_message():
    err = ArgumentError("« x » n'est pas valide")
    assert err.message == "« x » n'est pas valide"
    assert str(err) == err.message


def test_tokenize_spec_example():
    assert tokenize('dec infirmier commune=Brétigny reponse=4h "pansement quotidien, plaie au talon"') == [
        Token("dec"), Token("infirmier"), Token("commune=Brétigny"), Token("reponse=4h"),
        Token("pansement quotidien, plaie au talon", quoted=True),
    ]


@pytest.mark.parametrize("text, expected", [
    ("l'infirmière passe aujourd'hui", ["l'infirmière", "passe", "aujourd'hui"]),
    ("l’infirmière", ["l’infirmière"]),
    ("  a \t b\n c  ", ["a", "b", "c"]),
    ("a\u00a0b", ["a", "b"]),  # non-breaking space separates too
    ("", []),
])
def test_tokenize_plain_words_and_apostrophes(text, expected):
    tokens = tokenize(text)
    assert [t.text for t in tokens] == expected
    assert not any(t.quoted for t in tokens)


@pytest.mark.parametrize("text, inner", [
    ('"plaie au talon"', "plaie au talon"),
    ("«plaie au talon»", "plaie au talon"),
    ("« plaie au talon »", "plaie au talon"),
    ("«\u00a0plaie au talon\u00a0»", "plaie au talon"),  # French typography: NBSP inside guillemets
    ("“plaie au talon”", "plaie au talon"),
    ('“plaie au talon"', "plaie au talon"),  # auto-correct changed only one side
    ('"deux  espaces"', "deux  espaces"),
    ('"l\'infirmière dit « oui »"', "l'infirmière dit « oui »"),
    ('""', ""),
])
def test_tokenize_quotes_group_words(text, inner):
    assert tokenize(text) == [Token(inner, quoted=True)]


def test_tokenize_glues_key_to_quoted_value():
    assert tokenize('x commune="Saint Michel" y') == [Token("x"), Token("commune=Saint Michel"), Token("y")]
    assert tokenize("commune=« Saint Michel »") == [Token("commune=Saint Michel", quoted=False)]


def test_tokenize_stray_closing_marks_are_letters():
    assert [t.text for t in tokenize("a » b”")] == ["a", "»", "b”"]


@pytest.mark.parametrize("text, shown", [
    ('dec infirmier "pansement quotidien', "« pansement quotidien »"),
    ("dec « pansement", "« pansement »"),
    ("dec “pansement", "« pansement »"),
])
def test_tokenize_unterminated_quote_is_a_french_error(text, shown):
    with pytest.raises(ArgumentError) as caught:
        tokenize(text)
    assert "guillemet" in caught.value.message
    assert "n'est pas refermé" in caught.value.message
    assert shown in caught.value.message


def test_tokenize_unterminated_quote_at_end():
    with pytest.raises(ArgumentError, match="en fin de message"):
        tokenize('dec "')


def test_tokenize_long_unterminated_excerpt_is_shortened():
    with pytest.raises(ArgumentError) as caught:
        tokenize('"' + "mot " * 40)
    assert "…" in caught.value.message
    assert len(caught.value.message) < 120


@pytest.mark.parametrize("word, expected", [
    ("Réponse", "reponse"),
    ("APRÈS-MIDI", "apres-midi"),
    ("après‑demain", "apres-demain"),  # non-breaking hyphen
    ("Aujourd’hui", "aujourd'hui"),
    ("Sœur", "soeur"),
    ("Infirmière", "infirmiere"),
    ("Straße", "strasse"),
])
def test_normalize(word, expected):
    assert normalize(word) == expected


# --- ParseContext ------------------------------------------------------------------------------

def test_parse_context_requires_an_aware_now():
    with pytest.raises(ValueError):
        ParseContext(datetime(2026, 3, 12, 9, 0))


def test_parse_context_today_is_the_local_date():
    assert ParseContext(utc(2026, 3, 12, 23, 30)).today == date(2026, 3, 13)
    assert ParseContext(utc(2026, 3, 12, 22, 59)).today == date(2026, 3, 12)


# --- Word, Integer, Choice, Text -----------------------------------------------------------------

def test_word_takes_one_token():
    assert parse(Word(), "infirmier demain") == ("infirmier", 1)
    assert parse(Word(), '"Saint Michel" x') == ("Saint Michel", 1)


def test_missing_argument_names_the_placeholder():
    with pytest.raises(ArgumentError, match="il manque <cible>"):
        Word(placeholder="<cible>").parse([], 0)


@pytest.mark.parametrize("text, value, consumed", [
    ("3", 3, 1), ("n°3", 3, 1), ("N°3", 3, 1), ("nº3", 3, 1), ("#3", 3, 1), ("n° 3", 3, 2),
    ("-2", -2, 1), ("007", 7, 1), ("3 demain", 3, 1),
])
def test_integer_forms(text, value, consumed):
    assert parse(Integer(), text) == (value, consumed)


@pytest.mark.parametrize("text", ["abc", "3a", "3,5", "٣", "1_000", "n°"])
def test_integer_rejects_non_integers(text):
    assert error(Integer(), text) == f"« {text} » n'est pas un nombre entier"


def test_integer_bounds():
    assert parse_all(Integer(min=1, max=10), "10") == 10
    assert error(Integer(min=1, max=10), "11") == "« 11 » : le nombre doit être entre 1 et 10"
    assert error(Integer(min=1), "0") == "« 0 » : le nombre doit être au moins 1"
    assert error(Integer(max=5), "#6") == "« #6 » : le nombre doit être au plus 5"
    assert Integer(min=1).description == "un nombre entier (au moins 1)"


def test_integer_refuses_huge_numbers_cleanly():
    assert "trop grand" in error(Integer(), "9" * 5000)


PROFESSIONS = Choice({
    "infirmier": ["infirmière", "IDE", "idel"],
    "medecin": ["médecin", "généraliste", "MG"],
    "kine": ["kiné", "kinésithérapeute"],
    "apres-midi": ["aprem"],
})


@pytest.mark.parametrize("text, value, consumed", [
    ("infirmier", "infirmier", 1),
    ("INFIRMIÈRE", "infirmier", 1),
    ("ide", "infirmier", 1),
    ("Médecin", "medecin", 1),
    ("medecin", "medecin", 1),
    ("kiné demain", "kine", 1),
    ("après midi", "apres-midi", 2),
    ("après-midi", "apres-midi", 1),
    ('"après midi"', "apres-midi", 1),
])
def test_choice_matches_canonical_names_and_aliases(text, value, consumed):
    assert parse(PROFESSIONS, text) == (value, consumed)


def test_choice_error_lists_values_and_suggests():
    message = error(PROFESSIONS, "infirmer")
    assert message.startswith("« infirmer » n'est pas une valeur possible")
    assert "infirmier, medecin, kine" in message
    assert "vouliez-vous dire « infirmier »" in message
    assert "vouliez-vous" not in error(PROFESSIONS, "plombier")


def test_choice_rejects_ambiguous_aliases():
    with pytest.raises(ValueError):
        Choice({"a": ["x"], "b": ["X"]})


def test_choice_usage_texts():
    choice = Choice({"domicile": ["maison"], "cabinet": []})
    assert choice.placeholder == "<domicile|cabinet>"
    assert choice.description == "au choix : domicile, cabinet"
    assert Choice({"a": []}, placeholder="<lieu>").placeholder == "<lieu>"


def test_text_takes_the_rest_of_the_line():
    tokens = tokenize('x pansement   quotidien « plaie  au talon »')
    assert Text().parse(tokens, 1, None) == ("pansement quotidien plaie  au talon", len(tokens))


def test_text_is_required():
    assert error(Text(), "") == "le commentaire est obligatoire"
    with pytest.raises(ArgumentError, match="^le commentaire est obligatoire$"):
        Text().parse([Token("x")], 1, None)
    assert Text(min_length=0).parse([], 0, None) == ("", 0)
    assert "au moins 5 caractères" in error(Text(min_length=5), "ok")
    assert Text().placeholder.startswith("<comment")  # the registry prints such params last


# --- Duration ------------------------------------------------------------------------------------

MIN, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)


@pytest.mark.parametrize("text, value, consumed", [
    ("30min", 30 * MIN, 1), ("30 min", 30 * MIN, 2), ("15m", 15 * MIN, 1), ("90min", 90 * MIN, 1),
    ("2h", 2 * HOUR, 1), ("2 h", 2 * HOUR, 2), ("48h", 48 * HOUR, 1), ("2H", 2 * HOUR, 1),
    ("1h30", 90 * MIN, 1), ("1h05", 65 * MIN, 1), ("1h30min", 90 * MIN, 1), ("1,5h", 90 * MIN, 1),
    ("1.5h", 90 * MIN, 1), ("2 heures", 2 * HOUR, 2),
    ("4j", 4 * DAY, 1), ("4 jours", 4 * DAY, 2), ("1jour", DAY, 1), ("0,5j", 12 * HOUR, 1),
    ("1sem", 7 * DAY, 1), ("2 semaines", 14 * DAY, 2), ("1 semaine", 7 * DAY, 2),
    ("1 h 30", 90 * MIN, 3), ("1 j 2 h 05", DAY + 2 * HOUR + 5 * MIN, 5), ("2j 4h", 2 * DAY + 4 * HOUR, 2),
])
def test_duration_forms(text, value, consumed):
    assert parse(Duration(), text) == (value, consumed)


@pytest.mark.parametrize("text, consumed", [
    ("2h patients", 1), ("2h 3", 1), ("4j 12/03", 1), ("2h 4j", 1), ('2h "30"', 1), ("30 min 2", 2),
    ("2h 30min", 2),
])
def test_duration_leaves_following_words_alone(text, consumed):
    assert parse(Duration(), text)[1] == consumed


@pytest.mark.parametrize("text, message", [
    ("4", "« 4 » : précisez l'unité, par exemple 4h ou 4j"),
    ("4 patients", "« 4 » : précisez l'unité, par exemple 4h ou 4j"),
    ("0h", "« 0h » : la durée doit être supérieure à zéro"),
    ("0 min", "« 0 min » : la durée doit être supérieure à zéro"),
    ("-2h", "« -2h » : la durée doit être positive"),
    ("abc", "« abc » n'est pas une durée (exemples : 30min, 2h, 4j, 1sem)"),
    ("4x", "« 4x » : unité « x » inconnue ; utilisez min, h, j ou sem"),
    ("30min2h", "« 30min2h » : écrivez les unités de la plus grande à la plus petite, par exemple 2h30"),
    ("1h5", "« 1h5 » : écrivez les minutes sur deux chiffres, par exemple 1h05"),
    ("0,5min", "« 0,5min » : la durée doit tomber sur une minute entière"),
])
def test_duration_errors(text, message):
    assert error(Duration(), text) == message


@pytest.mark.parametrize("text", ["3mois", "3 mois", "1an"])
def test_duration_refuses_calendar_units(text):
    assert "les mois et les années" in error(Duration(), text)


def test_duration_refuses_absurd_lengths():
    assert "trop longue" in error(Duration(), "99999999999j")
    assert "trop longue" in error(Duration(), "999999999sem")


def test_duration_bounds():
    assert error(Duration(min=15 * MIN), "5min") == "« 5min » : la durée minimale est 15 min"
    assert error(Duration(max=7 * DAY), "2sem") == "« 2sem » : la durée maximale est 7 jours"
    assert parse_all(Duration(min=15 * MIN, max=7 * DAY), "7j") == 7 * DAY


def test_format_duree_rejects_negative():
    with pytest.raises(ValueError):
        format_duree(-MIN)


# --- DateTime ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected, consumed", [
    ("12/03 14h30", paris(2026, 3, 12, 14, 30), 2),
    ("12/03/2027 9h", paris(2027, 3, 12, 9), 2),
    ("12/03/27 9h", paris(2027, 3, 12, 9), 2),
    ("13/3 9h", paris(2026, 3, 13, 9), 2),
    ("12/03 à 14h30", paris(2026, 3, 12, 14, 30), 3),
    ("12/03 a 14h30", paris(2026, 3, 12, 14, 30), 3),
    ("le 12/03 à 14h30", paris(2026, 3, 12, 14, 30), 4),
    ("13 mars 9h", paris(2026, 3, 13, 9), 3),
    ("1er avril à midi", paris(2026, 4, 1, 12), 4),
    ("jeudi 12 mars à 14h30", paris(2026, 3, 12, 14, 30), 5),
    ("jeudi 12 mars 2026 à 14h30", paris(2026, 3, 12, 14, 30), 6),
    ("demain 9h", paris(2026, 3, 13, 9), 2),
    ("Demain À 9H", paris(2026, 3, 13, 9), 3),
    ("aujourd'hui 14h", paris(2026, 3, 12, 14), 2),
    ("aujourd’hui 14h", paris(2026, 3, 12, 14), 2),
    ("après-demain 10h30", paris(2026, 3, 14, 10, 30), 2),
    ("apres-demain 10h30", paris(2026, 3, 14, 10, 30), 2),
    ("après demain 10h30", paris(2026, 3, 14, 10, 30), 3),
    ("lundi 10h", paris(2026, 3, 16, 10), 2),
    ("jeudi 11h", paris(2026, 3, 12, 11), 2),  # today, still ahead
    ("jeudi 9h", paris(2026, 3, 19, 9), 2),  # today's 9h is past: next Thursday
    ("jeudi prochain 11h", paris(2026, 3, 19, 11), 3),
    ("mercredi 8h", paris(2026, 3, 18, 8), 2),
    ("14h30", paris(2026, 3, 12, 14, 30), 1),
    ("à 14h30", paris(2026, 3, 12, 14, 30), 2),
    ("14:30", paris(2026, 3, 12, 14, 30), 1),
    ("14h", paris(2026, 3, 12, 14), 1),
    ("midi", paris(2026, 3, 12, 12), 1),
    ("demain 9:30", paris(2026, 3, 13, 9, 30), 2),
    ("10h", paris(2026, 3, 12, 10), 1),  # the current minute is not the past
])
def test_datetime_forms(text, expected, consumed):
    assert parse(DateTime(), text) == (expected, consumed)


def test_datetime_past_check_has_minute_resolution():
    during_the_minute = utc(2026, 3, 12, 13, 30, 20)  # 14:30:20 in Paris
    assert parse_all(DateTime(), "14h30", now=during_the_minute) == paris(2026, 3, 12, 14, 30)
    assert "déjà passé" in error(DateTime(), "14h29", now=during_the_minute)


def test_datetime_year_inference_for_day_and_month():
    # Yesterday stays this year (and is then refused as past); two days ago is next year.
    assert parse_all(DateTime(), "10/03 9h") == paris(2027, 3, 10, 9)
    assert "dans le passé" in error(DateTime(), "11/03 9h")
    # Around New Year, the next 12/03 is in the coming year.
    assert parse_all(DateTime(), "12/03 9h", now=utc(2026, 12, 31, 23, 30)) == paris(2027, 3, 12, 9)
    assert parse_all(DateTime(), "31/12 23h", now=utc(2026, 12, 31, 12, 0)) == paris(2026, 12, 31, 23)
    assert parse_all(DateTime(), "29/02 9h", now=utc(2027, 12, 1, 9)) == paris(2028, 2, 29, 9)


def test_datetime_allow_past_takes_the_nearest_year():
    assert parse_all(DateTime(allow_past=True), "10/03 9h") == paris(2026, 3, 10, 9)
    assert parse_all(DateTime(allow_past=True), "9h") == paris(2026, 3, 12, 9)
    assert parse_all(DateTime(allow_past=True), "20/12 9h") == paris(2025, 12, 20, 9)
    assert parse_all(DateTime(allow_past=True), "12/03/2020 9h") == paris(2020, 3, 12, 9)


@pytest.mark.parametrize("text, message", [
    ("31/02 9h", "« 31/02 » n'est pas une date valide (février n'a pas 31 jours)"),
    ("31/04 9h", "« 31/04 » n'est pas une date valide (avril n'a pas 31 jours)"),
    ("32/01 9h", "« 32/01 » n'est pas une date valide (un mois compte au plus 31 jours)"),
    ("0/01 9h", "« 0/01 » n'est pas une date valide (un mois compte au plus 31 jours)"),
    ("12/13 9h", "« 12/13 » n'est pas une date valide (il n'y a que 12 mois)"),
    ("29/02 9h", "« 29/02 » n'est pas une date valide (il n'y a pas de 29 février en 2027)"),
    ("12/03/202 9h", "« 12/03/202 » n'est pas une date valide (l'année s'écrit 27 ou 2027)"),
    ("123/45 9h", "« 123/45 » n'est pas une date valide (écrivez jj/mm ou jj/mm/aaaa)"),
    ("25h", "« 25h » n'est pas une heure valide (les heures vont de 0h à 23h)"),
    ("24h", "« 24h » n'est pas une heure valide (les heures vont de 0h à 23h)"),
    ("demain 14h75", "« 14h75 » n'est pas une heure valide (les minutes vont de 00 à 59)"),
    ("demain à 25h", "« 25h » n'est pas une heure valide (les heures vont de 0h à 23h)"),
    ("demain 9h5", "« 9h5 » n'est pas une heure valide (écrivez les minutes sur deux chiffres, par exemple 9h05)"),
    ("12/03", "« 12/03 » : précisez l'heure, par exemple « 12/03 9h »"),
    ("demain", "« demain » : précisez l'heure, par exemple « demain 9h »"),
    ("demain cabinet", "« demain » : précisez l'heure, par exemple « demain 9h »"),
    ("bientôt", "« bientôt » n'est pas une date (exemples : demain 9h, 12/03 14h30, lundi 10h)"),
    ("9h", "« 9h » : 9h est déjà passé aujourd'hui ; précisez le jour, par exemple « demain 9h »"),
    ("12/03 9h", "« 12/03 9h » est dans le passé (jeudi 12 mars 2026 à 9h)"),
    ("12/03/2025 9h", "« 12/03/2025 9h » est dans le passé (mercredi 12 mars 2025 à 9h)"),
    ("lundi 12/03 9h", "« lundi 12/03 » : le 12 mars 2026 est un jeudi, pas un lundi"),
])
def test_datetime_errors_name_the_problem(text, message):
    assert error(DateTime(), text) == message


def test_datetime_never_consumes_the_next_argument():
    assert parse(DateTime(), "demain 9h domicile")[1] == 2
    assert parse(DateTime(), "demain 9h 3")[1] == 2
    assert parse(DateTime(date_only_ok=True), "12/03 cabinet")[1] == 1
    assert parse(DateTime(date_only_ok=True), "12/03 à")[1] == 1


def test_datetime_date_only_means_nine_in_the_morning():
    assert parse_all(DateTime(date_only_ok=True), "demain") == paris(2026, 3, 13, 9)
    # Checked by day: today stays acceptable after 9h.
    assert parse_all(DateTime(date_only_ok=True), "aujourd'hui") == paris(2026, 3, 12, 9)
    assert parse_all(DateTime(date_only_ok=True), "lundi") == paris(2026, 3, 16, 9)
    assert "dans le passé" in error(DateTime(date_only_ok=True), "12/03/2025")
    assert parse_all(DateTime(date_only_ok=True), "demain 15h") == paris(2026, 3, 13, 15)


def test_datetime_uses_the_local_date_around_midnight():
    late = utc(2026, 3, 12, 23, 30)  # already Friday 13 in Paris
    assert parse_all(DateTime(), "aujourd'hui 14h", now=late) == paris(2026, 3, 13, 14)
    assert parse_all(DateTime(), "demain 9h", now=late) == paris(2026, 3, 14, 9)


def test_datetime_needs_a_context():
    with pytest.raises(ValueError):
        DateTime().parse([Token("demain"), Token("9h")], 0, None)


def test_datetime_in_another_time_zone():
    ctx = ParseContext(NOW, ZoneInfo("America/Cayenne"))  # UTC-3, no DST
    assert DateTime().parse(tokenize("demain 9h"), 0, ctx)[0] == utc(2026, 3, 13, 12, 0)


# DST in Europe/Paris: 29 March 2026 at 2h -> 3h, 25 October 2026 at 3h -> 2h.
SATURDAY_BEFORE_SPRING = utc(2026, 3, 28, 8, 0)
SATURDAY_BEFORE_AUTUMN = utc(2026, 10, 24, 8, 0)


def test_dst_spring_forward():
    assert parse_all(DateTime(), "demain 9h", now=SATURDAY_BEFORE_SPRING) == utc(2026, 3, 29, 7, 0)  # UTC+2
    assert parse_all(DateTime(), "demain 1h59", now=SATURDAY_BEFORE_SPRING) == utc(2026, 3, 29, 0, 59)  # UTC+1
    assert parse_all(DateTime(), "demain 3h", now=SATURDAY_BEFORE_SPRING) == utc(2026, 3, 29, 1, 0)
    # "demain 9h" is 23 real hours after "aujourd'hui 10h" across the change.
    delta = (parse_all(DateTime(), "demain 10h", now=SATURDAY_BEFORE_SPRING)
             - parse_all(DateTime(), "aujourd'hui 10h", now=SATURDAY_BEFORE_SPRING))
    assert delta == timedelta(hours=23)


@pytest.mark.parametrize("text", ["demain 2h30", "29/03 2h", "dimanche 2h15"])
def test_dst_skipped_hour_is_refused(text):
    message = error(DateTime(), text, now=SATURDAY_BEFORE_SPRING)
    assert f"« {text} »" in message
    assert "n'existe pas le dimanche 29 mars" in message
    assert "changement d'heure" in message


def test_dst_fall_back():
    assert parse_all(DateTime(), "demain 9h", now=SATURDAY_BEFORE_AUTUMN) == utc(2026, 10, 25, 8, 0)  # UTC+1
    # 2h30 happens twice: the first occurrence (still summer time) is taken.
    assert parse_all(DateTime(), "demain 2h30", now=SATURDAY_BEFORE_AUTUMN) == utc(2026, 10, 25, 0, 30)
    assert parse_all(DateTime(), "demain 3h", now=SATURDAY_BEFORE_AUTUMN) == utc(2026, 10, 25, 2, 0)
    assert parse_all(DateTime(), "lundi 9h", now=SATURDAY_BEFORE_AUTUMN) == utc(2026, 10, 26, 8, 0)


def test_dst_windows_have_their_real_length():
    spring = parse_all(TimeSlot(), "demain 1h-4h", now=SATURDAY_BEFORE_SPRING)
    autumn = parse_all(TimeSlot(), "demain 1h-4h", now=SATURDAY_BEFORE_AUTUMN)
    assert spring.end - spring.start == timedelta(hours=2)
    assert autumn.end - autumn.start == timedelta(hours=4)


# --- TimeSlot ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, start, end, label, consumed", [
    ("matin", paris(2026, 3, 12, 8), paris(2026, 3, 12, 12), "jeudi 12 mars, matin (8h–12h)", 1),
    ("après-midi", paris(2026, 3, 12, 14), paris(2026, 3, 12, 18), "jeudi 12 mars, après-midi (14h–18h)", 1),
    ("apres-midi", paris(2026, 3, 12, 14), paris(2026, 3, 12, 18), "jeudi 12 mars, après-midi (14h–18h)", 1),
    ("après midi", paris(2026, 3, 12, 14), paris(2026, 3, 12, 18), "jeudi 12 mars, après-midi (14h–18h)", 2),
    ("soir", paris(2026, 3, 12, 18), paris(2026, 3, 12, 21), "jeudi 12 mars, soir (18h–21h)", 1),
    ("ce soir", paris(2026, 3, 12, 18), paris(2026, 3, 12, 21), "jeudi 12 mars, soir (18h–21h)", 2),
    ("demain matin", paris(2026, 3, 13, 8), paris(2026, 3, 13, 12), "vendredi 13 mars, matin (8h–12h)", 2),
    ("14h-16h", paris(2026, 3, 12, 14), paris(2026, 3, 12, 16), "jeudi 12 mars, 14h–16h", 1),
    ("14h–16h", paris(2026, 3, 12, 14), paris(2026, 3, 12, 16), "jeudi 12 mars, 14h–16h", 1),
    ("14-16h", paris(2026, 3, 12, 14), paris(2026, 3, 12, 16), "jeudi 12 mars, 14h–16h", 1),
    ("14h30-16h", paris(2026, 3, 12, 14, 30), paris(2026, 3, 12, 16), "jeudi 12 mars, 14h30–16h", 1),
    ("14h - 16h", paris(2026, 3, 12, 14), paris(2026, 3, 12, 16), "jeudi 12 mars, 14h–16h", 3),
    ("de 14h à 16h", paris(2026, 3, 12, 14), paris(2026, 3, 12, 16), "jeudi 12 mars, 14h–16h", 4),
    ("entre 14h et 16h", paris(2026, 3, 12, 14), paris(2026, 3, 12, 16), "jeudi 12 mars, 14h–16h", 4),
    ("demain 14h-16h", paris(2026, 3, 13, 14), paris(2026, 3, 13, 16), "vendredi 13 mars, 14h–16h", 2),
    ("12/03 8h-12h", paris(2026, 3, 12, 8), paris(2026, 3, 12, 12), "jeudi 12 mars, 8h–12h", 2),
    ("jeudi 8h-9h", paris(2026, 3, 19, 8), paris(2026, 3, 19, 9), "jeudi 19 mars, 8h–9h", 2),  # rolled a week
    ("12/03/2027 8h-12h", paris(2027, 3, 12, 8), paris(2027, 3, 12, 12), "vendredi 12 mars 2027, 8h–12h", 2),
])
def test_timeslot_windows(text, start, end, label, consumed):
    slot, used = parse(TimeSlot(), text)
    assert used == consumed
    assert slot == Slot(start, end, label)
    assert slot.kind == "Tranche horaire"


@pytest.mark.parametrize("text, start, label, consumed", [
    ("demain 9h", paris(2026, 3, 13, 9), "vendredi 13 mars à 9h", 2),
    ("12/03 14h30", paris(2026, 3, 12, 14, 30), "jeudi 12 mars à 14h30", 2),
    ("12/03 à 14h30", paris(2026, 3, 12, 14, 30), "jeudi 12 mars à 14h30", 3),
    ("14h30", paris(2026, 3, 12, 14, 30), "jeudi 12 mars à 14h30", 1),
    ("1/04/2027 9h05", paris(2027, 4, 1, 9, 5), "jeudi 1er avril 2027 à 9h05", 2),
])
def test_timeslot_precise_moments(text, start, label, consumed):
    slot, used = parse(TimeSlot(), text)
    assert (slot, used) == (Slot(start, None, label), consumed)
    assert slot.kind == "Date et horaire"


def test_timeslot_leaves_the_place_to_the_next_argument():
    assert parse(TimeSlot(), "demain 9h domicile")[1] == 2
    assert parse(TimeSlot(), "12/03 14h30 cabinet")[1] == 2
    assert parse(TimeSlot(), "demain matin cabinet")[1] == 2


def test_timeslot_errors():
    assert error(TimeSlot(), "demain") == ("« demain » : précisez une heure ou une tranche horaire, par exemple "
                                            "« demain 9h », « demain matin » ou « demain 14h-16h »")
    assert error(TimeSlot(), "16h-14h") == "« 16h-14h » : la fin doit être après le début"
    assert error(TimeSlot(), "demain 14h-16h75").startswith("« 14h-16h75 » n'est pas une heure valide")
    assert error(TimeSlot(), "domicile").startswith("« domicile » n'est pas un horaire")
    assert "31 jours" in error(TimeSlot(), "32/01 matin")


def test_timeslot_past_windows():
    afternoon = utc(2026, 3, 12, 12, 0)  # 13h in Paris
    message = error(TimeSlot(), "matin", now=afternoon)
    assert message.startswith("« matin » est déjà passé (jeudi 12 mars, matin (8h–12h))")
    assert "« demain matin »" in message
    assert "est déjà passé" in error(TimeSlot(), "8h-9h")
    # A window under way is still valid.
    assert parse_all(TimeSlot(), "matin").start == paris(2026, 3, 12, 8)
    assert parse_all(TimeSlot(allow_past=True), "matin", now=afternoon).end == paris(2026, 3, 12, 12)


# --- key=value options -------------------------------------------------------------------------------

DEC_OPTIONS = {"commune": Word(), "reponse": Duration(), "rdv": DateTime()}
CTX = ParseContext(NOW)


def test_split_options_spec_example():
    tokens = tokenize('infirmier commune=Brétigny reponse=4h "pansement quotidien, plaie au talon"')
    positional, values = split_options(tokens, DEC_OPTIONS, ctx=CTX)
    assert positional == [Token("infirmier"), Token("pansement quotidien, plaie au talon", quoted=True)]
    assert values == {"commune": "Brétigny", "reponse": 4 * HOUR}


@pytest.mark.parametrize("text", ["réponse=4h", "reponse=4h", "Réponse=4h", "REPONSE=4H"])
def test_split_options_keys_ignore_accents_and_case(text):
    assert split_options(tokenize(text), DEC_OPTIONS, ctx=CTX) == ([], {"reponse": 4 * HOUR})


@pytest.mark.parametrize("text", ['commune="Saint Michel"', "commune=« Saint Michel »", 'commune= "Saint Michel"'])
def test_split_options_quoted_values(text):
    assert split_options(tokenize(text), DEC_OPTIONS, ctx=CTX) == ([], {"commune": "Saint Michel"})


def test_split_options_multiword_values_for_structured_types():
    values = split_options(tokenize('reponse="30 min" rdv="demain 9h"'), DEC_OPTIONS, ctx=CTX)[1]
    assert values == {"reponse": 30 * MIN, "rdv": paris(2026, 3, 13, 9)}


def test_split_options_unknown_key_lists_allowed_keys():
    with pytest.raises(ArgumentError) as caught:
        split_options(tokenize("comune=Massy"), DEC_OPTIONS, ctx=CTX)
    message = caught.value.message
    assert message.startswith("option inconnue « comune= » ; options possibles : commune=, reponse=, rdv=")
    assert "vouliez-vous dire commune= ?" in message
    with pytest.raises(ArgumentError, match="n'accepte pas d'option"):
        split_options(tokenize("x=1"), {})


def test_split_options_passthrough_keeps_measurements_in_place():
    tokens = tokenize("spo2=91 reponse=4h dyspnée TA=12/8")
    positional, values = split_options(tokens, DEC_OPTIONS, passthrough_unknown=True, ctx=CTX)
    assert [t.text for t in positional] == ["spo2=91", "dyspnée", "TA=12/8"]
    assert values == {"reponse": 4 * HOUR}


def test_split_options_ignores_fully_quoted_tokens_and_non_keys():
    tokens = tokenize('"reponse=4h" https://exemple.fr/?a=1 =5')
    assert split_options(tokens, DEC_OPTIONS, ctx=CTX) == (tokens, {})


def test_split_options_value_errors_name_the_option():
    with pytest.raises(ArgumentError) as caught:
        split_options(tokenize("reponse=4"), DEC_OPTIONS, ctx=CTX)
    assert caught.value.message == "« 4 » : précisez l'unité, par exemple 4h ou 4j (option reponse=)"
    with pytest.raises(ArgumentError, match="je ne comprends pas « patients » dans reponse="):
        split_options(tokenize('reponse="2h patients"'), DEC_OPTIONS, ctx=CTX)


def test_split_options_duplicate_and_empty_values():
    with pytest.raises(ArgumentError, match="l'option reponse= est donnée deux fois"):
        split_options(tokenize("reponse=4h réponse=2h"), DEC_OPTIONS, ctx=CTX)
    with pytest.raises(ArgumentError) as caught:
        split_options(tokenize("reponse= infirmier"), DEC_OPTIONS, ctx=CTX)
    assert caught.value.message == "« reponse= » : il manque la valeur après le signe =, par exemple reponse=2h"


# --- formatting ------------------------------------------------------------------------------------------

def test_format_french_datetime():
    assert format_french_datetime(utc(2026, 3, 12, 13, 30), PARIS) == "jeudi 12 mars à 14h30"
    assert format_french_datetime(utc(2026, 8, 1, 7, 5), PARIS) == "samedi 1er août à 9h05"  # UTC+2 in summer
    assert format_french_datetime(utc(2026, 12, 31, 23, 0), PARIS) == "vendredi 1er janvier à 0h"
    assert format_french_datetime(utc(2027, 2, 3, 8, 0), PARIS, with_year=True) == "mercredi 3 février 2027 à 9h"
    with pytest.raises(ValueError):
        format_french_datetime(datetime(2026, 3, 12, 14, 30), PARIS)


def test_format_french_date_and_clock():
    assert format_french_date(date(2026, 3, 15)) == "dimanche 15 mars"
    assert format_clock(time(0, 0)) == "0h"
    assert format_clock(time(14, 5)) == "14h05"


# --- properties --------------------------------------------------------------------------------------------

@given(amount=st.integers(min_value=1, max_value=100_000), unit=st.sampled_from([MIN, HOUR, DAY]))
@example(amount=90, unit=MIN)
@example(amount=25, unit=HOUR)
def test_property_duration_format_then_parse_round_trips(amount, unit):
    value = amount * unit
    text = format_duree(value)
    assert parse_all(Duration(), text) == value


@given(amount=st.integers(min_value=1, max_value=100_000), suffix=st.sampled_from(["min", "h", "j", "sem", " jours"]))
def test_property_duration_compact_forms(amount, suffix):
    unit = {"min": MIN, "h": HOUR, "j": DAY, "sem": 7 * DAY, " jours": DAY}[suffix]
    assert parse_all(Duration(), f"{amount}{suffix}") == amount * unit


_OPENERS = '"“«'


@given(st.text(alphabet=st.characters(blacklist_characters=_OPENERS), max_size=80))
def test_property_tokenize_unquoted_text_gives_its_words(text):
    tokens = tokenize(text)
    assert [t.text for t in tokens] == text.split()
    assert not any(t.quoted for t in tokens)


@given(st.text(max_size=80))
@example('a "b')
@example("« »")
def test_property_tokenize_only_fails_on_unterminated_quotes(text):
    try:
        tokens = tokenize(text)
    except ArgumentError as exc:
        assert any(q in text for q in _OPENERS)
        assert "guillemet" in exc.message
    else:
        assert all(isinstance(t, Token) for t in tokens)


_WORD = st.text(alphabet=st.characters(blacklist_categories=["Zs", "Cc", "Zl", "Zp"],
                                       blacklist_characters=_OPENERS + "”»"), min_size=1, max_size=8)


@given(st.lists(_WORD, min_size=1, max_size=5), st.sampled_from([('"', '"'), ("«\u00a0", "\u00a0»"), ("“", "”")]))
def test_property_quotes_group_words_into_one_token(words, quotes):
    assume(all(w == w.strip() and not any(c.isspace() for c in w) for w in words))
    opener, closer = quotes
    tokens = tokenize(f"avant {opener}{' '.join(words)}{closer} après")
    assert tokens == [Token("avant"), Token(" ".join(words), quoted=True), Token("après")]


@given(st.text(max_size=30))
def test_property_normalize_is_idempotent(word):
    assert normalize(normalize(word)) == normalize(word)


@given(st.integers(min_value=-10**9, max_value=10**9), st.sampled_from(["{}", "n°{}", "#{}", "n° {}"]))
def test_property_integer_round_trips(number, template):
    assume(number >= 0 or template == "{}")
    assert parse_all(Integer(), template.format(number)) == number


_DAY_WORDS = st.sampled_from(["", "aujourd'hui", "demain", "après-demain", "lundi", "samedi", "jeudi prochain",
                              "le 12/03", "29/02", "31/10", "30/03/2027", "1er mars", "12 juin"])


@settings(max_examples=150)
@given(
    now=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)),
    day=_DAY_WORDS,
    hour=st.integers(min_value=0, max_value=26),
    minute=st.integers(min_value=0, max_value=61),
    connector=st.sampled_from(["", "à "]),
    allow_past=st.booleans(),
)
def test_property_datetime_is_aware_utc_and_matches_the_typed_time(now, day, hour, minute, connector, allow_past):
    text = f"{day} {connector}{hour}h{minute:02d}".strip()
    try:
        value = parse_all(DateTime(allow_past=allow_past), text, now=now)
    except ArgumentError as exc:
        assert exc.message  # a French explanation, never another exception type
        return
    assert value.tzinfo is not None and value.utcoffset() == timedelta(0)
    local = value.astimezone(PARIS)
    assert (local.hour, local.minute) == (hour, minute)
    if not allow_past:
        assert value >= now.replace(second=0, microsecond=0)


@settings(max_examples=150)
@given(now=st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)),
       ahead=st.integers(min_value=1, max_value=300 * 24 * 60))
def test_property_format_french_datetime_reads_back(now, ahead):
    instant = (now + timedelta(minutes=ahead)).replace(second=0, microsecond=0)
    local = instant.astimezone(PARIS)
    # The second pass of a repeated autumn hour reads back as the first one, by design.
    assume(local.replace(tzinfo=None, fold=0).replace(tzinfo=PARIS).astimezone(UTC) == instant)
    for with_year in (True, False):
        text = format_french_datetime(instant, PARIS, with_year=with_year)
        assert parse_all(DateTime(), text, now=now) == instant, text
