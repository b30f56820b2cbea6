"""The directory: CSV import rules (fast), and the coordinators' commands and import end to end."""
from __future__ import annotations

import io

import pytest

from rooms.directory_import import ImportError_, check_line, parse_csv
from tests.bot_harness import BotHarness
from tests.clinician import Clinician

CSV = ("matrix_id;nom;profession;communes;roles;cotisation\n"
       "@ide.petit:cpts.fr;Julie Petit;IDE;Brétigny-sur-Orge, Saint-Michel;;31/12/2026\n"
       "@dr.x:cpts.fr;Dr X;médecin;Arpajon;referent:ic;\n"
       "pas-un-id;Y;médecin;;;\n"
       "@z:cpts.fr;Z;astronaute;;;\n"
       "@w:cpts.fr;W;kiné;;chef;\n"
       "@v:cpts.fr;V;kiné;;;31/02/2026\n")


def test_csv_lines_are_judged_one_by_one():
    rows = parse_csv(CSV.encode("utf-8"))
    verdicts = [check_line(r) for r in rows]
    assert verdicts[0][0]["profession"] == "infirmier"
    assert verdicts[0][0]["communes"] == ["Brétigny-sur-Orge", "Saint-Michel"]
    assert verdicts[1][0]["roles"] == ["referent:ic"]
    assert "identifiant Matrix invalide" in verdicts[2][1]
    assert "profession inconnue « astronaute »" in verdicts[3][1]
    assert "rôle inconnu « chef »" in verdicts[4][1]
    assert "date de cotisation invalide" in verdicts[5][1]


def test_csv_header_and_encodings():
    with pytest.raises(ImportError_, match="colonnes manquantes : profession"):
        parse_csv(b"matrix_id,nom\n@a:b,A\n")
    rows = parse_csv("matrix_id,nom,profession\n@a:b,Hélène,pharmacien\n".encode("cp1252"))
    assert rows[0]["nom"] == "Hélène"


@pytest.mark.synapse
async def test_coordinators_manage_the_directory_and_import_an_encrypted_csv(synapse, register, tmp_path):
    from bot.coordination import ensure_coordinator_room

    bot_user, bot_password = register("cercle")
    harness = BotHarness(synapse.url, bot_user, bot_password, tmp_path / "bot")
    await harness.start()
    coord_id, coord_pw = register("coord")
    other_id, other_pw = register("mg")
    await harness.enrol(coord_id, "autre", name="Claire Coord", roles=["coordinateur"])
    await harness.enrol(other_id, "medecin_generaliste", name="Paul Martin")
    coord = await Clinician.login(synapse.url, coord_id, coord_pw, tmp_path / "coord")
    mg = await Clinician.login(synapse.url, other_id, other_pw, tmp_path / "mg")
    try:
        room = await ensure_coordinator_room(harness.bot, invite=[coord_id, other_id])
        assert await coord.wait_for_invite() == room
        await coord.join(room)
        assert await mg.wait_for_invite() == room
        await mg.join(room)

        async def ask(who, text):
            sent = await who.send_text(room, text)
            return await who.wait_for_message(room, sender=bot_user, predicate=lambda m: m.in_reply_to() == sent)

        reply = await ask(coord, '!annuaire ajouter @sf.leroy:localhost nom="Sophie Leroy" profession=sage-femme '
                                 'communes=Arpajon cotisation=31/12/2026')
        assert "Ajouté" in reply.body and "sage-femme" in reply.body
        reply = await ask(coord, "!annuaire ajouter @sf.leroy:localhost nom=X profession=sf")
        assert "déjà dans l'annuaire" in reply.body
        reply = await ask(coord, "!annuaire ajouter @y:localhost nom=Y profession=plombier")
        assert "profession inconnue" in reply.body.lower() and "Usage" in reply.body
        reply = await ask(mg, "!annuaire ajouter @q:localhost nom=Q profession=ide")
        assert "réservée aux coordinateurs" in reply.body
        reply = await ask(coord, "!annuaire voir Leroy")
        assert "Sophie Leroy" in reply.body and "31/12/2026" in reply.body

        # An encrypted CSV attachment, as Element sends it in an encrypted room.
        upload, keys = await coord.client.upload(lambda *_: io.BytesIO(CSV.encode()), "text/csv", "annuaire.csv",
                                                 encrypt=True, filesize=len(CSV.encode()))
        file_info = {"url": upload.content_uri, "key": keys["key"], "iv": keys["iv"], "hashes": keys["hashes"],
                     "v": keys.get("v", "v2"), "mimetype": "text/csv"}
        sent = await coord.send_text(room, "annuaire.csv", extra_content={"msgtype": "m.file", "file": file_info})
        report = await coord.wait_for_message(room, sender=bot_user, predicate=lambda m: m.in_reply_to() == sent)
        assert "2 ligne(s) acceptée(s), 4 refusée(s)" in report.body, report.body
        assert "ligne 4 : identifiant Matrix invalide" in report.body
        assert "ligne 5 : profession inconnue" in report.body
        reply = await ask(coord, "!annuaire voir Petit")
        assert "Julie Petit" in reply.body and "Saint-Michel" in reply.body
    finally:
        await coord.close()
        await mg.close()
        await harness.stop()
