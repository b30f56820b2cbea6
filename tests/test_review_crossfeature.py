"""Cross-feature review (TCIM, suivi, questionnaires, indemnités, indicateurs merged together): each
test pins a defect found when the features met, on the middle tier (tests/usecase.py)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from domain.clock import FakeClock
from storage.models import Act, TcimRecord
from storage.models import Demande as DemandeRow
from tests import test_questionnaires_usecases as vigie
from tests.usecase import COORDINATION_ROOM, UseCases, patient_in_parcours

CODE = "P-REVU"
MT = "@mt:cpts.test"
IDE = "@ide:cpts.test"
SF = "@sf:cpts.test"
START = datetime(2026, 3, 12, 9, 0, tzinfo=timezone.utc)


async def _world(tmp_path, *parcours: str, database_url: str | None = None) -> UseCases:
    return await patient_in_parcours(tmp_path, CODE, MT, IDE, SF, *parcours, start=START, database_url=database_url)


async def _tcim_accepted(tmp_path) -> tuple[UseCases, str]:
    """A nurse's TCIM for a patient, accepted by a doctor who signed the protocol (MT)."""
    uc = await UseCases.open(tmp_path / "bot", clock=FakeClock(START))
    await uc.enrol(IDE, "infirmier", name="Julie Petit")
    await uc.enrol(MT, "medecin_generaliste", name="Dr Martin", roles=["tcim"])
    room = await uc.patient(CODE, [IDE])
    await uc.say(IDE, room, "!tcim demande snp sans_mt=oui deplacement=non toux fébrile, patiente alitée")
    await uc.fire_due()
    await uc.say(MT, uc.direct_room(MT), f"accepter {CODE}/1")
    return uc, room


def _bodies(sent) -> str:
    return "\n".join(s.body for s in sent)


async def test_sortir_cancels_the_pending_suivi_reminders_of_that_parcours(tmp_path):
    uc = await _world(tmp_path, "plaie", "insuffisance_cardiaque")
    try:
        await uc.say(IDE, uc.room, "!suivi fiche")
        assert {d.kind for d in await uc.pending_deadlines()} >= {"suivi.rappel", "suivi.retard"}
        out = await uc.say(MT, uc.room, "!sortir plaie cicatrisation obtenue")
        assert "Sortie du parcours" in _bodies(out)
        left = [d for d in await uc.pending_deadlines() if d.kind in ("suivi.rappel", "suivi.retard")]
        assert left == []  # nothing left to announce for a parcours the patient left
        assert "Suivi" not in _bodies(await uc.fire_due(timedelta(days=31)))
    finally:
        await uc.close()


async def test_free_text_signs_of_a_red_flag_stay_out_of_the_plain_ledger(tmp_path):
    uc = await _world(tmp_path, "insuffisance_cardiaque")
    try:
        sent = await uc.say(IDE, uc.room, '!redflag signes="majoration_omi,chute chez sa fille Mme Durand" '
                                          "spo2=91 essoufflement")
        assert "RED FLAG" in _bodies(sent) and "chute chez sa fille" in _bodies(sent)  # the encrypted room says it
        async with uc.bot.store.session() as s:
            act = await s.scalar(select(Act).where(Act.kind == "red_flag"))
        assert "Durand" not in repr(act.details) and "chute" not in repr(act.details)
        assert "Majoration des OMI" in repr(act.details)  # the parcours' own labels are data, not free text
    finally:
        await uc.close()


async def test_free_text_signs_of_an_alerte_are_encrypted_and_still_in_the_cahier(tmp_path):
    uc = await _world(tmp_path, "perinatalite")
    try:
        await uc.say(IDE, uc.room, '!alerte signes="saignement, vue chez Mme Durand" ta=150/95 céphalées')
        async with uc.bot.store.session() as s:
            act = await s.scalar(select(Act).where(Act.kind == "alerte_critique"))
        assert "Durand" not in repr(act.details)
        journal = _bodies(await uc.say(MT, uc.room, "!journal"))
        assert "Alerte critique" in journal and "vue chez Mme Durand" in journal
    finally:
        await uc.close()


async def test_a_tcim_accepted_counts_as_an_acceptance_in_activite(tmp_path, database_url):
    uc = await UseCases.open(tmp_path / "bot", database_url=database_url, clock=FakeClock(START))
    try:
        await uc.enrol(IDE, "infirmier", name="Julie Petit")
        await uc.enrol(MT, "medecin_generaliste", name="Dr Martin", roles=["tcim"])
        room = await uc.patient(CODE, [IDE])
        await uc.say(IDE, room, "!tcim demande snp sans_mt=oui deplacement=non toux fébrile, patiente alitée")
        await uc.fire_due()
        await uc.say(MT, uc.direct_room(MT), f"accepter {CODE}/1")
        mois = f"{uc.now():%Y-%m}"
        mine = _bodies(await uc.say(MT, uc.direct_room(MT), f"activite {mois}"))
        assert "demandes que vous avez acceptées : 1" in mine
        asked = _bodies(await uc.say(IDE, uc.direct_room(IDE), f"activite {mois}"))
        assert "demandes faites : 1, dont 1 acceptée(s)" in asked
    finally:
        await uc.close()


async def test_the_plaie_fiche_fields_have_the_bounds_of_the_donnees_de_base(tmp_path):
    uc = await _world(tmp_path, "plaie")
    try:
        for bad, name in (("longueur=-3", "Longueur"), ("largeur=250", "Largeur"), ("douleur_eva=15", "EVA")):
            refused = await uc.say(IDE, uc.room, f"!suivi fiche {bad}")
            assert name in refused[0].body and "Usage" in refused[0].body, bad
        async with uc.bot.store.session() as s:
            assert (await s.scalars(select(Act).where(Act.kind == "suivi"))).all() == []  # nothing recorded
        assert "noté" in (await uc.say(IDE, uc.room, "!suivi fiche longueur=3 douleur_eva=4"))[0].body
    finally:
        await uc.close()


async def test_a_pending_tcim_line_names_its_request_in_indemnites(tmp_path):
    uc, room = await _tcim_accepted(tmp_path)
    try:
        mine = _bodies(await uc.say(MT, uc.direct_room(MT), "indemnites"))
        assert f"{CODE}/1" in mine and "<n°>" not in mine  # what to type, with the request's number
    finally:
        await uc.close()


async def test_the_same_suivi_element_noted_twice_the_same_day_is_one_ledger_line(tmp_path):
    uc = await _world(tmp_path, "insuffisance_cardiaque")
    try:
        await uc.say(IDE, uc.room, "!suivi consultation_mg")
        await uc.say(IDE, uc.room, "!suivi consultation_mg")  # typed again (a correction, a double post)
        async with uc.bot.store.session() as s:
            assert len((await s.scalars(select(Act).where(Act.kind == "suivi"))).all()) == 1
        uc.clock.advance(timedelta(days=1))
        await uc.say(IDE, uc.room, "!suivi consultation_mg")  # another day: another act
        await uc.say(MT, uc.room, "!suivi consultation_mg")  # someone else: their own act
        async with uc.bot.store.session() as s:
            acts = (await s.scalars(select(Act).where(Act.kind == "suivi"))).all()
        assert sorted(a.user_id for a in acts) == [IDE, IDE, MT]
    finally:
        await uc.close()


async def test_a_plaie_fiche_with_photos_makes_the_suivi_line_eligible(tmp_path):
    uc = await _world(tmp_path, "plaie")
    try:
        await uc.say(IDE, uc.room, "!suivi fiche longueur=3 photos_postees=oui")
        async with uc.bot.store.session() as s:
            act = await s.scalar(select(Act).where(Act.kind == "suivi"))
        assert (act.etat, act.montant_cents) == ("eligible", 1500), act.motif
        uc.clock.advance(timedelta(days=1))
        await uc.say(IDE, uc.room, "!suivi fiche longueur=3 photos_postees=non")
        async with uc.bot.store.session() as s:
            later = (await s.scalars(select(Act).where(Act.kind == "suivi").order_by(Act.id))).all()[-1]
        assert later.etat == "en_attente" and "photo" in later.motif
    finally:
        await uc.close()


async def test_a_questionnaire_is_not_addressed_to_nor_answered_by_someone_out_of_the_cercle(tmp_path):
    from_vigie = vigie  # the questionnaires' own world: a vigie request accepted by the référent, then !inclure
    INCLUDED_AT, VIGIE, SOS, REFERENT = from_vigie.INCLUDED_AT, from_vigie.CODE, from_vigie.MT, from_vigie.REF
    _include_with_referent, _reply, _run, _vote = (from_vigie._include_with_referent, from_vigie._reply,
                                                   from_vigie._run, from_vigie._vote)
    uc = await from_vigie._world(tmp_path)
    try:
        await _include_with_referent(uc)
        await uc.fire_due()  # J0, to the médecin SOS
        await uc.say(SOS, uc.room, "!questionnaire pause")
        await uc.remove_member(VIGIE, REFERENT)  # the référent leaves the cercle before J7
        uc.clock.advance(INCLUDED_AT + timedelta(days=8, hours=13) - uc.now())  # 9h in Paris: anyone's hours
        started = await uc.fire_due()
        j7 = await _run(uc, "vigie-j7")
        assert j7.addressee == SOS, "J7 must go to someone of the cercle (the inclusion's author)"
        assert REFERENT not in _bodies(started)
        # A former member's vote or reply is not counted, as `!q` typed by them would be refused.
        await _vote(uc, REFERENT, f"questionnaire:{j7.id}:1:0", ["2"])
        assert (await _run(uc, "vigie-j7")).current == 1
        await uc.remove_member(VIGIE, SOS)
        await _vote(uc, SOS, f"questionnaire:{j7.id}:1:0", ["2"])
        refused = await _reply(uc, SOS, f"questionnaire:{j7.id}:1:0", "non")
        assert (await _run(uc, "vigie-j7")).current == 1  # nothing recorded
        assert "cercle" in _bodies(refused)
    finally:
        await uc.close()


async def test_a_pending_multiple_choice_vote_is_not_kept_in_clear_in_the_timer(tmp_path):
    uc = await vigie._world(tmp_path)
    try:
        await vigie._include_with_referent(uc)
        uc.clock.advance(vigie.INCLUDED_AT + timedelta(days=7, hours=13) - uc.now())  # J7, 9h in Paris
        await uc.fire_due()
        j7 = (await vigie._run(uc, "vigie-j7")).id
        await vigie._vote(uc, vigie.REF, f"questionnaire:{j7}:1:0", ["2"])
        await uc.say(vigie.REF, uc.room, "!q 1")
        await vigie._vote(uc, vigie.REF, f"questionnaire:{j7}:4:0", ["5", "6"])
        settle = [d for d in await uc.pending_deadlines() if d.kind == "questionnaire.vote"]
        assert len(settle) == 1
        assert set(settle[0].payload) == {"room_id", "par", "answers_enc"}  # the choices, encrypted
        sent = await uc.fire_due(timedelta(minutes=2))
        assert sent[0].content["text"].startswith("Réponse : ")  # still recorded once it settles
    finally:
        await uc.close()


async def test_a_parcours_left_by_mistake_and_rejoined_gets_its_reminders_back(tmp_path):
    uc = await _world(tmp_path, "perinatalite", "insuffisance_cardiaque")
    try:
        await uc.say(SF, uc.room, "!donnees debut_grossesse=15/01/2026")
        planned = sorted((d.kind, d.ref) for d in await uc.pending_deadlines() if d.kind.startswith("suivi.r"))
        assert planned
        await uc.say(MT, uc.room, "!sortir perinatalite erreur de saisie")
        assert not [d for d in await uc.pending_deadlines() if d.kind.startswith("suivi.r")]
        await uc.say(MT, uc.room, "!inclure perinatalite carte=oui")
        again = sorted((d.kind, d.ref) for d in await uc.pending_deadlines() if d.kind.startswith("suivi.r"))
        assert again == planned  # never sent, so planned again (each reminder is still sent once)
    finally:
        await uc.close()


async def test_a_professional_removed_from_the_cercle_gets_no_more_reminders_about_the_patient(tmp_path):
    uc = await _world(tmp_path, "plaie")
    try:
        await uc.enrol("@ide2:cpts.test", "infirmier", name="Paul Second")
        await uc.say(MT, uc.room, "!cercle ajouter @ide2:cpts.test")
        await uc.say(IDE, uc.room, "!suivi fiche")
        users = {d.payload["user_id"] for d in await uc.pending_deadlines() if d.kind.startswith("suivi.r")}
        assert users == {IDE, "@ide2:cpts.test"}
        await uc.say(MT, uc.room, f"!cercle retirer {IDE}")
        users = {d.payload["user_id"] for d in await uc.pending_deadlines() if d.kind.startswith("suivi.r")}
        assert users == {"@ide2:cpts.test"}
        reminders = [s for s in await uc.fire_due(timedelta(days=31)) if "Suivi" in s.body]
        assert reminders and all(IDE not in s.body for s in reminders)
    finally:
        await uc.close()


async def test_cloturer_cannot_mark_a_tcim_that_never_took_place_as_done(tmp_path):
    uc, room = await _tcim_accepted(tmp_path)
    try:
        await uc.sent()
        refused = _bodies(await uc.say(MT, room, "!cloturer 1"))
        assert "tcim interrompre" in refused
        async with uc.bot.store.session() as s:
            rec = await s.scalar(select(TcimRecord))
            row = await s.scalar(select(DemandeRow))
        assert rec.etat == "acceptee"  # not counted among the TCIM done (indicators)
        assert row.etat == "acceptee"  # the refusal rolled the whole command back
    finally:
        await uc.close()


async def test_an_impossible_quarter_is_named_as_such(tmp_path):
    uc = await _world(tmp_path)
    try:
        await uc.enrol("@co:cpts.test", "autre", name="Claire Coord", roles=["coordinateur"])
        for who, room, body in ((IDE, uc.direct_room(IDE), "indemnites 2026-T5"),
                                ("@co:cpts.test", COORDINATION_ROOM, "!bordereau 2026-T9"),
                                ("@co:cpts.test", COORDINATION_ROOM, f"!bordereau valider {IDE} 2026-T0")):
            answer = (await uc.say(who, room, body))[0].body
            assert "de T1 à T4" in answer and "Usage" in answer, (body, answer)
    finally:
        await uc.close()


async def test_the_pool_is_told_when_a_request_or_a_tcim_it_was_asked_is_called_off(tmp_path):
    uc = await UseCases.open(tmp_path / "bot", clock=FakeClock(START))
    try:
        dr_a, dr_b = "@dr.a:cpts.test", "@dr.b:cpts.test"
        await uc.enrol(IDE, "infirmier", name="Julie Petit")
        await uc.enrol(dr_a, "medecin_generaliste", name="Anne Abel", roles=["tcim"])
        await uc.enrol(dr_b, "medecin_generaliste", name="Bruno Blanc", roles=["tcim"])
        room = await uc.patient(CODE, [IDE])
        await uc.say(IDE, room, "!tcim demande snp sans_mt=oui deplacement=non toux fébrile, patiente alitée")
        asked = [s.recipient for s in await uc.fire_due() if s.action == "direct"]
        assert sorted(asked) == [dr_a, dr_b]
        sent = await uc.say(IDE, room, "!tcim interrompre la patiente part aux urgences")
        told = {s.recipient: s.body for s in sent if s.action == "direct"}
        assert set(told) == {dr_a, dr_b}
        assert all(f"{CODE}/1" in b and "annulée" in b and "Dupont" not in b and "urgences" not in b
                   for b in told.values())  # code only, and not the clinical reason
        await uc.say(IDE, room, "!dec medecin snp toux fébrile")
        await uc.fire_due(timedelta(hours=3))
        sent = await uc.say(IDE, room, "!annuler 2 plus besoin")
        assert {s.recipient for s in sent if s.action == "direct"} == {dr_a, dr_b}
    finally:
        await uc.close()


async def test_an_interrupted_tcim_does_not_leave_its_lines_waiting_for_a_cr_forever(tmp_path):
    uc, room = await _tcim_accepted(tmp_path)
    try:
        await uc.say(MT, room, "!rdv 1 demain 14h teleconsultation")
        await uc.say(IDE, room, "!tcim confirmer")
        await uc.say(IDE, room, "!tcim interrompre la patiente part aux urgences")
        async with uc.bot.store.session() as s:
            acts = {a.kind: a for a in (await s.scalars(select(Act).where(Act.kind.like("tcim%")))).all()}
        assert {k: a.etat for k, a in acts.items()} == {"tcim_medecin": "non_eligible", "tcim_infirmier": "non_eligible"}
        assert "annulée" in acts["tcim_medecin"].motif
        mine = _bodies(await uc.say(MT, uc.direct_room(MT), "indemnites"))
        assert "!cr" not in mine  # no hint to post a CR on a request called off
    finally:
        await uc.close()


async def test_suivi_done_hier_is_recorded_yesterday(tmp_path):
    uc = await _world(tmp_path, "insuffisance_cardiaque")
    try:
        done = (await uc.say(IDE, uc.room, "!suivi consultation_mg hier"))[0].body
        assert "mercredi 11 mars" in done and "hier" not in done.split("noté :")[1]
    finally:
        await uc.close()


async def test_the_weekly_digest_does_not_wait_for_an_answer_already_given(tmp_path):
    uc = await _world(tmp_path)
    try:
        await uc.say(MT, uc.direct_room(MT), "horaires 8h-19h")  # plans MT's weekly digest
        await uc.say(IDE, uc.room, "!dec medecin snp toux fébrile depuis 3 jours")
        await uc.say(MT, uc.room, "!refuser 1 absent cette semaine")
        digest = [s for s in await uc.fire_due(timedelta(days=7)) if "Ce qui vous attend" in s.body]
        assert not any(f"{CODE}/1" in s.body for s in digest if s.recipient == MT)
    finally:
        await uc.close()


async def test_a_second_slot_that_passes_without_start_is_escalated_too(tmp_path):
    uc, room = await _tcim_accepted(tmp_path)
    try:
        for slot in range(2):
            await uc.say(MT, room, "!rdv 1 demain 14h teleconsultation")
            await uc.say(IDE, room, "!tcim confirmer")
            late = [s for s in await uc.fire_due(timedelta(days=1, hours=6)) if s.room_id == COORDINATION_ROOM]
            assert len(late) == 1 and "créneau passé sans début" in late[0].body, f"slot {slot + 1}"
    finally:
        await uc.close()
