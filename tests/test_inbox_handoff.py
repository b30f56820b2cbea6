"""The inbox worker takes what the sync just recorded from memory, not from the table (issue 11),
and still handles every event exactly once: an event committed between the worker's hand-over and
its read of the table is in both, and must not be handled twice."""
from __future__ import annotations

from storage.models import InboxEvent
from storage.repositories import IncomingEvent
from tests.usecase import UseCases


def _aide(n: int, room: str, sender: str) -> IncomingEvent:
    return IncomingEvent(f"$aide{n}", room, sender, "message", n,
                         {"body": "aide", "content": {"msgtype": "m.text", "body": "aide"}})


async def test_an_event_both_read_and_handed_over_is_handled_once(tmp_path):
    uc = await UseCases.open(tmp_path / "bot")
    try:
        dr = await uc.enrol("@dr:cpts.test")
        room, bot, store = uc.direct_room(dr), uc.bot, uc.bot.store

        async def nothing_to_send(full: bool = False) -> int:
            return 0

        bot.outbox.flush = nothing_to_send  # the tier has no homeserver: replies stay outbox rows
        real_read = store.pending_events
        reads = []

        async def read_while_the_sync_records(limit: int = 200):
            reads.append(limit)
            if len(reads) == 1:  # committed after the hand-over, before the read: in both
                await store.record_sync([_aide(2, room, dr)], "t2", uc.now())
            return await real_read(limit=limit)

        store.pending_events = read_while_the_sync_records
        await store.record_sync([_aide(1, room, dr)], "t1", uc.now())
        await bot.process_inbox()  # first pass: reads the table (events 1 and 2)
        assert len(reads) == 1
        await store.record_sync([_aide(3, room, dr)], "t3", uc.now())
        await bot.process_inbox()  # event 3 from memory, event 2 not again
        assert len(reads) == 1, "what the sync recorded is not read back"
        replies = [s for s in await uc.sent() if s.action in ("message", "direct")]
        assert len(replies) == 3, [s.body[:40] for s in replies]
        assert await real_read() == []

        # A room key that arrives makes an event pending without listing it: the table is read.
        async with store.session.begin() as session:

            row = await session.get(InboxEvent, "$aide3")
            row.status = "waiting_key"
        assert await store.key_arrived("$aide3", "message", _aide(3, room, dr).payload)
        await bot.process_inbox()
        assert len(reads) == 2
        assert len([s for s in await uc.sent() if s.action in ("message", "direct")]) == 1
    finally:
        await uc.close()
