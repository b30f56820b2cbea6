"""A start that does not grow with the rooms (issue 11, item 3): the bot resumes from its stored sync
token without asking for every room's full state, and still writes, encrypted for the right
devices, in rooms its first sync did not bring (their state is read when first needed)."""
from __future__ import annotations

import asyncio

import pytest

from rooms.messages import render
from tests.bot_harness import BotHarness
from tests.clinician import Clinician

pytestmark = pytest.mark.synapse

QUIET = 5  # rooms with nothing new while the bot is down


def watch_syncs(bot) -> list[tuple[dict, object]]:
    """(keyword arguments, response) of every /sync the bot makes, in order."""
    calls: list[tuple[dict, object]] = []
    client_sync = bot.client.sync

    async def sync(*args, **kwargs):
        response = await client_sync(*args, **kwargs)
        calls.append((kwargs, response))
        return response

    bot.client.sync = sync
    return calls


async def room_with_bot(c: Clinician, harness: BotHarness, *, invite: tuple = ()) -> str:
    room_id = await c.create_room(invite=[harness.user_id, *invite])
    await c.wait_joined(room_id, harness.user_id)
    return room_id


async def queue_notice(harness: BotHarness, room_id: str, text: str) -> None:
    """What a deadline or a command in another room does: a message queued for a room."""
    bot = harness.bot
    async with bot.store.session.begin() as session:
        bot.store.queue(session, "message", room_id, render(text), bot.clock.now())
    bot._wake_worker.set()


async def answered(c: Clinician, harness: BotHarness, room: str, text: str):
    sent = await c.send_text(room, text)
    return await c.wait_for_message(room, sender=harness.user_id, predicate=lambda m: m.in_reply_to() == sent,
                                    timeout=40)


async def test_a_restart_syncs_what_changed_and_writes_in_rooms_quiet_since(harness: BotHarness, people):
    dr = await people()
    quiet = [await room_with_bot(dr, harness) for _ in range(QUIET)]
    active = await room_with_bot(dr, harness)
    await answered(dr, harness, quiet[0], "!aide")  # the bot has written there before the restart
    await answered(dr, harness, active, "!aide")  # recorded: the stored token is past every join
    await harness.idle()

    await harness.stop()
    calls: list = []
    harness.before_run.append(lambda bot: calls.append(watch_syncs(bot)))
    await harness.start()
    syncs = calls[0]
    assert syncs, "no sync at start"
    kwargs, first = syncs[0]
    assert not kwargs.get("full_state"), "a start must not ask for every room's full state"
    assert kwargs.get("since"), "a start resumes from the stored token"
    brought = set(first.rooms.join)
    assert not brought & set(quiet), f"the first sync after a restart carried quiet rooms: {brought & set(quiet)}"
    assert all(room_id not in harness.bot.client.rooms for room_id in quiet)

    # A command in a room quiet since before the restart: answered, encrypted, readable.
    reply = await answered(dr, harness, quiet[0], "!aide")
    assert reply.encrypted and "Commandes de Cercle" in reply.body

    # A room no sync has brought since the start: its state is read when the bot writes there.
    assert quiet[1] not in harness.bot.client.rooms
    await queue_notice(harness, quiet[1], "Rappel : réunion de l'équipe demain.")
    notice = await dr.wait_for_message(quiet[1], sender=harness.user_id, timeout=40)
    assert notice.encrypted and "réunion de l'équipe" in notice.body
    assert harness.bot.client.rooms[quiet[1]].encrypted
    assert not [e for k, e in syncs if k.get("full_state")]


async def test_a_member_who_joined_while_the_bot_was_down_reads_its_messages(harness: BotHarness, people):
    dr = await people()
    ide = await people("ide", "infirmier")
    team = await room_with_bot(dr, harness)
    pair = await room_with_bot(dr, harness)  # the bot and one clinician, not flagged direct
    reply = await answered(dr, harness, pair, "aide")  # a two-person room reads like a direct chat
    assert "Commandes de Cercle" in reply.body
    await answered(dr, harness, team, "!aide")  # recorded: the stored token is past the pair's last event
    await harness.idle()

    await harness.stop()
    await dr.client.room_invite(team, ide.user_id)
    await ide.join(team)
    await dr.wait_joined(team, ide.user_id)
    await harness.start()

    # The first thing the bot writes in the room after the restart reaches the newcomer's devices.
    await queue_notice(harness, team, "Bienvenue dans l'équipe.")
    for c in (ide, dr):
        notice = await c.wait_for_message(team, sender=harness.user_id,
                                          predicate=lambda m: "Bienvenue" in m.body, timeout=40)
        assert notice.encrypted, f"{c.user_id} cannot read the bot's message"
    reply = await answered(ide, harness, team, "!aide")
    assert reply.encrypted and "Commandes de Cercle" in reply.body

    # The two-person room, quiet since the restart, still reads like a direct chat: its members
    # are read from the server, not guessed from a sync that no longer carries them.
    reply = await answered(dr, harness, pair, "aide")
    assert "Commandes de Cercle" in reply.body


async def test_a_new_device_of_a_member_seen_before_gets_the_key_of_a_room_quiet_since_the_start(
        harness: BotHarness, people, synapse, tmp_path):
    """The bot knows the member's devices from a room it has loaded; the member then leaves that
    room and logs in a new device. The change must still be heard through a room the bot has not
    loaded since the start, or the new device gets no key for the bot's next message there."""
    dr = await people()
    ide = await people("ide", "infirmier")
    seen = await room_with_bot(dr, harness, invite=(ide.user_id,))
    quiet = await room_with_bot(dr, harness, invite=(ide.user_id,))
    for room_id in (seen, quiet):
        await ide.join(room_id)
        await dr.wait_joined(room_id, ide.user_id)
    await answered(dr, harness, seen, "!aide")
    await harness.idle()
    await harness.restart()

    await answered(ide, harness, seen, "!aide")  # the bot reads `seen` and learns ide's devices
    assert quiet not in harness.bot.client.rooms
    await ide.client.room_leave(seen)
    phone = await Clinician.login(synapse.url, ide.user_id, ide.password, tmp_path / "ide-phone")
    try:
        # Give the bot's sync time to hear of the new device (without the fix it never does).
        store = harness.bot.client.device_store
        end = asyncio.get_running_loop().time() + 20
        while (asyncio.get_running_loop().time() < end
               and phone.client.device_id not in {d.id for d in store.active_user_devices(ide.user_id)}):
            await asyncio.sleep(0.2)
        await queue_notice(harness, quiet, "Nouvelle consigne pour l'équipe.")
        notice = await phone.wait_for_message(quiet, sender=harness.user_id,
                                              predicate=lambda m: "consigne" in m.body, timeout=40)
        assert notice.encrypted
    finally:
        await phone.close()


async def test_rooms_joined_while_the_bot_was_down_cost_no_history_request(harness: BotHarness, people, synapse):
    """Their whole history predates the bot's join, so nothing in it is addressed to the bot: the
    first sync after the start brings them with a cut timeline, and paging back through it (one
    request per room) would make a start grow with the rooms joined meanwhile."""
    import aiohttp

    dr = await people()
    known = await room_with_bot(dr, harness)
    await answered(dr, harness, known, "!aide")
    await harness.idle()
    token = harness.bot.client.access_token
    await harness.stop()
    joined_while_down = []
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            room_id = await dr.create_room(invite=[harness.user_id])
            for n in range(25):  # enough history for the sync to cut the timeline
                await dr.send_text(room_id, f"message {n} avant l'arrivée du bot")
            async with http.post(f"{synapse.url}/_matrix/client/v3/join/{room_id}", json={},
                                 headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200, await r.text()
            joined_while_down.append(room_id)
    paged: list[str] = []

    def watch(bot):
        room_messages = bot.client.room_messages

        async def counted(room_id, *args, **kwargs):
            paged.append(room_id)
            return await room_messages(room_id, *args, **kwargs)

        bot.client.room_messages = counted

    harness.before_run.append(watch)
    await harness.start()
    reply = await answered(dr, harness, joined_while_down[0], "!aide")  # joined, and answering
    assert "Commandes de Cercle" in reply.body
    assert not set(paged) & set(joined_while_down), paged
