"""Creating rooms on the homeserver: the Matrix side of the outbox's `create_room` action.

A room is created exactly once: its creation key travels in an initial state event
(rooms.patients.CREATION_STATE), so an attempt interrupted by a crash is found again instead of
creating a second room. No patient identity in any state event, ever.
"""
from __future__ import annotations

from nio import JoinedRoomsResponse, RoomGetStateEventResponse, RoomVisibility

from rooms.patients import CREATION_STATE, power_levels, room_name

ENCRYPTION = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}


async def create_patient_room(bot, key: str, code: str, invite: list[str]):
    """room_create for a patient room; returns nio's response (RoomCreateResponse or RoomCreateError)."""
    return await bot.client.room_create(
        visibility=RoomVisibility.private, name=room_name(code, []),
        topic=f"Cercle de soins {code}, salon chiffré géré par Cercle. Tapez !aide.",
        invite=invite, preset=None,
        initial_state=[
            ENCRYPTION,
            {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "invite"}},
            {"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "forbidden"}},
            # Members see history from their invitation on, not before.
            {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "invited"}},
            {"type": CREATION_STATE, "state_key": "", "content": {"key": key}},
        ],
        power_level_override=power_levels(),
    )


class RoomLookupError(Exception):
    """The homeserver did not answer the lookup: neither found nor absent, try again later."""


async def find_created_room(bot, key: str) -> str | None:
    """The room a previous, interrupted attempt created for `key`, if any.

    Only rooms the bot has joined but not recorded with a purpose are read (after a crash the sync
    records an unknown room as `other`); each one costs one state request."""
    joined = await bot.client.joined_rooms()
    if not isinstance(joined, JoinedRoomsResponse):
        raise RoomLookupError(getattr(joined, "message", str(joined)))
    known = {r.room_id for r in await bot.store.rooms() if r.kind != "other"}
    for room_id in joined.rooms:
        if room_id in known:
            continue
        state = await bot.client.room_get_state_event(room_id, CREATION_STATE, "")
        if isinstance(state, RoomGetStateEventResponse) and state.content.get("key") == key:
            return room_id
    return None
