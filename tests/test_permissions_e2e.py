"""A few rows of the permission table through the real Synapse (the whole table: test_permissions.py)."""
from __future__ import annotations

import asyncio

import pytest

from tests.test_patient_rooms_e2e import command, create_patient, direct_chat

pytestmark = pytest.mark.synapse


async def test_another_profession_cannot_take_a_nurse_request_even_after_declining(harness, people):
    dr = await people("drperm", name="Paul Martin")
    ide = await people("ideperm", "infirmier", name="Julie Petit")
    kine = await people("kineperm", "masseur_kinesitherapeute", name="Kevin Kiné")
    ide2 = await people("ide2perm", "infirmier", name="Inès Roux")
    code, room = await create_patient(dr, ide, harness)
    created = await command(dr, room, harness, "!dec infirmier pansement quotidien talon gauche")
    assert "n°1" in created.body

    kine_dm = await direct_chat(kine, harness)
    for text in (f"accepter {code}/1", f"refuser {code}/1 pas dispo", f"accepter {code}/1"):
        reply = await command(kine, kine_dm, harness, text)
        assert reply.body.startswith("⛔") and "infirmier" in reply.body, reply.body
    assert not [r for r in kine.client.invited_rooms if r == room]

    ide2_dm = await direct_chat(ide2, harness)
    accepted = await command(ide2, ide2_dm, harness, f"accepter {code}/1")
    assert "C'est noté" in accepted.body
    assert await ide2.wait_for_invite() == room
    await ide2.join(room)
    card = await ide2.wait_for_message(room, sender=harness.user_id, predicate=lambda m: "Fiche d'identité" in m.body)
    assert "DUPONTEL" in card.body
    await asyncio.sleep(0.5)
    assert room not in kine.client.rooms and room not in kine.client.invited_rooms
