"""The outbox sends what was just committed without reading itself back (issue 11); what was not
sent because a send failed unexpectedly is read back at the next flush, not left for a minute."""
from __future__ import annotations

import pytest

from rooms.messages import render
from tests.usecase import UseCases


async def test_items_after_an_unexpected_failure_go_at_the_next_flush(tmp_path):
    uc = await UseCases.open(tmp_path / "bot")
    try:
        bot, store = uc.bot, uc.bot.store
        tried: list[str] = []

        async def send(item, content):
            tried.append(item.ref)
            if len(tried) == 1:
                raise RuntimeError("a bug in a sender")
            await store.outbox_done(item.id, uc.now(), event_id=f"$sent-{item.ref}")
            return True

        bot.outbox._send = send
        assert await bot.flush_outbox() == 0  # the first flush reads the table: nothing waits
        reads = []
        real_read = store.pending_outbox

        async def counted_read(limit: int = 100):
            reads.append(limit)
            return await real_read(limit=limit)

        store.pending_outbox = counted_read
        async with store.session.begin() as session:
            for ref in ("un", "deux"):
                store.queue(session, "message", "!r:cpts.test", render(ref), uc.now(), ref=ref)
        with pytest.raises(RuntimeError):
            await bot.flush_outbox()  # from memory: no read; the first send fails
        assert reads == [] and tried == ["un"]
        assert await bot.flush_outbox() == 0  # the table is read again: both go, in order
        assert tried == ["un", "un", "deux"] and reads
        async with store.session.begin() as session:
            store.queue(session, "message", "!r:cpts.test", render("trois"), uc.now(), ref="trois")
        reads.clear()
        assert await bot.flush_outbox() == 0
        assert tried[-1] == "trois" and reads == []  # back to sending from memory
    finally:
        await uc.close()
