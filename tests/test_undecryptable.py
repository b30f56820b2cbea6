"""A command whose room key arrives after the message is run once the key is there; with no key,
the sender is told once, after the configured wait.

Against the real Synapse: the clinician's client holds back the to-device message that carries
the room key to the bot's device (what a slow or reordered to-device delivery does), then sends
that very message later.
"""
from __future__ import annotations

import asyncio

import pytest

from storage.models import InboxEvent
from tests.clinician import Clinician
from tests.test_patient_rooms_e2e import direct_chat

pytestmark = pytest.mark.synapse

UNREADABLE = "pu déchiffrer"


def hold_room_keys_for(clinician: Clinician, user_id: str) -> dict:
    """From now on, the Olm-encrypted m.room_key messages for `user_id`'s devices are kept here
    instead of being sent; the clinician believes they went out."""
    held: dict = {}
    olm = clinician.client.olm
    share = olm.share_group_session_parallel

    def share_without(room_id, users, ignore_unverified_devices=False):
        for sharing_with, to_device in share(room_id, users, ignore_unverified_devices=ignore_unverified_devices):
            held.update(to_device["messages"].pop(user_id, {}))
            yield sharing_with, to_device

    olm.share_group_session_parallel = share_without
    return held


async def inbox_status(harness, event_id: str) -> str | None:
    async with harness.bot.store.session() as s:
        row = await s.get(InboxEvent, event_id)
        return row.status if row else None


async def until(predicate, timeout: float = 15, what: str = "condition"):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} : pas atteint en {timeout} s")


def bot_replies(clinician: Clinician, room: str, bot_user: str, event_id: str) -> list:
    return [m for m in clinician.messages(room) if m.sender == bot_user and m.in_reply_to() == event_id]


async def test_a_command_whose_key_arrives_late_is_run_once(harness, people):
    dr = await people("drlate", name="Claire Tardive")
    dm = await direct_chat(dr, harness)
    await harness.idle()
    held = hold_room_keys_for(dr, harness.user_id)

    sent = await dr.send_text(dm, "!aide")
    assert held, "la clé du salon n'a pas été retenue"
    await until(lambda: _is(harness, sent, "waiting_key"), what="message en attente de sa clé")
    await asyncio.sleep(2)  # several syncs of the bot: still nothing said
    assert bot_replies(dr, dm, harness.user_id, sent) == []

    await dr.send_to_device("m.room.encrypted", {harness.user_id: held})
    reply = await dr.wait_for_message(dm, sender=harness.user_id, predicate=lambda m: m.in_reply_to() == sent)
    assert "!patient" in reply.body, reply.body  # the help, i.e. the command did run
    await harness.idle()
    await asyncio.sleep(1.5)  # one more sync of the clinician: a second answer would be seen
    assert len(bot_replies(dr, dm, harness.user_id, sent)) == 1
    assert not [m for m in dr.messages(dm) if m.sender == harness.user_id and UNREADABLE in m.body]
    assert await inbox_status(harness, sent) == "handled"


async def test_without_its_key_the_sender_is_told_once_after_the_wait(harness, people):
    harness.bot.config.sync.key_wait_s = 3
    dr = await people("drnokey", name="Denis Sansclé")
    dm = await direct_chat(dr, harness)
    await harness.idle()
    held = hold_room_keys_for(dr, harness.user_id)

    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = await dr.send_text(dm, "!aide")
    told = await dr.wait_for_message(dm, sender=harness.user_id, predicate=lambda m: m.in_reply_to() == sent)
    waited = loop.time() - start
    assert UNREADABLE in told.body and dr.user_id in told.body, told.body
    assert waited >= 3, f"prévenu après {waited:.1f} s seulement"
    assert await inbox_status(harness, sent) == "failed"

    # A key arriving after the sender was told does not run the command behind their back.
    await dr.send_to_device("m.room.encrypted", {harness.user_id: held})
    await asyncio.sleep(2)
    await harness.idle()
    await asyncio.sleep(1.5)
    assert [m.body for m in bot_replies(dr, dm, harness.user_id, sent)] == [told.body]
    assert await inbox_status(harness, sent) == "failed"


async def _is(harness, event_id: str, status: str) -> bool:
    return await inbox_status(harness, event_id) == status
