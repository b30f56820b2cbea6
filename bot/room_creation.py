"""Creating rooms on the homeserver exactly once: patient rooms and the bot's direct chats.

One mechanism for both: a creation key is recorded before room_create and the room carries it; an
attempt interrupted by a crash (or a lost answer) is then found again by find_created_room instead
of creating a second room. Direct chats carry it in m.room.create itself (CREATION_KEY), the first
event of the room, so a room still being created when the bot restarts already has it; patient
rooms, created through nio's room_create (which cannot write creation content), in an initial
state event (rooms.patients.CREATION_STATE). The lookup reads both in one state request.
No patient identity in any state event, ever: the key is opaque.
"""
from __future__ import annotations

import json

from nio import (
    Api,
    AsyncClient,
    JoinedRoomsResponse,
    RoomCreateResponse,
    RoomGetStateResponse,
    RoomPreset,
    RoomVisibility,
)

from rooms.patients import CREATION_STATE, power_levels, room_name
from storage.repositories import Store

CREATION_KEY = "org.cercle.creation_key"  # in m.room.create content
ENCRYPTION = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}


def creation_state(key: str) -> dict:
    return {"type": CREATION_STATE, "state_key": "", "content": {"key": key}}


async def create_patient_room(client: AsyncClient, key: str, code: str, invite: list[str]):
    """room_create for a patient room; returns nio's response (RoomCreateResponse or RoomCreateError)."""
    return await client.room_create(
        visibility=RoomVisibility.private, name=room_name(code, []),
        topic=f"Cercle de soins {code}, salon chiffré géré par Cercle. Tapez !aide.",
        invite=invite, preset=None,
        initial_state=[
            ENCRYPTION,
            {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "invite"}},
            {"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "forbidden"}},
            # Members see history from their invitation on, not before.
            {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "invited"}},
            creation_state(key),
        ],
        power_level_override=power_levels(),
    )


async def create_direct_room(client: AsyncClient, key: str, user_id: str):
    """room_create for the bot's encrypted direct chat with `user_id`; nio's response."""
    method, path, data = Api.room_create(client.access_token, is_direct=True, invite=[user_id],
                                         preset=RoomPreset.trusted_private_chat, initial_state=[ENCRYPTION])
    body = json.loads(data)
    body["creation_content"][CREATION_KEY] = key
    return await client._send(RoomCreateResponse, method, path, json.dumps(body))


class RoomLookupError(Exception):
    """The homeserver did not answer the lookup: neither found nor absent, try again later."""


# An attempt cut off by a crash may still be running on the homeserver (the request arrived, the
# answer was lost): for this long after it started, "not found" means "not yet", not "absent".
# Found by the random-kill delivery test once restarts got faster (issue 11): a second chat.
CREATION_SETTLE_MS = 10_000


def check_not_under_way(started_ms: int | None, now_ms: int) -> None:
    """Raise RoomLookupError if an interrupted creation begun at `started_ms` may still complete."""
    if started_ms is not None and now_ms - started_ms < CREATION_SETTLE_MS:
        raise RoomLookupError("création interrompue il y a moins de 10 s : le serveur la termine peut-être")


async def find_created_room(client: AsyncClient, store: Store, key: str) -> str | None:
    """The room a previous, interrupted attempt created with `key`, if any.

    Only rooms the bot has joined but not recorded with a purpose are read (after a crash the sync
    records an unknown room as `other`); each one costs one state request. Not knowing is not
    "absent" (creating then could make a second room): RoomLookupError."""
    joined = await client.joined_rooms()
    if not isinstance(joined, JoinedRoomsResponse):
        raise RoomLookupError(getattr(joined, "message", str(joined)))
    known = {r.room_id for r in await store.rooms() if r.kind != "other"}
    for room_id in joined.rooms:
        if room_id in known:
            continue
        state = await client.room_get_state(room_id)
        if not isinstance(state, RoomGetStateResponse):
            continue  # e.g. left since: not a room being created
        for event in state.events:
            content = event.get("content") or {}
            if ((event.get("type") == "m.room.create" and content.get(CREATION_KEY) == key)
                    or (event.get("type") == CREATION_STATE and content.get("key") == key)):
                return room_id
    return None
