"""The CPTS coordinators' room: escalations, inclusions and bordereaux land there (never an identity)."""
from __future__ import annotations

import logging

from nio import RoomCreateError, RoomVisibility

from bot.room_creation import ENCRYPTION
from domain.clock import wall_ms

log = logging.getLogger("cercle.rooms")



async def ensure_coordinator_room(bot, invite: list[str] = ()) -> str:
    """Use the configured room, or the one the bot created earlier, or create it (encrypted, invite only)."""
    now_ms = wall_ms()
    room_id = bot.config.cpts.coordinator_room or await bot.store.get_state("coordinator_room")
    if room_id is None:
        response = await bot.client.room_create(
            visibility=RoomVisibility.private, name=f"Coordination · {bot.config.cpts.name}",
            topic="Salon des coordinateurs : escalades, inclusions, bordereaux. Aucune identité de patient ici.",
            invite=list(invite), initial_state=[ENCRYPTION, {"type": "m.room.guest_access", "state_key": "",
                                                             "content": {"guest_access": "forbidden"}}],
            preset=None, power_level_override={"users": {u: 50 for u in invite}},
        )
        if isinstance(response, RoomCreateError):
            raise RuntimeError(f"création du salon des coordinateurs impossible : {response.message}")
        room_id = response.room_id
        await bot.store.set_state("coordinator_room", room_id)
        log.info("salon des coordinateurs créé : %s", room_id)
    record = await bot.store.get_room(room_id)
    if record is None or record.kind != "coordination":
        created = room_id == await bot.store.get_state("coordinator_room")
        await bot.store.save_room(room_id, "coordination", record.joined_ts if record else now_ms, created=created)
    bot.services.coordinator_room = room_id
    return room_id


