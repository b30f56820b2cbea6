"""Issue 9 (delivery and timers), the pure parts: délai ceilings, years in dates, « il reste »,
prefixes typed on phones, truthful help for `carte=`, plurals."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from commands import build_registry
from commands.arguments import ParseContext
from domain.clock import PARIS
from domain.demandes import (
    Acceptee,
    InterventionEnRetard,
    PalierAtteint,
    Raison,
    Refus,
    accepter,
    creer_demande,
    echeance_intervention,
    fixer_rdv,
    passer_au_palier,
    solliciter,
)
from domain.flows import FlowsError, load_flows
from domain.ladder import Rung
from domain.text import format_french_datetime

J = timedelta(days=1)
T0 = datetime(2026, 3, 12, 9, 0, tzinfo=timezone.utc)
REQ, IDE = "@demandeuse:cpts", "@ide:cpts"


@pytest.fixture(scope="module")
def flows():
    return load_flows()


# --- délai ceilings ------------------------------------------------------------------------------

def test_every_flow_has_ceilings_that_refuse_no_documented_delai(flows):
    for code, f in flows.items():
        assert f.delai_reponse_max == 30 * J and f.delai_intervention_max == 90 * J, code
        assert f.delai_reponse is None or f.delai_reponse <= f.delai_reponse_max, code
        assert f.delai_intervention is None or f.delai_intervention <= f.delai_intervention_max, code
    assert flows["recherche_mt"].delai_reponse == 30 * J  # the longest documented (S002 L179) is accepted


def test_an_unbounded_delai_is_refused_naming_the_maximum(flows):
    d = creer_demande(1, flows["consultation"], REQ, T0, commentaire="pansement", cible_profession="infirmier",
                      delai_reponse=99999 * J)
    assert isinstance(d, Refus) and d.raison is Raison.DELAI
    assert d.message == ("Le délai de réponse ne peut pas dépasser 30 jours pour « Consultation » "
                         "(demandé : 99999 jours).")
    d = creer_demande(1, flows["visite_domicile"], REQ, T0, commentaire="pansement", cible_profession="infirmier",
                      delai_intervention=91 * J)
    assert isinstance(d, Refus) and "90 jours" in d.message and "intervention" in d.message


def test_the_ceiling_itself_is_accepted(flows):
    d = creer_demande(1, flows["consultation"], REQ, T0, commentaire="pansement", cible_profession="infirmier",
                      delai_reponse=30 * J, delai_intervention=90 * J)
    assert not isinstance(d, Refus)
    assert d.echeance_reponse == T0 + 30 * J and d.delai_intervention == 90 * J


FLOW = """\
defauts:
  delai_reponse_max: 30j
  delai_intervention_max: 90j
consultation:
  libelle: "Consultation"
  delai_reponse: 4j
  delai_intervention: 10j
  delais_modifiables: true
  echelle: {pool: 0.5, relance: 0.75, escalade: 1.0}
  consigne_escalade: "Appeler le demandeur et chercher un autre professionnel."
"""


def test_a_flow_may_set_its_own_ceiling_and_the_file_must_respect_it(tmp_path):
    path = tmp_path / "flows-cpts.yaml"
    path.write_text(FLOW.replace("  delais_modifiables", "  delai_reponse_max: 60j\n  delais_modifiables"))
    assert load_flows(path, professions=set())["consultation"].delai_reponse_max == 60 * J
    path.write_text(FLOW.replace("delai_reponse: 4j", "delai_reponse: 45j"))
    with pytest.raises(FlowsError, match=r"consultation: delai_reponse \(45 jours\) dépasse son plafond \(30 jours\)"):
        load_flows(path, professions=set())
    path.write_text(FLOW.replace("delai_reponse_max: 30j", "delai_reponse_max: trente"))
    with pytest.raises(FlowsError, match=r"defauts\.delai_reponse_max"):
        load_flows(path, professions=set())


# --- dates carry their year when it is not the current one ---------------------------------------

NEW_YEAR_EVE = datetime(2026, 12, 31, 9, 0, tzinfo=timezone.utc)  # 10 h in Paris


def test_french_datetime_shows_the_year_across_a_new_year():
    two_days_later = NEW_YEAR_EVE + 2 * J
    assert format_french_datetime(two_days_later, PARIS, now=NEW_YEAR_EVE) == "samedi 2 janvier 2027 à 10h"
    assert format_french_datetime(NEW_YEAR_EVE, PARIS, now=NEW_YEAR_EVE) == "jeudi 31 décembre à 10h"
    assert format_french_datetime(two_days_later, PARIS) == "samedi 2 janvier à 10h"  # no `now`: unchanged


def test_request_messages_show_the_year_across_a_new_year(flows):
    d = creer_demande(1, flows["visite_domicile"], REQ, NEW_YEAR_EVE, commentaire="pansement",
                      cible_profession="infirmier")
    solliciter(d, [IDE], NEW_YEAR_EVE)
    out = accepter(d, IDE, NEW_YEAR_EVE)  # 48 h of délai d'intervention: 2 January
    assert isinstance(out, Acceptee)
    assert "Intervention attendue avant samedi 2 janvier 2027 à 10h." in out.message
    late = echeance_intervention(d, NEW_YEAR_EVE + 3 * J)
    assert isinstance(late, InterventionEnRetard) and "samedi 2 janvier à 10h" in late.message  # same year
    rdv = fixer_rdv(d, IDE, NEW_YEAR_EVE + J, "domicile", NEW_YEAR_EVE)
    assert "vendredi 1er janvier 2027 à 10h" in rdv.message
    same_year = creer_demande(2, flows["visite_domicile"], REQ, T0, commentaire="x", cible_profession="infirmier")
    solliciter(same_year, [IDE], T0)
    assert "jeudi 12 mars 2026" not in accepter(same_year, IDE, T0).message


# --- « il reste » ---------------------------------------------------------------------------------

def test_time_left_is_never_zero_minutes(flows):
    d = creer_demande(1, flows["consultation"], REQ, T0, commentaire="x", cible_profession="infirmier",
                      delai_reponse=timedelta(minutes=2))
    passer_au_palier(d, Rung.POOL, T0 + timedelta(minutes=1))
    out = passer_au_palier(d, Rung.RELANCE, T0 + timedelta(seconds=90))
    assert isinstance(out, PalierAtteint)
    assert out.message.endswith("il reste moins d'une minute.")
    assert PalierAtteint(numero=1, rung=Rung.POOL, restant=timedelta(minutes=59, seconds=40)).message.endswith(
        "il reste 1 h.")


# --- prefixes typed on phones ---------------------------------------------------------------------

CTX = ParseContext(now=T0)


@pytest.fixture(scope="module")
def registry():
    return build_registry()


@pytest.mark.parametrize("body", ["！aide", "! aide", "!  aide dec", "！ aide", "> <@a:b> cité\n\n! aide"])
@pytest.mark.parametrize("direct", [False, True])
def test_full_width_and_spaced_bang_reach_the_command(registry, body, direct):
    inv = registry.parse(body, CTX, direct=direct)
    assert inv is not None and inv.command.name == "aide" and inv.sigil == "!"


@pytest.mark.parametrize("body", ["! attention, la patiente a chuté", '! "citation', "!", "!  "])
def test_a_spaced_bang_before_ordinary_words_is_conversation(registry, body):
    assert registry.parse(body, CTX, direct=False) is None


# --- truthful help --------------------------------------------------------------------------------

def test_help_says_which_parcours_require_the_card(registry):
    from domain.parcours import load_catalogue

    text = registry.help_for(registry.find("inclure"))
    line = next(x for x in text.splitlines() if x.startswith("- `carte=`"))
    assert "facultatif" not in line and "obligatoire pour" in line
    for p in load_catalogue().values():
        assert (p.nom in line) == bool(p.inclusion.document_integration), p.code
    assert "Insuffisance cardiaque" in line and "Vigie sénior" not in line


def test_profession_plural():
    from rooms.directory import profession_label

    assert profession_label("medecin_generaliste", pluriel=True) == "médecins généralistes"
    assert profession_label("infirmier") == "infirmier·e"


# --- homeserver outages: one line per change -------------------------------------------------------

def test_homeserver_watch_logs_each_change_once(caplog):
    import logging

    from bot.sync import HomeserverWatch

    now = [100.0]
    watch = HomeserverWatch(monotonic=lambda: now[0])
    caplog.set_level(logging.DEBUG, logger="cercle")
    long_poll = watch.attempt()  # sent before the outage, answered as the server shut down
    now[0] += 1
    for _ in range(50):
        watch.failed(ConnectionRefusedError("Connect call failed"))
        now[0] += 1
    watch.reachable(long_poll)
    assert watch.down  # that answer says nothing of now
    retry = watch.attempt()
    now[0] += 130
    watch.reachable(retry)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert lines == ["serveur d'accueil injoignable (ConnectionRefusedError: Connect call failed) : "
                     "nouveaux essais en arrière-plan",
                     "serveur d'accueil de nouveau joignable après 3 min 00 s d'interruption"]
