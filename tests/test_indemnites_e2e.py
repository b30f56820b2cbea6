"""Indemnities on the wire: flows in a patient room, then `!bordereau` in the coordinators' room on
a real Synapse. The coordinator's client downloads and decrypts every attachment: the CSV's totals
match the ledger, each PDF is a PDF naming its professional and total, and no patient identity
appears anywhere (decisions.md 15)."""
from __future__ import annotations

import csv
import io
import re
from datetime import datetime, timezone

import pytest
from pypdf import PdfReader
from sqlalchemy import select

from bot.coordination import ensure_coordinator_room
from domain.clock import FakeClock
from domain.indemnites import euros, trimestre_de
from storage.models import Act
from tests.bot_harness import BotHarness
from tests.clinician import Clinician

pytestmark = pytest.mark.synapse

IDENTITY = ("Dupontel", "Marielle", "0612345678", "Lilas", "12/03/1950", "1950")


async def test_flows_then_bordereau_with_encrypted_files(synapse, register, tmp_path):
    clock = FakeClock(datetime.now(timezone.utc).replace(microsecond=0))
    bot_user, bot_password = register("cercle")
    harness = BotHarness(synapse.url, bot_user, bot_password, tmp_path / "bot", clock=clock)
    await harness.start()
    people: list[Clinician] = []

    async def person(key, profession, name, roles=None):
        user_id, password = register(key)
        await harness.enrol(user_id, profession, name=name, roles=roles)
        c = await Clinician.login(synapse.url, user_id, password, tmp_path / f"store-{key}")
        people.append(c)
        return c

    async def ask(c, room, text, timeout=30):
        sent = await c.send_text(room, text)
        return await c.wait_for_message(room, sender=bot_user, predicate=lambda m: m.in_reply_to() == sent,
                                        timeout=timeout)

    try:
        coord = await person("coord", "autre", "Claire Coord", roles=["coordinateur"])
        mt = await person("mt", "medecin_generaliste", "Paul Martin")
        ide = await person("ide", "infirmier", "Julie Petit")
        coord_room = await ensure_coordinator_room(harness.bot, invite=[coord.user_id])
        await coord.join(await coord.wait_for_invite())

        dm = await mt.create_room(invite=[bot_user], is_direct=True)
        await mt.wait_joined(dm, bot_user)
        reply = await ask(mt, dm, "patient nouveau nom=Dupontel prenom=Marielle naissance=12/03/1950 sexe=F "
                                  'tel=0612345678 adresse="3 rue des Lilas" commune=Brétigny-sur-Orge '
                                  f"mt={mt.user_id} pros={ide.user_id} consentement=oui")
        code = re.search(r"P-[2-9A-Z]{4}", reply.body).group(0)
        room = await mt.wait_for_invite()
        await mt.join(room)
        assert await ide.wait_for_invite() == room
        await ide.join(room)

        assert "inclus" in (await ask(mt, room, "!inclure ic carte=oui")).body
        assert "RED FLAG" in (await ask(ide, room, "!redflag spo2=91 essoufflement au moindre effort")).body
        await ask(mt, room, "!dec infirmier vad pansement talon gauche")
        await ide.send_text(room, "!accepter 2")
        await ide.wait_for_message(room, sender=bot_user, predicate=lambda m: "prise en charge par" in m.body)

        ide_dm = await ide.create_room(invite=[bot_user], is_direct=True)
        await ide.wait_joined(ide_dm, bot_user)
        mine = await ask(ide, ide_dm, "indemnites")
        assert "Éligible : 15,00 €" in mine.body and code in mine.body

        quarter = trimestre_de(clock.now(), harness.bot.services.tz)
        summary = await ask(coord, coord_room, f"!bordereau {quarter}", timeout=60)
        assert "Paul Martin" in summary.body and "Julie Petit" in summary.body and "TOTAL" in summary.body

        def files(suffix):
            return [m for m in coord.messages(coord_room) if m.sender == bot_user and "file" in m.content
                    and m.content.get("body", "").endswith(suffix)]

        await coord.wait_for_message(coord_room, sender=bot_user, timeout=60,
                                     predicate=lambda m: m.msgtype == "m.image")
        pdfs, csvs, pngs = files(".pdf"), files(".csv"), files(".png")
        assert len(pdfs) == 2 and len(csvs) == 1 and len(pngs) == 1
        for m in pdfs + csvs + pngs:
            assert "url" not in m.content, "an attachment is never a plain upload"

        async with harness.bot.store.session() as s:
            acts = list((await s.scalars(select(Act).where(Act.trimestre == str(quarter)))).all())
        raw = await coord.download_decrypted(csvs[0])
        assert raw.startswith("\ufeff".encode())
        rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig")), delimiter=";"))
        assert len(rows) == len(acts)
        totals: dict[str, int] = {}
        for r in rows:
            totals[r["identifiant"]] = totals.get(r["identifiant"], 0) + int(r["montant_du_eur"].replace(",", ""))
        ledger = {}
        for a in acts:
            ledger[a.user_id] = ledger.get(a.user_id, 0) + (a.montant_cents if a.etat == "eligible" else 0)
        assert totals == ledger == {mt.user_id: 1500, ide.user_id: 1500}

        texts = [summary.body, mine.body, raw.decode("utf-8-sig")]
        for m in pdfs:
            data = await coord.download_decrypted(m)
            assert data.startswith(b"%PDF")
            text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)
            owner = "Paul Martin" if "paul-martin" in m.body else "Julie Petit"
            assert owner in text and f"Sous-total éligible (à payer) : {euros(1500)}" in text
            texts.append(text)
        assert (await coord.download_decrypted(pngs[0])).startswith(b"\x89PNG")
        texts += [m.body for m in coord.messages(coord_room)]
        for text in texts:
            for word in IDENTITY:
                assert word not in text, f"identité « {word} » trouvée"
    finally:
        for c in people:
            await c.close()
        await harness.stop()
