"""Déclenchements, red flags and timers end to end, on a real Synapse, with an injected clock.

The clock never sleeps: tests move it and ask the bot to fire what is due, as APScheduler would.
The ladder and the crash tests also run with the bot's database on PostgreSQL.
"""
from __future__ import annotations

import asyncio
import re
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from bot.coordination import ensure_coordinator_room
from domain.clock import FakeClock
from storage.models import Demande as DemandeRow
from tests.bot_harness import BotHarness
from tests.clinician import Clinician

pytestmark = pytest.mark.synapse


class Team:
    """A CPTS: a bot, a coordinator, a médecin traitant, nurses, and one patient room."""

    def __init__(self, harness, register, synapse, tmp_path):
        self.harness, self.register, self.synapse, self.tmp_path = harness, register, synapse, tmp_path
        self.people: dict[str, Clinician] = {}
        self.dms: dict[str, str] = {}

    async def person(self, key, profession, name, roles=None):
        user_id, password = self.register(key)
        await self.harness.enrol(user_id, profession, name=name, roles=roles)
        c = await Clinician.login(self.synapse.url, user_id, password, self.tmp_path / f"store-{key}")
        self.people[key] = c
        return c

    async def ask(self, key, room, text, timeout=20):
        c = self.people[key]
        sent = await c.send_text(room, text)
        return await c.wait_for_message(room, sender=self.harness.user_id,
                                        predicate=lambda m: m.in_reply_to() == sent, timeout=timeout)

    async def dm(self, key) -> str:
        """The direct chat the bot opened with this person (joined on first use)."""
        if key not in self.dms:
            c = self.people[key]
            room = await c.wait_for_invite(predicate=lambda r: r.room_id not in (self.patient_room, self.coord_room))
            await c.join(room)
            self.dms[key] = room
        return self.dms[key]

    async def fire(self):
        await self.harness.bot.fire_due_deadlines()
        await self.harness.idle()

    async def close(self):
        for c in self.people.values():
            await c.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def team(request, synapse, register, tmp_path):
    database_url = None
    if request.param == "postgresql":
        database_url = request.getfixturevalue("database_url_postgres")
    clock = FakeClock(datetime.now(timezone.utc).replace(microsecond=0))
    bot_user, bot_password = register("cercle")
    harness = BotHarness(synapse.url, bot_user, bot_password, tmp_path / "bot", database_url=database_url, clock=clock)
    await harness.start()
    t = Team(harness, register, synapse, tmp_path)
    t.clock = clock
    await t.person("coord", "autre", "Claire Coord", roles=["coordinateur"])
    await t.person("mt", "medecin_generaliste", "Paul Martin")
    await t.person("ide1", "infirmier", "Julie Petit")
    await t.person("ide2", "infirmier", "Marc Durand")
    await t.person("ide3", "infirmier", "Inès Roux")
    t.coord_room = await ensure_coordinator_room(harness.bot, invite=[t.people["coord"].user_id])
    await t.people["coord"].join(await t.people["coord"].wait_for_invite())

    mt = t.people["mt"]
    dm = await mt.create_room(invite=[bot_user], is_direct=True)
    await mt.wait_joined(dm, bot_user)
    t.dms["mt"] = dm
    reply = await t.ask("mt", dm, "patient nouveau nom=Dupontel prenom=Marielle naissance=12/03/1950 sexe=F "
                                  'tel=0612345678 adresse="3 rue des Lilas" commune=Brétigny-sur-Orge '
                                  f"mt={mt.user_id} pros={t.people['ide1'].user_id} consentement=oui")
    t.code = re.search(r"P-[2-9A-Z]{4}", reply.body).group(0)
    t.patient_room = await mt.wait_for_invite()
    await mt.join(t.patient_room)
    ide1 = t.people["ide1"]
    assert await ide1.wait_for_invite() == t.patient_room
    await ide1.join(t.patient_room)
    yield t
    await t.close()
    await harness.stop()


@pytest.fixture
def database_url_postgres(request, tmp_path):
    from tests.conftest import _fresh_postgres_schema, _postgres_answers

    if not _postgres_answers():
        pytest.skip("PostgreSQL ne répond pas sur 127.0.0.1:5432 : tests PostgreSQL ignorés")
    return _fresh_postgres_schema(request)


def bot_messages(c: Clinician, room: str, bot: str, text: str):
    return [m for m in c.messages(room) if m.sender == bot and text in m.body]


async def test_declenchement_climbs_every_rung_to_the_coordinators(team):
    t, bot = team, team.harness.user_id
    reply = await t.ask("mt", t.patient_room, "!dec infirmier vad reponse=4h pansement quotidien talon gauche")
    assert "Demande **n°1**" in reply.formatted_body or "Demande n°1" in reply.body
    notice = await t.people["ide1"].wait_for_message(t.patient_room, sender=bot,
                                                     predicate=lambda m: "📣" in m.body)
    assert t.people["ide1"].user_id in notice.content["m.mentions"]["user_ids"]

    t.clock.advance(timedelta(hours=1, minutes=59))
    await t.fire()
    assert not bot_messages(t.people["mt"], t.patient_room, bot, "élargie")  # not before half the délai

    t.clock.advance(timedelta(minutes=1))  # 2 h: the pool
    await t.fire()
    for key in ("ide2", "ide3"):
        dm = await t.dm(key)
        pool = await t.people[key].wait_for_message(dm, sender=bot, predicate=lambda m: f"{t.code}/1" in m.body)
        assert pool.encrypted
        for secret in ("Dupontel", "DUPONTEL", "Marielle", "1950", "Lilas", "talon"):
            assert secret not in pool.body  # no identity, no clinical comment in a pool notice
        assert "Brétigny-sur-Orge" in pool.body and "70-79 ans" in pool.body
    await t.people["mt"].wait_for_message(t.patient_room, sender=bot,
                                          predicate=lambda m: "élargie à 2 infirmier·e·s de la CPTS" in m.body)

    t.clock.advance(timedelta(hours=1))  # 3 h: the relance
    await t.fire()
    relance = await t.people["ide1"].wait_for_message(t.patient_room, sender=bot,
                                                      predicate=lambda m: "elance" in m.body)
    assert t.people["ide1"].user_id in relance.content["m.mentions"]["user_ids"]
    await t.people["ide2"].wait_for_message(t.dms["ide2"], sender=bot, predicate=lambda m: "Relance" in m.body)

    t.clock.advance(timedelta(hours=1))  # 4 h: escalation
    await t.fire()
    escalade = await t.people["coord"].wait_for_message(t.coord_room, sender=bot,
                                                        predicate=lambda m: "personne n'a accepté" in m.body)
    assert t.code in escalade.body and "À faire" in escalade.body
    assert "Dupontel" not in escalade.body and "talon" not in escalade.body
    told = await t.people["mt"].wait_for_message(t.patient_room, sender=bot,
                                                 predicate=lambda m: t.people["mt"].user_id in
                                                 m.content.get("m.mentions", {}).get("user_ids", [])
                                                 and "coordinat" in m.body.lower())
    assert told

    # Each rung fired once.
    t.clock.advance(timedelta(days=1))
    await t.fire()
    await asyncio.sleep(1)
    assert len(bot_messages(t.people["mt"], t.patient_room, bot, "élargie")) == 1
    assert len([m for m in t.people["coord"].messages(t.coord_room) if "personne n'a accepté" in m.body]) == 1


async def test_first_acceptance_wins_and_the_acceptor_joins_the_circle(team):
    t, bot = team, team.harness.user_id
    await t.ask("mt", t.patient_room, "!dec infirmier reponse=4h injection anticoagulant ce soir")
    t.clock.advance(timedelta(hours=2))
    await t.fire()  # pool: ide2 and ide3 asked in direct chats
    dm2 = await t.dm("ide2")
    await t.people["ide2"].wait_for_message(dm2, sender=bot, predicate=lambda m: f"{t.code}/1" in m.body)

    reply = await t.ask("ide2", dm2, f"accepter {t.code}/1")  # the second professional asked
    assert "vous prenez en charge" in reply.body
    assert await t.people["ide2"].wait_for_invite(predicate=lambda r: r.room_id == t.patient_room) == t.patient_room
    await t.people["ide2"].join(t.patient_room)
    card = await t.people["ide2"].wait_for_message(t.patient_room, sender=bot,
                                                   predicate=lambda m: "Fiche d'identité" in m.body)
    assert "DUPONTEL" in card.body

    late = await t.ask("ide1", t.patient_room, "!accepter 1")  # the first one asked, too late
    assert "déjà" in late.body and "Marc Durand" in late.body
    dm3 = await t.dm("ide3")
    closed = await t.people["ide3"].wait_for_message(dm3, sender=bot, predicate=lambda m: "prise en charge par" in m.body)
    assert "Marc Durand" in closed.body

    # Then the care: appointment, report, closure, each shown in the room.
    reply = await t.ask("ide2", t.patient_room, "!rdv 1 demain 19h domicile")
    assert "domicile" in reply.body.lower()
    reply = await t.ask("ide2", t.patient_room, "!cr 1 injection faite, pas de saignement")
    assert "compte-rendu" in reply.body
    reply = await t.ask("mt", t.patient_room, "!cloturer 1")
    assert "clôturée" in reply.body


async def test_red_flag_names_the_threshold_and_targets_the_mt(team):
    t, bot = team, team.harness.user_id
    reply = await t.ask("mt", t.patient_room, "!inclure ic carte=oui")
    assert "inclus dans le parcours" in reply.body, reply.body
    reply = await t.ask("ide1", t.patient_room, "!redflag spo2=91 essoufflement au moindre effort depuis hier")
    assert "RED FLAG" in reply.body and "SpO₂ < 94 %" in reply.body
    assert t.people["mt"].user_id in reply.content["m.mentions"]["user_ids"]
    assert "8 h" in reply.body

    reply = await t.ask("ide1", t.patient_room, "!redflag spo2=96 je trouve qu'il respire mal")
    assert "aucun seuil franchi" in reply.body and "confirme=oui" in reply.body
    reply = await t.ask("ide1", t.patient_room, "!redflag spo2=91")
    assert "commentaire est obligatoire" in reply.body and "Usage" in reply.body

    # The MT has 8 h; at 4 h another médecin généraliste of the CPTS is asked.
    other_mg = await t.person("mg2", "medecin_generaliste", "Anne Bernard")
    t.clock.advance(timedelta(hours=4))
    await t.fire()
    dm = await t.dm("mg2")
    await other_mg.wait_for_message(dm, sender=bot, predicate=lambda m: f"{t.code}/1" in m.body)


async def test_bad_input_gets_french_usage_and_creates_nothing(team):
    t = team
    cases = [
        ("!dec plombier réparer la fuite", "plombier"),
        ("!dec infirmier reponse=4 pansement", "précisez l'unité"),
        ("!accepter 99", "inconnue"),
        ("!rdv 1 31/02 14h cabinet", "31/02"),
        ("!redflag poids=2.4 prise de poids", "poids"),
        ("!dec infirmier reponse=99999j pansement", "ne peut pas dépasser 30 jours"),
        ("!dec infirmier intervention=91j pansement", "ne peut pas dépasser 90 jours"),
    ]
    for text, fragment in cases:
        reply = await t.ask("mt", t.patient_room, text)
        assert fragment in reply.body, (text, reply.body)
        assert reply.body.startswith(("⚠️", "🙏")), (text, reply.body)
        if "dépasser" in fragment:
            assert "Usage : !declenchement" in reply.body, reply.body
    # Missing is not wrong: the comment is asked for (issue 17), and nothing is created meanwhile.
    reply = await t.ask("mt", t.patient_room, "!dec infirmier")
    assert "1/1 · Commentaire" in reply.body, reply.body
    async with t.harness.bot.store.session() as s:
        assert await s.scalar(select(func.count()).select_from(DemandeRow)) == 0


async def test_a_pending_step_fires_once_across_a_crash(team):
    t, bot = team, team.harness.user_id
    await t.ask("mt", t.patient_room, "!dec infirmier reponse=4h toilette et pansement")
    await t.harness.idle()
    # The bot dies (no clean shutdown) while the pool step is pending.
    t.harness.task.cancel()
    await asyncio.gather(t.harness.task, return_exceptions=True)
    await t.harness.bot.close()
    t.harness.bot = None
    t.clock.advance(timedelta(hours=3))  # past the pool (2 h), before the relance (3 h) is... at it
    await t.harness.start()  # overdue steps fire at once on start
    await t.harness.idle()
    await t.harness.bot.fire_due_deadlines()
    await t.harness.restart()  # and never again
    await t.harness.idle()
    await asyncio.sleep(1.5)
    widened = bot_messages(t.people["mt"], t.patient_room, bot, "élargie")
    assert len(widened) == 1, [m.body for m in widened]
    dm2 = await t.dm("ide2")
    await t.people["ide2"].wait_for_message(dm2, sender=bot, predicate=lambda m: f"{t.code}/1" in m.body)
    notices = [m for m in t.people["ide2"].messages(dm2) if f"{t.code}/1" in m.body and "Relance" not in m.body]
    assert len(notices) == 1


async def test_reaction_accepts_and_a_secretary_acts_for_her_doctor(team):
    t, bot = team, team.harness.user_id
    secretary = await t.person("secr", "autre", "Nadia Secrétaire", roles=[f"secretaire:{t.people['mt'].user_id}"])
    await t.ask("mt", t.patient_room, f"!cercle ajouter {secretary.user_id}")
    await secretary.join(await secretary.wait_for_invite(predicate=lambda r: r.room_id == t.patient_room))

    reply = await t.ask("secr", t.patient_room, "!dec infirmier reponse=4h prise de sang à domicile demain")
    assert "n°1" in reply.body
    notice = await t.people["ide1"].wait_for_message(t.patient_room, sender=bot, predicate=lambda m: "📣" in m.body)
    await t.people["ide1"].react(t.patient_room, notice.event_id, "✅")
    taken = await t.people["mt"].wait_for_message(t.patient_room, sender=bot,
                                                  predicate=lambda m: "prise en charge par Julie Petit" in m.body)
    # The request belongs to the doctor the secretary works for: she is told as requester.
    assert t.people["mt"].user_id in taken.content["m.mentions"]["user_ids"]
    reply = await t.ask("secr", t.patient_room, "!accepter 1")  # decisions.md 11
    assert "appartient au professionnel" in reply.body and "Paul Martin" in reply.body


async def test_alerte_critique_mentions_midwife_and_mt_and_follows_up(team):
    t, bot = team, team.harness.user_id
    sf = await t.person("sf", "sage_femme", "Sophie Leroy")
    await t.ask("mt", t.patient_room, f"!cercle ajouter {sf.user_id}")
    await sf.join(await sf.wait_for_invite(predicate=lambda r: r.room_id == t.patient_room))
    reply = await t.ask("mt", t.patient_room, "!alerte ta=150/95 céphalées depuis ce matin")
    assert "périnatalité" in reply.body and "pas incluse" in reply.body  # not in the parcours yet
    reply = await t.ask("mt", t.patient_room, "!inclure perinat carte=oui")
    assert "Périnatalité" in reply.body, reply.body

    reply = await t.ask("ide1", t.patient_room, "!alerte ta=150/95 céphalées ne cédant pas au paracétamol")
    assert "ALERTE CRITIQUE" in reply.body and "8 h" in reply.body and "TA" in reply.body
    assert {sf.user_id, t.people["mt"].user_id} <= set(reply.content["m.mentions"]["user_ids"])
    t.clock.advance(timedelta(hours=8))
    await t.fire()
    followup = await sf.wait_for_message(t.patient_room, sender=bot, predicate=lambda m: "a-t-elle consulté" in m.body)
    assert sf.user_id in followup.content["m.mentions"]["user_ids"]


async def test_an_absent_mt_sends_a_red_flag_straight_to_the_other_doctors(team):
    t, bot = team, team.harness.user_id
    other = await t.person("mg3", "medecin_generaliste", "Claude Morel")
    await t.ask("mt", t.patient_room, "!inclure ic carte=oui")
    today = t.clock.now().astimezone(t.harness.bot.config.tz)
    reply = await t.ask("mt", t.dms["mt"], f"absence {today:%d/%m/%Y} {(today + timedelta(days=7)):%d/%m/%Y}")
    assert "Absence notée" in reply.body
    await t.ask("ide1", t.patient_room, "!rf fc=45 malaise ce matin, bradycardie")
    dm = await t.dm("mg3")  # no waiting for half the délai: the MT is away
    await other.wait_for_message(dm, sender=bot, predicate=lambda m: f"{t.code}/1" in m.body)


async def test_odd_input_never_causes_an_internal_error(team):
    t = team
    odd = ["!cr", "!cloturer 5", "!annuler", "!refuser", "!rdv demain 9h", "!rdv 1 demain 9h plage",
           "!inclure", "!sortir ic pas inclus", "!cercle retirer @nobody:localhost", "!cercle retirer",
           "!acces accepter quelqu1", "!redflag signes=", "!alerte", "!dec referent", "!demandes extra",
           "!accepter P-ZZZZ/1", "!dec @absent:localhost x", '!dec infirmier "', "!rf spo2=abc malaise",
           "!rf ta=300 malaise", "!absence 31/02/2026", "!patient nouveau", "!annuaire voir"]
    for text in odd:
        reply = await t.ask("mt", t.patient_room, text)
        assert "erreur interne" not in reply.body, (text, reply.body)
        # A bare command opens its dialogue (🧭), `!annuler` alone then stops it (🛑).
        assert reply.body.startswith(("⚠️", "🙏", "Aucune", "🧭", "🛑")), (text, reply.body)


@pytest.mark.parametrize("team", ["sqlite"], indirect=True)
async def test_phone_prefixes_and_the_list_of_requests_in_a_patient_room(team):
    t = team
    for typed in ("！aide", "! aide"):  # full-width « ！ » and a space after « ! », as phones type them
        reply = await t.ask("mt", t.patient_room, typed)
        assert "Commandes de Cercle" in reply.body, (typed, reply.body)
    await t.ask("mt", t.patient_room, "!dec infirmier vad reponse=4h pansement quotidien talon gauche")
    await t.ask("mt", t.patient_room, f"!dec {t.people['ide1'].user_id} conseil reponse=2h avis sur la plaie")
    listed = await t.ask("mt", t.patient_room, "!demandes")
    lines = [x for x in listed.body.splitlines() if x.lstrip("-* ").startswith("n°")]
    assert len(lines) == 2, listed.body
    assert "Visite à domicile → infirmier·e · en attente de réponse · réponse attendue avant" in lines[0]
    assert "Conseil téléphonique → Julie Petit · en attente de réponse" in lines[1]
    await t.people["ide1"].send_text(t.patient_room, "!accepter 2")
    await t.people["mt"].wait_for_message(t.patient_room, sender=t.harness.user_id,
                                          predicate=lambda m: "n°2 prise en charge" in m.body)
    listed = await t.ask("mt", t.patient_room, "!demandes")
    assert "Conseil téléphonique → Julie Petit · acceptée par Julie Petit · intervention attendue avant" \
        in listed.body, listed.body
