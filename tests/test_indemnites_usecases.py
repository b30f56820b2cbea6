"""Tier 2: the indemnity ledger through the real commands on a real store (SQLite and PostgreSQL),
FakeClock, the outbox as the recorder (tests/usecase.py): lines priced as the flows record them,
states that move when the missing piece arrives, never counted twice, bordereaux and their files."""
from __future__ import annotations

import base64
import csv
import io
from datetime import datetime, timedelta, timezone

import pytest
from pypdf import PdfReader
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from bot.dispatch import dispatch
from domain.clock import FakeClock
from rooms import indemnites
from storage.models import Act, Bordereau, Deadline, Professional
from storage.repositories import IncomingEvent
from tests.usecase import COORDINATION_ROOM, UseCases

CODE, PLAIE = "P-7K3Q", "P-8H4R"
MT, IDE, IDE2, COORD = "@mt:cpts.test", "@ide:cpts.test", "@ide2:cpts.test", "@coord:cpts.test"
IDENTITY = ("Dupont", "Marie", "0612345678", "Lilas", "12/03/1950", "1950-03-12")
START = datetime(2026, 8, 3, 8, 0, tzinfo=timezone.utc)  # Q3 2026


async def _world(tmp_path, database_url=None, start=START) -> UseCases:
    uc = await UseCases.open(tmp_path / "bot", database_url, clock=FakeClock(start))
    await uc.enrol(MT, "medecin_generaliste", name="Dr Martin")
    await uc.enrol(IDE, "infirmier", name="Julie Petit")
    await uc.enrol(IDE2, "infirmier", name="Paul Durand")
    await uc.enrol(COORD, "autre", name="Claire Coord", roles=["coordinateur"])
    uc.ic = await uc.patient(CODE, [MT, IDE], mt=MT)
    uc.plaie = await uc.patient(PLAIE, [IDE, MT, IDE2], mt=MT)
    return uc


async def _acts(uc, **where) -> list[Act]:
    async with uc.bot.store.session() as s:
        stmt = select(Act).order_by(Act.id)
        for k, v in where.items():
            stmt = stmt.where(getattr(Act, k) == v)
        return list((await s.scalars(stmt)).all())


def _one(acts, kind, user):
    found = [a for a in acts if a.kind == kind and a.user_id == user and a.correction == 0]
    assert len(found) == 1, (kind, user, found)
    return found[0]


async def test_flows_record_priced_lines_and_a_cr_makes_the_acceptance_eligible(tmp_path, database_url):
    uc = await _world(tmp_path, database_url)
    try:
        await uc.say(MT, uc.ic, "!inclure ic carte=oui")
        await uc.say(IDE, uc.ic, "!redflag spo2=91 essoufflement au moindre effort")
        await uc.say(IDE, uc.plaie, "!inclure plaie carte=oui")
        await uc.say(IDE, uc.plaie, "!dec infirmier vad pansement complexe à domicile")
        await uc.say(IDE2, uc.plaie, "!accepter 1")
        acts = await _acts(uc)
        reperage = _one([a for a in acts if a.parcours == "insuffisance_cardiaque"], "reperage", MT)
        assert (reperage.etat, reperage.montant_cents, reperage.trimestre) == ("eligible", 1500, "2026-T3")
        inclusion = _one([a for a in acts if a.parcours == "insuffisance_cardiaque"], "inclusion", MT)
        assert (inclusion.etat, inclusion.cpam) == ("en_attente", "+ CPAM") and "données de base" in inclusion.motif
        assert _one(acts, "red_flag", IDE).etat == "eligible"
        plaie_inclusion = _one(acts, "inclusion", IDE)
        assert plaie_inclusion.cpam == "+ AMIII (= 35 €, CPAM)" and plaie_inclusion.montant_cents == 1500
        assert _one(acts, "declenchement", IDE).etat == "non_eligible"  # livret: no rule for a plain VAD request
        acceptance = _one(acts, "acceptation", IDE2)
        assert (acceptance.etat, acceptance.parcours, acceptance.regle) == ("en_attente", "plaie", "plaie_acceptation")

        sent = await uc.say(IDE2, uc.direct_room(IDE2), "indemnites")
        text = sent[0].body
        assert "en attente" in text and f"{PLAIE}/1" in text and "!cr 1" in text

        await uc.say(IDE2, uc.plaie, "!cr 1 pansement refait, plaie propre")
        acceptance = _one(await _acts(uc), "acceptation", IDE2)
        assert (acceptance.etat, acceptance.motif) == ("eligible", None)
        sent = await uc.say(IDE2, uc.direct_room(IDE2), "!indemnites 2026-T3")
        assert "Éligible : 15,00 €" in sent[0].body
        for s in sent:
            assert not any(word in s.body for word in IDENTITY)
    finally:
        await uc.close()


async def test_the_same_act_is_never_counted_twice(tmp_path, database_url):
    uc = await _world(tmp_path, database_url)
    try:
        await uc.say(IDE, uc.plaie, "!dec infirmier vad pansement complexe à domicile")
        event = IncomingEvent("$accept-once", uc.plaie, IDE2, "message", int(uc.now().timestamp() * 1000),
                              {"body": "!accepter 1", "content": {"msgtype": "m.text", "body": "!accepter 1"}})
        for _ in range(3):  # the same event replayed (restart, resync): the inbox and the ledger both hold
            await uc.bot.store.record_event(event, uc.now())
            await dispatch(uc.bot, event)
        await uc.react(IDE2, uc.plaie, "✅", await uc.event_id_of("notice:"))  # and a ✅ on top
        assert len([a for a in await _acts(uc) if a.kind == "acceptation"]) == 1
        async with uc.bot.store.session.begin() as session:  # the use case, called again for the same ref
            ctx = uc.bot.context(session, uc.plaie, "patient", IDE2, "$again")
            act = await indemnites.record(ctx, user_id=IDE2, kind="acceptation", ref="demande:1")
            assert act.correction == 0
        assert len([a for a in await _acts(uc) if a.kind == "acceptation"]) == 1
        with pytest.raises(IntegrityError):  # and the table itself refuses a second line
            async with uc.bot.store.session.begin() as session:
                session.add(Act(user_id=IDE2, kind="acceptation", ref="demande:1", at=uc.now(), details={}))
    finally:
        await uc.close()


async def test_lapsed_cotisation_then_corrected_by_a_coordinator(tmp_path):
    uc = await _world(tmp_path)
    try:
        async with uc.bot.store.session.begin() as session:
            (await session.get(Professional, IDE)).cotisation_until = uc.now() - timedelta(days=1)
        await uc.say(MT, uc.ic, "!inclure ic carte=oui")
        await uc.say(IDE, uc.ic, "!redflag spo2=91 essoufflement au moindre effort")
        flag = _one(await _acts(uc), "red_flag", IDE)
        assert flag.etat == "non_eligible" and flag.motif == "cotisation non à jour le 03/08/2026"
        sent = await uc.say(COORD, COORDINATION_ROOM, f"!annuaire modifier {IDE} cotisation=31/12/2026")
        assert "Indemnités recalculées" in sent[0].body
        assert _one(await _acts(uc), "red_flag", IDE).etat == "eligible"
    finally:
        await uc.close()


async def test_an_act_at_2330_on_30_september_paris_is_in_q3(tmp_path):
    uc = await _world(tmp_path, start=datetime(2026, 9, 30, 21, 30, tzinfo=timezone.utc))
    try:
        await uc.say(IDE, uc.ic, "!redflag confirme=oui essoufflement au moindre effort")
        uc.clock.advance(timedelta(minutes=31))  # 00:01 on 1 October in Paris
        await uc.say(IDE, uc.plaie, "!redflag confirme=oui plaie malodorante")
        assert [a.trimestre for a in await _acts(uc, kind="red_flag")] == ["2026-T3", "2026-T4"]
    finally:
        await uc.close()


def _file(sent, suffix):
    return [s for s in sent if s.action == "file" and s.content["filename"].endswith(suffix)]


def _bytes(item) -> bytes:
    return base64.b64decode(item.content["data"])


async def _some_quarter(uc):
    await uc.say(MT, uc.ic, "!inclure ic carte=oui")
    await uc.say(IDE, uc.ic, "!redflag spo2=91 essoufflement au moindre effort")
    await uc.say(IDE, uc.plaie, "!inclure plaie carte=oui")
    await uc.say(IDE, uc.plaie, "!dec infirmier vad pansement complexe à domicile")
    await uc.say(IDE2, uc.plaie, "!accepter 1")
    await uc.say(IDE2, uc.plaie, "!cr 1 pansement refait")
    await uc.say(IDE, uc.plaie, "!dec infirmier vad deuxième passage")
    await uc.say(IDE2, uc.plaie, "!accepter 2")  # pending: no CR yet


async def test_bordereau_summary_pdf_csv_chart_without_identity(tmp_path, database_url):
    uc = await _world(tmp_path, database_url)
    try:
        await _some_quarter(uc)
        uc.clock.set(datetime(2026, 10, 2, 8, tzinfo=timezone.utc))
        await uc.sent()
        sent = await uc.say(COORD, COORDINATION_ROOM, "!bordereau")
        summary = next(s for s in sent if s.action == "message")
        assert "2026" in summary.body and "Julie Petit" in summary.body and "TOTAL" in summary.body
        pdfs, csvs, pngs = _file(sent, ".pdf"), _file(sent, ".csv"), _file(sent, ".png")
        assert len(pdfs) == 3 and len(csvs) == 1 and len(pngs) == 1
        assert pngs[0].content["msgtype"] == "m.image" and _bytes(pngs[0]).startswith(b"\x89PNG")
        acts = await _acts(uc, trimestre="2026-T3")
        raw = _bytes(csvs[0])
        assert raw.startswith("\ufeff".encode())
        rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig")), delimiter=";"))
        assert len(rows) == len(acts)
        due = sum(int(r["montant_du_eur"].replace(",", "")) for r in rows)
        assert due == sum(a.montant_cents for a in acts if a.etat == "eligible") == 6000  # 4 × 15 € (2 repérages, red flag, acceptance with its CR)
        assert any(r["etat"] == "en attente" and r["reference"] == f"{PLAIE}/2" for r in rows)
        for item in pdfs:
            data = _bytes(item)
            assert data.startswith(b"%PDF")
            text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)
            assert "Sous-total éligible" in text and "2026" in text
        by_name = {item.content["filename"]: _bytes(item) for item in pdfs}
        paul = next(v for k, v in by_name.items() if "paul-durand" in k)
        paul_text = "".join(p.extract_text() for p in PdfReader(io.BytesIO(paul)).pages)
        assert "Paul Durand" in paul_text and "15,00 €" in paul_text and "en attente" in paul_text
        everything = summary.body + raw.decode("utf-8-sig") + "".join(
            "".join(p.extract_text() for p in PdfReader(io.BytesIO(_bytes(i))).pages) for i in pdfs)
        for word in IDENTITY:
            assert word not in everything
    finally:
        await uc.close()


async def test_validation_freezes_and_later_changes_become_corrections(tmp_path):
    uc = await _world(tmp_path)
    try:
        await _some_quarter(uc)
        uc.clock.set(datetime(2026, 10, 2, 8, tzinfo=timezone.utc))
        refused = await uc.say(COORD, COORDINATION_ROOM, f"!bordereau valider {IDE2} 2026-T4")
        assert "pas terminé" in refused[0].body
        sent = await uc.say(COORD, COORDINATION_ROOM, f"!bordereau valider {IDE2} 2026-T3")
        assert "validé : **15,00 €**" in sent[0].body or "15,00 €" in sent[0].body
        again = await uc.say(COORD, COORDINATION_ROOM, f"!bordereau valider {IDE2} 2026-T3")
        assert "déjà validé" in again[0].body
        await uc.say(IDE2, uc.plaie, "!cr 2 deuxième passage fait")  # the pending line of a paid quarter
        lines = await _acts(uc, user_id=IDE2, kind="acceptation")
        frozen = [a for a in lines if a.trimestre == "2026-T3"]
        assert [a.etat for a in frozen] == ["eligible", "en_attente"]  # unchanged: it was paid like that
        corrections = [a for a in lines if a.correction]
        assert [(c.trimestre, c.montant_cents, c.etat) for c in corrections] == [("2026-T4", 1500, "eligible")]
        await uc.say(IDE2, uc.plaie, "!cloturer 2")  # nothing more changes: no second correction
        assert len([a for a in await _acts(uc, user_id=IDE2) if a.correction]) == 1
        async with uc.bot.store.session() as s:
            b = await s.scalar(select(Bordereau))
            assert (b.user_id, b.trimestre, b.total_cents) == (IDE2, "2026-T3", 1500)
    finally:
        await uc.close()


async def test_recherche_mt_attested_by_the_doctor_then_validated_by_a_coordinator(tmp_path):
    uc = await UseCases.open(tmp_path / "bot", clock=FakeClock(START))
    from bot.config import Config, CptsConfig, MatrixConfig
    from bot.wiring import compose
    config = Config(matrix=MatrixConfig(homeserver="http://127.0.0.1:9", user_id="@cercle:cpts.test", password="x"),
                    cpts=CptsConfig(name="CPTS Val d'Orge", tarifs="val-orge-2026"))
    uc.bot.services.bareme = compose(config, uc.bot.store, uc.clock).services.bareme
    try:
        await uc.enrol(MT, "medecin_generaliste", name="Dr Martin")
        await uc.enrol("@dac:cpts.test", "autre", name="DAC 91", roles=["structure:mas_dac"])
        await uc.enrol(COORD, "autre", name="Claire Coord", roles=["coordinateur"])
        room = await uc.patient(CODE, ["@dac:cpts.test"])
        await uc.say("@dac:cpts.test", room, "!dec mg recherche_mt patient sans médecin traitant depuis 2025")
        await uc.say(MT, uc.direct_room(MT), f"accepter {CODE}/1")
        line = _one(await _acts(uc), "acceptation", MT)
        assert (line.regle, line.etat, line.montant_cents) == ("recherche_mt", "en_attente", 15000)
        sent = await uc.say(MT, uc.direct_room(MT), "indemnites")
        assert f"!indemnites attester {CODE}/1" in sent[0].body
        await uc.say(MT, uc.direct_room(MT), f"indemnites attester {CODE}/1")
        assert _one(await _acts(uc), "acceptation", MT).motif == "manque : validation d'un coordinateur"
        sent = await uc.say(COORD, COORDINATION_ROOM, f"!bordereau attestation {CODE}/1")
        assert "éligible : 150,00 €" in sent[0].body
        assert _one(await _acts(uc), "declenchement", "@dac:cpts.test").montant_cents == 1500
    finally:
        await uc.close()


async def test_quarterly_post_and_weekly_digest_are_deadline_rows(tmp_path):
    uc = await _world(tmp_path)
    try:
        for _ in range(2):  # idempotent at each start
            async with uc.bot.store.session.begin() as session:
                await indemnites.ensure_schedule(session, uc.bot.services, uc.now())
        async with uc.bot.store.session() as s:
            rows = (await s.scalars(select(Deadline).where(Deadline.kind.like("indemnites.%")))).all()
        assert sorted((d.kind, d.ref, d.due_at) for d in rows) == [
            ("indemnites.attente", "attente:2026-08-10", datetime(2026, 8, 10, 6, tzinfo=timezone.utc)),
            ("indemnites.trimestre", "bordereau:2026-T3", datetime(2026, 10, 1, 6, tzinfo=timezone.utc))]
        await _some_quarter(uc)
        await uc.sent()
        fired = await uc.fire_due(timedelta(days=7))  # the requests' own timers fire too
        digest = [s for s in fired if "Lignes d'indemnité en attente" in s.body]
        assert len(digest) == 1 and digest[0].room_id == COORDINATION_ROOM
        assert f"{PLAIE}/2" in digest[0].body and "!cr 2" in digest[0].body
        uc.clock.set(datetime(2026, 10, 1, 6, tzinfo=timezone.utc))
        posted = await uc.fire_due()
        assert any(s.action == "file" and s.content["filename"] == "bordereau-2026-T3.csv" for s in posted)
        async with uc.bot.store.session() as s:
            pending = (await s.scalars(select(Deadline).where(Deadline.kind == "indemnites.trimestre",
                                                              Deadline.status == "pending"))).all()
        assert [d.ref for d in pending] == ["bordereau:2026-T4"]
    finally:
        await uc.close()


async def test_lines_other_modules_insert_are_priced_and_rechecked(tmp_path):
    """TCIM and suivi write their lines with a plain insert and keep their criteria in details:
    the ledger prices them when read, and a posted item can complete an inclusion's données de base."""
    uc = await _world(tmp_path)
    try:
        await uc.say(MT, uc.ic, "!inclure ic carte=oui")
        async with uc.bot.store.session.begin() as session:
            session.add(Act(user_id=MT, kind="tcim_medecin", patient_code=CODE, parcours="tcim", ref="tcim:1",
                            at=uc.now(), details={"criteria": ["rdv"]}))
        sent = await uc.say(MT, uc.direct_room(MT), "indemnites")
        assert "TCIM médecin" in sent[0].body and "manque : compte-rendu" in sent[0].body
        async with uc.bot.store.session.begin() as session:
            line = await session.scalar(select(Act).where(Act.kind == "tcim_medecin"))
            line.details = {"criteria": {"rdv": True, "cr": True}}
        await uc.say(MT, uc.direct_room(MT), "indemnites")
        tcim = _one(await _acts(uc), "tcim_medecin", MT)
        assert (tcim.etat, tcim.montant_cents, tcim.cpam) == ("eligible", 2500, "+ CPAM (TCG 25 €)")

        # The données de base recorded with `!donnees` (rooms.suivi) complete the inclusion: éligible in
        # the same transaction, after a first partial entry that leaves it pending.
        await uc.say(IDE, uc.ic, "!donnees poids=82.5 fc=64 dfg=58")
        assert _one(await _acts(uc), "inclusion", MT).etat == "en_attente"
        await uc.say(IDE, uc.ic, "!donnees hb=12.5 arythmie=non nyha=2")
        assert _one(await _acts(uc), "inclusion", MT).etat == "eligible"
    finally:
        await uc.close()


async def test_migrations_match_the_models(database_url):
    """The migrated act and bordereau tables are what the models declare (SQLite and PostgreSQL)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from storage.engine import make_engine, migrate
    from storage.models import Base

    engine = make_engine(database_url)
    try:
        await migrate(engine)
        async with engine.connect() as conn:
            diff = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata))
        mine = [d for d in diff if "act" in repr(d) or "bordereau" in repr(d)]
        assert mine == []
    finally:
        await engine.dispose()


def test_an_unknown_rule_set_stops_the_start_naming_the_key(tmp_path):
    from bot.config import Config, CptsConfig, MatrixConfig
    from bot.wiring import compose
    from domain.indemnites import TarifsError

    config = Config(matrix=MatrixConfig(homeserver="http://127.0.0.1:9", user_id="@cercle:cpts.test", password="x"),
                    cpts=CptsConfig(tarifs="essonne-2030"))
    with pytest.raises(TarifsError, match="cpts.tarifs : barème inconnu « essonne-2030 »"):
        compose(config, None, FakeClock())
