"""The parcours catalogue (data/parcours/*.yaml) and its loader (domain.parcours).

Key values are checked against domain-spec.md §2 / §3.1 / §6 and decisions.md; malformed files
must be refused with one French line naming the file, the key path and the reason. When the
seed documents are present, every citation in the YAML is checked against them.
"""
from __future__ import annotations

import os
import re
from datetime import date, timedelta
from pathlib import Path

import pytest
import yaml

from domain.parcours import (
    CatalogueError,
    Parcours,
    default_directory,
    find_parcours,
    load_catalogue,
    load_parcours_file,
    parse_duration,
    parse_periode,
)

CODES = {
    "insuffisance_cardiaque", "bpco", "diabete_type_2", "plaie", "perinatalite", "suivi_gynecologique",
    "sport_sante", "snp", "tcim", "recherche_mt", "vigie_senior",
}
PARCOURS_DIR = default_directory()
# shared/ lies beside the checkout (here, in CI and on developer machines).
SEEDS = Path(os.environ.get("CERCLE_SEEDS", Path(__file__).resolve().parents[2] / "shared" / "seeds"))


@pytest.fixture(scope="module")
def catalogue() -> dict[str, Parcours]:
    return load_catalogue()


def mesures(p: Parcours) -> dict:
    return {m.code: m for _, m in p.seuils()}


# --- every file ----------------------------------------------------------------------------------

def test_catalogue_holds_every_parcours(catalogue):
    assert set(catalogue) == CODES
    assert PARCOURS_DIR == Path(__file__).resolve().parent.parent / "data" / "parcours"


@pytest.mark.parametrize("code", sorted(CODES))
def test_each_file_loads_on_its_own(code):
    p = load_parcours_file(PARCOURS_DIR / f"{code}.yaml")
    assert p.code == code
    assert p.nom and p.sources and p.inclusion.criteres and p.fin.texte


@pytest.mark.parametrize("code", sorted(CODES))
def test_json_round_trip(catalogue, code):
    """Durations and periods serialise back to their YAML form ("8h", "3ans") and reload identically."""
    p = catalogue[code]
    assert Parcours.model_validate(p.model_dump(mode="json")) == p


def test_medecin_traitant_requis_per_parcours(catalogue):
    # S000 L233 « Seuls les patients qui ont un médecin traitant identifié… » ; exceptions spec §1.3.
    required = {"insuffisance_cardiaque", "bpco", "diabete_type_2", "plaie", "perinatalite", "suivi_gynecologique",
                "sport_sante"}
    assert {c for c, p in catalogue.items() if p.inclusion.medecin_traitant_requis} == required


def test_chronic_parcours_have_no_reminder_interval(catalogue):
    # decisions.md 16: reminders only where the documents give an interval.
    for code in ("insuffisance_cardiaque", "bpco", "diabete_type_2"):
        p = catalogue[code]
        assert p.categorie == "chronique"
        assert p.elements_de_suivi and all(e.rappel is None for e in p.elements_de_suivi)
        assert p.inclusion.qui == ["medecin_traitant"]
        assert "carte d'intégration" in p.inclusion.document_integration
        assert p.red_flags.delai_acceptation == timedelta(hours=8)
        assert (p.red_flags.cible, p.red_flags.repli) == ("medecin_traitant", "medecin_generaliste")
        assert p.delais["referent_parcours"].reponse == timedelta(days=4)
        assert p.delais["referent_parcours"].intervention == timedelta(days=10)


# --- one test per parcours -----------------------------------------------------------------------

def test_insuffisance_cardiaque(catalogue):
    ic = catalogue["insuffisance_cardiaque"]
    assert ic.nom == "Insuffisance cardiaque"
    m = mesures(ic)
    assert (m["desaturation"].grandeur, m["desaturation"].operateur, m["desaturation"].seuil,
            m["desaturation"].unite) == ("spo2", "<", 94, "%")
    assert m["desaturation"].texte == "SpO₂ < 94 %"
    assert (m["bradycardie"].grandeur, m["bradycardie"].operateur, m["bradycardie"].seuil) == ("fc", "<", 50)
    assert (m["hypotension"].grandeur, m["hypotension"].operateur, m["hypotension"].seuil,
            m["hypotension"].unite) == ("tas", "<", 90, "mmHg")
    assert (m["anemie"].grandeur, m["anemie"].operateur, m["anemie"].seuil, m["anemie"].unite) == ("hb", "<", 10, "g/dl")
    assert "carence en fer" in m["anemie"].condition
    poids = m["prise_de_poids"]
    assert (poids.grandeur, poids.operateur, poids.seuil, poids.unite) == ("poids", ">", 2, "kg")
    assert poids.fenetre == timedelta(days=5)
    assert [c.code for c in ic.red_flags.constates] == [
        "majoration_dyspnee", "majoration_omi", "confusion", "asthenie_brutale", "malaise"]
    assert [d.code for d in ic.donnees_de_base] == [
        "poids", "frequence_cardiaque", "dfg", "hemoglobine", "arythmie", "nyha"]
    assert len(ic.elements_de_suivi) == 6
    assert ic.alerte_critique is None


def test_bpco(catalogue):
    bpco = catalogue["bpco"]
    m = mesures(bpco)
    assert set(m) == {"desaturation", "vems_cvf_bas"}
    assert (m["desaturation"].grandeur, m["desaturation"].operateur, m["desaturation"].seuil) == ("spo2", "<", 90)
    assert (m["vems_cvf_bas"].grandeur, m["vems_cvf_bas"].operateur, m["vems_cvf_bas"].seuil) == ("vems_cvf", "<", 50)
    # The seed lists both under « Constatés » only: still offered as observed signs.
    assert all(x.rubrique_source == "constates" for x in m.values())
    assert [c.libelle for c in bpco.red_flags.constates] == [
        "Passage au stade 3 ou VEMS/CVF < 50%", "Dyspnée accrue et/ou SpO2 < 90%"]
    assert bpco.red_flags.delai_acceptation == timedelta(hours=8)
    stade = next(d for d in bpco.donnees_de_base if d.code == "stade")
    assert len(stade.options) == 4


def test_diabete_type_2(catalogue):
    dt2 = catalogue["diabete_type_2"]
    m = mesures(dt2)
    hta = m["hta"]
    assert (hta.grandeur, hta.operateur, hta.seuil, hta.unite, hta.combinaison) == ("ta", ">", (150, 90), "mmHg", "ou")
    assert hta.texte == "TA > 150/90 mmHg"
    perte = m["perte_de_poids"]
    assert (perte.grandeur, perte.operateur, perte.seuil, perte.unite) == ("poids", "<", -10, "%")
    assert (m["cetonurie"].operateur, m["cetonurie"].seuil) == ("=", True)
    assert m["augmentation_grade_podologique"].grandeur == "grade_podologique"
    # « Baisse brutale de la clairance » has no number: an observed sign, not a threshold.
    assert "baisse_clairance" in {c.code for c in dt2.red_flags.constates}
    assert "baisse_clairance" not in m
    assert len(dt2.donnees_de_base) == 10
    assert dt2.red_flags.delai_acceptation == timedelta(hours=8)


def test_plaie(catalogue):
    plaie = catalogue["plaie"]
    assert plaie.inclusion.qui == ["infirmier"]
    # The seed names the « Tableau des données initiales de plaie » without its items (decisions.md 17).
    assert plaie.donnees_de_base and all(d.defaut_configurable for d in plaie.donnees_de_base)
    fiche = plaie.element("fiche_suivi_pansement")
    assert fiche.rappel.tous_les_min == parse_periode("10j")
    assert fiche.rappel.tous_les_max == parse_periode("30j")
    assert fiche.champs and all(c.defaut_configurable for c in fiche.champs)
    assert [c.code for c in plaie.red_flags.constates] == ["stagnation", "aggravation", "complication"]
    assert plaie.red_flags.mesures == []
    assert plaie.red_flags.delai_acceptation == timedelta(hours=8)
    assert (plaie.fin.raison_obligatoire, plaie.fin.archiver, plaie.fin.par_defaut) == (True, True, False)
    # The other parcours' end rule is a documented default.
    assert all(p.fin.par_defaut for c, p in catalogue.items() if c != "plaie")


def test_perinatalite(catalogue):
    perinat = catalogue["perinatalite"]
    assert perinat.red_flags is None
    assert perinat.inclusion.document_integration == "le document « intégration parcours »"
    assert {"sage_femme", "medecin_generaliste"} <= set(perinat.inclusion.qui)
    sa = {e.code: e.rappel.sa for e in perinat.elements_de_suivi if e.rappel and e.rappel.sa}
    assert sa == {"declaration_grossesse": 15, "inscription_maternite": 15, "rhesus_foetal": 13,
                  "echographie_t1": 11, "depistage_combine": 11, "echographie_t2": 20, "diabete_gestationnel": 24,
                  "echographie_t3": 30, "prelevement_vaginal": 34, "consultation_anesthesie": 32}
    assert all(perinat.element(c).rappel.depart == "date_debut_grossesse" for c in sa)
    assert perinat.element("echographie_t1").rappel.delai_sa == timedelta(weeks=11)
    for code in ("prevention_bucco_dentaire", "entretien_prenatal"):
        r = perinat.element(code).rappel
        assert (r.tous_les, r.depart, r.jusqu_a) == (parse_periode("1mois"), "declaration_grossesse", "date_accouchement")
    post = {c: perinat.element(c).rappel for c in ("entretien_post_natal", "consultation_post_natale")}
    assert post["entretien_post_natal"].a.apres(date(2026, 6, 1)) == date(2026, 6, 22)  # 3 semaines
    assert post["consultation_post_natale"].a.apres(date(2026, 6, 1)) == date(2026, 6, 29)  # 4 semaines
    assert all(r.depart == "date_accouchement" for r in post.values())
    assert [a.declencher for a in perinat.element("diabete_gestationnel").si_positif] == ["medecin_traitant", "dieteticien"]
    ac = perinat.alerte_critique
    assert ac.delai_consultation == timedelta(hours=8)
    assert len(ac.constates) == 8
    ta = mesures(perinat)["ta_elevee"]
    assert (ta.grandeur, ta.operateur, ta.seuil, ta.combinaison, ta.unite) == ("ta", ">=", (140, 90), "ou", "mmHg")
    assert set(ac.mentionner) == {"sage_femme", "medecin_traitant"}


def test_suivi_gynecologique(catalogue):
    gyn = catalogue["suivi_gynecologique"]
    assert gyn.nom == "Rupture de suivi gynécologique"
    assert gyn.red_flags is None and gyn.inclusion.document_integration is None
    assert {"sage_femme", "referent_parcours"} <= set(gyn.inclusion.qui)
    young, older = gyn.element("frottis").rappel.phases
    assert (young.age_min, young.age_max, young.premier, young.tous_les) == (25, 30, parse_periode("1an"),
                                                                            parse_periode("3ans"))
    assert (older.age_min, older.age_max, older.premier, older.tous_les) == (30, 65, None, parse_periode("5ans"))
    [mammo] = gyn.element("mammographie").rappel.phases
    assert (mammo.age_min, mammo.age_max, mammo.tous_les) == (50, None, parse_periode("2ans"))
    orale = gyn.element("contraception_orale_bilan").rappel
    assert orale.tous_les == parse_periode("1an") and "orale" in orale.condition
    assert gyn.element("contraception_implant_sterilet").rappel.a_saisir == "durée d'action"
    assert parse_periode("3ans").apres(date(2024, 2, 29)) == date(2027, 2, 28)


def test_sport_sante(catalogue):
    sport = catalogue["sport_sante"]
    assert sport.categorie == "adressage"
    for key in ("referent_parcours", "maison_sport_sante", "structure_sportive"):
        assert (sport.delais[key].reponse, sport.delais[key].intervention) == (timedelta(days=4), timedelta(days=10))
    assert "ordonnance" in sport.inclusion.document_integration


def test_snp(catalogue):
    snp = catalogue["snp"]
    d = snp.delais
    assert d["priorite_mt"].reponse == timedelta(hours=2)
    assert d["cot_snp"].reponse == timedelta(hours=4)
    assert d["prise_en_charge"].prise_en_charge == timedelta(hours=24)
    assert d["renouvellement_ordonnance"].prise_en_charge == timedelta(hours=48)
    assert snp.fin.evenement == "fiche close"


def test_recherche_mt(catalogue):
    d = catalogue["recherche_mt"].delais["recherche_mt"]
    assert (d.reponse, d.intervention) == (timedelta(days=30), timedelta(days=14))
    assert d.intervenant == "Médecin généraliste"


def test_vigie_senior(catalogue):
    vigie = catalogue["vigie_senior"]
    d = vigie.delais["vigie"]
    assert (d.reponse, d.intervention, d.intervenant) == (timedelta(days=4), timedelta(days=10), "Vigie Référent")



def test_tcim(catalogue):
    tcim = catalogue["tcim"]
    assert tcim.delais["tcim_medecin"].duree_estimee == timedelta(minutes=15)
    assert tcim.delais["tcim_ide"].duree_estimee == timedelta(minutes=60)
    assert tcim.tcim.toutes_requises and len(tcim.tcim.eligibilite) == 2
    assert tcim.tcim.motifs_compatibles == ["soin non programmé", "réévaluation du traitement"]
    assert [c.code for c in tcim.tcim.charte_avant] == ["identite", "consentement", "capacite_communiquer",
                                                         "confidentialite"]
    assert all(c.obligatoire for c in tcim.tcim.charte_avant)
    assert [c.obligatoire for c in tcim.tcim.charte_fin] == [False, False]
    assert not tcim.inclusion.medecin_traitant_requis


# --- lookup and durations ------------------------------------------------------------------------

@pytest.mark.parametrize("text, code", [
    ("ic", "insuffisance_cardiaque"), ("IC", "insuffisance_cardiaque"),
    ("insuffisance cardiaque", "insuffisance_cardiaque"), ("Insuffisance Cardiaque", "insuffisance_cardiaque"),
    ("bpco", "bpco"), ("BPCO", "bpco"), ("dt2", "diabete_type_2"), ("diabete", "diabete_type_2"),
    ("Diabète", "diabete_type_2"), ("perinat", "perinatalite"), ("Périnatalité", "perinatalite"),
    ("gyneco", "suivi_gynecologique"), ("gynéco", "suivi_gynecologique"), ("plaie", "plaie"),
    ("sport-santé", "sport_sante"), ("snp", "snp"), ("tcim", "tcim"), ("visio ccim", "tcim"),
    ("recherche mt", "recherche_mt"), ("vigie", "vigie_senior"), ("vigie_senior", "vigie_senior"),
    ("diab", "diabete_type_2"),
])
def test_find_parcours(catalogue, text, code):
    assert find_parcours(catalogue, text).code == code


@pytest.mark.parametrize("text", ["", "cardio-pneumo", "xyz", "di"])
def test_find_parcours_unknown(catalogue, text):
    assert find_parcours(catalogue, text) is None


@pytest.mark.parametrize("text, expected", [
    ("8h", timedelta(hours=8)), ("4j", timedelta(days=4)), ("30min", timedelta(minutes=30)),
    ("2sem", timedelta(weeks=2)), ("15min", timedelta(minutes=15)), ("4 jours", timedelta(days=4)),
    ("1,5h", timedelta(minutes=90)), ("30J", timedelta(days=30)),
])
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["8", "", "h", "4 jours ouvrés", "-4j", "0h", "4x", "30s", 8, None])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError, match="durée"):
        parse_duration(text)


# --- malformed files ----------------------------------------------------------------------------

def _bpco() -> dict:
    return yaml.safe_load((PARCOURS_DIR / "bpco.yaml").read_text(encoding="utf-8"))


def _write(tmp_path: Path, data: dict, name: str = "bpco.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def _refused(path: Path, key: str, reason: str) -> str:
    with pytest.raises(CatalogueError) as info:
        load_parcours_file(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}: "), message
    assert reason in message, message
    return message


def test_missing_key_is_refused(tmp_path):
    data = _bpco()
    del data["red_flags"]["mesures"][0]["seuil"]
    _refused(_write(tmp_path, data), "red_flags.mesures[0].seuil", "valeur manquante")


def test_missing_top_level_key_is_refused(tmp_path):
    data = _bpco()
    del data["inclusion"]["medecin_traitant_requis"]
    _refused(_write(tmp_path, data), "inclusion.medecin_traitant_requis", "valeur manquante")


def test_unknown_key_is_refused(tmp_path):
    data = _bpco()
    data["red_flags"]["mesures"][1]["seuill"] = 88
    _refused(_write(tmp_path, data), "red_flags.mesures[1].seuill", "clé inconnue")


def test_bad_duration_is_refused(tmp_path):
    data = _bpco()
    data["red_flags"]["delai_acceptation"] = "8 heures ouvrées"
    _refused(_write(tmp_path, data), "red_flags.delai_acceptation", "durée invalide « 8 heures ouvrées »")


def test_bare_number_duration_is_refused(tmp_path):
    data = _bpco()
    data["delais"]["referent_parcours"]["reponse"] = 4
    _refused(_write(tmp_path, data), "delais.referent_parcours.reponse", "sans unité")


def test_bad_operator_is_refused(tmp_path):
    data = _bpco()
    data["red_flags"]["mesures"][1]["operateur"] = "=>"
    _refused(_write(tmp_path, data), "red_flags.mesures[1].operateur", "valeur « => » non autorisée")


def test_incoherent_threshold_is_refused(tmp_path):
    data = _bpco()
    data["red_flags"]["mesures"][1]["unite"] = "mmHg"
    _refused(_write(tmp_path, data), "red_flags.mesures[1].unite", "incompatible avec spo2")
    data = _bpco()
    data["red_flags"]["mesures"][1]["seuil"] = [90, 80]
    _refused(_write(tmp_path, data), "red_flags.mesures[1].seuil", "un nombre est attendu pour spo2")
    data = _bpco()
    data["red_flags"]["mesures"][1]["seuil_texte"] = "SpO₂ < 92 %"
    _refused(_write(tmp_path, data), "red_flags.mesures[1].seuil_texte", "ne montre pas le seuil 90")


def test_unknown_profession_is_refused(tmp_path):
    data = _bpco()
    data["inclusion"]["qui"] = ["medecin_traitant", "sage-femme"]
    _refused(_write(tmp_path, data), "inclusion.qui[1]", "code en minuscules")
    data["inclusion"]["qui"] = ["medecin_traitant", "astronaute"]
    _refused(_write(tmp_path, data), "inclusion.qui[1]", "profession ou rôle inconnu « astronaute »")


def test_bad_reminder_anchor_is_refused(tmp_path):
    data = yaml.safe_load((PARCOURS_DIR / "perinatalite.yaml").read_text(encoding="utf-8"))
    data["elements_de_suivi"][1]["rappel"]["depart"] = "date_des_regles"
    _refused(_write(tmp_path, data, "perinatalite.yaml"), "elements_de_suivi[1].rappel.depart", "« date_des_regles »")
    data = yaml.safe_load((PARCOURS_DIR / "perinatalite.yaml").read_text(encoding="utf-8"))
    data["elements_de_suivi"][1]["rappel"]["tous_les"] = "1mois"
    _refused(_write(tmp_path, data, "perinatalite.yaml"), "elements_de_suivi[1].rappel", "un seul réglage de temps")


def test_duplicate_yaml_key_is_refused(tmp_path):
    text = (PARCOURS_DIR / "bpco.yaml").read_text(encoding="utf-8")
    text = text.replace("      seuil: 90", "      seuil: 90\n      seuil: 88", 1)
    path = tmp_path / "bpco.yaml"
    path.write_text(text, encoding="utf-8")
    _refused(path, "(yaml)", "clé « seuil » en double")


@pytest.mark.parametrize("text, reason", [("", "fichier vide"), ("- a\n- b\n", "objet (clé: valeur)"),
                                          ("code: [bpco\n", "YAML invalide")])
def test_unreadable_file_is_refused(tmp_path, text, reason):
    path = tmp_path / "bpco.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CatalogueError, match=re.escape(reason)) as info:
        load_parcours_file(path)
    assert str(info.value).startswith(f"{path}: ")


def test_catalogue_refuses_duplicate_codes(tmp_path):
    _write(tmp_path, _bpco(), "a_bpco.yaml")
    _write(tmp_path, _bpco(), "bpco.yaml")
    with pytest.raises(CatalogueError, match=r"bpco\.yaml: code: code « bpco » déjà défini par .*a_bpco\.yaml"):
        load_catalogue(tmp_path)


def test_catalogue_refuses_file_named_after_another_code(tmp_path):
    _write(tmp_path, _bpco(), "broncho.yaml")
    with pytest.raises(CatalogueError, match=r"broncho\.yaml: code: .*bpco\.yaml"):
        load_catalogue(tmp_path)


def test_catalogue_refuses_clashing_aliases(tmp_path):
    _write(tmp_path, _bpco(), "bpco.yaml")
    other = yaml.safe_load((PARCOURS_DIR / "insuffisance_cardiaque.yaml").read_text(encoding="utf-8"))
    other["aliases"].append("BPCO")
    _write(tmp_path, other, "insuffisance_cardiaque.yaml")
    with pytest.raises(CatalogueError, match="aliases: « bpco » désigne déjà le parcours"):
        load_catalogue(tmp_path)


def test_catalogue_refuses_empty_directory(tmp_path):
    with pytest.raises(CatalogueError, match="aucun fichier"):
        load_catalogue(tmp_path)


# --- sources --------------------------------------------------------------------------------------

_VALUE_KEYS = re.compile(r"(?:^|[\s{,])(seuil|delai_acceptation|delai_consultation|reponse|intervention|prise_en_charge|"
                         r"duree_estimee|fenetre|tous_les|tous_les_min|tous_les_max|sa|a|medecin_traitant_requis)"
                         r"\s*:\s*[^\s{]")


def test_every_value_cites_its_source():
    """Every threshold, délai, interval and MT rule carries a citation comment on its line."""
    missing = []
    for path in sorted(PARCOURS_DIR.glob("*.yaml")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code_part = line.split("#", 1)[0]
            if _VALUE_KEYS.search(code_part) and "null" not in code_part:
                comment = line.split("#", 1)[1] if "#" in line else ""
                if not re.search(r"S00[0234] L\d+|decisions\.md|spec §", comment):
                    missing.append(f"{path.name}:{number}: {line.strip()}")
    assert not missing, "\n".join(missing)


def _seed_lines() -> dict[str, list[str]]:
    if not SEEDS.is_dir():
        pytest.skip(f"documents sources absents ({SEEDS}) : vérification des citations ignorée")
    return {f"S{p.name[:3]}": p.read_text(encoding="utf-8").splitlines() for p in SEEDS.glob("0*.txt")}


def _plain(text: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)      # markdown links
    text = re.sub(r"<[^>]+>|\*\*|\$", "", text).replace("\\geq", "≥").replace("’", "'")
    return " ".join(text.split()).casefold()


_CITATION = re.compile(r"(S00\d)\s+(?:§\S+\s+)?L(\d+)(?:-(\d+))?((?:\s*(?:,|et)\s*L\d+(?:-\d+)?)*)((?:\s*«[^»]*»)*)")


def test_citations_point_at_the_quoted_seed_lines():
    """`# S000 L301 « … »`: the line exists and the quoted words are on the cited lines."""
    seeds = _seed_lines()
    problems, checked = [], 0
    for path in sorted(PARCOURS_DIR.glob("*.yaml")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "#" not in line:
                continue
            for m in _CITATION.finditer(line[line.index("#"):]):
                src, first, last, more, quotes = m.groups()
                ranges = [(int(first), int(last or first))]
                ranges += [(int(a), int(b or a)) for a, b in re.findall(r"L(\d+)(?:-(\d+))?", more or "")]
                lines = seeds[src]
                if any(not 1 <= lo <= hi <= len(lines) for lo, hi in ranges):
                    problems.append(f"{path.name}:{number}: {src} {ranges} hors du fichier ({len(lines)} lignes)")
                    continue
                checked += 1
                cited = _plain(" ".join(" ".join(lines[lo - 1:hi]) for lo, hi in ranges))
                for fragment in re.split(r"…|\.\.\.|»\s*«", quotes.strip()[1:-1]) if quotes.strip() else []:
                    fragment = _plain(fragment)
                    if len(fragment) >= 4 and fragment not in cited:
                        problems.append(f"{path.name}:{number}: « {fragment} » absent de {src} {ranges}")
    assert checked > 200
    assert not problems, "\n".join(problems)
