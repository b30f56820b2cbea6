"""Tier 1: the tariff data and the pricing rule (domain.indemnites), row by row against the spec.

The expected amounts below are typed from domain-spec §5.2 (S000 L899-935, S002 L543-544), not read
from the YAML: a wrong value in data/tarifs fails here."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from domain.flows import load_flows
from domain.indemnites import (
    CRITERES,
    Etat,
    Ligne,
    TarifsError,
    Trimestre,
    decimal_fr,
    dernier_trimestre_termine,
    euros,
    load_baremes,
    parse_trimestre,
    prochain_debut_de_trimestre,
    tarifer,
    trimestre_de,
)
from domain.parcours import load_catalogue

PARIS = ZoneInfo("Europe/Paris")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def baremes():
    professions = set(yaml.safe_load((ROOT / "data" / "professions.yaml").read_text()))
    return load_baremes(parcours=set(load_catalogue()), flux=set(load_flows()), professions=professions)


AT_2024 = datetime(2024, 3, 5, 10, tzinfo=timezone.utc)
AT_2026 = datetime(2026, 9, 1, 10, tzinfo=timezone.utc)
COTISE = datetime(2030, 1, 1, tzinfo=timezone.utc)
ALL = frozenset(CRITERES)

CHRONIC = ("insuffisance_cardiaque", "bpco", "diabete_type_2")

# (rule code, acte, parcours, flux, profession, euros, cpam shown, criteria required)
LIVRET = [
    *[("chronique_reperage", "reperage", p, None, "pharmacien", 15, None, {"administratif"}) for p in CHRONIC],
    *[("chronique_declenchement_referent", "declenchement", p, "referent_parcours", "infirmier", 0, None, set())
      for p in CHRONIC],
    *[("chronique_inclusion", "inclusion", p, None, "medecin_generaliste", 15, "+ CPAM", {"carte", "donnees_de_base"})
      for p in CHRONIC],
    *[("chronique_red_flag", "red_flag", p, "red_flag", "infirmier", 15, None, {"commentaire"}) for p in CHRONIC],
    *[("chronique_suivi", "suivi", p, None, "masseur_kinesitherapeute", 15, None, {"element_de_suivi"}) for p in CHRONIC],
    ("gyneco_reperage", "reperage", "suivi_gynecologique", None, "pharmacien", 15, None, {"administratif"}),
    ("gyneco_inclusion", "inclusion", "suivi_gynecologique", None, "sage_femme", 15, "+ CPAM", set()),
    ("gyneco_inclusion", "inclusion", "suivi_gynecologique", None, "medecin_generaliste", 15, "+ CPAM", set()),
    ("perinat_reperage", "reperage", "perinatalite", None, "pharmacien", 15, None, {"administratif"}),
    ("perinat_declenchement_referent", "declenchement", "perinatalite", "referent_parcours", "sage_femme", 0, None, set()),
    ("perinat_inclusion", "inclusion", "perinatalite", None, "sage_femme", 15, None, {"carte", "donnees_de_base"}),
    ("perinat_alerte_critique", "alerte_critique", "perinatalite", None, "infirmier", 15, None, {"commentaire"}),
    ("perinat_suivi", "suivi", "perinatalite", None, "sage_femme", 15, None, {"element_de_suivi"}),
    ("sortie_maternite", "acceptation", "perinatalite", "visite_domicile", "sage_femme", 15, None, {"cr"}),
    ("plaie_reperage", "reperage", "plaie", None, "medecin_generaliste", 15, None, {"administratif"}),
    ("plaie_inclusion", "inclusion", "plaie", None, "infirmier", 15, "+ AMIII (= 35 €, CPAM)", {"donnees_de_base"}),
    ("plaie_suivi", "suivi", "plaie", None, "infirmier", 15, None, {"photos", "fiche_suivi"}),
    ("plaie_red_flag", "red_flag", "plaie", "red_flag", "infirmier", 15, None, {"commentaire"}),
    ("plaie_acceptation", "acceptation", "plaie", "visite_domicile", "infirmier", 15, "+ CPAM", {"cr"}),
    ("snp_acceptation", "acceptation", None, "snp", "medecin_generaliste", 15, None, {"cloture"}),
    ("tcim_declenchement_referent", "declenchement", "tcim", "tcim", "infirmier", 0, None, set()),
    ("tcim_medecin", "tcim_medecin", "tcim", "tcim", "medecin_generaliste", 25, "+ CPAM (TCG 25 €)", {"rdv", "cr"}),
    ("tcim_infirmier", "tcim_infirmier", "tcim", "tcim", "infirmier", 50, "+ CPAM (TLD 15 €)", {"ordonnance_recue"}),
    ("sport_reperage", "reperage", "sport_sante", None, "pharmacien", 15, None, {"administratif"}),
    ("sport_declenchement_referent", "declenchement", "sport_sante", "sport_sante", "infirmier", 0, None, set()),
    ("sport_inclusion", "inclusion", "sport_sante", None, "medecin_generaliste", 0, None, set()),
]

VAL_ORGE = [
    ("tout_declenchement", "declenchement", None, "consultation", "infirmier", 15, None, set(), frozenset()),
    ("tout_declenchement", "red_flag", "bpco", "red_flag", "pharmacien", 15, None, set(), frozenset()),
    ("toute_acceptation", "acceptation", None, "snp", "medecin_generaliste", 15, None, set(), frozenset()),
    ("toute_acceptation", "acceptation", "plaie", "visite_domicile", "infirmier", 15, None, set(), frozenset()),
    ("recherche_mt", "acceptation", "recherche_mt", "recherche_mt", "medecin_generaliste", 150, None,
     {"attestation_amelipro", "validation_coordinateur"}, frozenset({"structure:mas_dac"})),
    # Not via MAS-DAC: the general rule (15 €), not the 150 € one (S002 L544 « uniquement via »).
    ("toute_acceptation", "acceptation", "recherche_mt", "recherche_mt", "medecin_generaliste", 15, None, set(),
     frozenset()),
]


def test_every_livret_row_is_tested_and_every_row_is_in_the_data(baremes):
    codes = {r.code for r in baremes["livret-2022"].versions[0].regles}
    assert codes == {row[0] for row in LIVRET}
    assert {r.code for r in baremes["val-orge-2026"].versions[-1].regles} == {row[0] for row in VAL_ORGE}


@pytest.mark.parametrize("code,acte,parcours,flux,profession,eur,cpam,required", LIVRET)
def test_livret_2022_row(baremes, code, acte, parcours, flux, profession, eur, cpam, required):
    b = baremes["livret-2022"]
    full = Ligne(acte, AT_2024, parcours, flux, profession, COTISE, criteres=ALL)
    t = tarifer(b, full, PARIS)
    assert (t.regle, t.montant_cents, t.cpam, t.version) == (code, eur * 100, cpam, "livret-2022")
    if eur == 0:  # « - » or blank: known, not paid
        assert t.etat is Etat.NON_ELIGIBLE and "non indemnisé" in t.motif and t.du_cents == 0
        return
    assert t.etat is Etat.ELIGIBLE and t.du_cents == eur * 100
    for missing in required:  # each criterion on its own keeps the line pending, naming it
        t = tarifer(b, Ligne(acte, AT_2024, parcours, flux, profession, COTISE, criteres=ALL - {missing}), PARIS)
        assert t.etat is Etat.EN_ATTENTE and t.manque == (missing,) and CRITERES[missing][0] in t.motif
        assert t.du_cents == 0 and t.montant_cents == eur * 100
    others = ALL - required  # no other criterion is asked
    assert tarifer(b, Ligne(acte, AT_2024, parcours, flux, profession, COTISE, criteres=frozenset(required)),
                   PARIS).etat is Etat.ELIGIBLE or not others


@pytest.mark.parametrize("code,acte,parcours,flux,profession,eur,cpam,required,via", VAL_ORGE)
def test_val_orge_2026_row(baremes, code, acte, parcours, flux, profession, eur, cpam, required, via):
    b = baremes["val-orge-2026"]
    t = tarifer(b, Ligne(acte, AT_2026, parcours, flux, profession, COTISE, via, frozenset(required)), PARIS)
    assert (t.regle, t.etat, t.montant_cents, t.version) == (code, Etat.ELIGIBLE, eur * 100, "val-orge-2026")
    for missing in required:
        t = tarifer(b, Ligne(acte, AT_2026, parcours, flux, profession, COTISE, via,
                             frozenset(required) - {missing}), PARIS)
        assert t.etat is Etat.EN_ATTENTE and t.manque == (missing,)


def test_val_orge_patient_absent_still_paid_and_unnamed_acts_unpaid(baremes):
    b = baremes["val-orge-2026"]
    # « même si le patient n'est pas venu » : no CR, no closing asked
    assert tarifer(b, Ligne("acceptation", AT_2026, None, "snp", "infirmier", COTISE), PARIS).etat is Etat.ELIGIBLE
    for acte in ("reperage", "inclusion", "suivi", "alerte_critique", "tcim_medecin"):
        t = tarifer(b, Ligne(acte, AT_2026, "perinatalite", None, "sage_femme", COTISE, criteres=ALL), PARIS)
        assert t.etat is Etat.NON_ELIGIBLE and "pas d'indemnité prévue" in t.motif


def test_who_the_rule_is_for(baremes):
    b = baremes["livret-2022"]
    t = tarifer(b, Ligne("inclusion", AT_2024, "plaie", None, "medecin_generaliste", COTISE, criteres=ALL), PARIS)
    assert t.etat is Etat.NON_ELIGIBLE and "infirmier" in t.motif
    t = tarifer(b, Ligne("acceptation", AT_2024, "insuffisance_cardiaque", "consultation", "infirmier", COTISE,
                         criteres=ALL), PARIS)
    assert t.etat is Etat.NON_ELIGIBLE and "pas d'indemnité prévue" in t.motif  # §9.6: plaie only


def test_version_change_in_the_middle_of_a_quarter(baremes):
    """Val d'Orge: the livret until 11 May 2026 (Paris), its own rules from 12 May (Q2 2026)."""
    b = baremes["val-orge-2026"]
    before = datetime(2026, 5, 11, 21, 59, tzinfo=timezone.utc)  # 23:59 in Paris, 11 May
    after = datetime(2026, 5, 11, 22, 0, tzinfo=timezone.utc)  # 00:00 in Paris, 12 May
    assert trimestre_de(before, PARIS) == trimestre_de(after, PARIS) == Trimestre(2026, 2)
    acc = dict(acte="acceptation", parcours=None, flux="snp", profession="medecin_generaliste",
               cotisation_jusqu_au=COTISE)
    old = tarifer(b, Ligne(at=before, **acc), PARIS)
    new = tarifer(b, Ligne(at=after, **acc), PARIS)
    assert (old.version, old.etat, old.manque) == ("livret-2022", Etat.EN_ATTENTE, ("cloture",))
    assert (new.version, new.etat) == ("val-orge-2026", Etat.ELIGIBLE)
    dec = dict(acte="declenchement", parcours="perinatalite", flux="referent_parcours", profession="sage_femme",
               cotisation_jusqu_au=COTISE)
    assert tarifer(b, Ligne(at=before, **dec), PARIS).du_cents == 0  # « - » in the livret
    assert tarifer(b, Ligne(at=after, **dec), PARIS).du_cents == 1500
    # before any version: nothing is in force
    t = tarifer(b, Ligne(at=datetime(2020, 1, 1, tzinfo=timezone.utc), **dec), PARIS)
    assert t.etat is Etat.NON_ELIGIBLE and "aucun barème" in t.motif


def test_lapsed_cotisation_on_the_act_date(baremes):
    b = baremes["livret-2022"]
    at = datetime(2024, 3, 5, 10, tzinfo=timezone.utc)
    line = dict(acte="reperage", at=at, parcours="bpco", flux=None, profession="pharmacien",
                criteres=frozenset({"administratif"}))
    lapsed = tarifer(b, Ligne(cotisation_jusqu_au=at - timedelta(seconds=1), **line), PARIS)
    assert lapsed.etat is Etat.NON_ELIGIBLE and lapsed.motif == "cotisation non à jour le 05/03/2024"
    assert lapsed.du_cents == 0 and lapsed.montant_cents == 1500  # the amount it would have been
    assert tarifer(b, Ligne(cotisation_jusqu_au=None, **line), PARIS).etat is Etat.NON_ELIGIBLE
    assert tarifer(b, Ligne(cotisation_jusqu_au=at, **line), PARIS).etat is Etat.ELIGIBLE  # up to date that instant
    # lapsed wins over a missing criterion: no point completing a line that will not be paid
    t = tarifer(b, Ligne(cotisation_jusqu_au=None, **{**line, "criteres": frozenset()}), PARIS)
    assert t.etat is Etat.NON_ELIGIBLE and "cotisation" in t.motif


def test_pending_becomes_eligible_when_the_cr_arrives(baremes):
    b = baremes["livret-2022"]
    line = dict(acte="acceptation", at=AT_2024, parcours="plaie", flux="visite_domicile", profession="infirmier",
                cotisation_jusqu_au=COTISE)
    waiting = tarifer(b, Ligne(**line), PARIS)
    assert (waiting.etat, waiting.manque, waiting.du_cents) == (Etat.EN_ATTENTE, ("cr",), 0)
    assert "compte-rendu" in waiting.motif
    done = tarifer(b, Ligne(**line, criteres=frozenset({"cr"})), PARIS)
    assert (done.etat, done.du_cents, done.cpam) == (Etat.ELIGIBLE, 1500, "+ CPAM")


@pytest.mark.parametrize("utc,expected", [
    (datetime(2026, 9, 30, 21, 30, tzinfo=timezone.utc), Trimestre(2026, 3)),  # 23:30 on 30 Sept, UTC+2
    (datetime(2026, 9, 30, 22, 0, tzinfo=timezone.utc), Trimestre(2026, 4)),  # 00:00 on 1 Oct in Paris
    (datetime(2026, 12, 31, 22, 59, tzinfo=timezone.utc), Trimestre(2026, 4)),  # 23:59 on 31 Dec, UTC+1
    (datetime(2026, 12, 31, 23, 0, tzinfo=timezone.utc), Trimestre(2027, 1)),
    (datetime(2026, 3, 31, 21, 59, tzinfo=timezone.utc), Trimestre(2026, 1)),  # 23:59 on 31 March (UTC+2)
    (datetime(2026, 6, 30, 22, 0, tzinfo=timezone.utc), Trimestre(2026, 3)),
])
def test_quarter_boundaries_in_paris(utc, expected):
    assert trimestre_de(utc, PARIS) == expected
    assert expected.debut(PARIS) <= utc < expected.fin(PARIS)


def test_quarter_bounds_names_and_parsing():
    q3 = Trimestre(2026, 3)
    assert q3.debut(PARIS) == datetime(2026, 6, 30, 22, tzinfo=timezone.utc)
    assert q3.fin(PARIS) == datetime(2026, 9, 30, 22, tzinfo=timezone.utc)
    assert str(q3) == "2026-T3" and Trimestre(2026, 4).suivant() == Trimestre(2027, 1)
    for text in ("2026-T3", "2026t3", "T3-2026", "2026-Q3", " 2026 T3 "):
        assert parse_trimestre(text) == q3
    for bad in ("2026-T5", "T3", "troisième", "2026-3"):
        with pytest.raises(ValueError, match="2026-T3"):
            parse_trimestre(bad)
    now = datetime(2026, 10, 1, 6, tzinfo=timezone.utc)  # 08:00 in Paris on 1 October
    assert dernier_trimestre_termine(now, PARIS) == q3
    assert dernier_trimestre_termine(datetime(2026, 2, 1, tzinfo=timezone.utc), PARIS) == Trimestre(2025, 4)
    from datetime import time
    assert prochain_debut_de_trimestre(datetime(2026, 9, 12, tzinfo=timezone.utc), PARIS, time(8)) == \
        datetime(2026, 10, 1, 6, tzinfo=timezone.utc)


def test_money_is_french():
    assert euros(1500) == "15,00 €" and euros(123450) == "1\u202f234,50 €" and euros(-1500) == "-15,00 €"
    assert decimal_fr(123450) == "1234,50" and decimal_fr(5) == "0,05"


def _write(tmp_path, name, text):
    (tmp_path / name).write_text(text, encoding="utf-8")


GOOD = """bareme: {name}
libelle: x
cpts: y
versions:
  - version: v1
    depuis: 2024-01-01
    vote: z
    regles:
      - {{code: a, acte: reperage, action: x, montant: 15, critere: c, source: s}}
"""


@pytest.mark.parametrize("mutation,message", [
    (lambda t: t.replace("montant: 15", "montant: -1"), "montant"),
    (lambda t: t.replace("acte: reperage", "acte: massage"), "acte: code inconnu"),
    (lambda t: t.replace("source: s}", "source: s, criteres: [photo]}"), "critère inconnu"),
    (lambda t: t.replace("depuis: 2024-01-01", "depuis: janvier"), "depuis"),
    (lambda t: t.replace("source: s}", "source: s, taux: 2}"), "clé inconnue"),
    (lambda t: t.replace("source: s}", "source: s, cpam: 25}"), "jamais additionnée"),
    (lambda t: t.replace("libelle: x\n", "libelle: x\nlibelle: x\n"), "en double"),
    (lambda t: t.replace("versions:", "avant: nulle-part\nversions:"), "barème inconnu"),
])
def test_malformed_tariff_files_are_refused_with_file_and_key(tmp_path, mutation, message):
    _write(tmp_path, "cpts-x.yaml", mutation(GOOD.format(name="cpts-x")))
    with pytest.raises(TarifsError, match=message) as e:
        load_baremes(tmp_path)
    assert str(e.value).startswith("cpts-x.yaml")


def test_versions_must_be_in_date_order(tmp_path):
    text = GOOD.format(name="b") + """  - version: v0
    depuis: 2023-01-01
    vote: z
    regles:
      - {code: a, acte: reperage, action: x, montant: 10, critere: c, source: s}
"""
    _write(tmp_path, "b.yaml", text)
    with pytest.raises(TarifsError, match="croissante"):
        load_baremes(tmp_path)


def test_a_new_version_applies_from_its_date_and_past_quarters_keep_theirs(tmp_path):
    text = GOOD.format(name="b") + """  - version: v2
    depuis: 2025-04-15
    vote: bureau du 2 avril 2025
    regles:
      - {code: a, acte: reperage, action: x, montant: 20, critere: c, source: s}
"""
    _write(tmp_path, "b.yaml", text)
    b = load_baremes(tmp_path)["b"]
    line = dict(acte="reperage", parcours=None, flux=None, profession="x", cotisation_jusqu_au=COTISE)
    assert tarifer(b, Ligne(at=datetime(2025, 4, 14, 12, tzinfo=timezone.utc), **line), PARIS).montant_cents == 1500
    assert tarifer(b, Ligne(at=datetime(2025, 4, 15, 12, tzinfo=timezone.utc), **line), PARIS).montant_cents == 2000
    assert b.version_au(datetime(2025, 4, 14, 22, tzinfo=timezone.utc), PARIS).nom == "v2"  # local midnight
    assert date(2025, 4, 15) == b.versions[1].depuis
