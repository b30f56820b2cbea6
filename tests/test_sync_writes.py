"""The sync path writes only what it must: a sync that brought nothing to record leaves the stored
token behind (it goes out with the next sync that has events), and a crash then loses nothing."""
from __future__ import annotations

import asyncio

import pytest

from tests.bot_harness import BotHarness
from tests.clinician import Clinician

pytestmark = pytest.mark.synapse


def watch_syncs(bot) -> list[str]:
    """The next_batch of every sync the bot has finished handling, in order."""
    done: list[str] = []
    last: dict = {}
    client_sync, intake_sync_once = bot.client.sync, bot.intake.sync_once

    async def sync(*args, **kwargs):
        last["response"] = response = await client_sync(*args, **kwargs)
        return response

    async def sync_once():
        await intake_sync_once()
        done.append(last["response"].next_batch)

    bot.client.sync, bot.intake.sync_once = sync, sync_once
    return done


async def test_a_quiet_sync_writes_nothing_and_a_crash_after_it_loses_nothing(harness: BotHarness, people):
    dr: Clinician = await people()
    room = await dr.create_room(invite=[harness.user_id])
    await dr.wait_joined(room, harness.user_id)
    done = watch_syncs(harness.bot)
    first = await dr.send_text(room, "!aide")
    await dr.wait_for_message(room, sender=harness.user_id, predicate=lambda m: m.in_reply_to() == first)

    # The sync that brings back the bot's own answer moves the token but has nothing to record: the
    # stored token stays that of an older sync. (A sync with nothing new at all keeps the same token.)
    loop = asyncio.get_running_loop()
    end = loop.time() + 30
    while True:
        stored = await harness.bot.store.get_state("sync_token")
        if stored in done and stored != done[-1]:
            break
        assert loop.time() < end, "every sync still writes its token, even with nothing to record"
        await asyncio.sleep(0.1)

    await harness.kill()  # the newer tokens die with the process
    while_down = await dr.send_text(room, "!aide aide")
    await harness.start()
    await dr.wait_for_message(room, sender=harness.user_id, predicate=lambda m: m.in_reply_to() == while_down)
    await harness.idle()
    await asyncio.sleep(1.5)  # leave time for a duplicate to show up, if the bot were to send one
    assert len([m for m in dr.messages(room) if m.in_reply_to() == first]) == 1
    assert len([m for m in dr.messages(room) if m.in_reply_to() == while_down]) == 1
