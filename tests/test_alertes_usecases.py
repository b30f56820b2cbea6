"""Red flags and the alerte critique (rooms/alertes.py) in the middle tier: the real dispatch and
handlers on a real store, no homeserver (tests/usecase.py). The alerte's follow-up arrives through
the DEADLINE_HANDLERS table that bot/wiring.compose merges."""
from __future__ import annotations

from datetime import timedelta

from domain.clock import FakeClock
from storage.models import Inclusion
from tests.usecase import UseCases

CODE = "P-ALRT"
MT = "@mt:cpts.test"
IDE = "@ide:cpts.test"
SF = "@sf:cpts.test"


async def _world(tmp_path, parcours: str) -> UseCases:
    uc = await UseCases.open(tmp_path / "bot", clock=FakeClock())
    await uc.enrol(MT, "medecin_generaliste", name="Dr Martin")
    await uc.enrol(IDE, "infirmier", name="Julie Petit")
    await uc.enrol(SF, "sage_femme", name="Sophie Leroy")
    uc.room = await uc.patient(CODE, [MT, IDE, SF], mt=MT)
    async with uc.bot.store.session.begin() as session:
        session.add(Inclusion(patient_code=CODE, parcours=parcours, included_by=MT, included_at=uc.now()))
    return uc


async def test_a_red_flag_checks_the_thresholds_then_asks_the_mt(tmp_path):
    uc = await _world(tmp_path, "insuffisance_cardiaque")
    try:
        refused = await uc.say(IDE, uc.room, "!redflag spo2=96 il respire mal")
        assert "aucun seuil franchi" in refused[0].body and "confirme=oui" in refused[0].body
        sent = await uc.say(IDE, uc.room, "!redflag spo2=91 essoufflement au moindre effort")
        flag = next(s for s in sent if "RED FLAG" in s.body)
        assert "demande n°1" in flag.body and "SpO₂ 91 %" in flag.body and MT in flag.body
        assert any(d.kind == "demande.escalade" for d in await uc.pending_deadlines())
    finally:
        await uc.close()


async def test_an_alerte_critique_mentions_the_midwife_and_the_mt_then_follows_up(tmp_path):
    uc = await _world(tmp_path, "perinatalite")
    try:
        sent = await uc.say(IDE, uc.room, "!alerte ta=150/95 céphalées ne cédant pas au paracétamol")
        alerte = next(s for s in sent if "ALERTE CRITIQUE" in s.body)
        assert {MT, SF} <= set(alerte.content["m.mentions"]["user_ids"])
        assert await uc.fire_due(timedelta(hours=7)) == []
        followup = await uc.fire_due(timedelta(hours=1))
        assert [s.room_id for s in followup] == [uc.room]
        assert "a-t-elle consulté" in followup[0].body and SF in followup[0].content["m.mentions"]["user_ids"]
    finally:
        await uc.close()
