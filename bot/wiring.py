"""The composition root: what a Bot's handlers get (Services) and which handler answers what.

Built once per bot (Bot.open, or a test that builds the bot by hand); nothing is set on an object
from outside its class. A malformed rules file stops the start here, naming file, key and reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from bot.config import Config
from commands import build_registry
from commands.registry import CommandRegistry
from domain.clock import Clock
from domain.flows import load_flows
from domain.indemnites import TarifsError, load_baremes
from domain.parcours import load_catalogue
from domain.questionnaires import load_questionnaires
from rooms import alertes, demandes, indemnites, indicateurs, questionnaires, suivi, tcim
from rooms.directory import Directory, professions
from rooms.services import Services, TcimSettings
from storage.repositories import Store


@dataclass(frozen=True)
class Wiring:
    services: Services
    registry: CommandRegistry
    deadline_handlers: dict  # deadline kind -> async handler(ctx, deadline)
    reaction_handlers: dict  # reaction key -> async handler(ctx, target_event_id)
    poll_handlers: dict = field(default_factory=dict)  # poll ref prefix -> async handler(ctx, ref, answer_ids)
    reply_handlers: dict = field(default_factory=dict)  # ref prefix -> async handler(ctx, ref, text) -> handled?
    at_start: list = field(default_factory=list)  # async hook(session, services, now): timers planned at each start


def compose(config: Config, store: Store, clock: Clock, registry: CommandRegistry | None = None) -> Wiring:
    registry = registry or build_registry()
    catalogue, flows = load_catalogue(), load_flows()
    baremes = load_baremes(parcours=set(catalogue), flux=set(flows), professions=set(professions()))
    if config.cpts.tarifs not in baremes:
        raise TarifsError(f"cpts.tarifs : barème inconnu « {config.cpts.tarifs} » (barèmes : {', '.join(baremes)})")
    services = Services(store=store, clock=clock, directory=Directory(), catalogue=catalogue,
                        flows=flows, tz=config.tz, timezone=config.cpts.timezone, cpts_name=config.cpts.name,
                        bot_user_id=config.matrix.user_id, registry=registry, bareme=baremes[config.cpts.tarifs],
                        questionnaires=load_questionnaires(),
                        tcim=TcimSettings(video_base=config.tcim.video_base,
                                          reminder_before=timedelta(minutes=config.tcim.reminder_before_min),
                                          late_after=timedelta(minutes=config.tcim.late_after_min)),
                        flow_hooks={**tcim.FLOW_HOOKS})
    # Each use-case module owns its tables (at its bottom); the composition root only merges them.
    modules = (demandes, alertes, suivi, questionnaires, indemnites, tcim, indicateurs)
    return Wiring(services=services, registry=registry,
                  deadline_handlers=merge_tables(modules, "DEADLINE_HANDLERS"),
                  reaction_handlers=merge_tables(modules, "REACTION_HANDLERS"),
                  poll_handlers=merge_tables(modules, "POLL_HANDLERS"),
                  reply_handlers=merge_tables(modules, "REPLY_HANDLERS"),
                  at_start=[hook for module in modules for hook in getattr(module, "AT_START", ())])


def merge_tables(modules, name: str) -> dict:
    """One table from the modules' tables of that name; a key claimed twice stops the start
    (two flows answering the same deadline kind or ref prefix would be a silent bug)."""
    merged: dict = {}
    for module in modules:
        for key, handler in getattr(module, name, {}).items():
            if key in merged:
                raise ValueError(f"{name} : « {key} » déclaré deux fois ({module.__name__})")
            merged[key] = handler
    return merged
