"""The test clinician itself, on the real Synapse: two E2EE clients talk to each other."""
from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from nio import ReactionEvent, UnknownToDeviceEvent

from tests.clinician import Clinician, MatrixError

pytestmark = pytest.mark.synapse


@pytest.fixture
async def clinician(synapse, register, tmp_path):
    opened: list[Clinician] = []

    async def make(prefix: str = "dr") -> Clinician:
        user_id, password = register(prefix)
        c = await Clinician.login(synapse.url, user_id, password, tmp_path / f"store-{len(opened)}")
        opened.append(c)
        return c

    yield make
    for c in opened:
        await c.close()


async def pair_in_room(clinician) -> tuple[Clinician, Clinician, str]:
    a, b = await clinician("a"), await clinician("b")
    room = await a.create_room(invite=[b.user_id], name="Équipe de soins")
    assert await b.wait_for_invite(predicate=lambda r: r.inviter == a.user_id) == room
    await b.join(room)
    await a.wait_joined(room, b.user_id)
    return a, b, room


async def test_encrypted_exchange_reply_notice_and_reaction(clinician):
    started = time.monotonic()
    a, b, room = await pair_in_room(clinician)
    assert a.client.rooms[room].encrypted

    sent = await a.send_text(room, "Mme D., pansement à refaire demain", formatted_body="<b>Mme D.</b>, pansement")
    got = await b.wait_for_message(room, sender=a.user_id)
    assert (got.event_id, got.body, got.encrypted, got.msgtype) == (sent, "Mme D., pansement à refaire demain",
                                                                     True, "m.text")
    assert got.formatted_body == "<b>Mme D.</b>, pansement"

    reply_id = await b.send_text(room, "Noté", extra_content={
        "msgtype": "m.notice", "m.relates_to": {"m.in_reply_to": {"event_id": sent}},
        "m.mentions": {"user_ids": [a.user_id]}})
    reply = await a.wait_for_message(room, sender=b.user_id, after_event=sent)
    assert reply.event_id == reply_id and reply.msgtype == "m.notice" and reply.encrypted
    assert reply.in_reply_to() == sent and reply.content["m.mentions"] == {"user_ids": [a.user_id]}

    reaction_id = await a.react(room, reply_id, "✅")

    async def reaction_seen():
        while not [e for e in b.timeline(room) if isinstance(e, ReactionEvent) and e.event_id == reaction_id]:
            await asyncio.sleep(0.02)
    await asyncio.wait_for(reaction_seen(), 10)
    reaction = next(e for e in b.timeline(room) if getattr(e, "event_id", None) == reaction_id)
    assert (reaction.key, reaction.reacts_to, reaction.decrypted) == ("✅", reply_id, True)

    assert not a.undecryptable(room) and not b.undecryptable(room)
    assert [m.body for m in a.messages(room)] == ["Mme D., pansement à refaire demain", "Noté"]
    print(f"\nlogin x2 + room + message + reply + reaction: {time.monotonic() - started:.2f} s")


@contextlib.asynccontextmanager
async def sync_frozen(c: Clinician):
    """While inside, c's sync loop sees nothing new (its long-poll in flight has ended)."""
    gate, entered, real_sync = asyncio.Event(), asyncio.Event(), c.client.sync

    async def gated_sync(*args, **kwargs):
        entered.set()
        await gate.wait()
        return await real_sync(*args, **kwargs)

    c.client.sync = gated_sync
    await asyncio.wait_for(entered.wait(), 5)
    try:
        yield
    finally:
        c.client.sync = real_sync
        gate.set()


async def test_newcomer_gets_the_key_even_before_the_sender_synced_the_join(clinician):
    a, b, _ = await pair_in_room(clinician)  # A knows B's device from this first room
    c = await clinician("c")  # a brand-new device, never queried by A
    room = await a.create_room(invite=[c.user_id])
    await c.join(await c.wait_for_invite())
    started = time.monotonic()
    first = await a.send_text(room, "bienvenue C")  # no wait_joined on A's side on purpose
    assert (await c.wait_for_message(room, predicate=lambda m: m.event_id == first, timeout=10)).encrypted
    print(f"\njoin-then-send decrypted by the newcomer in {time.monotonic() - started:.2f} s")

    # A cannot see C invite B: nio alone would keep using the session it already shared.
    async with sync_frozen(a):
        await c.client.room_invite(room, b.user_id)
        await b.join(await b.wait_for_invite(predicate=lambda r: r.room_id == room))
        sent = await a.send_text(room, "bienvenue B")
    got = await b.wait_for_message(room, predicate=lambda m: m.event_id == sent, timeout=10)
    assert got.encrypted and got.body == "bienvenue B"
    assert [e.event_id for e in b.undecryptable(room)] == [first]  # only what predates B's invite
    await a.wait_for_message(room, predicate=lambda m: m.event_id == sent)  # A's loop resumed


async def test_message_sent_right_after_an_invite_is_readable_once_joined(clinician):
    a, b = await clinician("a"), await clinician("b")
    room = await a.create_room()
    await a.send_text(room, "seul")  # a session shared with nobody
    async with sync_frozen(a):  # A has not synced its own invite when it sends
        await a.client.room_invite(room, b.user_id)
        sent = await a.send_text(room, "pour B, avant qu'il ne rejoigne")
    await b.join(await b.wait_for_invite())
    got = await b.wait_for_message(room, predicate=lambda m: m.event_id == sent, timeout=10)
    assert got.encrypted


async def test_wait_for_message_timeout_lists_what_arrived(clinician):
    a, b, room = await pair_in_room(clinician)
    sent = await a.send_text(room, "premier message " + "x" * 200)
    await b.wait_for_message(room, predicate=lambda m: m.event_id == sent)
    started = time.monotonic()
    with pytest.raises(AssertionError) as err:
        await b.wait_for_message(room, sender=a.user_id, predicate=lambda m: "jamais" in m.body, timeout=0.5)
    assert time.monotonic() - started < 1.5
    text = str(err.value)
    assert a.user_id in text and "m.text" in text and "premier message" in text
    assert "x" * 200 not in text  # bodies are cut at 100 characters
    with pytest.raises(AssertionError, match="after_event"):
        await b.wait_for_message(room, after_event=sent, timeout=0.3)


async def test_raw_api_and_to_device(clinician):
    a, b, room = await pair_in_room(clinician)
    keys = await a.request_json("POST", "/_matrix/client/v3/keys/query", {"device_keys": {b.user_id: []}})
    assert b.client.device_id in keys["device_keys"][b.user_id]
    with pytest.raises(MatrixError) as err:
        await a.request_json("GET", "/_matrix/client/v3/rooms/!nulle:localhost/state/m.room.name")
    assert err.value.errcode in {"M_FORBIDDEN", "M_NOT_FOUND"}

    withheld = {"algorithm": "m.megolm.v1.aes-sha2", "room_id": room, "session_id": "abc",
                "sender_key": a.client.olm.account.identity_keys["curve25519"], "code": "m.unverified",
                "reason": "test"}
    await a.send_to_device("m.room_key.withheld", {b.user_id: {b.client.device_id: withheld}})

    async def arrived():
        while not [e for e in b.to_device_events
                   if isinstance(e, UnknownToDeviceEvent) and e.type == "m.room_key.withheld"]:
            await asyncio.sleep(0.02)
    await asyncio.wait_for(arrived(), 10)
