"""Advertise the commands to clients (MSC4332 state event), where the bot may send state."""
from __future__ import annotations

import logging

from bot.app import COMMANDS_STATE

log = logging.getLogger("cercle.advertise")


async def advertise_commands(bot, session, room_id: str, kind: str) -> None:
    content = bot.registry.msc4332_content(scope=kind)
    digest = bot.registry.digest(content)
    from storage.models import RoomRecord

    record = await session.get(RoomRecord, room_id)
    if record is not None and record.commands_published == digest:
        return
    # `optional`: skipped at send time where the bot's power level does not allow it. A room still
    # being created (`pending:<creation key>`) has no record yet: the state waits in the outbox
    # with the room's other first items, and goes out once the room exists.
    bot.store.queue(session, "state", room_id, {"type": COMMANDS_STATE, "state_key": bot.user_id,
                                                "content": content, "optional": True}, bot.clock.now())
    from sqlalchemy import update

    from storage.models import RoomRecord

    await session.execute(update(RoomRecord).where(RoomRecord.room_id == room_id).values(commands_published=digest))
