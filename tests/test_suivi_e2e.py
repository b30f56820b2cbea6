"""Suivi end to end, on a real Synapse with E2EE clients and an injected clock: données de base that
cross the IC threshold propose the red flag; périnatalité SA reminders at the right time and not
before; a plaie follow-up computed at 23:00 for someone whose hours are 8h-19h arrives at 8h, and
its 30-day overdue notice is announced once. One team, one patient, the clock moved forward."""
from __future__ import annotations

import re
from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from domain.clock import FakeClock
from tests.bot_harness import BotHarness
from tests.clinician import Clinician

pytestmark = pytest.mark.synapse
PARIS = ZoneInfo("Europe/Paris")


def _paris(day, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=PARIS).astimezone(timezone.utc)


async def test_suivi_reminders_and_red_flag_proposal_on_the_wire(synapse, register, tmp_path):
    day0 = datetime.now(PARIS).date() - timedelta(days=1)
    clock = FakeClock(_paris(day0, 23))  # 23h in Paris
    bot_user, bot_password = register("cercle")
    harness = BotHarness(synapse.url, bot_user, bot_password, tmp_path / "bot", clock=clock)
    await harness.start()
    people: dict[str, Clinician] = {}
    try:
        for key, profession, name in (("mt", "medecin_generaliste", "Paul Martin"), ("ide", "infirmier", "Julie Petit"),
                                      ("sf", "sage_femme", "Sophie Leroy")):
            user_id, password = register(key)
            await harness.enrol(user_id, profession, name=name)
            people[key] = await Clinician.login(synapse.url, user_id, password, tmp_path / f"store-{key}")
        mt, ide, sf = people["mt"], people["ide"], people["sf"]

        async def ask(c: Clinician, room: str, text: str):
            sent = await c.send_text(room, text)
            return await c.wait_for_message(room, sender=bot_user, predicate=lambda m: m.in_reply_to() == sent)

        async def fire_at(instant: datetime):
            clock.set(instant)
            await harness.bot.fire_due_deadlines()
            await harness.idle()

        def notices(c: Clinician, room: str, text: str):
            return [m for m in c.messages(room) if m.sender == bot_user and text in m.body]

        dm = await mt.create_room(invite=[bot_user], is_direct=True)
        await mt.wait_joined(dm, bot_user)
        reply = await ask(mt, dm, "patient nouveau nom=Dupontel prenom=Marielle naissance=12/03/1990 sexe=F "
                                  'tel=0612345678 adresse="3 rue des Lilas" commune=Brétigny-sur-Orge '
                                  f"mt={mt.user_id} pros={ide.user_id},{sf.user_id} consentement=oui")
        assert re.search(r"P-[2-9A-Z]{4}", reply.body)
        room = await mt.wait_for_invite()
        await mt.join(room)
        for c in (ide, sf):
            assert await c.wait_for_invite() == room
            await c.join(room)

        assert "8h–19h" in (await ask(ide, room, "!horaires 8h-19h")).body
        assert "8h–19h" in (await ask(sf, room, "!horaires 8h-19h")).body
        # At 23h: the plaie inclusion plans the fiche de suivi from now (every 10 to 30 days).
        assert "Plaie" in (await ask(ide, room, "!inclure plaie carte=oui")).body
        assert "Insuffisance" in (await ask(mt, room, "!inclure ic carte=oui")).body
        assert "Périnatalité" in (await ask(mt, room, "!inclure perinat carte=oui")).body
        first = await ask(mt, room, "!donnees poids=80")
        assert "80 kg" in first.body and "🚩" not in first.body
        # 11 SA (échographie T1, dépistage combiné) fall two days from now, at 8h.
        start = day0 + timedelta(days=2) - timedelta(weeks=11)
        assert "✅" in (await ask(sf, room, f"!donnees debut_grossesse={start:%d/%m/%Y}")).body

        await fire_at(_paris(day0 + timedelta(days=2), 7, 59))
        assert not notices(sf, room, "Échographie T1")                       # not before
        await fire_at(_paris(day0 + timedelta(days=2), 8, 0))
        for who in (sf, mt):  # the professionals concerned, each mentioned once in the room; not the nurse
            echo = await sf.wait_for_message(room, sender=bot_user, predicate=lambda m, who=who: "Échographie T1" in m.body
                                             and m.content["m.mentions"]["user_ids"] == [who.user_id])
            assert echo.encrypted and "Suivi à faire" in echo.body
        assert not [m for m in notices(sf, room, "Suivi à faire") if ide.user_id in m.content["m.mentions"]["user_ids"]]

        # Four days after the first weight, +2.5 kg: the red flag is proposed, not raised.
        clock.set(_paris(day0 + timedelta(days=4), 22))
        gain = await ask(mt, room, "!donnees poids=82.5")
        assert "Seuil de red flag franchi" in gain.body and "poids=+2.5kg/4j" in gain.body
        assert "!redflag parcours=insuffisance_cardiaque" in gain.body
        assert not notices(mt, room, "RED FLAG")

        # The plaie reminder was computed for 23h (day 10): it waits for 8h the next morning.
        await fire_at(_paris(day0 + timedelta(days=10), 23, 30))
        assert not notices(ide, room, "Suivi à faire · Plaie")
        await fire_at(_paris(day0 + timedelta(days=11), 8, 0))
        plaie = await ide.wait_for_message(room, sender=bot_user, predicate=lambda m: "Suivi à faire · Plaie" in m.body)
        assert plaie.content["m.mentions"]["user_ids"] == [ide.user_id]
        # Overdue at 30 days (23h on day 30): announced at 8h on day 31, once.
        await fire_at(_paris(day0 + timedelta(days=31), 7, 59))
        assert not notices(ide, room, "Suivi en retard · Plaie")
        await fire_at(_paris(day0 + timedelta(days=31), 8, 0))
        await ide.wait_for_message(room, sender=bot_user, predicate=lambda m: "Suivi en retard · Plaie" in m.body)
        await fire_at(_paris(day0 + timedelta(days=33), 9, 0))
        await ask(ide, room, "!suivi")  # a round trip: anything sent before it has arrived
        assert len(notices(ide, room, "Suivi en retard · Plaie")) == 1
    finally:
        for c in people.values():
            await c.close()
        await harness.stop()
