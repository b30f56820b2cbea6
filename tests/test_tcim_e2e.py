"""TCIM end to end (issue 12), on a real Synapse with E2EE clinicians and an injected clock.

The walk: a nurse asks with the eligibility criteria (refused when a criterion fails), the ladder
asks the protocol's signatories in direct chats without identity, a doctor accepts and proposes
the slot, the nurse proposes another, then confirms (video link, durations), the charter refuses
to start without consent, the doctor starts and ends, posts the CR, the nurse notes the
prescription: closed. Then a second TCIM nobody answers (coordinators' room, with the flow's
advice), interrupted by the nurse.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from bot.coordination import ensure_coordinator_room
from domain.clock import FakeClock
from tests.bot_harness import BotHarness
from tests.test_demandes_e2e import Team as DemandesTeam

pytestmark = pytest.mark.synapse

ASK = "!tcim demande snp {} toux fébrile depuis 3 jours, patiente alitée"
ELIGIBLE = "sans_mt=oui deplacement=non"


class Team(DemandesTeam):
    """The déclenchement tests' CPTS (tests/test_demandes_e2e.py), with its fake clock, longer
    waits (a TCIM walk sends more per step) and the bot's own lines that answer no command."""

    def __init__(self, harness, register, synapse, tmp_path, clock):
        super().__init__(harness, register, synapse, tmp_path)
        self.clock = clock

    async def ask(self, key, room, text, timeout=30):
        return await super().ask(key, room, text, timeout=timeout)

    async def line(self, key, text, room=None, timeout=30):
        """The bot's next line in the room (not a reply) containing `text`."""
        return await self.people[key].wait_for_message(room or self.patient_room, sender=self.harness.user_id,
                                                       predicate=lambda m: text in m.body, timeout=timeout)


@pytest.fixture
async def team(synapse, register, tmp_path):
    clock = FakeClock(datetime.now(timezone.utc).replace(second=0, microsecond=0))
    bot_user, bot_password = register("cercle")
    harness = BotHarness(synapse.url, bot_user, bot_password, tmp_path / "bot", clock=clock)
    await harness.start()
    t = Team(harness, register, synapse, tmp_path, clock)
    await t.person("coord", "autre", "Claire Coord", roles=["coordinateur"])
    await t.person("ide", "infirmier", "Julie Petit")
    await t.person("dra", "medecin_generaliste", "Anne Abel", roles=["tcim"])
    await t.person("drb", "medecin_generaliste", "Bruno Blanc", roles=["tcim"])
    t.coord_room = await ensure_coordinator_room(harness.bot, invite=[t.people["coord"].user_id])
    await t.people["coord"].join(await t.people["coord"].wait_for_invite())

    ide = t.people["ide"]
    dm = await ide.create_room(invite=[bot_user], is_direct=True)
    await ide.wait_joined(dm, bot_user)
    t.dms["ide"] = dm
    reply = await t.ask("ide", dm, "patient nouveau nom=Dupontel prenom=Marielle naissance=12/03/1950 sexe=F "
                                   'tel=0612345678 adresse="3 rue des Lilas" commune=Brétigny-sur-Orge consentement=oui')
    t.code = re.search(r"P-[2-9A-Z]{4}", reply.body).group(0)
    t.patient_room = await ide.wait_for_invite()
    await ide.join(t.patient_room)
    yield t
    await t.close()
    await harness.stop()


async def test_a_tcim_from_the_request_to_the_prescription_received(team):
    t, bot = team, team.harness.user_id
    ide, dra = t.people["ide"], t.people["dra"]

    # Eligibility: each failed criterion is refused in its words, nothing is created.
    reply = await t.ask("ide", t.patient_room, ASK.format("sans_mt=non deplacement=non"))
    assert reply.body.startswith("⛔ TCIM impossible") and "médecin traitant indisponible" in reply.body
    reply = await t.ask("ide", t.patient_room, ASK.format("sans_mt=oui deplacement=oui"))
    assert "incapacité de se déplacer" in reply.body and "médecin traitant" not in reply.body

    reply = await t.ask("ide", t.patient_room, ASK.format(ELIGIBLE))
    assert "TCIM n°1 demandée" in reply.body and "n'engage pas le médecin" in reply.body
    await t.fire()  # the protocol's signatories at once, in direct chats, without identity
    for key in ("dra", "drb"):
        notice = await t.people[key].wait_for_message(await t.dm(key), sender=bot,
                                                      predicate=lambda m: f"{t.code}/1" in m.body)
        assert notice.encrypted and "TCIM" in notice.body
        for secret in ("Dupontel", "DUPONTEL", "Marielle", "1950", "Lilas", "toux"):
            assert secret not in notice.body

    reply = await t.ask("dra", t.dms["dra"], f"accepter {t.code}/1")
    assert "vous prenez en charge" in reply.body
    await dra.join(await dra.wait_for_invite(predicate=lambda r: r.room_id == t.patient_room))
    await t.line("dra", "TCIM n°1 acceptée par Anne Abel")

    # The doctor proposes, the nurse proposes another slot, the doctor moves it, the nurse confirms.
    await t.ask("dra", t.patient_room, "!rdv 1 demain 14h teleconsultation")
    await t.line("ide", "créneau proposé (téléconsultation")
    other = await t.ask("ide", t.patient_room, "!tcim proposer demain 16h")
    assert "propose un autre créneau" in other.body
    assert dra.user_id in other.content["m.mentions"]["user_ids"]
    await t.ask("dra", t.patient_room, "!rdv 1 demain 16h teleconsultation")
    confirmed = await t.ask("ide", t.patient_room, "!tcim confirmer")
    assert "créneau confirmé" in confirmed.body
    assert {dra.user_id, ide.user_id} <= set(confirmed.content["m.mentions"]["user_ids"])
    assert "médecin 15 min, infirmier·e 60 min" in confirmed.body and "16h" in confirmed.body
    link = re.search(r"https://meet\.jit\.si/tcim-[A-Za-z0-9_-]+", confirmed.body).group(0)
    assert t.code not in link and "upontel" not in link

    # The charter: no start without the oral consent.
    reply = await t.ask("dra", t.patient_room, "!tcim debut identite capacite confidentialite")
    assert reply.body.startswith("⛔ Je ne démarre pas") and "consentement oral" in reply.body
    reply = await t.ask("dra", t.patient_room, "!tcim debut consentement")
    assert "TCIM n°1 démarrée" in reply.body and ide.user_id in reply.content["m.mentions"]["user_ids"]
    t.clock.advance(timedelta(minutes=15))
    ended = await t.ask("dra", t.patient_room, '!tcim fin lieu=domicile presents="infirmière, sa fille"')
    assert "terminée (15 min)" in ended.body and "sa fille" in ended.body
    await t.ask("dra", t.patient_room, "!cr 1 examen rassurant, antibiotique prescrit")
    await t.line("ide", "il reste la réception de l'ordonnance")
    await t.ask("ide", t.patient_room, "!tcim ordonnance recue")
    closed = await t.line("dra", "TCIM n°1 close")
    assert "TCG 25 €" in closed.body
    history = await t.ask("ide", t.patient_room, "!tcim voir")
    assert "TCIM close" in history.body and "début refusé" in history.body


async def test_a_tcim_nobody_answers_goes_to_the_coordinators_and_is_interrupted(team):
    t = team
    await t.ask("ide", t.patient_room, ASK.format(ELIGIBLE))
    await t.fire()
    t.clock.advance(timedelta(hours=24))
    await t.fire()
    escalade = await t.line("coord", "TCIM sans médecin", room=t.coord_room)
    assert t.code in escalade.body and "Dupontel" not in escalade.body and "toux" not in escalade.body
    interrupted = await t.ask("ide", t.patient_room, "!tcim interrompre la patiente est hospitalisée")
    assert "TCIM n°1 interrompue par Julie Petit" in interrupted.body
    assert "la patiente est hospitalisée" in interrupted.body and "visite à domicile" in interrupted.body
