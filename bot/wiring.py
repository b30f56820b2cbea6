"""Connect the feature modules to a Bot: directory, rules data, reactions, deadline kinds, start hooks."""
from __future__ import annotations

ACCEPT_REACTIONS = ("✅", "✔️", "☑️", "👍")


def wire(bot) -> None:
    from commands.alertes import alerte_followup
    from commands.demandes import accept_by_reaction
    from domain.flows import load_flows
    from domain.parcours import load_catalogue
    from rooms import demandes
    from rooms.coordination import ensure_coordinator_room
    from rooms.directory import Directory

    bot.directory = Directory(bot)
    bot.coordinator_room = None
    bot.catalogue = load_catalogue()  # a malformed file stops the start, naming file, key and reason
    bot.flows = load_flows()
    for key in ACCEPT_REACTIONS:
        bot.reaction_handlers[key] = accept_by_reaction
    for kind in ("pool", "relance", "escalade", "intervention"):
        bot.deadline_handlers[f"demande.{kind}"] = demandes.fire
    bot.deadline_handlers["alerte.suivi"] = alerte_followup

    async def coordinator_room_hook(b):
        if b.config.cpts.coordinator_room or await b.store.get_state("coordinator_room"):
            await ensure_coordinator_room(b)

    bot.start_hooks.append(coordinator_room_hook)
