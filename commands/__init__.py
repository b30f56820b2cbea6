"""Command declarations. `build_registry()` collects every module's commands."""
from __future__ import annotations

from commands.registry import CommandRegistry


def build_registry() -> CommandRegistry:
    from commands import general

    registry = CommandRegistry()
    general.register(registry)
    return registry
