"""Advertise the commands to clients (MSC4332 state event), where the bot may send state."""
from __future__ import annotations

from sqlalchemy import update

from rooms.services import Services
from storage.models import RoomRecord

COMMANDS_STATE = "org.matrix.msc4332.commands"


async def advertise_commands(services: Services, session, room_id: str, kind: str) -> None:
    content = services.registry.msc4332_content(scope=kind)
    digest = services.registry.digest(content)
    record = await session.get(RoomRecord, room_id)
    if record is not None and record.commands_published == digest:
        return
    # `optional`: skipped at send time where the bot's power level does not allow it.
    services.store.queue(session, "state", room_id, {"type": COMMANDS_STATE, "state_key": services.bot_user_id,
                                                     "content": content, "optional": True}, services.clock.now())
    await session.execute(update(RoomRecord).where(RoomRecord.room_id == room_id).values(commands_published=digest))
