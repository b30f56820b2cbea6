"""Sends to different rooms go out together, in order within each room (issue 11): a burst of
answers in many rooms waits for about one send, not for all of them in a row."""
from __future__ import annotations

import asyncio

import bot.app as app
from rooms.messages import render
from storage.repositories import IncomingEvent
from tests.usecase import UseCases

ROOMS = ("!a:cpts.test", "!b:cpts.test", "!c:cpts.test")


async def test_rooms_are_sent_to_at_once_in_order_within_each_and_bounded(tmp_path):
    uc = await UseCases.open(tmp_path / "bot")
    try:
        bot, store = uc.bot, uc.bot.store
        bot.outbox._delivery = bot.outbox._delivery.model_copy(update={"parallel_rooms": 2})
        started: list[tuple[str, str]] = []
        in_flight: set[str] = set()
        peak = 0
        two_rooms_started = asyncio.Event()

        async def send(item, content):
            nonlocal peak
            assert item.room_id not in in_flight, "two sends at once in one room"
            in_flight.add(item.room_id)
            peak = max(peak, len(in_flight))
            started.append((item.room_id, item.ref))
            if len({room for room, _ in started}) >= 2:
                two_rooms_started.set()
            # Sent one after the other, the first send would wait here for a second room forever.
            await asyncio.wait_for(two_rooms_started.wait(), 5)
            await asyncio.sleep(0)
            in_flight.discard(item.room_id)
            await store.outbox_done(item.id, uc.now(), event_id=f"$sent-{item.ref}")
            return True

        bot.outbox._send = send
        assert await bot.flush_outbox() == 0  # the first flush reads the (empty) table
        async with store.session.begin() as session:
            for n in (1, 2, 3):
                for room in ROOMS:
                    store.queue(session, "message", room, render(f"{room} {n}"), uc.now(), ref=f"{room[1]}{n}")
        assert await bot.flush_outbox() == 0
        assert peak == 2  # parallel, within delivery.parallel_rooms
        for room in ROOMS:
            assert [ref for r, ref in started if r == room] == [f"{room[1]}{n}" for n in (1, 2, 3)]
    finally:
        await uc.close()


async def test_the_worker_hands_each_answer_to_the_outbox_and_returns_once_all_are_sent(tmp_path):
    """process_inbox does not wait for an answer's send before handling the next event, yet returns
    only once every send it started is done (callers and tests rely on that)."""
    uc = await UseCases.open(tmp_path / "bot")
    try:
        bot, store = uc.bot, uc.bot.store
        users = [await uc.enrol(f"@ide{n}:cpts.test", "infirmier") for n in (1, 2)]
        rooms = [uc.direct_room(u) for u in users]
        order: list[str] = []
        second_handled = asyncio.Event()

        async def send(item, content):
            order.append(f"send {item.room_id}")
            if item.room_id == rooms[0]:
                # One after the other, this send would wait forever for the next event's handling.
                await asyncio.wait_for(second_handled.wait(), 5)
            await store.outbox_done(item.id, uc.now(), event_id=f"$sent-{item.id}")
            return True

        bot.outbox._send = send
        await bot.flush_outbox()
        real_mark = store.inbox_changes
        for n, (user, room) in enumerate(zip(users, rooms)):
            await store.record_event(IncomingEvent(f"$aide{n}", room, user, "message", n,
                                                   {"body": "!aide", "content": {"msgtype": "m.text", "body": "!aide"}}),
                                     uc.now())
        assert store.inbox_changes > real_mark

        real_dispatch = app.dispatch

        async def dispatch(bot_, event):
            handled = await real_dispatch(bot_, event)
            order.append(f"handled {event.room_id}")
            if event.room_id == rooms[1]:
                second_handled.set()
            return handled

        app.dispatch = dispatch
        try:
            await asyncio.wait_for(bot.process_inbox(), 10)
        finally:
            app.dispatch = real_dispatch
        assert order.index(f"send {rooms[0]}") < order.index(f"handled {rooms[1]}")
        assert await store.pending_outbox() == []  # every answer sent when process_inbox returned
    finally:
        await uc.close()
