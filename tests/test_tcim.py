"""TCIM (issue 12), on the use-case tier: the real commands through the real dispatch on a real
store, a FakeClock, and the outbox as the recorder. Plus the pure rules (domain.tcim) and the link.

One rule per test: eligibility (each criterion), who is asked (the protocol's signatories, no
identity), the slot (doctor proposes, nurse confirms or proposes another), the charter before the
start, the end, the interruption, the reminder and the escalation, the closing (CR + prescription),
the ledger acts, the directory attribute, and the derived help.
"""
from __future__ import annotations

import dataclasses
import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from bot.config import ConfigError, load_config
from domain.clock import FakeClock
from domain.parcours import load_catalogue
from domain.tcim import charter_item, eligibility_failures, missing_items, video_link
from rooms import demandes
from storage.models import Act, Deadline, Professional, TcimRecord
from storage.models import Demande as DemandeRow
from tests.usecase import COORDINATION_ROOM, UseCases

CODE = "P-TCM3"
ROOM = f"!cercle-{CODE}:cpts.test"
IDE = "@ide:cpts.test"              # the patient's nurse, in the cercle
DR_A = "@dr.a:cpts.test"            # signed the TCIM protocol (role tcim), outside the cercle
DR_B = "@dr.b:cpts.test"            # signed too
DR_NON = "@dr.non:cpts.test"        # a GP who did not sign
REFERENT = "@referent:cpts.test"    # référent parcours, in the cercle
KINE = "@kine:cpts.test"            # in the cercle, may not ask for a TCIM
COORD = "@coord:cpts.test"

ASK = "!tcim demande snp sans_mt=oui deplacement=non toux fébrile depuis 3 jours, patiente alitée"
RULES = load_catalogue()["tcim"].tcim


def text(sent) -> str:
    return "\n".join(s.body for s in sent)


@pytest.fixture
async def uc(tmp_path):
    async for world in _world(tmp_path, None):
        yield world


@pytest.fixture
async def uc_any_db(tmp_path, database_url):
    """The same world on SQLite and on PostgreSQL (tests/conftest.py database_url)."""
    async for world in _world(tmp_path, database_url):
        yield world


async def _world(tmp_path, database_url):
    uc = await UseCases.open(tmp_path / "bot", database_url=database_url, clock=FakeClock())
    await uc.enrol(IDE, "infirmier", name="Julie Petit")
    await uc.enrol(DR_A, "medecin_generaliste", name="Anne Abel", roles=["tcim"])
    await uc.enrol(DR_B, "medecin_generaliste", name="Bruno Blanc", roles=["tcim"])
    await uc.enrol(DR_NON, "medecin_generaliste", name="Nora Non")
    await uc.enrol(REFERENT, "pharmacien", name="Rémi Ref", roles=["referent"])
    await uc.enrol(KINE, "masseur_kinesitherapeute", name="Karl Kine")
    await uc.enrol(COORD, "autre", name="Claire Coord", roles=["coordinateur"])
    await uc.patient(CODE, [IDE, REFERENT, KINE])
    yield uc
    await uc.close()


async def state(uc):
    async with uc.bot.store.session() as session:
        row = await demandes.find(session, ROOM, 1)
        rec = await session.scalar(select(TcimRecord).where(TcimRecord.demande_id == row.id)) if row else None
        acts = {a.kind: a for a in (await session.scalars(select(Act))).all()}
        d = demandes.read(uc.bot.store.cipher, row) if row else None
        from rooms.tcim import read as read_tcim

        class _Ctx:
            store = uc.bot.store
        st = read_tcim(_Ctx, rec) if rec else None
        return d, st, acts


async def accepted(uc) -> None:
    await uc.say(IDE, ROOM, ASK)
    await uc.fire_due()  # pool_immediat: the signatories are asked at once
    await uc.say(DR_A, uc.direct_room(DR_A), f"accepter {CODE}/1")
    await uc.sent()


async def confirmed(uc) -> list:
    await accepted(uc)
    await uc.say(DR_A, ROOM, "!rdv 1 demain 14h teleconsultation")
    return await uc.say(IDE, ROOM, "!tcim confirmer")


# --- eligibility -----------------------------------------------------------------------------------
@pytest.mark.parametrize("answers, criteria", [
    ("sans_mt=non deplacement=non", [0]),
    ("sans_mt=oui deplacement=oui", [1]),
    ("sans_mt=non deplacement=oui", [0, 1]),
])
async def test_a_failed_criterion_is_refused_in_its_words_and_nothing_is_created(uc, answers, criteria):
    replies = await uc.say(IDE, ROOM, f"!tcim demande snp {answers} toux")
    assert replies[0].body.startswith("⛔ TCIM impossible")
    for i, criterion in enumerate(RULES.eligibilite):
        assert (criterion in replies[0].body) == (i in criteria)
    assert len(replies) == 1
    d, st, acts = await state(uc)
    assert d is None and st is None and not acts
    assert not await uc.pending_deadlines()


async def test_eligibility_must_be_answered_not_assumed(uc):
    replies = await uc.say(IDE, ROOM, "!tcim demande snp toux fébrile")
    assert "Il manque sans_mt=" in replies[0].body and "deplacement=" in replies[0].body
    assert "Usage : !tcim demande" in replies[0].body
    assert (await state(uc))[0] is None


async def test_the_tcim_flow_is_not_reachable_through_dec(uc):
    replies = await uc.say(IDE, ROOM, "!dec medecin tcim toux")
    assert "!tcim demande" in replies[0].body and (await state(uc))[0] is None


# --- who asks, who is asked -----------------------------------------------------------------------
async def test_who_may_ask(uc):
    assert (await uc.say(KINE, ROOM, ASK))[0].body.startswith("⛔")
    replies = await uc.say(REFERENT, ROOM, ASK)
    assert "Précisez l'infirmier·e" in replies[0].body
    replies = await uc.say(REFERENT, ROOM, ASK.replace("snp ", f"snp infirmier={IDE} "))
    assert "TCIM n°1 demandée" in text(replies) and "Julie Petit" in text(replies)
    d, st, _ = await state(uc)
    assert st.infirmier == IDE and d.pour_compte_de == IDE and d.demandeur == REFERENT


async def test_only_the_protocol_signatories_are_asked_without_identity(uc):
    replies = await uc.say(IDE, ROOM, ASK)
    assert "TCIM n°1 demandée" in text(replies)
    assert "n'engage pas le médecin à devenir le médecin traitant" in text(replies)
    notices = [s for s in await uc.fire_due() if s.action == "direct"]
    assert sorted(s.recipient for s in notices) == [DR_A, DR_B]
    for notice in notices:
        assert "Dupont" not in notice.body and "Marie" not in notice.body and "1950" not in notice.body
        assert "n'engage pas le médecin à devenir le médecin traitant" in notice.body
    refused = await uc.say(DR_NON, uc.direct_room(DR_NON), f"accepter {CODE}/1")
    assert refused[0].body.startswith("⛔") and "protocole TCIM" in refused[0].body
    assert (await state(uc))[0].acceptee_par is None


async def test_a_doctor_who_never_answers_goes_to_the_coordinators_with_the_flow_advice(uc):
    await uc.say(IDE, ROOM, ASK)
    await uc.fire_due()
    sent = await uc.fire_due(timedelta(hours=24))
    coord = [s for s in sent if s.room_id == COORDINATION_ROOM]
    assert coord and "TCIM sans médecin" in coord[-1].body and CODE in coord[-1].body
    assert "Dupont" not in coord[-1].body


# --- the slot --------------------------------------------------------------------------------------
async def test_acceptance_asks_the_doctor_for_the_slot_and_records_the_act(uc):
    await uc.say(IDE, ROOM, ASK)
    await uc.fire_due()
    sent = await uc.say(DR_A, uc.direct_room(DR_A), f"accepter {CODE}/1")
    line = next(s for s in sent if s.room_id == ROOM and "TCIM n°1 acceptée" in s.body)
    assert "!rdv 1 <horaire> teleconsultation" in line.body
    assert set(line.content["m.mentions"]["user_ids"]) == {DR_A, IDE}
    d, st, acts = await state(uc)
    assert st.etat == "acceptee" and st.medecin == DR_A
    assert acts["tcim_medecin"].details["criteres"] == [] and acts["tcim_medecin"].etat == "en_attente"
    assert "acceptation" not in acts  # the flow records its own act, not the generic one


async def test_the_slot_is_a_teleconsultation_proposed_by_the_doctor_and_confirmed_by_the_nurse(uc):
    await accepted(uc)
    refused = await uc.say(DR_A, ROOM, "!rdv 1 demain 14h domicile")
    assert "téléconsultation" in refused[0].body and (await state(uc))[0].rdv is None
    sent = await uc.say(DR_A, ROOM, "!rdv 1 demain 14h teleconsultation")
    assert "!tcim confirmer" in text(sent) and IDE in sent[-1].content["m.mentions"]["user_ids"]
    assert (await uc.say(DR_A, ROOM, "!tcim confirmer"))[0].body.startswith("⛔")
    sent = await uc.say(IDE, ROOM, "!tcim confirmer")
    line = sent[-1]
    assert "créneau confirmé" in line.body and "médecin 15 min, infirmier·e 60 min" in line.body
    assert set(line.content["m.mentions"]["user_ids"]) == {DR_A, IDE}
    d, st, acts = await state(uc)
    assert st.lien in line.body and st.etat == "confirmee"
    assert acts["tcim_medecin"].details["criteres"] == ["rdv"] and acts["tcim_medecin"].etat == "en_attente"
    assert acts["tcim_infirmier"].details["criteres"] == [] and acts["tcim_infirmier"].etat == "en_attente"
    kinds = {dl.kind for dl in await uc.pending_deadlines()}
    assert {"tcim.rappel", "tcim.retard"} <= kinds


async def test_the_nurse_proposes_another_slot(uc):
    await uc.say(IDE, ROOM, ASK)
    await uc.fire_due()
    await uc.say(DR_A, uc.direct_room(DR_A), f"accepter {CODE}/1")
    await uc.say(DR_A, ROOM, "!rdv 1 demain 14h teleconsultation")
    sent = await uc.say(IDE, ROOM, "!tcim proposer demain 16h")
    assert "propose un autre créneau" in sent[-1].body and DR_A in sent[-1].content["m.mentions"]["user_ids"]
    assert (await state(uc))[1].etat == "creneau_propose"
    assert (await uc.say(DR_A, ROOM, "!tcim debut tout"))[0].body.startswith("⚠️ TCIM n°1 : le créneau n'est pas")
    await uc.say(DR_A, ROOM, "!rdv 1 demain 16h teleconsultation")
    sent = await uc.say(IDE, ROOM, "!tcim confirmer")
    assert "16h" in sent[-1].body
    retard = next(dl for dl in await uc.pending_deadlines() if dl.kind == "tcim.retard")
    assert retard.due_at == uc.now().replace(hour=15, minute=15) + timedelta(days=1)  # 16h Paris + 15 min


# --- the charter -----------------------------------------------------------------------------------
async def test_no_start_without_the_four_items_and_the_missing_ones_are_listed(uc):
    await confirmed(uc)
    replies = await uc.say(DR_A, ROOM, "!tcim debut")
    assert replies[0].body.startswith("⛔ Je ne démarre pas")
    for item in RULES.charte_avant:
        assert item.libelle in replies[0].body
    replies = await uc.say(DR_A, ROOM, "!tcim debut identite capacite confidentialite")
    assert "consentement oral" in replies[0].body and "identité du patient" not in replies[0].body
    assert (await state(uc))[1].etat == "confirmee"
    assert (await uc.say(IDE, ROOM, "!tcim charte consentement"))[0].body.startswith("⛔")  # the doctor's
    replies = await uc.say(DR_A, ROOM, "!tcim charte consentement")
    assert "Tout est coché" in replies[0].body
    sent = await uc.say(DR_A, ROOM, "!tcim debut")
    assert "TCIM n°1 démarrée" in text(sent)
    assert (await state(uc))[1].etat == "en_cours"
    assert not [dl for dl in await uc.pending_deadlines() if dl.kind.startswith("tcim.")]


async def test_an_unknown_charter_item_is_named(uc):
    await confirmed(uc)
    replies = await uc.say(DR_A, ROOM, "!tcim charte identite tension")
    assert "« tension » n'est pas un élément de la charte" in replies[0].body
    assert (await state(uc))[1].charte == []


# --- the whole walk --------------------------------------------------------------------------------
async def test_from_the_request_to_the_prescription_received(uc_any_db):
    uc = uc_any_db
    await confirmed(uc)
    await uc.say(DR_A, ROOM, "!tcim debut tout")
    assert (await uc.say(DR_A, ROOM, "!cr 1 examen rassurant"))[0].body.startswith("⚠️ TCIM n°1 : le compte-rendu")
    assert (await uc.say(IDE, ROOM, "!tcim ordonnance recue"))[0].body.startswith("⚠️")
    uc.clock.advance(timedelta(minutes=14))
    sent = await uc.say(DR_A, ROOM, '!tcim fin lieu=domicile presents="infirmière, sa fille"')
    assert "terminée (14 min)" in text(sent) and "domicile" in text(sent) and "sa fille" in text(sent)
    sent = await uc.say(DR_A, ROOM, "!cr 1 examen rassurant, ordonnance d'antibiotiques envoyée")
    assert "compte-rendu posté" in text(sent) and "il reste la réception de l'ordonnance" in text(sent)
    _, _, acts = await state(uc)
    medecin = acts["tcim_medecin"]  # livret-2022 S000 L927-928: 25 €, + CPAM (TCG) shown only
    assert (medecin.details["criteres"], medecin.etat, medecin.montant_cents) == (["cr", "rdv"], "eligible", 2500)
    sent = await uc.say(IDE, ROOM, "!tcim ordonnance recue")
    assert "ordonnance reçue par Julie Petit" in text(sent) and "TCIM n°1 close" in text(sent)
    journal = text(await uc.say(IDE, ROOM, "!journal"))  # the cahier de liaison says each step in words
    assert "créneau confirmé" in journal and "ordonnance reçue" in journal and "tcim:" not in journal
    assert "TCG 25 €" in text(sent) and "TLD 15 €" in text(sent)
    d, st, acts = await state(uc)
    assert st.etat == "close" and d.etat == "cloturee"
    infirmier = acts["tcim_infirmier"]  # S000 L929-930: 50 € once the prescription is received
    assert (infirmier.details["criteres"], infirmier.etat, infirmier.montant_cents) == (
        ["ordonnance_recue"], "eligible", 5000)
    assert acts["tcim_infirmier"].user_id == IDE and acts["tcim_medecin"].user_id == DR_A
    steps = [e.action for e in d.journal if e.action.startswith("tcim:")]
    assert steps == ["tcim:eligibilite", "tcim:creneau", "tcim:confirmation", "tcim:charte", "tcim:debut",
                     "tcim:fin", "tcim:compte_rendu", "tcim:ordonnance_recue", "tcim:close"]
    assert not await uc.pending_deadlines()
    history = await uc.say(IDE, ROOM, "!tcim voir")
    assert "TCIM close" in history[0].body and "ordonnance reçue" in history[0].body and "Anne Abel" in history[0].body


async def test_acts_are_recorded_once_per_tcim(uc):
    await confirmed(uc)
    await uc.say(DR_A, ROOM, "!rdv 1 demain 15h teleconsultation")  # the slot moves: still one act
    await uc.say(IDE, ROOM, "!tcim confirmer")
    async with uc.bot.store.session() as session:
        kinds = [a.kind for a in (await session.scalars(select(Act))).all()]
    assert sorted(kinds) == ["tcim_infirmier", "tcim_medecin"]


# --- interruption, reminder, escalation -----------------------------------------------------------------
async def test_an_interruption_is_traced_and_proposes_another_path(uc):
    await confirmed(uc)
    assert (await uc.say(KINE, ROOM, "!tcim interrompre non"))[0].body.startswith("⛔")
    uc.clock.advance(timedelta(hours=2))
    sent = await uc.say(IDE, ROOM, "!tcim interrompre la patiente refuse la visio")
    line = sent[-1]
    assert "TCIM n°1 interrompue par Julie Petit" in line.body and "la patiente refuse la visio" in line.body
    assert "soin non programmé" in line.body and "visite à domicile" in line.body
    assert line.content["m.mentions"]["user_ids"] == [DR_A]
    d, st, _ = await state(uc)
    assert (st.etat, st.interrompue_par, st.interrompue_at, st.motif_interruption) == \
        ("interrompue", IDE, uc.now(), "la patiente refuse la visio")
    assert d.etat == "annulee" and d.journal[-1].action == "tcim:interruption"
    assert not await uc.pending_deadlines()
    assert (await uc.say(DR_A, ROOM, "!tcim debut tout"))[0].body.startswith("⚠️ aucune TCIM en cours")


async def test_a_reminder_before_the_slot_and_an_escalation_when_it_passes(uc):
    await confirmed(uc)
    slot = uc.now().replace(hour=13, minute=0) + timedelta(days=1)  # demain 14h Paris
    uc.clock.set(slot - timedelta(minutes=31))
    assert not await uc.fire_due()
    sent = await uc.fire_due(timedelta(minutes=1))
    assert len(sent) == 1 and sent[0].body.startswith("⏰ Rappel TCIM n°1")
    assert (await state(uc))[1].lien in sent[0].body and "consentement" in sent[0].body
    assert set(sent[0].content["m.mentions"]["user_ids"]) == {DR_A, IDE}
    sent = await uc.fire_due(timedelta(minutes=45))
    assert [s.room_id for s in sent] == [ROOM, COORDINATION_ROOM]
    assert "n'a pas démarré" in sent[0].body and CODE in sent[1].body and "Dupont" not in sent[1].body


# --- the video link ---------------------------------------------------------------------------------
def test_the_video_link_is_random_under_the_configured_base():
    assert video_link("https://visio.cpts.fr", "abc") == "https://visio.cpts.fr/tcim-abc"
    assert video_link("https://call.element.io/#/room/", "abc") == "https://call.element.io/#/room/tcim-abc"


async def test_each_consultation_has_its_own_link_with_nothing_of_the_patient(uc):
    uc.bot.services.tcim = dataclasses.replace(uc.bot.services.tcim, video_base="https://visio.cpts.test/")
    links = set()
    for _ in range(3):
        await uc.say(IDE, ROOM, ASK)
    async with uc.bot.store.session() as session:
        for rec in (await session.scalars(select(TcimRecord))).all():
            from rooms.tcim import read as read_tcim

            class _Ctx:
                store = uc.bot.store
            links.add(read_tcim(_Ctx, rec).lien)
    assert len(links) == 3
    for link in links:
        assert link.startswith("https://visio.cpts.test/tcim-")
        token = link.removeprefix("https://visio.cpts.test/tcim-")
        assert len(token) >= 20 and re.fullmatch(r"[A-Za-z0-9_-]+", token)
        for part in ("Dupont", "DUPONT", "Marie", "1950", "0612345678", CODE, "Lilas"):  # exact: the token is random
            assert part not in link


def test_the_video_base_is_configured_with_a_default(tmp_path):
    base = {"CERCLE_HOMESERVER": "http://hs", "CERCLE_USER_ID": "@b:hs", "CERCLE_PASSWORD": "x"}
    assert load_config(None, base).tcim.video_base == "https://meet.jit.si/"
    conf = tmp_path / "c.toml"
    conf.write_text('[tcim]\nvideo_base = "https://visio.cpts.fr/"\nreminder_before_min = 60\n')
    loaded = load_config(conf, base)
    assert loaded.tcim.video_base == "https://visio.cpts.fr/" and loaded.tcim.reminder_before_min == 60
    conf.write_text('[tcim]\nvideo_base = "http://visio.cpts.fr/"\n')
    with pytest.raises(ConfigError, match="tcim.video_base"):
        load_config(conf, base)


# --- directory, help ----------------------------------------------------------------------------------
async def test_coordinators_mark_the_protocol_signatories(uc):
    await uc.bot.store.save_room(COORDINATION_ROOM, "coordination", 0)
    sent = await uc.say(COORD, COORDINATION_ROOM, f"!annuaire modifier {DR_NON} tcim=oui")
    assert "tcim" in sent[0].body
    async with uc.bot.store.session() as session:
        assert "tcim" in (await session.get(Professional, DR_NON)).roles
    await uc.say(COORD, COORDINATION_ROOM, f"!annuaire modifier {DR_A} tcim=non")
    async with uc.bot.store.session() as session:
        assert "tcim" not in (await session.get(Professional, DR_A)).roles
    await uc.say(IDE, ROOM, ASK)
    notices = [s for s in await uc.fire_due() if s.action == "direct"]
    assert sorted(s.recipient for s in notices) == [DR_B, DR_NON]


async def test_aide_tcim_lists_the_subcommands_from_the_declarations(uc):
    overview = (await uc.say(IDE, ROOM, "!aide tcim"))[0].body
    for sub in ("demande", "confirmer", "proposer", "charte", "debut", "fin", "interrompre", "ordonnance", "voir"):
        assert f"!tcim {sub}" in overview
    detail = (await uc.say(IDE, ROOM, "!aide tcim debut"))[0].body
    assert "Usage : !tcim debut" in detail and "consentement oral" in detail
    assert "sous-commande" in (await uc.say(IDE, ROOM, "!tcim"))[0].body


# --- pure rules ------------------------------------------------------------------------------------------
def test_eligibility_rule_is_the_protocol_both_required():
    assert eligibility_failures(RULES, sans_mt=True, deplacement_possible=False) == []
    assert eligibility_failures(RULES, sans_mt=False, deplacement_possible=False) == [RULES.eligibilite[0]]
    assert eligibility_failures(RULES, sans_mt=True, deplacement_possible=True) == [RULES.eligibilite[1]]


def test_charter_words_and_missing_items():
    assert charter_item(RULES, "Identité") == "identite"
    assert charter_item(RULES, "capacite") == "capacite_communiquer"
    assert charter_item(RULES, "tension") is None
    assert [i.code for i in missing_items(RULES, ["identite", "confidentialite"])] == \
        ["consentement", "capacite_communiquer"]
    assert {i.code for i in RULES.charte_avant if i.obligatoire} == \
        {"identite", "consentement", "capacite_communiquer", "confidentialite"}


async def _deadline_rows(uc):
    async with uc.bot.store.session() as session:
        return (await session.scalars(select(Deadline))).all()


async def _demande_rows(uc):
    async with uc.bot.store.session() as session:
        return (await session.scalars(select(DemandeRow))).all()


async def test_a_check_mark_on_a_notice_accepts_a_tcim_too(uc):
    await uc.enrol(DR_B, "medecin_generaliste", name="Bruno Blanc", roles=["tcim"])
    await uc.say(IDE, ROOM, ASK)
    await uc.fire_due()
    notice = await uc.event_id_of("notice:")
    sent = await uc.react(DR_B, uc.direct_room(DR_B), "✅", notice)
    line = next(s for s in sent if "TCIM n°1 acceptée" in s.body)
    assert line.room_id == ROOM and "m.relates_to" not in line.content  # a line of the room, not a reply
    assert (await state(uc))[1].medecin == DR_B


async def test_cancelling_the_request_interrupts_the_tcim(uc):
    await confirmed(uc)
    await uc.say(IDE, ROOM, "!annuler 1 patiente hospitalisée")
    d, st, _ = await state(uc)
    assert d.etat == "annulee" and st.etat == "interrompue" and st.motif_interruption == "patiente hospitalisée"
    assert not await uc.pending_deadlines()


def test_the_subcommands_are_advertised_in_patient_rooms():
    from commands import build_registry

    syntaxes = [c["syntax"] for c in build_registry().msc4332_content(scope="patient")["commands"]]
    assert "tcim demande {motif} {commentaire}" in syntaxes and "tcim debut {tcim} {elements}" in syntaxes
    assert not [s for s in syntaxes if s.split()[0] == "tcim" and len(s.split()) == 1]


async def test_the_room_is_told_how_many_signatories_were_asked(uc):
    await uc.say(IDE, ROOM, ASK)
    sent = await uc.fire_due()
    told = [s.body for s in sent if s.room_id == ROOM]
    assert told == ["📣 Demande n°1 proposée à 2 signataires du protocole TCIM de la CPTS (sans identité)."]
