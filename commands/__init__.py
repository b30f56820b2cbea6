"""Command declarations. `build_registry()` collects every module's commands."""
from __future__ import annotations

from commands.registry import CommandRegistry


def build_registry() -> CommandRegistry:
    from commands import annuaire, cercle, general

    registry = CommandRegistry()
    for module in (general, cercle, annuaire):
        module.register(registry)
    return registry
