"""Replies that act on what they answer (issue 17): a reply to a request's notice, to its creation,
to its acceptance or to a red flag is read as the command it means on that request, then run as
if typed, through the same parser, checks and use case (commands.dialogue.run):

- « ok », « j'accepte », « oui », ✅ … → `accepter P-XXXX/n`;
- a reply starting with a request command (« rdv demain 14h domicile », « refuser pas dispo »,
  « cr … », « cloturer ») → that command on that request; incomplete, it opens its dialogue;
- any other text → `commentaire P-XXXX/n <text>`, a comment in the request's history.

The messages carry their request in their outbox ref: « notice:<id>:… » (rooms.demandes.notify)
and « demande:<id>:… » (creation, acceptance, red flag).
"""
from __future__ import annotations

from commands import dialogue
from commands.arguments import ParseContext
from commands.registry import UsageError
from domain.text import normalize
from rooms.context import CommandContext
from storage.models import Demande as DemandeRow

ACCEPT = {"ok", "okay", "oui", "j'accepte", "j accepte", "accepte", "j'accepte la demande", "je prends",
          "je la prends", "d'accord", "✅", "✔️", "👍", "go"}
ON_A_REQUEST = ("accepter", "refuser", "rdv", "cr", "cloturer", "annuler", "commentaire")


def command_line(registry, row: DemandeRow, text: str) -> str:
    """What the reply means, as the command one would type on this request."""
    target = f"{row.patient_code}/{row.numero}"
    key = normalize(text).strip(" .!")
    if key in ACCEPT or text.strip() in ACCEPT:
        return f"!accepter {target}"
    words = text.split()
    cmd = registry.find(words[0].lstrip("!/")) if words else None
    if cmd is not None and cmd.name in ON_A_REQUEST:
        return " ".join([f"!{cmd.name}", target, *words[1:]])
    return f"!commentaire {target} {text}"


async def on_reply(ctx: CommandContext, ref: str, text: str) -> bool:
    parts = ref.split(":")
    if len(parts) < 2 or not parts[1].isdigit():
        return False
    row = await ctx.session.get(DemandeRow, int(parts[1]))
    if row is None:
        return False
    registry = ctx.services.registry
    line = command_line(registry, row, text)
    parse_ctx = ParseContext(now=ctx.now, tz=ctx.services.tz, flows=ctx.services.flows)
    try:
        invocation = registry.parse(line, parse_ctx, direct=True)
    except UsageError as e:
        if not await dialogue.start(ctx, line, {}, direct=True):
            ctx.reply(registry.usage_error_text(e.command, e.markup))
        return True
    refusal = await dialogue.command_refusal(ctx, invocation.command)
    if refusal:
        ctx.reply(refusal)
        return True
    await dialogue.run(ctx, invocation)
    return True


REPLY_HANDLERS = {"notice": on_reply, "demande": on_reply}
