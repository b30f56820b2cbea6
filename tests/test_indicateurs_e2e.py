"""Tableau de bord on the wire: real flows on a real Synapse, then `!indicateurs` in the
coordinators' room; the chart and the CSV are downloaded and decrypted as Element would, the CSV's
figures checked against the flows and the PNG read back as an image. `!activite` in a direct chat."""
from __future__ import annotations

import csv
import io
import re
from datetime import datetime, timedelta, timezone

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import pytest  # noqa: E402

from bot.coordination import ensure_coordinator_room  # noqa: E402
from domain.clock import FakeClock  # noqa: E402
from tests.bot_harness import BotHarness  # noqa: E402
from tests.test_demandes_e2e import Team  # noqa: E402

pytestmark = pytest.mark.synapse


@pytest.fixture
async def team(synapse, register, tmp_path):
    now = datetime.now(timezone.utc)
    clock = FakeClock(datetime(now.year, now.month, 2, 9, tzinfo=timezone.utc))  # the whole test in one month
    bot_user, bot_password = register("cercle")
    harness = BotHarness(synapse.url, bot_user, bot_password, tmp_path / "bot", clock=clock)
    await harness.start()
    t = Team(harness, register, synapse, tmp_path)
    t.clock = clock
    await t.person("coord", "autre", "Claire Coord", roles=["coordinateur"])
    await t.person("mt", "medecin_generaliste", "Paul Martin")
    await t.person("ide1", "infirmier", "Julie Petit")
    t.coord_room = await ensure_coordinator_room(harness.bot, invite=[t.people["coord"].user_id])
    await t.people["coord"].join(await t.people["coord"].wait_for_invite())
    for key in ("mt", "ide1"):
        c = t.people[key]
        dm = await c.create_room(invite=[bot_user], is_direct=True)
        await c.wait_joined(dm, bot_user)
        t.dms[key] = dm
    mt, ide1 = t.people["mt"], t.people["ide1"]
    reply = await t.ask("mt", t.dms["mt"], "patient nouveau nom=Dupontel prenom=Marielle naissance=12/03/1950 sexe=F "
                                           'tel=0612345678 adresse="3 rue des Lilas" commune=Brétigny-sur-Orge '
                                           f"mt={mt.user_id} pros={ide1.user_id} consentement=oui")
    t.code = re.search(r"P-[2-9A-Z]{4}", reply.body).group(0)
    t.patient_room = await mt.wait_for_invite()
    await mt.join(t.patient_room)
    assert await ide1.wait_for_invite() == t.patient_room
    await ide1.join(t.patient_room)
    yield t
    await t.close()
    await harness.stop()


async def accept(t, key: str, n: int) -> None:
    """The acceptance is announced to the room, not as a reply to the command."""
    c = t.people[key]
    await c.send_text(t.patient_room, f"!accepter {n}")
    await c.wait_for_message(t.patient_room, sender=t.harness.user_id,
                             predicate=lambda m: f"Demande n°{n} prise en charge" in m.body)


async def test_indicateurs_chart_and_csv_arrive_encrypted_and_match_the_flows(team):
    t, bot = team, team.harness.user_id
    for i in range(5):
        await t.ask("mt", t.patient_room, f"!dec infirmier consultation pansement n°{i + 1}")
    t.clock.advance(timedelta(hours=2))
    for n in range(1, 5):
        await accept(t, "ide1", n)
    await t.ask("ide1", t.patient_room, "!redflag signes=dyspnee essoufflement au moindre effort")
    t.clock.advance(timedelta(hours=1))
    await accept(t, "mt", 6)
    t.clock.advance(timedelta(days=4))  # request 5: nobody, escalated to the coordinators
    await t.fire()

    periode = t.clock.now().strftime("%Y-%m")
    table = await t.ask("coord", t.coord_room, f"!indicateurs {periode}", timeout=60)
    assert "| Déclenchements | 6 |" in table.body and "| Demandes acceptées | 5 |" in table.body
    coord = t.people["coord"]
    image = await coord.wait_for_message(t.coord_room, sender=bot, predicate=lambda m: m.msgtype == "m.image", timeout=60)
    attachment = await coord.wait_for_message(t.coord_room, sender=bot, predicate=lambda m: m.msgtype == "m.file", timeout=60)
    for m in (image, attachment):
        assert m.encrypted and "url" not in m.content, "an attachment is never a plain upload"
    png = await coord.download_decrypted(image)
    pixels = mpimg.imread(io.BytesIO(png), format="png")
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 400
    raw = await coord.download_decrypted(attachment)
    assert raw.startswith("\ufeff".encode())
    text = raw.decode("utf-8-sig")
    rows = {(r[0], r[1]): r[2:] for r in csv.reader(io.StringIO(text), delimiter=";") if len(r) > 2}
    assert rows[("Déclenchements", "")] == ["6", "6"]
    assert rows[("Demandes acceptées", "")] == ["5", "5"]
    assert rows[("Taux d'acceptation (%)", "")] == ["83,3", "83,3"]
    assert rows[("Délai d'acceptation médian (h)", "")] == ["2,0", "2,0"]  # 2 h ×4, 1 h (the red flag)
    assert rows[("Red flags", "")] == ["< 5", "< 5"] and rows[("Escaladées aux coordinateurs", "")] == ["< 5", "< 5"]
    for secret in (t.code, "Dupontel", "Marielle", "1950", "Lilas", "pansement", "@"):
        assert secret not in text and secret not in table.body

    mine = await t.ask("ide1", t.dms["ide1"], f"activite {periode}")
    assert "demandes que vous avez acceptées : 4" in mine.body and "red flags levés : 1" in mine.body
    assert t.code not in mine.body
