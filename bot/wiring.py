"""Connect the feature modules to a Bot: directory, reactions, deadline kinds, start hooks."""
from __future__ import annotations


def wire(bot) -> None:
    from rooms.coordination import ensure_coordinator_room
    from rooms.directory import Directory

    bot.directory = Directory(bot)
    bot.coordinator_room = None

    async def coordinator_room_hook(b):
        if b.config.cpts.coordinator_room or await b.store.get_state("coordinator_room"):
            await ensure_coordinator_room(b)

    bot.start_hooks.append(coordinator_room_hook)
