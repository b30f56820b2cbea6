"""What the use cases and the command handlers may use, declared once.

Built by the composition root (bot/wiring.py) and handed to every CommandContext: handlers get
these services, never the Matrix adapter. The command registry sits above rooms/, so it is seen
here only through the few methods the use cases call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from domain.clock import Clock
from domain.flows import Flow
from domain.indemnites import Bareme
from domain.parcours import Parcours
from domain.questionnaires import Questionnaire
from rooms.directory import Directory
from storage.repositories import Store


class CommandCatalogue(Protocol):
    """The parts of commands.registry.CommandRegistry the use cases need."""

    def usage_error_text(self, command, message: str) -> str: ...

    def msc4332_content(self, scope: str | None = None) -> dict: ...

    def digest(self, content: dict) -> str: ...


@dataclass(frozen=True)
class TcimSettings:
    """From the `[tcim]` configuration section (bot/config.py TcimConfig)."""

    video_base: str = "https://meet.jit.si/"
    reminder_before: timedelta = timedelta(minutes=30)
    late_after: timedelta = timedelta(minutes=15)


@dataclass
class Services:
    store: Store
    clock: Clock
    directory: Directory
    catalogue: dict[str, Parcours]
    flows: dict[str, Flow]
    tz: ZoneInfo
    timezone: str  # the same zone by name (cpts.timezone), stored with each request
    cpts_name: str
    bot_user_id: str
    registry: CommandCatalogue
    coordinator_room: str | None = None  # the coordinators' room, known once the bot has started
    questionnaires: dict[str, Questionnaire] = field(default_factory=dict)  # data/questionnaires, by code
    bareme: Bareme | None = None  # the CPTS's indemnity tariff, with its versions (cpts.tarifs)
    tcim: TcimSettings = TcimSettings()
    # (flow code, step) -> async hook(ctx, patient, row, d): what a flow adds to a request's step
    # ("accepted", "rdv", "cr"), e.g. rooms.tcim; merged by bot/wiring.compose.
    flow_hooks: dict = field(default_factory=dict)
