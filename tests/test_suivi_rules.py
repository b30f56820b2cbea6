"""Suivi rules (domain/suivi.py): typed values, forgiving names, relative red-flag measures and every
schedule boundary the issue lists (SA weeks, ages 25/30/50/65, month ends, leap days, DST)."""
from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from domain.notification_hours import NotificationHours
from domain.parcours import load_catalogue
from domain.suivi import (
    Contexte,
    Fait,
    Mesure,
    SaisieError,
    age_le,
    anniversaire,
    at_local,
    echeance,
    etat,
    match_names,
    mesures,
    names_of,
    parse_donnee,
    propose_red_flag,
)

PARIS = ZoneInfo("Europe/Paris")
TODAY = date(2026, 3, 12)
INCLUSION = datetime(2026, 3, 12, 9, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def catalogue():
    return load_catalogue()


def _d(catalogue, parcours, code):
    return next(d for d in catalogue[parcours].donnees_de_base if d.code == code)


# --- typed values ------------------------------------------------------------------------------------

@pytest.mark.parametrize("parcours, code, raw, expected", [
    ("insuffisance_cardiaque", "poids", "82,5", 82.5),
    ("insuffisance_cardiaque", "poids", "82.5kg", 82.5),
    ("insuffisance_cardiaque", "frequence_cardiaque", "64", 64),
    ("insuffisance_cardiaque", "nyha", "III", "NYHA III"),
    ("insuffisance_cardiaque", "nyha", "3", "NYHA III"),
    ("insuffisance_cardiaque", "nyha", "nyha ii", "NYHA II"),
    ("insuffisance_cardiaque", "arythmie", "Oui", True),
    ("diabete_type_2", "tension_arterielle", "120/80", [120, 80]),
    ("diabete_type_2", "tension_arterielle", "12/8", [120, 80]),
    ("diabete_type_2", "grade_podologique", "2", "Grade 2"),
    ("bpco", "stade", "stade 2", "Stade 2 (50-79 %)"),
    ("bpco", "spo2", "100", 100.0),
    ("perinatalite", "date_debut_grossesse", "15/01/2026", "2026-01-15"),
    ("perinatalite", "date_accouchement", "aujourd'hui", "2026-03-12"),
    ("perinatalite", "rhesus_mere", "négatif", "Négatif"),
    ("plaie", "douleur_eva", "0", 0),
])
def test_values_are_typed(catalogue, parcours, code, raw, expected):
    assert parse_donnee(_d(catalogue, parcours, code), raw, TODAY) == expected


@pytest.mark.parametrize("parcours, code, raw, words", [
    ("insuffisance_cardiaque", "poids", "750", ["Poids", "750", "hors des valeurs", "de 2 à 350 kg"]),
    ("insuffisance_cardiaque", "poids", "80 lbs", ["unité", "lbs"]),
    ("insuffisance_cardiaque", "frequence_cardiaque", "64.5", ["entier"]),
    ("insuffisance_cardiaque", "nyha", "V", ["NYHA", "NYHA I | NYHA II"]),
    ("bpco", "spo2", "120", ["SpO2", "120", "de 50 à 100 %"]),
    ("diabete_type_2", "tension_arterielle", "80/120", ["systolique"]),
    ("diabete_type_2", "tension_arterielle", "120/8", ["mêle cmHg et mmHg"]),
    ("perinatalite", "date_debut_grossesse", "13/03/2026", ["futur", "JJ/MM/AAAA"]),
    ("perinatalite", "date_debut_grossesse", "30/02/2026", ["n'est pas une date"]),
    ("perinatalite", "souhait_grossesse", "peut-être", ["ni oui ni non"]),
    ("plaie", "douleur_eva", "11", ["hors des valeurs", "de 0 à 10 /10"]),
])
def test_refusals_name_the_element_the_value_and_the_form(catalogue, parcours, code, raw, words):
    with pytest.raises(SaisieError) as err:
        parse_donnee(_d(catalogue, parcours, code), raw, TODAY)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_leap_day_is_a_date_only_in_leap_years(catalogue):
    d = _d(catalogue, "perinatalite", "date_debut_grossesse")
    assert parse_donnee(d, "29/02/2024", TODAY) == "2024-02-29"
    with pytest.raises(SaisieError):
        parse_donnee(d, "29/02/2026", TODAY)


# --- forgiving names ---------------------------------------------------------------------------------

@pytest.mark.parametrize("typed, codes", [
    ("echographie_t1", ["echographie_t1"]),
    ("Écho T1", ["echographie_t1"]),
    ("echo", ["echographie_t1", "echographie_t2", "echographie_t3"]),  # a question
    ("EPNP", ["entretien_post_natal"]),
    ("post natal", ["consultation_post_natale", "entretien_post_natal"]),  # a question
    ("declaration", ["declaration_grossesse"]),
    ("rhesus", ["rhesus_foetal"]),
    ("xyz", []),
])
def test_element_names_match_forgivingly(catalogue, typed, codes):
    entries = [(e.code, names_of(e)) for e in catalogue["perinatalite"].elements_de_suivi]
    assert match_names(typed, entries) == codes


@pytest.mark.parametrize("typed, code", [("debut_grossesse", "date_debut_grossesse"), ("DDR", "date_debut_grossesse"),
                                          ("accouchement", "date_accouchement"), ("rhesus", "rhesus_mere")])
def test_donnee_names_match_forgivingly(catalogue, typed, code):
    entries = [(d.code, names_of(d)) for d in catalogue["perinatalite"].donnees_de_base]
    assert match_names(typed, entries) == [code]


# --- relative thresholds -------------------------------------------------------------------------------

def _at(days: float) -> datetime:
    return INCLUSION + timedelta(days=days)


@pytest.mark.parametrize("gain, days, crossed", [
    (2.0, 4, False),     # > 2 kg, not ≥
    (2.1, 4, True),
    (2.1, 3, True),
    (2.1, 5, True),      # « en 3 et 5 j »: up to 5 days
    (2.1, 5.1, False),   # beyond 5 days: no red flag
    (3.0, 1, True),      # faster is a fortiori a sign
])
def test_ic_weight_gain_window(catalogue, gain, days, crossed):
    ic = catalogue["insuffisance_cardiaque"]
    history = [Mesure(_at(0), 80.0)]
    hits, command = propose_red_flag(ic, mesures(ic, "poids", 80.0 + gain, history, _at(days)))
    assert bool(hits) is crossed
    if crossed:
        assert f"poids=+{gain:g}kg/" in command and command.startswith("!redflag parcours=insuffisance_cardiaque")


def test_ic_gain_is_measured_from_the_lowest_weight_of_the_window(catalogue):
    ic = catalogue["insuffisance_cardiaque"]
    history = [Mesure(_at(0), 79.0), Mesure(_at(6), 80.0), Mesure(_at(8), 81.0)]
    valeurs = mesures(ic, "poids", 82.5, history, _at(10))
    assert [(v.value, v.window.days) for v in valeurs] == [(2.5, 4)]  # 79 kg is 10 days old: outside


@pytest.mark.parametrize("weight, crossed", [(81.0, False), (80.9, True)])
def test_dt2_loss_of_ten_percent_of_the_base_weight(catalogue, weight, crossed):
    dt2 = catalogue["diabete_type_2"]
    history = [Mesure(_at(0), 90.0), Mesure(_at(30), 85.0)]  # the base is the first one
    hits, command = propose_red_flag(dt2, mesures(dt2, "poids", weight, history, _at(90)))
    assert bool(hits) is crossed
    if crossed:
        assert "poids=-10.1%" in command


def test_absolute_measures_and_the_podology_grade(catalogue):
    ic, dt2 = catalogue["insuffisance_cardiaque"], catalogue["diabete_type_2"]
    assert propose_red_flag(ic, mesures(ic, "frequence_cardiaque", 48, [], _at(0)))[1].endswith("fc=48 <votre inquiétude>")
    assert propose_red_flag(ic, mesures(ic, "frequence_cardiaque", 50, [], _at(0)))[0] == []
    assert "ta=151/80" in propose_red_flag(dt2, mesures(dt2, "tension_arterielle", [151, 80], [], _at(0)))[1]
    grade = mesures(dt2, "grade_podologique", "Grade 2", [Mesure(_at(0), "Grade 1")], _at(1))
    assert "grade_podo=+1" in propose_red_flag(dt2, grade)[1]
    assert mesures(ic, "poids", 90.0, [], _at(0)) == []  # no history: nothing relative to compare


# --- schedules: périnatalité ---------------------------------------------------------------------------

START_SA = date(2026, 1, 15)  # a Thursday


def _ctx(**kw) -> Contexte:
    return Contexte(tz=PARIS, inclusion=kw.pop("inclusion", INCLUSION), **kw)


@pytest.mark.parametrize("code, sa", [
    ("echographie_t1", 11), ("depistage_combine", 11), ("rhesus_foetal", 13), ("declaration_grossesse", 15),
    ("inscription_maternite", 15), ("echographie_t2", 20), ("diabete_gestationnel", 24), ("echographie_t3", 30),
    ("consultation_anesthesie", 32), ("prelevement_vaginal", 34),
])
def test_each_perinatalite_item_starts_at_its_sa_week(catalogue, code, sa):
    p = catalogue["perinatalite"]
    ech = echeance(p, p.element(code), _ctx(donnees={"date_debut_grossesse": START_SA.isoformat()}))
    due = START_SA + timedelta(weeks=sa)
    assert ech.due == datetime.combine(due, time(8, 0), tzinfo=PARIS) and ech.overdue is None
    assert etat(ech, [], ech.due - timedelta(seconds=1)) == "a_venir"
    assert etat(ech, [], ech.due) == "a_faire"
    done = _ctx(donnees={"date_debut_grossesse": START_SA.isoformat()}, faits={code: [Fait(INCLUSION)]})
    assert echeance(p, p.element(code), done) is None


def test_sa_reminders_wait_for_the_pregnancy_start(catalogue):
    p = catalogue["perinatalite"]
    assert echeance(p, p.element("echographie_t1"), _ctx()) is None


def test_sa_reminder_across_the_spring_dst_change_stays_at_8h_local(catalogue):
    p = catalogue["perinatalite"]
    # 11 SA after 16 January 2026 is Friday 3 April (summer time since 29 March): 8h = 6h UTC.
    ech = echeance(p, p.element("echographie_t1"), _ctx(donnees={"date_debut_grossesse": "2026-01-16"}))
    assert ech.due.astimezone(timezone.utc) == datetime(2026, 4, 3, 6, 0, tzinfo=timezone.utc)
    # In winter, 8h Paris is 7h UTC.
    ech = echeance(p, p.element("echographie_t1"), _ctx(donnees={"date_debut_grossesse": "2025-08-01"}))
    assert ech.due.astimezone(timezone.utc) == datetime(2025, 10, 17, 6, 0, tzinfo=timezone.utc)  # still summer
    ech = echeance(p, p.element("echographie_t1"), _ctx(donnees={"date_debut_grossesse": "2025-08-15"}))
    assert ech.due.astimezone(timezone.utc) == datetime(2025, 10, 31, 7, 0, tzinfo=timezone.utc)  # after 26 Oct


@pytest.mark.parametrize("code, weeks", [("entretien_post_natal", 3), ("consultation_post_natale", 4)])
def test_post_natal_items_from_the_delivery(catalogue, code, weeks):
    p = catalogue["perinatalite"]
    c = _ctx(donnees={"date_accouchement": "2026-02-26"})
    assert echeance(p, p.element(code), c).due.date() == date(2026, 2, 26) + timedelta(weeks=weeks)
    assert echeance(p, p.element(code), _ctx()) is None


def test_monthly_items_from_the_declaration_until_the_delivery_across_month_ends(catalogue):
    p = catalogue["perinatalite"]
    e = p.element("prevention_bucco_dentaire")
    declared = datetime(2026, 1, 31, 10, 0, tzinfo=PARIS)
    c = _ctx(faits={"declaration_grossesse": [Fait(declared)]})
    assert echeance(p, e, c).due == declared  # from the declaration
    c.faits[e.code] = [Fait(declared)]
    assert echeance(p, e, c).due.date() == date(2026, 2, 28)  # 31 January + 1 month
    c.faits[e.code] = [Fait(datetime(2024, 1, 31, 10, 0, tzinfo=PARIS))]
    c.faits["declaration_grossesse"] = [Fait(datetime(2024, 1, 2, tzinfo=PARIS))]
    assert echeance(p, e, c).due.date() == date(2024, 2, 29)  # leap year
    c.donnees["date_accouchement"] = "2024-02-20"
    assert echeance(p, e, c) is None  # « jusqu'à l'accouchement »


# --- schedules: plaie ----------------------------------------------------------------------------------

def test_plaie_every_10_to_30_days_from_the_last_fiche(catalogue):
    p = catalogue["plaie"]
    e = p.element("fiche_suivi_pansement")
    ech = echeance(p, e, _ctx())
    assert (ech.due, ech.overdue) == (INCLUSION + timedelta(days=10), INCLUSION + timedelta(days=30))
    last = datetime(2026, 3, 28, 22, 0, tzinfo=timezone.utc)  # across the DST change: 30 × 24 h
    ech = echeance(p, e, _ctx(faits={e.code: [Fait(last)]}))
    assert ech.overdue == last + timedelta(days=30)
    assert etat(ech, [Fait(last)], ech.overdue - timedelta(seconds=1)) == "a_faire"
    assert etat(ech, [Fait(last)], ech.overdue) == "en_retard"


# --- schedules: gynécologie ----------------------------------------------------------------------------

BORN = date(1990, 6, 15)


def _gyn(catalogue, code, faits=(), naissance=BORN, inclusion=INCLUSION, **donnees):
    p = catalogue["suivi_gynecologique"]
    c = _ctx(naissance=naissance, inclusion=inclusion, donnees=donnees,
             faits={code: [Fait(datetime.combine(d, time(10), tzinfo=PARIS)) for d in faits]})
    ech = echeance(p, p.element(code), c)
    return ech.due.astimezone(PARIS).date() if ech else None


def test_a_first_screening_is_due_on_the_first_of_the_month_after_the_birthday(catalogue):
    for born, due in ((date(1990, 12, 31), date(2016, 1, 1)), (date(1990, 1, 1), date(2015, 2, 1))):
        young = datetime(2010, 1, 1, tzinfo=timezone.utc)
        assert _gyn(catalogue, "frottis", naissance=born, inclusion=young) == due


def test_ages_and_birthdays_including_29_february():
    assert age_le(BORN, date(2015, 6, 14)) == 24 and age_le(BORN, date(2015, 6, 15)) == 25
    leap = date(2000, 2, 29)
    assert anniversaire(leap, 25) == date(2025, 2, 28) and anniversaire(leap, 28) == date(2028, 2, 29)
    assert age_le(leap, date(2025, 2, 27)) == 24 and age_le(leap, date(2025, 2, 28)) == 25


def test_frottis_from_25_then_one_year_then_3_years_then_5_years_until_65(catalogue):
    young = datetime(2010, 1, 1, tzinfo=timezone.utc)
    # From the 25th birthday, on the first of the next month: the timer's instant is stored in
    # clear and must not give the birth date away.
    assert _gyn(catalogue, "frottis", inclusion=young) == date(2015, 7, 1)
    assert _gyn(catalogue, "frottis", [date(2015, 6, 14)], inclusion=young) == date(2015, 7, 1)  # at 24: wait
    assert _gyn(catalogue, "frottis", [date(2015, 6, 15)]) == date(2016, 6, 15)  # first at 25: +1 an
    assert _gyn(catalogue, "frottis", [date(2015, 6, 15), date(2016, 6, 15)]) == date(2019, 6, 15)  # then 3 ans
    assert _gyn(catalogue, "frottis", [date(2020, 6, 14)]) == date(2021, 6, 14)  # 29: still the 25-30 phase
    assert _gyn(catalogue, "frottis", [date(2019, 6, 1), date(2020, 6, 15)]) == date(2025, 6, 15)  # 30: 5 ans
    assert _gyn(catalogue, "frottis", [date(2050, 6, 14)]) == date(2055, 6, 14)  # 59 → due at 64
    assert _gyn(catalogue, "frottis", [date(2050, 6, 15)]) is None               # 60 → 65: no more
    assert _gyn(catalogue, "frottis", [date(2055, 6, 15)]) is None               # 65


def test_frottis_due_now_when_older_than_25_without_any(catalogue):
    assert _gyn(catalogue, "frottis") == INCLUSION.astimezone(PARIS).date()


def test_mammographie_from_50_every_2_years(catalogue):
    assert _gyn(catalogue, "mammographie") == date(2040, 7, 1)                   # 50th birthday, next month
    assert _gyn(catalogue, "mammographie", [date(2040, 6, 14)]) == date(2040, 7, 1)  # at 49
    assert _gyn(catalogue, "mammographie", [date(2040, 6, 15)]) == date(2042, 6, 15)
    assert _gyn(catalogue, "mammographie", [date(2070, 6, 15)]) == date(2072, 6, 15)  # no upper age given


def test_mammographie_born_on_29_february(catalogue):
    assert _gyn(catalogue, "mammographie", naissance=date(1980, 2, 29),
                inclusion=datetime(2020, 1, 1, tzinfo=timezone.utc)) == date(2030, 3, 1)
    assert _gyn(catalogue, "mammographie", [date(2030, 2, 28)], naissance=date(1980, 2, 29)) == date(2032, 2, 28)


def test_contraception_checks_follow_the_method(catalogue):
    assert _gyn(catalogue, "contraception_orale_bilan") is None  # method not filled
    assert _gyn(catalogue, "contraception_orale_bilan", contraception="Stérilet") is None
    assert _gyn(catalogue, "contraception_orale_bilan", [date(2025, 3, 1)],
                contraception="Contraception orale") == date(2026, 3, 1)
    p = catalogue["suivi_gynecologique"]
    e = p.element("contraception_implant_sterilet")
    c = _ctx(naissance=BORN, donnees={"contraception": "Implant"},
             faits={e.code: [Fait(datetime(2024, 2, 29, 10, tzinfo=PARIS), "3ans")]})
    assert echeance(p, e, c).due.date() == date(2027, 2, 28)


# --- notification hours --------------------------------------------------------------------------------

@pytest.mark.parametrize("hours, local, expected", [
    ("8h-19h", datetime(2026, 1, 10, 23, 0), datetime(2026, 1, 11, 8, 0)),
    ("8h-19h", datetime(2026, 1, 10, 7, 59), datetime(2026, 1, 10, 8, 0)),
    ("8h-19h", datetime(2026, 1, 10, 19, 0), datetime(2026, 1, 11, 8, 0)),
    ("20h-6h", datetime(2026, 1, 10, 23, 0), datetime(2026, 1, 10, 23, 0)),   # spans midnight: allowed
    ("20h-6h", datetime(2026, 1, 10, 6, 0), datetime(2026, 1, 10, 20, 0)),
    ("8h-19h", datetime(2026, 3, 28, 23, 0), datetime(2026, 3, 29, 8, 0)),    # spring forward night
    ("8h-19h", datetime(2026, 10, 24, 23, 0), datetime(2026, 10, 25, 8, 0)),  # fall back night
])
def test_reminders_wait_for_the_next_allowed_hour(hours, local, expected):
    instant = local.replace(tzinfo=PARIS)
    assert NotificationHours.parse(hours).next_allowed(instant, PARIS) == expected.replace(tzinfo=PARIS)


def test_at_local_keeps_wall_time_across_dst():
    assert at_local(date(2026, 3, 28), PARIS).utcoffset() == timedelta(hours=1)
    assert at_local(date(2026, 3, 29), PARIS).utcoffset() == timedelta(hours=2)
