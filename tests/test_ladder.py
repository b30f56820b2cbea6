"""Escalation ladder planning (domain.ladder) and the request state machine (domain.demandes)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from domain.clock import PARIS, FakeClock
from domain.demandes import (
    Acceptee,
    Annulee,
    Cloturee,
    CrPoste,
    Declinee,
    DejaPrise,
    Demande,
    Escaladee,
    Etat,
    InterventionEnRetard,
    PalierAtteint,
    Raison,
    RdvFixe,
    Refus,
    SansObjet,
    accepter,
    annuler,
    cloturer,
    creer_demande,
    echeance_intervention,
    est_absent,
    fixer_rdv,
    mt_indisponible,
    passer_au_palier,
    poster_cr,
    refuser,
    solliciter,
)
from domain.flows import Mode, load_flows
from domain.ladder import (
    PlannedStep,
    Rung,
    due_steps,
    next_step,
    plan_for_flow,
    plan_intervention_deadline,
    plan_response_ladder,
    rung_at,
)

H = timedelta(hours=1)
J = timedelta(days=1)
T0 = datetime(2026, 3, 12, 9, 0, tzinfo=timezone.utc)

MT, MG2, IDE, REQ, SEC, COORD = "@mt:cpts", "@mg2:cpts", "@ide:cpts", "@ide-demandeuse:cpts", "@secretaire:cpts", "@coord:cpts"
NOMS = {MT: "Dr Martin", MG2: "Dr Bernard", IDE: "Inès Dupont", REQ: "Claire Petit"}


@pytest.fixture(scope="module")
def flows():
    return load_flows()


@pytest.fixture
def clock():
    return FakeClock(T0)


def rungs(plan: list[PlannedStep]) -> dict[Rung, timedelta]:
    return {s.rung: s.due_at - T0 for s in plan}


# --- ladder planning -----------------------------------------------------------------------------

def test_red_flag_plan_mt_then_other_mg_after_4h(flows):
    f = flows["red_flag"]
    plan = plan_for_flow(f, T0)
    assert [s.rung for s in plan] == [Rung.CERCLE, Rung.POOL, Rung.RELANCE, Rung.ESCALADE]
    assert rungs(plan) == {Rung.CERCLE: 0 * H, Rung.POOL: 4 * H, Rung.RELANCE: 6 * H, Rung.ESCALADE: 8 * H}
    # the pool opened at +4 h is every médecin généraliste of the CPTS: « un autre médecin généraliste »
    assert f.cible_profession == "medecin_generaliste" and f.medecin_traitant_d_abord
    assert rungs(plan_response_ladder(T0, 8 * H)) == rungs(plan)


def test_referent_4_days(flows):
    plan = plan_for_flow(flows["referent_parcours"], T0)
    assert rungs(plan) == {Rung.CERCLE: 0 * H, Rung.POOL: 2 * J, Rung.RELANCE: 3 * J, Rung.ESCALADE: 4 * J}


def test_snp_mt_priority_window_ends_cercle(flows):
    plan = plan_for_flow(flows["snp"], T0)
    assert rungs(plan) == {Rung.CERCLE: 0 * H, Rung.POOL: 2 * H, Rung.RELANCE: 3 * H, Rung.ESCALADE: 4 * H}
    direct = plan_response_ladder(T0, 4 * H, mt_priority=2 * H, pool_fraction=0.1)
    assert rungs(direct)[Rung.POOL] == 2 * H  # the MT window replaces the pool fraction


def test_pool_now_opens_pool_at_creation(flows):
    plan = plan_response_ladder(T0, 8 * H, pool_now=True)
    assert rungs(plan) == {Rung.CERCLE: 0 * H, Rung.POOL: 0 * H, Rung.RELANCE: 6 * H, Rung.ESCALADE: 8 * H}
    assert [s.rung for s in plan][:2] == [Rung.CERCLE, Rung.POOL]
    snp_absent = plan_for_flow(flows["snp"], T0, pool_now=True)  # MT absent: no 2 h priority
    assert rungs(snp_absent)[Rung.POOL] == 0 * H
    assert rungs(plan_for_flow(flows["recherche_mt"], T0))[Rung.POOL] == 0 * H  # pool_immediat
    assert rungs(plan_for_flow(flows["recherche_mt"], T0))[Rung.RELANCE] == 22.5 * J


def test_request_to_one_person_has_no_pool():
    plan = plan_response_ladder(T0, 4 * J, with_pool=False)
    assert [s.rung for s in plan] == [Rung.CERCLE, Rung.RELANCE, Rung.ESCALADE]


def test_long_mt_window_moves_relance_after_pool():
    plan = plan_response_ladder(T0, 4 * H, mt_priority=3.5 * H)
    assert rungs(plan)[Rung.POOL] == rungs(plan)[Rung.RELANCE] == 3.5 * H
    assert [s.rung for s in plan] == [Rung.CERCLE, Rung.POOL, Rung.RELANCE, Rung.ESCALADE]


def test_calendar_time_across_night_and_dst():
    # Saturday 28 March 2026 22:00 Paris; clocks jump forward that night (decisions.md 1: no pause).
    created = datetime(2026, 3, 28, 22, 0, tzinfo=PARIS)
    escalade = plan_response_ladder(created, 8 * H)[-1]
    assert escalade.rung is Rung.ESCALADE
    assert escalade.due_at.utcoffset() == timedelta(0)
    assert escalade.due_at.astimezone(timezone.utc) - created.astimezone(timezone.utc) == 8 * H
    assert escalade.due_at.astimezone(PARIS).hour == 7  # 8 real hours, 9 on the wall clock


def test_request_deadlines_are_real_time_even_with_paris_instants(flows):
    created = datetime(2026, 3, 28, 22, 0, tzinfo=PARIS)
    d = creer_demande(1, flows["red_flag"], REQ, created, commentaire="SpO2 91 %", medecin_traitant=MT)
    assert d.echeance_reponse.astimezone(PARIS).hour == 7
    d.created_at = created  # as a storage layer might hand it back
    assert d.echeance_reponse == datetime(2026, 3, 29, 5, 0, tzinfo=timezone.utc)


def test_alerte_critique_has_no_plan(flows):
    assert plan_for_flow(flows["alerte_critique"], T0) == []


@pytest.mark.parametrize("kwargs", [
    {"created_at": datetime(2026, 3, 12, 9, 0), "delai_reponse": 8 * H},
    {"created_at": T0, "delai_reponse": -H},
    {"created_at": T0, "delai_reponse": 8 * H, "pool_fraction": 0.8, "relance_fraction": 0.75},
    {"created_at": T0, "delai_reponse": 4 * H, "mt_priority": 5 * H},
    {"created_at": T0, "delai_reponse": 4 * H, "relance_fraction": 1.0},
])
def test_invalid_ladder_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        plan_response_ladder(**kwargs)


def test_intervention_counts_from_acceptance(flows):
    f = flows["recherche_mt"]
    accepted = T0 + 20 * J
    step = plan_intervention_deadline(accepted, f.delai_intervention)
    assert step == PlannedStep(Rung.INTERVENTION, T0 + 34 * J)


def test_due_steps_after_restart_and_current_rung():
    plan = plan_response_ladder(T0, 8 * H)
    now = T0 + 6.5 * H
    assert [s.rung for s in due_steps(plan, now, done={Rung.CERCLE})] == [Rung.POOL, Rung.RELANCE]
    assert rung_at(plan, now) is Rung.RELANCE
    assert next_step(plan, now).rung is Rung.ESCALADE
    assert rung_at(plan, T0 - H) is None and next_step(plan, T0 + 9 * H) is None


# --- requests: helpers ---------------------------------------------------------------------------

def red_flag(flows, clock, **kw) -> Demande:
    d = creer_demande(3, flows["red_flag"], REQ, clock.now(), commentaire="Prise de poids 3 kg en 4 j, dyspnée",
                      medecin_traitant=MT, **kw)
    assert isinstance(d, Demande)
    solliciter(d, [MT], clock.now())
    return d


def accepted(flows, clock, by=MT) -> Demande:
    d = red_flag(flows, clock)
    solliciter(d, [MG2], clock.now())
    assert isinstance(accepter(d, by, clock.now()), Acceptee)
    return d


# --- creation ------------------------------------------------------------------------------------

def test_creation_fills_flow_values(flows, clock):
    d = red_flag(flows, clock)
    assert d.etat is Etat.EN_ATTENTE and d.rung is Rung.CERCLE
    assert d.delai_reponse == 8 * H and d.cible_profession == "medecin_generaliste"
    assert d.echeance_reponse == T0 + 8 * H and d.sollicites == {MT}
    snp = creer_demande(1, flows["snp"], "@operateur:cpts", clock.now(), commentaire="Renouvellement traitement HTA",
                        motif="renouvellement_ordonnance")
    assert snp.delai_intervention == 48 * H


@pytest.mark.parametrize("flow, kwargs, raison, fragment", [
    ("red_flag", {"commentaire": "  "}, Raison.TEXTE_MANQUANT, "commentaire"),
    ("red_flag", {"commentaire": "x", "delai_reponse": 2 * H}, Raison.DELAI, "fixés"),
    ("alerte_critique", {"commentaire": "métrorragies"}, Raison.ETAT, "pas une demande"),
    ("consultation", {"commentaire": "x"}, Raison.CIBLE, "à qui"),
    ("consultation", {"commentaire": "x", "cible_personne": REQ}, Raison.CIBLE, "vous-même"),
])
def test_creation_refusals(flows, clock, flow, kwargs, raison, fragment):
    out = creer_demande(1, flows[flow], REQ, clock.now(), **kwargs)
    assert isinstance(out, Refus) and out.raison is raison and not out.ok
    assert fragment in out.message


def test_generic_flow_delais_can_be_changed(flows, clock):
    d = creer_demande(1, flows["visite_domicile"], REQ, clock.now(), commentaire="Pansement 2x/j",
                      cible_profession="infirmier", delai_intervention=6 * H)
    assert d.delai_intervention == 6 * H and d.delai_reponse == 24 * H


# --- acceptance ----------------------------------------------------------------------------------

def test_first_acceptance_wins_second_told_deja_pris(flows, clock):
    d = red_flag(flows, clock)
    solliciter(d, [MG2, IDE], clock.now())
    clock.advance(H)
    first = accepter(d, MT, clock.now())
    assert isinstance(first, Acceptee) and first.ok and not first.tardive
    assert first.a_informer == {MG2, IDE}
    assert d.etat is Etat.ACCEPTEE and d.acceptee_par == MT and d.accepted_at == T0 + H
    assert first.texte(NOMS) == "✅ Demande n°3 prise en charge par Dr Martin."
    second = accepter(d, MG2, clock.advance(timedelta(seconds=1)))
    assert isinstance(second, DejaPrise) and not second.ok
    assert second.texte(NOMS) == "La demande n°3 est déjà prise en charge par Dr Martin."
    assert d.acceptee_par == MT
    again = accepter(d, MT, clock.now())
    assert isinstance(again, DejaPrise) and again.vous and "Vous avez déjà accepté" in again.message


def test_secretary_sets_rdv_for_the_acceptor(flows, clock):
    # who may (the delegation itself) is domain.permissions' job: tests/test_permissions.py
    d = red_flag(flows, clock)
    accepter(d, MT, clock.now())
    out = fixer_rdv(d, SEC, T0 + 3 * H, Mode.CABINET, clock.now(), au_nom_de=MT)
    assert isinstance(out, RdvFixe) and d.etat is Etat.RDV_FIXE and d.rdv.fixe_par == SEC
    assert "jeudi 12 mars à 13h" in out.message  # 12:00 UTC = 13:00 Paris


def test_declined_user_may_accept_later(flows, clock):
    d = red_flag(flows, clock)
    solliciter(d, [MG2], clock.now())
    assert isinstance(refuser(d, MG2, "Au bloc ce matin", clock.now()), Declinee)
    out = accepter(d, MG2, clock.advance(H))
    assert isinstance(out, Acceptee) and out.avait_decline
    assert MG2 not in d.refus and any(e.action == "refus" and e.par == MG2 for e in d.journal)


def test_person_addressed_request_has_no_pool(flows, clock):
    d = creer_demande(5, flows["consultation"], REQ, clock.now(), commentaire="Avis cardio", cible_personne=MG2)
    solliciter(d, [MG2], clock.now())
    declined = refuser(d, MG2, "Pas de créneau avant 3 semaines", clock.now())
    assert declined.avancer_vers is Rung.ESCALADE  # no pool for a request to one person
    assert isinstance(passer_au_palier(d, Rung.POOL, clock.now()), SansObjet)


# --- declines and the ladder ---------------------------------------------------------------------

def test_mt_decline_advances_to_pool_now(flows, clock):
    d = red_flag(flows, clock)
    solliciter(d, [IDE + "-habituel"], clock.now())  # another member of the cercle still pending
    clock.advance(timedelta(minutes=20))
    out = refuser(d, MT, "En congés, cabinet fermé", clock.now())
    assert isinstance(out, Declinee) and out.avancer_vers is Rung.POOL and out.par_medecin_traitant
    assert "proposée dès maintenant à toute la profession" in out.texte(NOMS)
    assert d.refus == {MT: "En congés, cabinet fermé"}
    pool = passer_au_palier(d, out.avancer_vers, clock.now())
    assert isinstance(pool, PalierAtteint) and d.rung is Rung.POOL
    assert pool.restant == 8 * H - timedelta(minutes=20)
    assert solliciter(d, [MT, MG2], clock.now()) == {MG2}  # the MT who declined is not re-notified
    # the timer that was planned at +4 h later fires: nothing to do
    assert isinstance(passer_au_palier(d, Rung.POOL, T0 + 4 * H), SansObjet)


def test_non_mt_decline_does_not_advance_until_everyone_declined(flows, clock):
    d = creer_demande(6, flows["visite_domicile"], REQ, clock.now(), commentaire="Pansement", cible_profession="infirmier")
    solliciter(d, [IDE, "@ide2:cpts"], clock.now())
    first = refuser(d, IDE, "Hors secteur", clock.now())
    assert first.avancer_vers is None and not first.tous_ont_decline
    second = refuser(d, "@ide2:cpts", "Tournée complète", clock.now())
    assert second.avancer_vers is Rung.POOL and second.tous_ont_decline
    passer_au_palier(d, Rung.POOL, clock.now())
    solliciter(d, ["@ide3:cpts"], clock.now())
    assert refuser(d, "@ide3:cpts", "Absente", clock.now()).avancer_vers is Rung.ESCALADE


def test_decline_needs_motif(flows, clock):
    d = red_flag(flows, clock)
    out = refuser(d, MT, "   ", clock.now())
    assert isinstance(out, Refus) and out.raison is Raison.MOTIF_MANQUANT
    assert out.message == "Le motif du refus est obligatoire."
    assert d.refus == {}


def test_relance_targets_those_still_concerned(flows, clock):
    d = red_flag(flows, clock)
    passer_au_palier(d, Rung.POOL, T0 + 4 * H)
    solliciter(d, [MG2, "@mg3:cpts"], T0 + 4 * H)
    refuser(d, "@mg3:cpts", "Absent", T0 + 5 * H)
    out = passer_au_palier(d, Rung.RELANCE, T0 + 6 * H)
    assert isinstance(out, PalierAtteint) and out.a_relancer == {MT, MG2}
    assert out.message == "⏳ Relance : la demande n°3 attend toujours une réponse ; il reste 2 h."


def test_escalation_then_late_acceptance(flows, clock):
    f = flows["snp"]
    d = creer_demande(7, f, "@operateur:cpts", clock.now(), commentaire="Otalgie fébrile", medecin_traitant=MT)
    solliciter(d, [MT], clock.now())
    passer_au_palier(d, Rung.POOL, T0 + 2 * H)
    solliciter(d, [MG2], T0 + 2 * H)
    passer_au_palier(d, Rung.RELANCE, T0 + 3 * H)
    esc = passer_au_palier(d, Rung.ESCALADE, T0 + 4 * H, consigne=f.consigne_escalade)
    assert isinstance(esc, Escaladee) and d.etat is Etat.EXPIREE and d.expired_at == T0 + 4 * H
    coord = esc.texte_coordination()
    assert "personne n'a accepté après 4 h" in coord and "rappeler le patient" in coord and "urgences" in coord
    assert "Otalgie" not in coord  # no clinical content in the coordinator room
    assert "une acceptation est encore possible" in esc.message
    assert isinstance(passer_au_palier(d, Rung.ESCALADE, T0 + 4 * H), SansObjet)  # idempotent
    late = accepter(d, MG2, T0 + 5 * H)
    assert isinstance(late, Acceptee) and late.tardive and late.notifier_coordination
    assert d.etat is Etat.ACCEPTEE and d.acceptation_tardive and d.accepted_at == T0 + 5 * H
    assert late.echeance_intervention == T0 + 5 * H + 24 * H  # from the acceptance (decisions.md 2)
    assert "après l'échéance" in late.texte(NOMS)


def test_acceptance_after_deadline_before_timer_is_late(flows, clock):
    d = red_flag(flows, clock)
    out = accepter(d, MT, T0 + 8 * H + timedelta(minutes=1))
    assert out.tardive


def test_stale_timer_after_acceptance_is_ignored(flows, clock):
    d = accepted(flows, clock)
    for rung in (Rung.POOL, Rung.RELANCE, Rung.ESCALADE):
        out = passer_au_palier(d, rung, T0 + 8 * H)
        assert isinstance(out, SansObjet) and not out.ok
    assert d.etat is Etat.ACCEPTEE


# --- after acceptance ----------------------------------------------------------------------------

def test_full_path_to_closure(flows, clock):
    d = creer_demande(8, flows["recherche_mt"], "@mas:cpts", clock.now(), commentaire="Patient 72 ans sans MT")
    solliciter(d, [MT, MG2], clock.now())
    acc = accepter(d, MG2, T0 + 3 * J)
    assert acc.echeance_intervention == T0 + 17 * J
    rdv = fixer_rdv(d, MG2, T0 + 5 * J, "cabinet", T0 + 3 * J)
    assert isinstance(rdv, RdvFixe) and not rdv.modifie
    moved = fixer_rdv(d, MG2, (T0 + 6 * J, T0 + 6 * J + 2 * H), Mode.TELECONSULTATION, T0 + 4 * J)
    assert moved.modifie and "déplacé" in moved.message and "téléconsultation" in moved.message
    cr = poster_cr(d, MG2, "Vu en consultation, déclaré MT.", T0 + 6 * J)
    assert isinstance(cr, CrPoste) and cr.dans_les_delais and d.etat is Etat.CR_POSTE
    done = cloturer(d, "@mas:cpts", T0 + 7 * J)
    assert isinstance(done, Cloturee) and not done.sans_cr and d.etat is Etat.CLOTUREE
    assert [e.action for e in d.journal] == [
        "creation", "sollicitation", "acceptation", "rdv", "rdv_modifie", "cr", "cloture"]


@pytest.mark.parametrize("action, fragment", [
    (lambda d, now: fixer_rdv(d, MT, now + H, Mode.CABINET, now), "le rendez-vous se fixe après l'acceptation"),
    (lambda d, now: poster_cr(d, MT, "CR", now), "le compte-rendu vient après l'acceptation"),
    (lambda d, now: cloturer(d, REQ, now), "annulez-la"),
])
def test_transitions_before_acceptance_refused(flows, clock, action, fragment):
    d = red_flag(flows, clock)
    out = action(d, clock.now())
    assert isinstance(out, Refus) and out.raison is Raison.ETAT
    assert out.message.startswith("La demande n°3 n'est pas encore acceptée") and fragment in out.message
    assert d.etat is Etat.EN_ATTENTE


def test_rdv_refusals(flows, clock):
    d = accepted(flows, clock)
    past = fixer_rdv(d, MT, T0 - H, Mode.CABINET, clock.now())
    assert past.raison is Raison.CRENEAU and "déjà passé" in past.message
    bad_range = fixer_rdv(d, MT, (T0 + 2 * H, T0 + H), Mode.CABINET, clock.now())
    assert bad_range.raison is Raison.CRENEAU
    bad_mode = fixer_rdv(d, MT, T0 + H, "hélico {x}", clock.now())
    assert bad_mode.raison is Raison.MODE and "hélico {x}" in bad_mode.message
    free = fixer_rdv(d, MT, "demain matin, tranche 8h-10h", Mode.DOMICILE, clock.now())
    assert isinstance(free, RdvFixe) and "visite à domicile, demain matin" in free.message


def test_cancel_rules(flows, clock):
    d = accepted(flows, clock)
    no_motif = annuler(d, REQ, "", clock.now())
    assert no_motif.raison is Raison.MOTIF_MANQUANT
    out = annuler(d, REQ, "Patient hospitalisé", clock.now())
    assert isinstance(out, Annulee) and d.etat is Etat.ANNULEE and out.a_informer == {MT, MG2}
    refused = accepter(d, MG2, clock.now())
    assert refused.raison is Raison.ETAT and refused.message == (
        "La demande n°3 est annulée : elle ne peut plus être acceptée.")
    assert annuler(d, REQ, "encore", clock.now()).raison is Raison.ETAT
    d2 = accepted(flows, clock)
    poster_cr(d2, MT, "Vu, traitement adapté", clock.now())
    assert "clôturez-la" in annuler(d2, REQ, "x", clock.now()).message
    assert annuler(d2, COORD, "x", clock.now()).raison is Raison.ETAT
    d3 = red_flag(flows, clock)
    assert isinstance(annuler(d3, COORD, "Demandeur parti", clock.now()), Annulee)


def test_closing_twice_and_without_cr(flows, clock):
    d = accepted(flows, clock)
    out = cloturer(d, MT, clock.now())
    assert isinstance(out, Cloturee) and out.sans_cr and "Aucun compte-rendu" in out.message
    again = cloturer(d, MT, clock.now())
    assert isinstance(again, Refus) and again.message == "La demande n°3 est clôturée."
    assert isinstance(refuser(d, MG2, "trop tard", clock.now()), Refus)


def test_intervention_overdue_signalled_once(flows, clock):
    d = creer_demande(9, flows["referent_parcours"], REQ, clock.now(), commentaire="Suspicion IC")
    accepter(d, MT, T0 + J)
    assert isinstance(echeance_intervention(d, T0 + 10 * J), SansObjet)  # 10 j from acceptance: not yet
    late = echeance_intervention(d, T0 + 11 * J)
    assert isinstance(late, InterventionEnRetard) and late.echeance == T0 + 11 * J
    assert "délai d'intervention est dépassé" in late.texte(NOMS) and "Dr Martin" in late.texte(NOMS)
    assert isinstance(echeance_intervention(d, T0 + 12 * J), SansObjet)
    poster_cr(d, MT, "Inclus", T0 + 12 * J)
    assert d.etat is Etat.CR_POSTE


# --- absences (decisions.md 3.2) -----------------------------------------------------------------

def test_absence_periods():
    absences = [(T0 - J, T0 + J), ("2026-04-01T00:00:00+02:00", "2026-04-08T00:00:00+02:00")]
    assert est_absent(absences, T0)
    assert not est_absent(absences, T0 + J)  # half-open: back at the end instant
    assert est_absent(absences, datetime(2026, 4, 3, 12, tzinfo=timezone.utc))
    assert est_absent([("2026-03-12T08:00", "2026-03-12T12:00")], T0)  # naive = Paris: 09:00 UTC is 10:00
    assert not est_absent([], T0) and not est_absent(None, T0)


def test_mt_unavailable_means_pool_now(flows):
    assert mt_indisponible(None, [], T0)                       # no MT in the cercle
    assert mt_indisponible(MT, [(T0 - H, T0 + H)], T0)         # MT on leave
    assert not mt_indisponible(MT, [(T0 + H, T0 + 2 * H)], T0)
    plan = plan_for_flow(flows["red_flag"], T0, pool_now=mt_indisponible(MT, [(T0 - H, T0 + H)], T0))
    assert rungs(plan)[Rung.POOL] == 0 * H
