"""Tableau de bord in the middle tier (tests/usecase.py): real commands on a real store with a fake
clock; the outbox is the recorder, so the PNG and the CSV are read back from their "file" rows."""
from __future__ import annotations

import base64
import csv
import io
from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from domain.clock import FakeClock
from rooms import indicateurs
from storage.models import Act, Inclusion
from tests.usecase import COORDINATION_ROOM, UseCases

MT = "@mt:cpts.test"
IDE = "@ide:cpts.test"
IDE2 = "@ide2:cpts.test"
COORD = "@coord:cpts.test"
START = datetime(2026, 10, 5, 8, 0, tzinfo=timezone.utc)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


async def _world(tmp_path) -> UseCases:
    uc = await UseCases.open(tmp_path / "bot", clock=FakeClock(START))
    await uc.enrol(MT, "medecin_generaliste", name="Dr Martin")
    await uc.enrol(IDE, "infirmier", name="Julie Petit")
    await uc.enrol(IDE2, "infirmier", name="Paul Durand")
    await uc.enrol(COORD, "infirmier", name="Claire Coord", roles=["coordinateur"])
    return uc


def files(sent):
    return {s.content["filename"]: s for s in sent if s.action == "file"}


def read_csv(item) -> list[list[str]]:
    raw = base64.b64decode(item.content["data"])
    assert raw.startswith("\ufeff".encode()), "UTF-8 BOM for spreadsheets"
    return list(csv.reader(io.StringIO(raw.decode("utf-8-sig")), delimiter=";"))


async def _activity(uc: UseCases) -> None:
    """Six patients, each with a consultation to the nurses accepted after 2 h (one on the
    IDE2 side), in October; one in IC."""
    for i in range(6):
        code = f"P-{'ABCDEF'[i]}{'ABCDEF'[i]}22"
        room = await uc.patient(code, [MT, IDE, IDE2], mt=MT)
        if i == 0:
            async with uc.bot.store.session.begin() as session:
                session.add(Inclusion(patient_code=code, parcours="insuffisance_cardiaque", included_by=MT,
                                      included_at=uc.now()))
        await uc.say(MT, room, "!dec infirmier consultation pansement à refaire")
        uc.clock.advance(timedelta(hours=2))
        await uc.say(IDE if i < 5 else IDE2, room, "!accepter")
        uc.clock.advance(timedelta(days=1))


async def test_indicateurs_posts_a_table_a_png_and_a_french_csv(tmp_path):
    uc = await _world(tmp_path)
    try:
        await _activity(uc)
        uc.clock.set(datetime(2026, 11, 3, 9, tzinfo=timezone.utc))
        await uc.sent()
        sent = await uc.say(COORD, COORDINATION_ROOM, "!indicateurs")
        table = next(s for s in sent if s.action == "message")
        assert "Indicateurs · octobre 2026" in table.body
        assert "| Déclenchements | 6 |" in table.body and "| Taux d'acceptation (%) | 100,0 |" in table.body
        assert "| Délai d'acceptation médian (h) | 2,0 |" in table.body
        assert "| Red flags | 0 |" in table.body and "| Patients inclus | < 5 |" in table.body
        assert "| TCIM réalisées | 0 |" in table.body and "| Questionnaires complétés | 0 |" in table.body
        assert "Pas encore calculés (données non enregistrées sous une forme agrégeable) : Éléments de suivi en retard" in table.body  # never faked
        got = files(sent)
        png, data = got["indicateurs-2026-10.png"], got["indicateurs-2026-10.csv"]
        assert png.content["msgtype"] == "m.image" and png.content["mimetype"] == "image/png"
        assert base64.b64decode(png.content["data"]).startswith(PNG_MAGIC)
        assert data.content["msgtype"] == "m.file" and all(s.room_id == COORDINATION_ROOM for s in got.values())
        rows = read_csv(data)
        assert rows[0] == ["Indicateur", "Détail", "2026-10", "Total 2026-10"]
        by = {(r[0], r[1]): r[2:] for r in rows[2:] if len(r) > 2}
        assert by[("Déclenchements", "")] == ["6", "6"]
        assert by[("Déclenchements", "Consultation")] == ["6", "6"]
        assert by[("Délai d'acceptation médian (h)", "")] == ["2,0", "2,0"]
        assert by[("Déclenchements par type et cible", "Consultation → Infirmier·e")][-1] == "6"
        assert by[("Définition", "Taux d'acceptation (%)")] == ["Demandes acceptées ÷ demandes créées pendant le mois."]
        # No identity and no patient code anywhere.
        blob = table.body + base64.b64decode(data.content["data"]).decode("utf-8")
        assert "P-" not in blob and "Dupont" not in blob and "@" not in blob
        # A parcours: its patients only (one here: masked).
        sent = await uc.say(COORD, COORDINATION_ROOM, "!indicateurs 2026-10 ic")
        assert "| Déclenchements | < 5 |" in sent[0].body and "Insuffisance cardiaque" in sent[0].body
        assert "indicateurs-2026-10-insuffisance_cardiaque.csv" in files(sent)
        # A quarter and a year work; the chart shows at least six months.
        assert "4e trimestre 2026" in (await uc.say(COORD, COORDINATION_ROOM, "!indicateurs 2026-T4"))[0].body
    finally:
        await uc.close()


async def test_indicateurs_refuses_bad_input_and_non_coordinators(tmp_path):
    uc = await _world(tmp_path)
    try:
        uc.clock.advance(timedelta(days=60))
        bad = await uc.say(COORD, COORDINATION_ROOM, "!indicateurs 2026-13")
        assert "le mois doit aller de 01 à 12" in bad[0].body.lower() and "Usage" in bad[0].body
        assert not files(bad)
        unknown = await uc.say(COORD, COORDINATION_ROOM, "!indicateurs 2026-10 cardio")
        assert "parcours inconnu" in unknown[0].body.lower()
        future = await uc.say(COORD, COORDINATION_ROOM, "!indicateurs 2030")
        assert "n'a pas commencé" in future[0].body
        denied = await uc.say(IDE, COORDINATION_ROOM, "!indicateurs")
        assert not files(denied) and "Indicateurs ·" not in denied[0].body
        # `!indicateurs ic`: the parcours alone, last month.
        assert "Insuffisance cardiaque" in (await uc.say(COORD, COORDINATION_ROOM, "!indicateurs ic"))[0].body
    finally:
        await uc.close()


async def test_activite_gives_a_professional_their_own_figures_only(tmp_path):
    uc = await _world(tmp_path)
    try:
        await _activity(uc)
        uc.clock.set(datetime(2026, 11, 3, 9, tzinfo=timezone.utc))
        await uc.sent()
        mine = await uc.say(IDE2, uc.direct_room(IDE2), "activite")
        assert len(mine) == 1 and "Votre activité · octobre 2026" in mine[0].body
        assert "demandes que vous avez acceptées : 1" in mine[0].body and "médian 2 h" in mine[0].body
        theirs = await uc.say(MT, uc.direct_room(MT), "!activite 2026-10")
        assert "demandes faites : 6, dont 6 acceptée(s)" in theirs[0].body
        assert "P-" not in mine[0].body + theirs[0].body
        wrong_room = await uc.say(MT, COORDINATION_ROOM, "!activite")
        assert "Votre activité" not in wrong_room[0].body
    finally:
        await uc.close()


async def test_the_monthly_report_is_a_deadline_row_on_the_first_working_day(tmp_path):
    uc = await _world(tmp_path)
    try:
        await _activity(uc)
        async with uc.bot.store.session.begin() as session:
            await indicateurs.planifier(session, uc.bot.services, uc.now())
            await indicateurs.planifier(session, uc.bot.services, uc.now())  # idempotent
        planned = [d for d in await uc.pending_deadlines() if d.kind == "indicateurs.rapport"]
        assert [(d.ref, d.due_at) for d in planned] == [
            ("indicateurs:2026-10", datetime(2026, 11, 2, 7, tzinfo=timezone.utc))]  # 1 Nov: Sunday, Toussaint
        await uc.sent()
        report = await uc.fire_due(datetime(2026, 11, 2, 7, tzinfo=timezone.utc) - uc.now())
        assert any("Indicateurs · octobre 2026" in s.body for s in report if s.action == "message")
        assert set(files(report)) == {"indicateurs-2026-10.png", "indicateurs-2026-10.csv"}
        nxt = [d for d in await uc.pending_deadlines() if d.kind == "indicateurs.rapport"]
        assert [(d.ref, d.due_at) for d in nxt] == [("indicateurs:2026-11", datetime(2026, 12, 1, 7, tzinfo=timezone.utc))]
        # December's report also carries the quarter's (October to December).
        await uc.fire_due(datetime(2026, 12, 1, 7, tzinfo=timezone.utc) - uc.now())
        quarter = await uc.fire_due(datetime(2027, 1, 4, 7, tzinfo=timezone.utc) - uc.now())
        bodies = [s.body for s in quarter if s.action == "message"]
        assert any("décembre 2026" in b for b in bodies) and any("4e trimestre 2026" in b for b in bodies)
        assert "indicateurs-2026-T4.csv" in files(quarter)
    finally:
        await uc.close()


async def test_the_ledger_records_a_requests_target_as_a_profession_never_a_person(tmp_path):
    uc = await _world(tmp_path)
    try:
        room = await uc.patient("P-CC22", [MT, IDE], mt=MT)
        await uc.say(MT, room, f"!dec {IDE2} consultation pansement")
        await uc.say(MT, room, "!dec infirmier vad pansement")
        async with uc.bot.store.session() as session:
            lines = (await session.scalars(select(Act).where(Act.kind == "declenchement").order_by(Act.id))).all()
        assert [(a.details["flow"], a.details["cible"]) for a in lines] == [
            ("consultation", "infirmier"), ("visite_domicile", "infirmier")]
        assert all(IDE2 not in str(a.details) for a in lines)
    finally:
        await uc.close()
