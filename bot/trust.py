"""Which devices get the bot's room keys (configuration `trust.unverified_devices`)."""
from __future__ import annotations


async def apply(bot, room_id: str) -> None:
    """Placeholder until cross-signing verification lands; 'share' sends to every device."""
    return None
