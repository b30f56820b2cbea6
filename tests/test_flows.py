"""data/flows.yaml against the sources (domain-spec §3.1, decisions.md), and the loader's errors."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest

from domain.flows import (
    DEFAULT_PATH,
    Flow,
    FlowsError,
    Mode,
    find_flow,
    load_flows,
    parse_duree,
)
from domain.text import format_duree, normalize_key

H = timedelta(hours=1)
J = timedelta(days=1)
MIN = timedelta(minutes=1)

EXPECTED = {
    "consultation", "visite_domicile", "teleconsultation", "conseil_telephonique", "red_flag",
    "alerte_critique", "referent_parcours", "sport_sante", "recherche_mt", "snp", "vigie_senior",
    "maison_des_femmes", "etp", "tcim",
}


@pytest.fixture(scope="module")
def flows() -> dict[str, Flow]:
    return load_flows()


def _standard_ladder(f: Flow) -> None:
    assert f.echelle is not None
    assert (f.echelle.pool, f.echelle.relance, f.echelle.escalade) == (0.5, 0.75, 1.0)  # decisions.md 3
    assert f.commentaire_obligatoire  # S000 L814
    assert f.consigne_escalade and len(f.consigne_escalade) > 20


def test_every_expected_flow_and_nothing_else(flows):
    assert set(flows) == EXPECTED
    for code, f in flows.items():
        assert f.code == code
        assert f.libelle


# --- one test per flow ---------------------------------------------------------------------------

def test_consultation(flows):
    f = flows["consultation"]
    assert (f.delai_reponse, f.delai_intervention) == (4 * J, 10 * J)
    assert f.delais_modifiables and f.cible_profession is None and f.medecin_traitant_d_abord
    assert f.mode_defaut is Mode.CABINET
    _standard_ladder(f)


def test_visite_domicile_alias_vad(flows):
    f = flows["visite_domicile"]
    assert "vad" in f.aliases
    assert (f.delai_reponse, f.delai_intervention) == (24 * H, 48 * H)
    assert f.mode_defaut is Mode.DOMICILE and f.delais_modifiables
    _standard_ladder(f)


def test_teleconsultation(flows):
    f = flows["teleconsultation"]
    assert (f.delai_reponse, f.delai_intervention) == (24 * H, 48 * H)
    assert f.mode_defaut is Mode.TELECONSULTATION and f.delais_modifiables
    _standard_ladder(f)


def test_conseil_telephonique_default_is_marked_configurable(flows):
    f = flows["conseil_telephonique"]
    assert (f.delai_reponse, f.delai_intervention) == (4 * H, 24 * H)
    assert f.mode_defaut is Mode.TELEPHONE and f.delais_modifiables
    line = next(line for line in _block("conseil_telephonique") if line.strip().startswith("delai_reponse:"))
    assert "# défaut Cercle, configurable" in line
    _standard_ladder(f)


def test_red_flag(flows):
    f = flows["red_flag"]
    assert f.delai_reponse == 8 * H  # S000 L306
    assert f.cible_profession == "medecin_generaliste" and f.medecin_traitant_d_abord
    assert f.delai_reponse * f.echelle.pool == 4 * H  # another MG after 4 h (decisions.md 6)
    assert f.priorite_mt is None and f.delai_intervention is None
    assert not f.delais_modifiables
    _standard_ladder(f)


def test_alerte_critique_has_no_acceptance_ladder(flows):
    f = flows["alerte_critique"]
    assert f.delai_reponse is None and f.echelle is None
    assert f.delai_consultation == 8 * H  # S000 L568
    assert set(f.mentions) == {"sage_femme", "medecin_traitant"}  # decisions.md 7
    assert f.parcours == "perinatalite" and f.commentaire_obligatoire


def test_referent_parcours(flows):
    f = flows["referent_parcours"]
    assert (f.delai_reponse, f.delai_intervention) == (4 * J, 10 * J)  # S000 L819 ; S002 L461
    assert f.cible_role == "referent" and f.cible_profession is None
    assert not f.delais_modifiables  # « toujours de 4 jours »
    assert find_flow(flows, "avis médical") is f and find_flow(flows, "inclusion parcours") is f
    _standard_ladder(f)


def test_sport_sante(flows):
    f = flows["sport_sante"]
    assert (f.delai_reponse, f.delai_intervention) == (4 * J, 10 * J)  # S002 L403-405
    assert f.intervenant == "Sport Santé - Val d'Orge" and f.soins == "Autre Soin"
    _standard_ladder(f)


def test_recherche_mt(flows):
    f = flows["recherche_mt"]
    assert (f.delai_reponse, f.delai_intervention) == (30 * J, 14 * J)  # S002 L178-179
    assert f.cible_profession == "medecin_generaliste"
    assert f.pool_immediat and not f.medecin_traitant_d_abord  # patient without MT
    _standard_ladder(f)


def test_snp(flows):
    f = flows["snp"]
    assert f.priorite_mt == 2 * H and f.delai_reponse == 4 * H  # decisions.md 5
    assert f.delai_intervention == 24 * H
    assert f.delai_intervention_pour("renouvellement_ordonnance") == 48 * H
    assert f.delai_intervention_pour("Renouvellement d'ordonnance") == 48 * H
    assert f.delai_intervention_pour("autre") == 24 * H
    assert f.cible_profession == "medecin_generaliste" and f.medecin_traitant_d_abord
    consigne = normalize_key(f.consigne_escalade)
    assert "rappeler le patient" in consigne and "garde" in consigne and "urgences" in consigne
    _standard_ladder(f)


def test_vigie_senior(flows):
    f = flows["vigie_senior"]
    assert (f.delai_reponse, f.delai_intervention) == (4 * J, 10 * J)  # S002 L194-195
    assert f.cible_role == "vigie_referent" and f.questionnaires == ("J0", "J7", "J30")
    _standard_ladder(f)


def test_maison_des_femmes(flows):
    f = flows["maison_des_femmes"]
    assert (f.delai_reponse, f.delai_intervention) == (4 * J, 10 * J)  # S002 L517-518
    assert f.questionnaires == ("Fiche de liaison",)
    _standard_ladder(f)


def test_etp(flows):
    f = flows["etp"]
    assert (f.delai_reponse, f.delai_intervention) == (4 * J, 10 * J)  # S002 L493-495
    assert f.intervenant == "ETP Val d'Orge"
    _standard_ladder(f)


def test_tcim(flows):
    f = flows["tcim"]
    assert f.durees_pec == {"medecin_generaliste": 15 * MIN, "infirmier": 60 * MIN}  # S000 L1019
    assert f.cible_profession == "medecin_generaliste" and f.pool_immediat
    assert f.mode_defaut is Mode.TELECONSULTATION
    _standard_ladder(f)


# --- the YAML file itself ------------------------------------------------------------------------

def _block(code: str) -> list[str]:
    """The lines of one flow's entry in data/flows.yaml."""
    text = DEFAULT_PATH.read_text(encoding="utf-8")
    return text.split(f"\n{code}:\n", 1)[1].split("\n\n", 1)[0].splitlines()


def test_every_value_cites_its_source():
    source = re.compile(r"#.*(S00\d|decisions\.md|défaut Cercle|spec §)")
    missing = []
    for n, line in enumerate(DEFAULT_PATH.read_text(encoding="utf-8").splitlines(), 1):
        if re.match(r"^\s+[a-z_]+:\s*\S", line) and not source.search(line):
            missing.append(f"L{n}: {line.strip()}")
    assert not missing, "valeurs sans source :\n" + "\n".join(missing)


def test_unsourced_defaults_are_modifiable(flows):
    for code, f in flows.items():
        reponse = next(line for line in _block(code) if line.strip().startswith("delai_reponse:"))
        if "défaut Cercle" in reponse:
            assert f.delais_modifiables, code


# --- lookup --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, code", [
    ("VAD", "visite_domicile"), ("visite à domicile", "visite_domicile"), ("Visite a Domicile", "visite_domicile"),
    ("RED FLAG", "red_flag"), ("red-flag", "red_flag"), ("Drapeau rouge", "red_flag"),
    ("Soins non programmés", "snp"), ("SNP", "snp"), ("téléconsultation", "teleconsultation"),
    ("Visio CCIM", "tcim"), ("Recherche Médecin Traitant", "recherche_mt"), ("Éducation thérapeutique", "etp"),
    ("  alerte   critique ", "alerte_critique"), ("référent", "referent_parcours"),
])
def test_find_flow_accent_case_alias(flows, text, code):
    found = find_flow(flows, text)
    assert found is not None and found.code == code


@pytest.mark.parametrize("text", ["", "   ", "cardiologie", "red"])
def test_find_flow_unknown(flows, text):
    assert find_flow(flows, text) is None


# --- durations -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("8h", 8 * H), ("4j", 4 * J), ("15min", 15 * MIN), ("2h30", 2.5 * H), ("30 jours", 30 * J),
    ("1 j 12 h", 36 * H), ("2 semaines", 14 * J), ("1,5h", 90 * MIN),
])
def test_parse_duree(text, expected):
    assert parse_duree(text) == expected


@pytest.mark.parametrize("bad", [8, "8", "8 heurs", "", "h", "0h", True])
def test_parse_duree_refuses(bad):
    with pytest.raises(ValueError):
        parse_duree(bad)


@pytest.mark.parametrize("td, text", [
    (8 * H, "8 h"), (48 * H, "48 h"), (4 * J, "4 jours"), (15 * MIN, "15 min"), (2.5 * H, "2 h 30"),
    (30 * J, "30 jours"), (3.5 * J, "3 jours 12 h"),
])
def test_format_duree(td, text):
    assert format_duree(td) == text


# --- malformed files -----------------------------------------------------------------------------

GOOD = """\
red_flag:
  libelle: "Red flag"
  aliases: [rf]
  cible_profession: medecin_generaliste
  medecin_traitant_d_abord: true
  delai_reponse: 8h
  echelle: {pool: 0.5, relance: 0.75, escalade: 1.0}
  consigne_escalade: "Appeler le médecin traitant et orienter vers le 15."
"""


def _load(tmp_path, text: str, name: str = "flows-cpts.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_flows(path, professions={"medecin_generaliste", "infirmier", "sage_femme"})


def test_minimal_custom_file_loads(tmp_path):
    flows = _load(tmp_path, GOOD)
    assert flows["red_flag"].delai_reponse == 8 * H


@pytest.mark.parametrize("mutation, key, reason", [
    (("delai_reponse: 8h", "delai_reponse: 8 heurs"), "red_flag.delai_reponse", "heurs"),
    (("delai_reponse: 8h", "delai_reponse: 8"), "red_flag.delai_reponse", "sans unité"),
    (("aliases: [rf]", "aliases: [rf]\n  delai_repons: 8h"), "red_flag.delai_repons", "clé inconnue"),
    (('  libelle: "Red flag"\n', ""), "red_flag.libelle", "manquante"),
    (("pool: 0.5, relance: 0.75", "pool: 0.9, relance: 0.75"), "red_flag.echelle", "désordre"),
    (("escalade: 1.0", "escalade: 0.9"), "red_flag.echelle", "échéance"),
    (("cible_profession: medecin_generaliste", "cible_profession: chaman"), "red_flag.cible_profession",
     "profession inconnue"),
    (("delai_reponse: 8h", "delai_reponse: 8h\n  priorite_mt: 9h"), "red_flag", "dépasse"),
    (('  consigne_escalade: "Appeler le médecin traitant et orienter vers le 15."\n', ""), "red_flag",
     "consigne_escalade"),
    (("aliases: [rf]", "aliases: [rf]\n  mode_defaut: hélicoptère"), "red_flag.mode_defaut", "cabinet"),
    (("aliases: [rf]", "aliases: [rf]\n  cible_role: referent"), "red_flag", "exclusifs"),
])
def test_malformed_flow_is_refused_naming_key(tmp_path, mutation, key, reason):
    old, new = mutation
    assert old in GOOD
    with pytest.raises(FlowsError) as exc:
        _load(tmp_path, GOOD.replace(old, new))
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith("flows-cpts.yaml: ")
    assert f": {key}" in msg and reason in msg, msg


def test_alias_collision_names_both_flows(tmp_path):
    text = GOOD + GOOD.replace("red_flag:", "snp:").replace('"Red flag"', '"SNP"')
    with pytest.raises(FlowsError, match=r"snp\.aliases: « rf » désigne déjà le type « red_flag »"):
        _load(tmp_path, text)


@pytest.mark.parametrize("text, fragment", [
    ("red_flag: [unclosed\n", "YAML invalide"),
    ("- a\n- b\n", "dictionnaire"),
    ("", "dictionnaire"),
    ("Red Flag:\n  libelle: x\n", "Red Flag: code invalide"),
    ("red_flag: 8h\n", "red_flag: un dictionnaire"),
    (GOOD.replace("  libelle:", "  code: autre\n  libelle:"), "red_flag.code"),
])
def test_malformed_file_shapes(tmp_path, text, fragment):
    with pytest.raises(FlowsError) as exc:
        _load(tmp_path, text)
    assert fragment in str(exc.value) and "\n" not in str(exc.value)


def test_missing_file(tmp_path):
    with pytest.raises(FlowsError, match=r"^absent\.yaml: lecture impossible"):
        load_flows(tmp_path / "absent.yaml")
