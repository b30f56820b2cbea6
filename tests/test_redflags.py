"""Measured red-flag values (domain.redflags): parsing what clinicians type, checking it against
the thresholds of the parcours YAML (domain-spec §2.1-2.5, decisions.md 6)."""
from __future__ import annotations

import ast
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from domain.parcours import Parcours, default_directory, load_catalogue, load_parcours_file
from domain.redflags import (
    ThresholdHit,
    Valeur,
    ValeurError,
    check_valeurs,
    explain_not_applicable,
    parse_valeur,
    parse_valeurs,
)


@pytest.fixture(scope="module")
def catalogue() -> dict[str, Parcours]:
    return load_catalogue()


def check(catalogue, code: str, *tokens: str):
    return check_valeurs(catalogue[code], [parse_valeur(t) for t in tokens])


def crossed(catalogue, code: str, token: str) -> list[str]:
    hits, _ = check(catalogue, code, token)
    return [h.seuil_texte for h in hits]


# --- checking against the parcours thresholds ----------------------------------------------------

def test_spo2_91_crosses_the_ic_threshold(catalogue):
    hits, ok = check(catalogue, "insuffisance_cardiaque", "spo2=91")
    assert ok == []
    [hit] = hits
    assert isinstance(hit, ThresholdHit)
    assert (hit.code, hit.libelle, hit.seuil_texte, hit.niveau) == ("desaturation", "SpO2 < 94%", "SpO₂ < 94 %",
                                                                   "red_flag")
    assert hit.valeur.raw == "spo2=91"


def test_spo2_95_does_not_cross_on_ic(catalogue):
    result = check(catalogue, "insuffisance_cardiaque", "spo2=95")
    hits, ok = result
    assert hits == []
    assert [m.raw for m in ok] == ["spo2=95"]
    assert result.not_applicable == []


def test_spo2_threshold_is_the_parcours_one(catalogue):
    # BPCO: < 90 % (S000 L366), not the IC 94 %.
    assert crossed(catalogue, "bpco", "spo2=91") == []
    assert crossed(catalogue, "bpco", "spo2=90") == []
    assert crossed(catalogue, "bpco", "spo2=88") == ["SpO₂ < 90 %"]
    assert crossed(catalogue, "bpco", "vems_cvf=45%") == ["VEMS/CVF < 50 %"]
    assert crossed(catalogue, "insuffisance_cardiaque", "spo2=93") == ["SpO₂ < 94 %"]
    assert crossed(catalogue, "insuffisance_cardiaque", "spo2=94") == []


def test_dt2_blood_pressure(catalogue):
    assert crossed(catalogue, "diabete_type_2", "ta=155/95") == ["TA > 150/90 mmHg"]
    assert crossed(catalogue, "diabete_type_2", "ta=140/95") == ["TA > 150/90 mmHg"]  # diastolic alone
    assert crossed(catalogue, "diabete_type_2", "ta=155/80") == ["TA > 150/90 mmHg"]  # systolic alone
    assert crossed(catalogue, "diabete_type_2", "ta=150/90") == []                    # strictly above
    assert crossed(catalogue, "diabete_type_2", "tas=160") == ["TA > 150/90 mmHg"]


def test_perinatalite_blood_pressure_is_an_alerte_critique(catalogue):
    hits, _ = check(catalogue, "perinatalite", "ta=145/92")
    assert [(h.seuil_texte, h.niveau) for h in hits] == [("TA ≥ 140/90 mmHg (« 14/9 »)", "alerte_critique")]
    assert crossed(catalogue, "perinatalite", "ta=140/85") != []   # ≥ : 140 counts
    assert crossed(catalogue, "perinatalite", "ta=14/9") != []     # the seed's cmHg notation
    assert crossed(catalogue, "perinatalite", "ta=135/85") == []


def test_ic_weight_gain_window(catalogue):
    assert crossed(catalogue, "insuffisance_cardiaque", "poids=+2.4kg/4j") == ["prise de poids > 2 kg en 3 à 5 j"]
    assert crossed(catalogue, "insuffisance_cardiaque", "poids=+2.4kg/5j") != []
    assert crossed(catalogue, "insuffisance_cardiaque", "poids=+2.4kg/2j") != []
    assert crossed(catalogue, "insuffisance_cardiaque", "poids=+2.4kg/8j") == []
    assert crossed(catalogue, "insuffisance_cardiaque", "poids=+1.5kg/4j") == []
    assert crossed(catalogue, "insuffisance_cardiaque", "poids=-3kg/4j") == []
    hits, ok = check(catalogue, "insuffisance_cardiaque", "poids=+2.4kg/8j")
    assert hits == [] and [m.window for m in ok] == [timedelta(days=8)]


def test_ic_other_thresholds(catalogue):
    assert crossed(catalogue, "insuffisance_cardiaque", "tas=85") == ["TA systolique < 90 mmHg"]
    assert crossed(catalogue, "insuffisance_cardiaque", "ta=85/50") == ["TA systolique < 90 mmHg"]
    assert crossed(catalogue, "insuffisance_cardiaque", "ta=120/70") == []
    assert crossed(catalogue, "insuffisance_cardiaque", "fc=45") == ["FC < 50 /min"]
    assert crossed(catalogue, "insuffisance_cardiaque", "fc=62") == []
    hits, _ = check(catalogue, "insuffisance_cardiaque", "hb=9.2")
    assert [h.seuil_texte for h in hits] == ["Hb < 10 g/dl"]
    assert "carence en fer" in hits[0].condition


def test_dt2_other_thresholds(catalogue):
    assert crossed(catalogue, "diabete_type_2", "poids=-12%") == ["perte de poids > 10 % du poids de base"]
    assert crossed(catalogue, "diabete_type_2", "poids=-8%") == []
    assert crossed(catalogue, "diabete_type_2", "cetonurie=positive") == ["cétonurie positive"]
    assert crossed(catalogue, "diabete_type_2", "cetonurie=negative") == []
    assert crossed(catalogue, "diabete_type_2", "grade_podo=+1") == ["grade podologique en hausse (variation > 0)"]
    assert crossed(catalogue, "diabete_type_2", "grade_podo=-1") == []


def test_several_measurements_at_once(catalogue):
    hits, ok = check_valeurs(catalogue["insuffisance_cardiaque"],
                                  parse_valeurs("spo2=91 fc=72; poids=+2.4kg/4j"))
    assert [h.code for h in hits] == ["desaturation", "prise_de_poids"]
    assert [m.raw for m in ok] == ["fc=72"]


def test_measure_the_parcours_does_not_define_is_not_applicable(catalogue):
    result = check(catalogue, "bpco", "hb=9", "spo2=88")
    hits, ok = result
    assert [h.code for h in hits] == ["desaturation"]
    assert [m.raw for m in ok] == ["hb=9"]
    assert [m.raw for m in result.not_applicable] == ["hb=9"]
    assert "non applicable" in explain_not_applicable(catalogue["bpco"], result.not_applicable[0])
    # Weight in kg where the parcours defines it in % (DT2): not applicable either.
    result = check(catalogue, "diabete_type_2", "poids=+3kg/2j")
    assert result.crossed == [] and [m.raw for m in result.not_applicable] == ["poids=+3kg/2j"]
    assert "perte de poids > 10 %" in explain_not_applicable(catalogue["diabete_type_2"], result.not_applicable[0])
    # Plaie has observed signs only.
    result = check(catalogue, "plaie", "spo2=80")
    assert result.crossed == [] and len(result.not_applicable) == 1


def test_thresholds_come_from_the_yaml(tmp_path):
    data = yaml.safe_load((default_directory() / "insuffisance_cardiaque.yaml").read_text(encoding="utf-8"))
    spo2 = next(m for m in data["red_flags"]["mesures"] if m["code"] == "desaturation")
    spo2["seuil"] = 92
    path = tmp_path / "insuffisance_cardiaque.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    edited = load_parcours_file(path)
    hits, _ = check_valeurs(edited, [parse_valeur("spo2=93")])
    assert hits == []
    hits, _ = check_valeurs(edited, [parse_valeur("spo2=91")])
    assert [h.seuil_texte for h in hits] == ["SpO₂ < 92 %"]


def test_no_clinical_threshold_in_the_python_code():
    """The red-flag numbers of the seeds appear as constants in neither module (docstrings aside)."""
    root = Path(__file__).resolve().parent.parent / "domain"
    for name in ("redflags.py", "parcours.py"):
        tree = ast.parse((root / name).read_text(encoding="utf-8"))
        numbers = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
                   and isinstance(node.value, (int, float)) and not isinstance(node.value, bool)}
        assert not numbers & {94, 90, 50, 150, 140}, name


# --- parsing ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("token, code, value, unit, window", [
    ("spo2=91", "spo2", 91, "%", None),
    ("spo2=91%", "spo2", 91, "%", None),
    ("SpO₂ = 91 %", "spo2", 91, "%", None),
    ("sat:88", "spo2", 88, "%", None),
    ("tas=85", "tas", 85, "mmHg", None),
    ("ta=155/95", "ta", (155, 95), "mmHg", None),
    ("TA=155/95mmHg", "ta", (155, 95), "mmHg", None),
    ("fc=45", "fc", 45, "/min", None),
    ("fc=45bpm", "fc", 45, "/min", None),
    ("hb=9.2", "hb", 9.2, "g/dl", None),
    ("hb=9,2", "hb", 9.2, "g/dl", None),
    ("poids=+2.4kg/4j", "poids", 2.4, "kg", timedelta(days=4)),
    ("poids=+2,4kg/96h", "poids", 2.4, "kg", timedelta(hours=96)),
    ("poids=-12%", "poids", -12, "%", None),
    ("cetonurie=positive", "cetonurie", True, None, None),
    ("cétonurie=+", "cetonurie", True, None, None),
    ("cetonurie=oui", "cetonurie", True, None, None),
    ("cetonurie=négative", "cetonurie", False, None, None),
    ("vems_cvf=45%", "vems_cvf", 45, "%", None),
    ("VEMS/CVF=45", "vems_cvf", 45, "%", None),
    ("grade_podo=+1", "grade_podologique", 1, None, None),
])
def test_parse_measurement(token, code, value, unit, window):
    m = parse_valeur(token)
    assert isinstance(m, Valeur)
    assert (m.code, m.value, m.unit, m.window, m.raw) == (code, value, unit, window, token)


def test_cmhg_pressure_is_converted_and_said():
    m = parse_valeur("ta=15.5/9.5")
    assert (m.value, m.unit) == ((155, 95), "mmHg")
    assert "cmHg" in m.note and "155/95 mmHg" in m.note
    assert parse_valeur("ta=15,5/9,5").value == (155, 95)
    assert parse_valeur("tas=8.5").value == 85 and "cmHg" in parse_valeur("tas=8.5").note
    assert parse_valeur("ta=155/95").note is None


def test_hemoglobin_in_g_per_litre_is_converted():
    m = parse_valeur("hb=92g/l")
    assert (m.value, m.unit) == (9.2, "g/dl") and "g/l" in m.note


@pytest.mark.parametrize("token, words", [
    ("poids=2.4", ["ambigu", "poids=+2.4kg/4j", "poids=-12%"]),
    ("poids=72kg", ["ambigu", "poids=+2.4kg/4j"]),
    ("poids=+2.4kg", ["sur combien de temps", "poids=+2.4kg/4j"]),
    ("poids=+2kg/4 jours ouvrés", ["durée invalide"]),
    ("xyz=3", ["paramètre inconnu « xyz »", "spo2=91"]),
    ("tension artérielle", ["paramètre=valeur", "spo2=91"]),
    ("spo2=", ["valeur manquante", "spo2=91"]),
    ("spo2=0.91", ["ambigu", "spo2=91"]),
    ("spo2=120", ["pourcentage ne dépasse pas 100"]),
    ("spo2=-3", ["sans signe"]),
    ("spo2=beaucoup", ["illisible", "spo2=91"]),
    ("hb=92", ["ambigu", "g/l ou g/dl", "hb=9.2"]),
    ("ta=155/9", ["cmHg et mmHg", "ta=155/95"]),
    ("ta=80/120", ["systolique"]),
    ("ta=155", ["systolique/diastolique", "ta=155/95"]),
    ("grade_podo=2", ["variation", "grade_podo=+1"]),
    ("cetonurie=peut-être", ["positive ou negative", "cetonurie=positive"]),
])
def test_ambiguous_or_unknown_values_are_refused_in_french(token, words):
    with pytest.raises(ValeurError) as info:
        parse_valeur(token)
    message = str(info.value)
    assert message.startswith(f"« {token.strip()} »")
    for w in words:
        assert w in message, message
