"""Advertise the commands to clients (MSC4332 state event), where the bot may send state."""
from __future__ import annotations

import logging

from bot.app import COMMANDS_STATE

log = logging.getLogger("cercle.advertise")


def may_send_state(bot, room_id: str, event_type: str) -> bool:
    room = bot.client.rooms.get(room_id)
    if room is None:
        return True  # a room the bot just created: it is its admin
    return room.power_levels.can_user_send_state(bot.user_id, event_type)


async def advertise_commands(bot, session, room_id: str, kind: str) -> None:
    content = bot.registry.msc4332_content(scope=kind)
    digest = bot.registry.digest(content)
    record = await bot.store.get_room(room_id)
    if record is not None and record.commands_published == digest:
        return
    if not may_send_state(bot, room_id, COMMANDS_STATE):
        log.info("pas le droit de publier les commandes dans %s", room_id)
        return
    bot.store.queue(session, "state", room_id,
                    {"type": COMMANDS_STATE, "state_key": bot.user_id, "content": content}, bot.clock.now())
    from sqlalchemy import update

    from storage.models import RoomRecord

    await session.execute(update(RoomRecord).where(RoomRecord.room_id == room_id).values(commands_published=digest))
