"""Tableau de bord, pure rules (domain.indicateurs): periods and their Paris boundaries, the
small-count rule, quantiles, report dates, and the indicators' data file."""
from __future__ import annotations

import re
from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from domain.indicateurs import (
    DATA_PATH,
    MASQUE,
    IndicateursError,
    Ligne,
    Mois,
    PeriodeError,
    Valeur,
    date_rapport,
    jours_feries,
    lire_periode,
    load_indicateurs,
    masquer,
    mois_de,
    premier_jour_ouvre,
    quantile,
    quantile_heures,
    taux,
    trimestre_de,
    valeur,
)
from storage.indicateurs import REQUETES
from tests.test_parcours import _CITATION, _plain, _seed_lines

PARIS = ZoneInfo("Europe/Paris")
NOW = datetime(2026, 12, 2, 7, 0, tzinfo=timezone.utc)


def test_periods_month_quarter_year_and_default():
    assert lire_periode(None, NOW, PARIS).code == "2026-11"
    assert lire_periode("", NOW, PARIS).libelle == "novembre 2026"
    assert [m.cle for m in lire_periode("2026-T4", NOW, PARIS).mois] == ["2026-10", "2026-11", "2026-12"]
    assert lire_periode("t1-2026", NOW, PARIS).code == "2026-T1"
    assert lire_periode("2026-q2", NOW, PARIS).libelle == "2e trimestre 2026"
    assert lire_periode("11/2026", NOW, PARIS).code == "2026-11"
    assert lire_periode("2026-3", NOW, PARIS).code == "2026-03"
    assert len(lire_periode("2025", NOW, PARIS).mois) == 12
    # The default in January is December of the year before.
    assert lire_periode(None, datetime(2027, 1, 5, tzinfo=timezone.utc), PARIS).code == "2026-12"


@pytest.mark.parametrize("texte,why", [("2026-13", "01 à 12"), ("novembre", "n'est pas une période"),
                                       ("2026-T5", "n'est pas une période"), ("2027-01", "n'a pas commencé"),
                                       ("1899", "hors des limites")])
def test_bad_periods_are_refused_in_french(texte, why):
    with pytest.raises(PeriodeError, match=why):
        lire_periode(texte, NOW, PARIS)


def test_month_boundaries_are_paris_midnights_across_dst():
    # Winter (UTC+1) and summer (UTC+2): the 1st at 00:00 in Paris.
    assert Mois(2026, 11).debut(PARIS) == datetime(2026, 10, 31, 23, 0, tzinfo=timezone.utc)
    assert Mois(2026, 4).debut(PARIS) == datetime(2026, 3, 31, 22, 0, tzinfo=timezone.utc)
    start, end = lire_periode("2026-03", NOW, PARIS).bornes(PARIS)  # DST starts on 29 March
    assert (start, end) == (datetime(2026, 2, 28, 23, tzinfo=timezone.utc), datetime(2026, 3, 31, 22, tzinfo=timezone.utc))
    # 00:30 on 1 December in Paris is still 30 November in UTC: it belongs to December.
    assert mois_de(datetime(2026, 11, 30, 23, 30, tzinfo=timezone.utc), PARIS) == Mois(2026, 12)
    assert Mois(2026, 12).suivant() == Mois(2027, 1) and Mois(2027, 1).precedent() == Mois(2026, 12)


def test_window_widens_a_month_to_six_for_the_chart():
    p = lire_periode("2026-02", NOW, PARIS)
    assert [m.cle for m in p.fenetre()] == ["2025-09", "2025-10", "2025-11", "2025-12", "2026-01", "2026-02"]
    assert len(lire_periode("2025", NOW, PARIS).fenetre()) == 12


def test_small_counts_are_masked_but_zero_is_shown():
    assert [masquer(n) for n in (0, 1, 4, 5, 120)] == ["0", MASQUE, MASQUE, "5", "120"]
    assert MASQUE == "< 5"
    # A rate or a quantile computed on fewer than 5 rows is masked too, whatever its value.
    assert taux(3, 4).affichee() == MASQUE and taux(3, 4).tracee() is None
    assert taux(4, 5).affichee() == "80,0"
    assert taux(0, 0).affichee() == "–"
    assert Valeur(n=3).tracee() is None and Valeur(n=7).tracee() == 7.0
    assert quantile_heures([3600.0] * 4, 0.5).affichee() == MASQUE
    assert quantile_heures([3600.0 * h for h in (1, 2, 3, 4, 5)], 0.5).affichee() == "3,0"


def test_quantiles_interpolate_like_percentile_cont():
    assert quantile([], 0.5) is None
    assert quantile([7], 0.9) == 7
    assert quantile([1, 2, 3, 4], 0.5) == 2.5
    assert quantile(list(range(1, 11)), 0.9) == pytest.approx(9.1)
    assert quantile([10, 1, 5], 0.5) == 5  # order does not matter


def test_period_figures_add_months_up():
    lignes = [Ligne("2026-10", 3, base=4), Ligne("2026-11", 2, base=6, detail="vad")]
    assert valeur("effectif", lignes).n == 5
    assert valeur("taux", lignes).affichee() == "50,0"
    durees = [Ligne("2026-10", 2, durees=(3600.0, 7200.0)), Ligne("2026-11", 3, durees=(0.0, 36000.0, 1800.0))]
    assert valeur("mediane", durees).x == 1.0
    assert valeur("p90", durees).x == pytest.approx((7200 + 0.6 * (36000 - 7200)) / 3600)


def test_reports_are_posted_on_the_first_working_day_at_8_in_paris():
    assert date(2026, 11, 11) in jours_feries(2026) and date(2026, 4, 6) in jours_feries(2026)  # lundi de Pâques
    assert premier_jour_ouvre(Mois(2026, 11)) == date(2026, 11, 2)  # 1 Nov: Sunday and Toussaint
    assert premier_jour_ouvre(Mois(2027, 1)) == date(2027, 1, 4)  # Friday 1 Jan off, then the weekend
    assert premier_jour_ouvre(Mois(2024, 4)) == date(2024, 4, 2)  # Easter Monday on 1 April 2024
    assert premier_jour_ouvre(Mois(2026, 6)) == date(2026, 6, 1)
    assert date_rapport(Mois(2026, 11), PARIS) == datetime(2026, 12, 1, 7, 0, tzinfo=timezone.utc)
    assert date_rapport(Mois(2026, 6), PARIS) == datetime(2026, 7, 1, 6, 0, tzinfo=timezone.utc)  # summer time
    assert trimestre_de(Mois(2026, 12)).code == "2026-T4" and trimestre_de(Mois(2026, 11)) is None


def test_the_indicators_file_declares_each_indicator_with_its_rule():
    cat = load_indicateurs()
    codes = {i.code for i in cat.indicateurs}
    assert {"inclusions", "sorties", "declenchements", "taux_acceptation", "delai_acceptation_median",
            "delai_acceptation_p90", "escaladees", "red_flags", "red_flags_dans_le_delai", "alertes_critiques",
            "patients_sans_mt", "mt_trouves", "questionnaires_completes", "tcim_realisees", "tcim_interrompues"} <= codes
    assert all(i.petit_effectif == "masquer" and i.libelle and i.definition for i in cat.indicateurs)
    assert set(cat.par_famille()) == set(cat.familles)
    # Declared, not computed: no query while their data cannot be aggregated in SQL.
    waiting = {i.code: i for i in cat.en_attente}
    assert {"suivi_en_retard", "alertes_consultees_dans_le_delai"} <= set(waiting)
    assert all(i.requete is None and i.requiert for i in cat.en_attente)


def test_every_query_named_by_the_file_exists():
    assert {i.requete for i in load_indicateurs().indicateurs} <= REQUETES


def test_a_malformed_indicator_is_refused_with_its_name(tmp_path):
    bad = tmp_path / "i.yaml"
    bad.write_text("familles: {a: A}\nindicateurs:\n  x: {libelle: X, definition: d, famille: a, requete: q, "
                   "mesure: effectif, petit_effectif: montrer, source: s}\n", encoding="utf-8")
    with pytest.raises(IndicateursError, match="x: petit_effectif"):
        load_indicateurs(bad)


def test_citations_of_the_indicators_file_point_at_the_quoted_seed_lines():
    """`S004 L844 « … »` in data/indicateurs.yaml: the line exists and the quoted words are on it."""
    seeds = _seed_lines()
    problems, checked = [], 0
    for number, line in enumerate(DATA_PATH.read_text(encoding="utf-8").splitlines(), 1):
        for m in _CITATION.finditer(line):
            src, first, last, _, quotes = m.groups()
            lo, hi = int(first), int(last or first)
            lines = seeds[src]
            if not 1 <= lo <= hi <= len(lines):
                problems.append(f"{number}: {src} L{lo}-{hi} hors du fichier")
                continue
            checked += 1
            cited = _plain(" ".join(lines[lo - 1:hi]))
            for fragment in re.split(r"…|»\s*«", quotes.strip()[1:-1]) if quotes.strip() else []:
                if len(_plain(fragment)) >= 4 and _plain(fragment) not in cited:
                    problems.append(f"{number}: « {fragment} » absent de {src} L{lo}-{hi}")
    assert checked >= 8
    assert not problems, "\n".join(problems)
