"""General commands: aide."""
from __future__ import annotations

from commands.arguments import Text, Word
from commands.registry import CommandGroup, CommandRegistry, Param
from domain.markup import literal
from domain.text import normalize

group = CommandGroup()


@group.command(
    "aide", aliases=["help", "?"], summary="liste des commandes, ou le détail d'une commande",
    params=[Param("commande", Word(placeholder="<commande>"), optional=True, help="le nom d'une commande, par exemple dec"),
            Param("sous_commande", Text(placeholder="<sous-commande>", min_length=1), optional=True,
                  help="pour une commande à sous-commandes (tcim), l'une d'elles, par exemple demande")],
    examples=["!aide", "!aide dec", "!aide tcim debut"], requires=None, category="Général",
)
async def aide(ctx, commande: str | None = None, sous_commande: str | None = None):
    registry: CommandRegistry = ctx.services.registry
    if commande is None:
        ctx.reply(registry.help_overview(scope=ctx.room_kind if ctx.room_kind in ("patient", "coordination", "direct") else None))
        return
    cmd = registry.find(commande.lstrip("!/"))
    if cmd is None:
        suggestions = registry.suggestions(commande)
        hint = f" Vouliez-vous dire {' ou '.join('`!' + s + '`' for s in suggestions)} ?" if suggestions else ""
        ctx.reply(f"⚠️ Je ne connais pas la commande « {literal(commande)} ».{hint}\nUsage : `{registry.find('aide').usage()}`")
        return
    if sous_commande and not cmd.family:
        ctx.refuse(f"je ne comprends pas « {literal(sous_commande)} » à la fin de la commande")
    if sous_commande:
        sub = cmd.subcommands.get(normalize(sous_commande))
        if sub is None:
            words = ", ".join(c.name.split(" ", 1)[1] for c in cmd.children())
            ctx.reply(f"⚠️ `!{cmd.name}` n'a pas de sous-commande « {literal(sous_commande)} » ({words}).")
            return
        cmd = sub
    ctx.reply(registry.help_for(cmd))
