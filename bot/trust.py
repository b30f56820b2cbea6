"""Which devices get the bot's room keys (configuration `trust.unverified_devices`).

- Devices cross-signed by their owner (signature chain verified, not just present) are marked
  verified in the bot's store.
- "share" (default): the other devices still receive the keys, as Element's default mode does.
- "cross_signed_only": devices their owner did not cross-sign get no room key (Element's
  "exclude insecure devices" mode, applied by the bot to its own messages).
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from nio import AsyncClient

from bot.cross_signing import CrossSigningClient
from bot.cross_signing_keys import device_is_cross_signed

log = logging.getLogger("cercle.trust")


class TrustCache:
    """Cross-signing status per user, refreshed when the user's device list changes."""

    def __init__(self):
        self._seen: dict[str, frozenset[str]] = {}
        self._signed: dict[str, dict[str, bool]] = {}

    def stale(self, user_id: str, device_ids: frozenset[str]) -> bool:
        return self._seen.get(user_id) != device_ids

    def update(self, user_id: str, device_ids: frozenset[str], query: dict) -> None:
        self._seen[user_id] = device_ids
        self._signed[user_id] = {d: device_is_cross_signed(query, user_id, d) for d in device_ids}

    def is_cross_signed(self, user_id: str, device_id: str) -> bool:
        return self._signed.get(user_id, {}).get(device_id, False)


async def apply(client: AsyncClient, cache: TrustCache, cross_signing: Callable[[], CrossSigningClient],
                room_id: str, *, strict: bool) -> None:
    """Judge the devices of the room's members; `strict` is `cross_signed_only`."""
    room = client.rooms.get(room_id)
    if room is None or not room.encrypted or client.olm is None:
        return
    store = client.device_store
    devices = {u: frozenset(d.id for d in store.active_user_devices(u)) for u in room.users if u != client.user_id}
    stale = [u for u, ids in devices.items() if cache.stale(u, ids)]
    if stale:
        async with cross_signing() as cs:
            _, query = await cs.request("POST", "/_matrix/client/v3/keys/query",
                                     {"device_keys": {u: [] for u in stale}})
        for u in stale:
            cache.update(u, devices[u], query)
    for user_id in devices:
        for device in store.active_user_devices(user_id):
            signed = cache.is_cross_signed(user_id, device.id)
            if signed and not device.verified:
                client.verify_device(device)
            if strict and not signed and not device.blacklisted:
                log.info("appareil %s de %s non signé par son propriétaire : pas de clé", device.id, user_id)
                client.blacklist_device(device)
            elif not strict and device.blacklisted:
                client.unblacklist_device(device)
