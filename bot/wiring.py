"""The composition root: what a Bot's handlers get (Services) and which handler answers what.

Built once per bot (Bot.open, or a test that builds the bot by hand); nothing is set on an object
from outside its class. A malformed rules file stops the start here, naming file, key and reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from bot.config import Config
from commands import build_registry, dialogue, replies
from commands.registry import CommandRegistry
from domain.clock import Clock
from domain.flows import load_flows
from domain.parcours import load_catalogue
from rooms import alertes, demandes
from rooms.directory import Directory
from rooms.services import Services
from storage.repositories import Store


@dataclass(frozen=True)
class Wiring:
    services: Services
    registry: CommandRegistry
    deadline_handlers: dict  # deadline kind -> async handler(ctx, deadline)
    reaction_handlers: dict  # reaction key -> async handler(ctx, target_event_id)
    poll_handlers: dict = field(default_factory=dict)  # poll ref prefix -> async handler(ctx, ref, answer_ids)
    reply_handlers: dict = field(default_factory=dict)  # ref prefix -> async handler(ctx, ref, text) -> handled?


def compose(config: Config, store: Store, clock: Clock, registry: CommandRegistry | None = None) -> Wiring:
    registry = registry or build_registry()
    services = Services(store=store, clock=clock, directory=Directory(), catalogue=load_catalogue(),
                        flows=load_flows(), tz=config.tz, timezone=config.cpts.timezone, cpts_name=config.cpts.name,
                        bot_user_id=config.matrix.user_id, registry=registry,
                        dialogue_timeout=timedelta(minutes=config.dialogue.expire_after_min))
    # Each use-case module owns its tables (at its bottom); the composition root only merges them.
    return Wiring(services=services, registry=registry,
                  deadline_handlers={**demandes.DEADLINE_HANDLERS, **alertes.DEADLINE_HANDLERS,
                                     **dialogue.DEADLINE_HANDLERS},
                  reaction_handlers=merge_reactions(demandes.REACTION_HANDLERS, dialogue.REACTION_HANDLERS),
                  poll_handlers={**dialogue.POLL_HANDLERS},
                  reply_handlers={**replies.REPLY_HANDLERS, **dialogue.REPLY_HANDLERS})


def merge_reactions(*tables: dict) -> dict:
    """One handler per key; a key several modules answer (✅: accept a request, confirm a dialogue)
    calls each in turn, and each acts only on its own messages (by the reacted event's ref)."""
    merged: dict[str, list] = {}
    for table in tables:
        for key, handler in table.items():
            merged.setdefault(key, []).append(handler)

    def chain(handlers):
        if len(handlers) == 1:
            return handlers[0]

        async def each(ctx, target_event_id):
            for handler in handlers:
                await handler(ctx, target_event_id)
        return each

    return {key: chain(handlers) for key, handlers in merged.items()}
