"""Which devices get the bot's room keys (configuration `trust.unverified_devices`).

- Devices cross-signed by their owner (signature chain verified, not just present) are marked
  verified in the bot's store.
- "share" (default): the other devices still receive the keys, as Element's default mode does.
- "cross_signed_only": devices their owner did not cross-sign get no room key (Element's
  "exclude insecure devices" mode, applied by the bot to its own messages).
"""
from __future__ import annotations

import logging

from bot.cross_signing_keys import device_is_cross_signed
from bot.identity import cross_signing_client

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


async def apply(bot, room_id: str) -> None:
    room = bot.client.rooms.get(room_id)
    if room is None or not room.encrypted or bot.client.olm is None:
        return
    cache: TrustCache = bot.trust_cache
    store = bot.client.device_store
    devices = {u: frozenset(d.id for d in store.active_user_devices(u)) for u in room.users if u != bot.user_id}
    stale = [u for u, ids in devices.items() if cache.stale(u, ids)]
    if stale:
        async with cross_signing_client(bot) as cs:
            _, query = await cs.request("POST", "/_matrix/client/v3/keys/query",
                                     {"device_keys": {u: [] for u in stale}})
        for u in stale:
            cache.update(u, devices[u], query)
    strict = bot.config.trust.unverified_devices == "cross_signed_only"
    for user_id in devices:
        for device in store.active_user_devices(user_id):
            signed = cache.is_cross_signed(user_id, device.id)
            if signed and not device.verified:
                bot.client.verify_device(device)
            if strict and not signed and not device.blacklisted:
                log.info("appareil %s de %s non signé par son propriétaire : pas de clé", device.id, user_id)
                bot.client.blacklist_device(device)
            elif not strict and device.blacklisted:
                bot.client.unblacklist_device(device)
