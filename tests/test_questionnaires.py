"""Tier 1: the questionnaire files (data/questionnaires/*.yaml) and the pure engine (domain/questionnaires.py)."""
from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path

import pytest
import yaml

from domain.questionnaires import Questionnaire as Qn
from domain.questionnaires import QuestionnaireError as Err
from domain.questionnaires import (
    Reponse,
    ReponseInvalide,
    load_questionnaire_file,
    load_questionnaires,
    parse_reponse,
    prochaine_question,
    reponse_au_vote,
    resume,
)

ROOT = Path(__file__).resolve().parent.parent
QDIR = ROOT / "data" / "questionnaires"
SEEDS = Path(os.environ.get("CERCLE_SEEDS", Path(__file__).resolve().parents[2] / "shared" / "seeds"))  # as test_parcours
SEED = SEEDS / "002_68f8954f03a3cc31.txt"


@pytest.fixture(scope="module")
def qns():
    return load_questionnaires()


def _plain(text: str) -> str:
    return " ".join(re.sub(r"\*", "", text).replace("’", "'").split())


def test_the_three_vigie_questionnaires_are_loaded(qns):
    assert sorted(qns) == ["vigie-j0", "vigie-j30", "vigie-j7"]
    assert [(qns[c].questionnaire, qns[c].jour, len(qns[c].questions)) for c in ("vigie-j0", "vigie-j7", "vigie-j30")] \
        == [("J0", 0, 12), ("J7", 7, 6), ("J30", 30, 12)]
    j7 = qns["vigie-j7"]
    assert j7.questions[3].type == "choix_multiple"
    assert j7.questions[3].choix == ["Coordination CPTS", "DAC", "Médecin", "Infirmière", "Pas de ressource", "Autre"]
    assert (j7.questions[1].condition.question, j7.questions[1].condition.egal) == (1, "Non")
    assert j7.questions[4].condition.sauf == ["Pas de ressource"]
    assert [q.texte for q in qns["vigie-j30"].questions[:5]] == [q.texte for q in j7.questions[:5]]
    assert [qns[c].destinataire for c in ("vigie-j0", "vigie-j7", "vigie-j30")] == ["demandeur", "porteur", "porteur"]


@pytest.mark.skipif(not SEED.exists(), reason="seeds absent")
def test_every_question_is_verbatim_at_its_cited_lines(qns):
    lines = SEED.read_text(encoding="utf-8").splitlines()
    for qn in qns.values():
        for q in qn.questions:
            lo, _, hi = q.source.removeprefix("S002 L").partition("-")
            cited = _plain(" ".join(lines[int(lo) - 1:int(hi or lo)]))
            assert _plain(f"Q{q.numero}. {q.texte}") in cited, (qn.code, q.numero)
            if q.type_imprime:
                assert f"({q.type_imprime})" in cited, (qn.code, q.numero)
            for c in q.choix:
                assert c in cited, (qn.code, q.numero, c)


def test_the_indicators_are_the_ones_of_the_issue(qns):
    """issue 15 §4: not reachable, request not yet handled, hospitalised since inclusion, deceased, no resource."""
    assert [i.code for i in qns["vigie-j30"].indicateurs] == [
        "patient_non_joignable", "demande_non_traitee", "aucune_ressource", "hospitalise", "decede"]
    assert {i.code for i in qns["vigie-j7"].indicateurs} == {
        "patient_non_joignable", "demande_non_traitee", "aucune_ressource", "hospitalise"}
    hosp = next(i for i in qns["vigie-j7"].indicateurs if i.code == "hospitalise")
    assert qns["vigie-j7"].question(hosp.question).texte.startswith("Le patient a-t-il été hospitalisé")


def _write(tmp_path, data: dict, name: str) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize("change, where, reason", [
    (lambda d: d["questions"][1].update(condition={"question": 1, "egal": "Peut-être"}),
     "questions[1].condition", "« Peut-être » n'est pas un choix de Q1"),
    (lambda d: d["questions"][0].update(condition={"question": 2, "egal": "Oui"}),
     "questions[0].condition.question", "ne précède pas Q1"),
    (lambda d: d["questions"][0].update(type="nombre"), "questions[0]", "pas de choix"),
    (lambda d: d["questions"][0].pop("source"), "questions[0].source", "valeur manquante"),
    (lambda d: d["questions"][2].update(numero=9), "questions[2].numero", "3 attendu"),
    (lambda d: d["indicateurs"][0].update(si=["Peut-être"]), "indicateurs[0]", "n'est pas un choix de Q2"),
    (lambda d: d["questions"][3].update(type="case"), "questions[3].type", "non autorisée"),
])
def test_a_bad_file_is_refused_with_its_key(tmp_path, change, where, reason):
    data = yaml.safe_load((QDIR / "vigie-j7.yaml").read_text(encoding="utf-8"))
    change(data)
    with pytest.raises(Err) as e:
        load_questionnaire_file(_write(tmp_path, data, "vigie-j7.yaml"))
    assert f"vigie-j7.yaml: {where}" in str(e.value) and reason in str(e.value), str(e.value)


def test_a_file_named_otherwise_is_refused(tmp_path):
    data = yaml.safe_load((QDIR / "vigie-j7.yaml").read_text(encoding="utf-8"))
    with pytest.raises(Err, match="nom du fichier"):
        load_questionnaire_file(_write(tmp_path, data, "autre.yaml"))


# --- the engine ---------------------------------------------------------------------------------------

def _answer(qn, reponses, numero, typed):
    r = parse_reponse(qn.question(numero), typed)
    assert isinstance(r, Reponse), r
    reponses[numero] = r


def test_j7_skips_what_does_not_apply(qns):
    j7, rep = qns["vigie-j7"], {}
    assert prochaine_question(j7, rep).numero == 1
    _answer(j7, rep, 1, "oui")
    assert prochaine_question(j7, rep).numero == 3  # Q2 « Si non » skipped
    _answer(j7, rep, 3, "1")
    _answer(j7, rep, 4, "5")  # « Pas de ressource » only
    assert prochaine_question(j7, rep).numero == 6  # Q5 « Si des ressources » skipped
    _answer(j7, rep, 6, "Non")
    assert prochaine_question(j7, rep) is None
    lines = resume(j7, rep).lignes
    assert [(li.numero, li.reponse) for li in lines] == [(1, "Oui"), (2, None), (3, "Oui"), (4, "Pas de ressource"),
                                                         (5, None), (6, "Non")]


def test_a_skipped_question_skips_its_followups(qns):
    j30, rep = qns["vigie-j30"], {}
    for n, a in [(1, "non"), (2, "patient non"), (4, "dac, infirmiere"), (5, "sous 48 h"), (6, "non")]:
        assert prochaine_question(j30, rep).numero == n
        _answer(j30, rep, n, a)
    assert rep[2].choix == ("Patient non joignable",) and rep[4].choix == ("DAC", "Infirmière")
    assert prochaine_question(j30, rep).numero == 8  # Q7 needs Q6 = Oui


def test_typed_answers(qns):
    q = qns["vigie-j7"].question(4)
    assert parse_reponse(q, "1, 3").choix == ("Coordination CPTS", "Médecin")
    assert parse_reponse(q, "3 1").choix == ("Coordination CPTS", "Médecin")
    assert parse_reponse(q, "DAC et autre").choix == ("DAC", "Autre")
    bad = parse_reponse(q, "7")
    assert isinstance(bad, ReponseInvalide) and "1 = Coordination CPTS" in bad.attendu
    yes_no = qns["vigie-j7"].question(1)
    assert parse_reponse(yes_no, "Oui.").choix == ("Oui",)
    assert parse_reponse(yes_no, "2").choix == ("Non",)
    assert isinstance(parse_reponse(yes_no, "peut-être"), ReponseInvalide)
    assert parse_reponse(qns["vigie-j7"].question(5), "  sous 48 h ").texte == "sous 48 h"


def test_numbers_and_dates():
    qn = Qn.model_validate({
        "code": "essai", "parcours": "essai", "questionnaire": "E", "titre": "essai", "jour": 0, "destinataire": "porteur", "sources": ["test"],
        "questions": [{"numero": 1, "texte": "Poids ?", "type": "nombre", "unite": "kg", "source": "test"},
                      {"numero": 2, "texte": "Sortie ?", "type": "date", "source": "test"}]})
    poids, sortie = qn.questions
    r = parse_reponse(poids, "78,5 kg")
    assert (r.nombre, r.unite, r.affichage()) == (78.5, "kg", "78,5 kg")
    assert parse_reponse(poids, "78").affichage() == "78 kg"
    assert "kg attendu" in parse_reponse(poids, "78 cm").raison
    assert parse_reponse(sortie, "12/03/26").jour == date(2026, 3, 12)
    assert "impossible" in parse_reponse(sortie, "31/02/2026").raison
    assert Reponse.from_json(parse_reponse(sortie, "1/4/2026").to_json()).jour == date(2026, 4, 1)


def test_votes_are_positions_in_the_choices(qns):
    q4, q1 = qns["vigie-j7"].question(4), qns["vigie-j7"].question(1)
    assert reponse_au_vote(q4, ["2", "4"]).choix == ("DAC", "Infirmière")
    assert reponse_au_vote(q1, ["2"]).choix == ("Non",)
    assert reponse_au_vote(q1, ["1", "2"]) is None and reponse_au_vote(q1, []) is None
    assert reponse_au_vote(q1, ["3"]) is None and reponse_au_vote(q1, ["oui"]) is None


def test_the_vigie_questionnaires_as_the_seed_prints_them(qns):
    """S002 L198-380 (spec §6): 12, 6 and 12 questions at J0, J7, J30, with their conditions."""
    j0, j7, j30 = (qns[f"vigie-{c}"] for c in ("j0", "j7", "j30"))
    assert [len(q.questions) for q in (j0, j7, j30)] == [12, 6, 12]
    assert [q.jour for q in (j0, j7, j30)] == [0, 7, 30]
    assert j0.questions[0].texte == ("Dans le cadre de cette PEC, le patient donne son accord pour être rappelé "
                                     "par le service.")
    assert j0.questions[5].texte == "Si oui, pouvez-vous précisez son nom et prénom ?"  # sic
    assert (j0.questions[5].condition.question, j0.questions[5].condition.egal) == (5, "Oui")
    assert (j0.questions[11].type, j0.questions[11].type_imprime) == ("choix_unique", "Condition - Choix unique")
    assert j7.questions[3].type == "choix_multiple"
    assert j7.questions[3].choix == ["Coordination CPTS", "DAC", "Médecin", "Infirmière", "Pas de ressource", "Autre"]
    assert j7.questions[4].condition.sauf == ["Pas de ressource"]
    assert [q.texte for q in j30.questions[:5]] == [q.texte for q in j7.questions[:5]]
    assert j30.questions[11].texte == "Le patient est-il décédé ?"
    assert (j30.questions[6].condition.question, j30.questions[6].condition.egal) == (6, "Oui")
