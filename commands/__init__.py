"""Command declarations. `build_registry()` collects every module's CommandGroup, in this order
(the order of `!aide` and of the README table)."""
from __future__ import annotations

from commands import alertes, annuaire, cercle, demandes, general, indemnites, indicateurs, questionnaires, suivi, tcim
from commands.registry import CommandRegistry


def build_registry() -> CommandRegistry:
    registry = CommandRegistry()
    for module in (general, cercle, suivi, questionnaires, demandes, tcim, alertes, annuaire, indemnites, indicateurs):
        registry.include(module.group)
    return registry
