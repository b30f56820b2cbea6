"""Guided commands (issue 17; domain-spec §7.5 R1 « guided prompts »): a command typed without
its required arguments is completed by a short dialogue, built from the declarations alone.

- The bot asks each missing argument in turn (commands.registry.CommandRegistry.incomplete), by
  its label and with an example taken from the command's own examples; a closed set of values
  (ArgType.choices) comes as a poll, which can also be answered by typing the value or its number.
- Each answer is read by the argument's own parser: a wrong one gets the parser's French error
  and the question again. Nothing is written before « ✅ »; the command then runs exactly as if
  typed in full: CommandRegistry.complete() binds the same tokens, and run() applies the same
  checks (directory, room, cercle) and the same handler as a typed command.
- Questions go in a thread on the command (in shared rooms), so the room stays readable. Only the
  person who typed the command answers; a dialogue belongs to one room (and thread), so two of the
  same person in two rooms never mix. `annuler` stops it; without an answer for
  `dialogue.expire_after_min` it expires (a deadline row) and says so.
- Identity (a command that carries_identity, e.g. `!patient nouveau`) typed in a shared room:
  each answer is redacted, as the command itself would be (bot.dispatch._protect_identity), the
  summary goes to the direct chat, and the answers are encrypted at rest (storage.dialogues).
"""
from __future__ import annotations

import re

from commands.arguments import ArgumentError, Choice, ParseContext, Text, split_options, tokenize
from commands.registry import (
    PATIENT,
    SCOPE_NAMES,
    Command,
    Invocation,
    Option,
    Param,
    UsageError,
    answer_tokens,
    argument_name,
)
from domain.markup import literal
from domain.polls import POLL_START, poll_start_content
from domain.text import normalize
from rooms.access import require_cercle
from rooms.context import CommandContext, Refusal
from rooms.messages import render
from rooms.patients import patient_by_room
from storage import dialogues as rows
from storage.dialogues import EXPIRY
from storage.models import Dialogue

CONFIRM = {"✅", "✔️", "☑️", "👍", "oui", "o", "ok", "d'accord", "confirmer", "confirme", "je confirme", "valider",
           "valide", "go"}
CONFIRM_REACTIONS = ("✅", "✔️", "☑️", "👍")
CANCEL = {"annuler", "!annuler", "/annuler", "stop", "abandonner", "annule", "laisse tomber"}
SKIP = {"passer", "-", "aucun", "aucune", "rien", "non precise"}
SKIP_LABEL = "passer (facultatif)"


# --- authorisation and running: the same for a typed command and a confirmed dialogue ----------------
async def place_refusal(ctx: CommandContext, cmd: Command) -> str | None:
    """The room check of a command, or None; in a patient's room, the cercle check raises Refusal."""
    if ctx.room_kind not in cmd.scopes:
        where = " ou ".join(SCOPE_NAMES[s] for s in sorted(cmd.scopes))
        return f"⚠️ `!{cmd.name}` s'utilise dans {where}.\nUsage : `{cmd.usage()}`"
    if ctx.room_kind == PATIENT and cmd.requires is not None:
        patient = await patient_by_room(ctx.session, ctx.room_id)
        if patient is not None:
            await require_cercle(ctx, patient)  # a former member, or anyone let in by mistake
    return None


async def command_refusal(ctx: CommandContext, cmd: Command) -> str | None:
    if cmd.requires:
        refusal = await ctx.services.directory.refusal(ctx.session, ctx.sender, cmd.requires)
        if refusal:
            return refusal
    return await place_refusal(ctx, cmd)


async def run(ctx: CommandContext, invocation: Invocation) -> None:
    cmd = invocation.command
    ctx.sigil, ctx.command = invocation.sigil, cmd
    for open_row in await rows.active_dialogues(ctx.session, ctx.sender, ctx.room_id):
        if open_row.command == cmd.name:  # typed in full after all: its dialogue is over
            await rows.end(ctx.session, open_row, "cancelled", ctx.now)
    try:
        await cmd.handler(ctx, **invocation.arguments)
    except ArgumentError as e:  # a value checked inside the handler: same answer as a parse error
        raise Refusal(ctx.services.registry.usage_error_text(cmd, e.markup))


# --- texts derived from the declarations ------------------------------------------------------------
_WORDS = re.compile(r"[^\W\d_][\w\-' ]*")


def title(item: Param | Option) -> str:
    """« prénom », « téléphone », « horaire »: the placeholder when it is a word, else the name."""
    inner = item.type.placeholder.strip("<>\"' ")
    if not isinstance(item.type, Choice) and _WORDS.fullmatch(inner):
        return inner
    return argument_name(item).replace("_", " ")


def label(item: Param | Option) -> str:
    return item.help or item.type.description


def example(cmd: Command, item: Param | Option, ctx: ParseContext) -> str | None:
    """What the command's own examples give this argument (« Dupont » for nom=), else its type's."""
    name = argument_name(item)
    for text in cmd.examples:
        try:
            tokens = tokenize(text.lstrip("!/"))[len(cmd.name.split()):]
            if isinstance(item, Option):
                for token in tokens:
                    key, _, value = token.text.partition("=")
                    if normalize(key) == normalize(name) and value:
                        return value
                continue
            known = {o.key: o.type for o in cmd.options}
            positional, _ = split_options(tokens, known, passthrough_unknown=cmd.passthrough_options, ctx=ctx)
            pos = 0
            for param in cmd.params:
                if pos >= len(positional):
                    break
                try:
                    _, end = param.type.parse(positional, pos, ctx)
                except ArgumentError:
                    if param.optional:
                        continue
                    break
                if param is item:
                    return " ".join(t.text for t in positional[pos:end])
                pos = end
        except ArgumentError:
            continue
    return item.type.examples[0] if item.type.examples else None


def choices_of(item: Param | Option, ctx: ParseContext) -> list[tuple[str | None, str]] | None:
    offered = item.type.choices(ctx)
    if offered is None:
        return None
    optional = item.optional if isinstance(item, Param) else not item.required
    return [*offered, (None, SKIP_LABEL)] if optional else list(offered)


def _parse_ctx(ctx: CommandContext) -> ParseContext:
    return ParseContext(now=ctx.now, tz=ctx.services.tz, flows=ctx.services.flows)


def _items(cmd: Command) -> dict[str, Param | Option]:
    return {argument_name(i): i for i in (*cmd.params, *cmd.options)}


def _must_redact(cmd: Command, row: Dialogue, ctx: CommandContext) -> bool:
    return cmd.carries_identity and ctx.room_kind != "direct"


# --- sending in the dialogue's thread -------------------------------------------------------------
def _relation(ctx: CommandContext, row: Dialogue, anchor: str | None) -> dict | None:
    """In a shared room, the thread on the command (with the reply fallback for clients without
    threads); in a direct chat, a plain reply to what the person just sent. `anchor` is that
    message, None after a vote (a reply to a vote event shows as « message introuvable »)."""
    if ctx.room_kind == "direct":
        return {"m.in_reply_to": {"event_id": anchor}} if anchor else None
    return {"rel_type": "m.thread", "event_id": row.thread_root, "is_falling_back": True,
            "m.in_reply_to": {"event_id": anchor or row.thread_root}}


def _say(ctx: CommandContext, row: Dialogue, md_text: str, *, ref: str | None = None,
         anchor: str | None = None) -> str:
    content = render(md_text)
    relation = _relation(ctx, row, anchor)
    if relation:
        content["m.relates_to"] = relation
    return ctx.queue("message", row.room_id, content, ref=ref or f"dialogue:{row.id}:texte")


def _ask(ctx: CommandContext, row: Dialogue, cmd: Command, answers: dict, *, intro: str = "",
         anchor: str | None = None) -> None:
    """The next question: a poll when the argument has a closed set of values, else a message."""
    items = _items(cmd)
    pending = [q for q in row.questions if q not in answers]
    if not pending:
        _summary(ctx, row, cmd, answers, intro=intro, anchor=anchor)
        return
    item = items[pending[0]]
    pctx = _parse_ctx(ctx)
    number = len(row.questions) - len(pending) + 1
    head = f"{number}/{len(row.questions)} · {title(item)[:1].upper()}{title(item)[1:]}"
    choices = choices_of(item, pctx)
    if choices is not None and len(choices) <= 20:
        if intro:
            _say(ctx, row, intro, anchor=anchor)
        # A help text that lists the values for typing is noise above the same values as buttons.
        listed = sum(1 for value, _ in choices if value and len(value) > 2 and normalize(value) in normalize(label(item)))
        question = (head if listed >= 2 else f"{head} : {label(item)}") + " (votez, ou tapez le numéro)"
        content = poll_start_content(question, [text for _, text in choices], relates_to=_relation(ctx, row, anchor))
        ctx.queue("event", row.room_id, {"type": POLL_START, "content": content},
                  ref=f"dialogue:{row.id}:{pending[0]}")
        return
    text = f"**{head}** : {label(item)}"
    sample = example(cmd, item, pctx)
    if sample and "exemple" not in label(item):
        text += f"\nExemple : `{literal(sample)}`"
    optional = item.optional if isinstance(item, Param) else not item.required
    if optional:
        text += "\n(facultatif : `passer`)"
    _say(ctx, row, (intro + "\n\n" if intro else "") + text, ref=f"dialogue:{row.id}:{pending[0]}", anchor=anchor)


def _summary(ctx: CommandContext, row: Dialogue, cmd: Command, answers: dict, *, intro: str = "",
             anchor: str | None = None) -> None:
    pctx = _parse_ctx(ctx)
    lines = [f"**Récapitulatif · `!{cmd.name}`**", ""]
    for name, value in answers.items():
        if value is None:
            continue
        item = _items(cmd)[name]
        shown = next((text for v, text in choices_of(item, pctx) or () if v == value), value)
        lines.append(f"- {title(item)} : {literal(shown)}")
    confirm = ("✅ **pour confirmer** : répondez ✅ (ou « oui »), ou réagissez ✅ à ce message. "
               "`annuler` pour abandonner. Rien n'est enregistré avant.")
    if _must_redact(cmd, row, ctx):
        # Identity stays out of the shared room: the details go to the direct chat only.
        ctx.queue("direct", "", {"user_id": row.sender, "content": render("\n".join(lines))})
        _say(ctx, row, (intro + "\n\n" if intro else "") + "🔒 Récapitulatif envoyé dans votre conversation "
                       "directe avec moi (il contient l'identité du patient).\n\n" + confirm,
             ref=f"dialogue:{row.id}:resume", anchor=anchor)
        return
    _say(ctx, row, (intro + "\n\n" if intro else "") + "\n".join(lines) + "\n\n" + confirm,
         ref=f"dialogue:{row.id}:resume", anchor=anchor)


# --- starting -------------------------------------------------------------------------------------
def thread_root_of(ctx: CommandContext, content: dict) -> str:
    """A command typed in a thread keeps its dialogue in that thread (threads do not nest)."""
    relates = content.get("m.relates_to") or {}
    if relates.get("rel_type") == "m.thread" and relates.get("event_id"):
        return relates["event_id"]
    return ctx.event_id


async def start(ctx: CommandContext, body: str, content: dict, *, direct: bool) -> bool:
    """A bare or incomplete command: open its dialogue and ask the first question. False when what
    was typed is wrong rather than incomplete (the usage error stands)."""
    registry = ctx.services.registry
    found = registry.incomplete(body, _parse_ctx(ctx), direct=direct)
    if found is None:
        return False
    cmd, asked = found
    refusal = await command_refusal(ctx, cmd)  # not allowed here: say so now, not after five questions
    if refusal:
        ctx.reply(refusal)
        return True
    root = thread_root_of(ctx, content)
    replaced = []
    for old in await rows.active_dialogues(ctx.session, ctx.sender, ctx.room_id):
        if old.thread_root == root or direct or root == ctx.event_id:  # one per person, room and thread
            await rows.end(ctx.session, old, "cancelled", ctx.now)
            replaced.append(f"`!{old.command}`")
    row = await rows.open_dialogue(ctx.session, ctx.store.cipher, sender=ctx.sender, room_id=ctx.room_id,
                                   thread_root=root, command=cmd.name, questions=[argument_name(i) for i in asked],
                                   body=body, now=ctx.now, expires_at=ctx.now + ctx.services.dialogue_timeout)
    minutes = int(ctx.services.dialogue_timeout.total_seconds() // 60)
    plural = "s" if len(asked) > 1 else ""
    intro = (f"🧭 `!{cmd.name}` : je vous pose {len(asked)} question{plural}, une par une. Répondez ici ; "
             f"`annuler` pour arrêter (sans réponse, j'abandonne au bout de {minutes} min).")
    if replaced:
        intro += f"\n(J'abandonne {', '.join(replaced)}, commencé plus tôt ici : rien n'en a été enregistré.)"
    _ask(ctx, row, cmd, {}, intro=intro, anchor=ctx.event_id)
    return True


# --- answers ----------------------------------------------------------------------------------------
async def dialogue_for_message(ctx: CommandContext, content: dict) -> Dialogue | None:
    """The sender's dialogue this message answers: the one of its thread; the one whose question it
    replies to; else, in the main timeline, the latest one of the sender in this room."""
    active = await rows.active_dialogues(ctx.session, ctx.sender, ctx.room_id)
    if not active:
        return None
    relates = content.get("m.relates_to") or {}
    if relates.get("rel_type") == "m.thread":
        return next((r for r in active if r.thread_root == relates.get("event_id")), None)
    answered = (relates.get("m.in_reply_to") or {}).get("event_id")
    if answered:
        ref = await ctx.store.ref_of_sent_event(ctx.session, answered) or ""
        number = ref.split(":")[1] if ref.startswith("dialogue:") else None
        return next((r for r in active if str(r.id) == number), None)
    return active[0]


def _is_other_command(ctx: CommandContext, row: Dialogue, text: str) -> bool:
    """Whether a message typed while a dialogue is open is a command rather than an answer.

    With `!` or `/` it is a command (except `!annuler` alone, which stops the dialogue). In a
    direct chat, where commands need no prefix, a message starting with a command's name is one
    too, unless the question expects free text or the word is an answer (« ok », « annuler »)."""
    registry = ctx.services.registry
    if normalize(text) in CANCEL:
        return False
    stripped = registry.strip_prefix(text, direct=False)
    words = stripped[1].split() if stripped else []
    if stripped is not None and stripped[0] in ("!", "/", "//"):
        return bool(words) and registry.find(words[0]) is not None
    first = text.split()[0] if text.split() else ""
    if ctx.room_kind != "direct" or registry.find(first) is None or normalize(first) in CONFIRM | CANCEL | SKIP:
        return False
    pending = [q for q in row.questions if q not in rows.read_answers(ctx.store.cipher, row)]
    if not pending:
        return True
    item = _items(registry.named(row.command))[pending[0]]
    return not isinstance(item.type, Text)


async def take_message(ctx: CommandContext, text: str, content: dict) -> bool:
    """A message that answers one of the sender's dialogues here is handled as such (True)."""
    text = text.strip()
    if not text:
        return False
    row = await dialogue_for_message(ctx, content)
    if row is None or _is_other_command(ctx, row, text):
        return False
    await answer(ctx, row, text, typed=True)
    return True


async def answer(ctx: CommandContext, row: Dialogue, text: str, *, typed: bool, choice_id: str | None = None) -> None:
    """One answer (typed, or a vote when not `typed`): cancel, confirm, or the current question's value."""
    anchor = ctx.event_id if typed else None
    registry = ctx.services.registry
    cmd = registry.named(row.command)
    if row.expires_at <= ctx.now:
        await expire_row(ctx, row)
        return
    key = normalize(text).strip(" .!")
    if typed and (key in CANCEL or normalize(text) in CANCEL):
        await rows.end(ctx.session, row, "cancelled", ctx.now)
        _say(ctx, row, f"🛑 `!{cmd.name}` annulé : rien n'a été enregistré.", anchor=anchor)
        return
    answers = rows.read_answers(ctx.store.cipher, row)
    pending = [q for q in row.questions if q not in answers]
    if not pending:
        if key in CONFIRM or text in CONFIRM:
            await confirm(ctx, row, cmd, answers)
        else:
            _say(ctx, row, "Répondez ✅ (ou « oui ») pour confirmer, ou `annuler` pour abandonner.", anchor=anchor)
        return
    if typed and _must_redact(cmd, row, ctx):
        ctx.queue("redact", ctx.room_id, {"event_id": ctx.event_id, "reason": "identité de patient dans un salon partagé"})
    item = _items(cmd)[pending[0]]
    pctx = _parse_ctx(ctx)
    choices = choices_of(item, pctx)
    value: str | None = text
    if choices is not None:
        index = choice_id if choice_id is not None else (text if text.isdigit() else None)
        if index is not None:
            if not 1 <= int(index) <= len(choices):
                _ask(ctx, row, cmd, answers, anchor=anchor,
                     intro=f"⚠️ « {literal(text)} » : choisissez un numéro entre 1 et {len(choices)}.")
                return
            value = choices[int(index) - 1][0]
    optional = item.optional if isinstance(item, Param) else not item.required
    if value is not None and optional and key in SKIP:
        value = None
    if value is not None:
        try:
            answer_tokens(item, value, pctx)
        except ArgumentError as e:
            message = e.markup[:1].upper() + e.markup[1:]
            _ask(ctx, row, cmd, answers, intro=f"⚠️ {message}", anchor=anchor)
            return
    answers[argument_name(item)] = value
    rows.write_answers(ctx.store.cipher, row, answers)
    if choices is not None:  # the poll shows the answer kept, and takes no more votes
        shown = next((shown for v, shown in choices if v == value), value)
        ctx.end_poll(row.room_id, f"dialogue:{row.id}:{argument_name(item)}", f"Réponse retenue : {shown}")
    await rows.postpone(ctx.session, row, ctx.now + ctx.services.dialogue_timeout)
    intro = ""
    if typed and _must_redact(cmd, row, ctx) and len(answers) == 1:
        intro = ("🔒 J'efface vos réponses de ce salon au fur et à mesure : elles contiennent l'identité du "
                 "patient. La prochaine fois, tapez la commande dans votre conversation directe avec moi.")
    _ask(ctx, row, cmd, answers, intro=intro, anchor=anchor)


async def confirm(ctx: CommandContext, row: Dialogue, cmd: Command, answers: dict) -> None:
    """The command as if typed in full: same parser, same checks, same handler. A refusal rolls
    the whole transaction back (nothing written) and ends the dialogue (bot.dispatch)."""
    registry = ctx.services.registry
    ctx.reply_privately = _must_redact(cmd, row, ctx)
    ctx.command = cmd
    await rows.end(ctx.session, row, "done", ctx.now)
    try:
        refusal = await command_refusal(ctx, cmd)
        if refusal:
            raise Refusal(refusal)
        body = rows.command_text(ctx.store.cipher, row)
        try:
            invocation = registry.complete(cmd, body, answers, _parse_ctx(ctx), direct=True)
        except UsageError as e:
            raise Refusal(registry.usage_error_text(e.command, e.markup))
        await run(ctx, invocation)
    except Refusal as refusal:
        refusal.dialogue_id = row.id
        refusal.private = ctx.reply_privately
        raise


async def end_after_refusal(ctx: CommandContext, dialogue_id: int) -> None:
    """After a refused confirmation (its transaction rolled back): the dialogue ends, still nothing written."""
    row = await ctx.session.get(Dialogue, dialogue_id)
    if row is not None and row.status == "active":
        await rows.end(ctx.session, row, "refused", ctx.now)


async def expire_row(ctx: CommandContext, row: Dialogue) -> None:
    await rows.end(ctx.session, row, "expired", ctx.now)
    minutes = int(ctx.services.dialogue_timeout.total_seconds() // 60)
    content = render(f"⌛ {row.sender} : sans réponse depuis {minutes} min, j'abandonne `!{row.command}`. "
                     "Rien n'a été enregistré ; retapez la commande pour recommencer.",
                     mentions={row.sender: row.sender})
    content["m.relates_to"] = {"m.in_reply_to": {"event_id": row.thread_root}}  # in the main timeline: it is over
    ctx.queue("message", row.room_id, content, ref=f"dialogue:{row.id}:expire")


# --- other ways in: a vote, a ✅ reaction, a reply, the expiry timer -------------------------------------
async def _own_row(ctx: CommandContext, ref: str) -> tuple[Dialogue, str] | None:
    parts = ref.split(":")
    if len(parts) < 3 or not parts[1].isdigit():
        return None
    row = await ctx.session.get(Dialogue, int(parts[1]))
    if row is None or row.status != "active" or row.sender != ctx.sender or row.room_id != ctx.room_id:
        return None  # someone else's dialogue, or one that is over: ignored
    return row, parts[2]


async def on_vote(ctx: CommandContext, ref: str, answer_ids: list[str]) -> None:
    found = await _own_row(ctx, ref)
    if found is None or len(answer_ids) != 1 or not answer_ids[0].isdigit():
        return
    row, name = found
    if name not in row.questions or name in rows.read_answers(ctx.store.cipher, row):
        return  # a vote on a question already answered
    await answer(ctx, row, answer_ids[0], typed=False, choice_id=answer_ids[0])


async def on_reaction(ctx: CommandContext, target_event_id: str | None) -> None:
    """✅ on the summary confirms (the same key also accepts requests: rooms.demandes)."""
    if not target_event_id:
        return
    ref = await ctx.store.ref_of_sent_event(ctx.session, target_event_id) or ""
    if not ref.startswith("dialogue:"):
        return
    found = await _own_row(ctx, ref)
    if found is None:
        return
    row, _ = found
    cmd = ctx.services.registry.named(row.command)
    answers = rows.read_answers(ctx.store.cipher, row)
    if all(q in answers for q in row.questions):
        await confirm(ctx, row, cmd, answers)


async def on_reply(ctx: CommandContext, ref: str, text: str) -> bool:
    found = await _own_row(ctx, ref)
    if found is None:
        return False
    await answer(ctx, found[0], text, typed=True)
    return True


async def on_expiry(ctx: CommandContext, deadline) -> None:
    row = await ctx.session.get(Dialogue, int(deadline.ref.split(":")[1]))
    if row is None or row.status != "active":
        return
    if row.expires_at > ctx.now:  # answered meanwhile: the row was moved, this firing is stale
        return
    await expire_row(ctx, row)


DEADLINE_HANDLERS = {EXPIRY: on_expiry}
POLL_HANDLERS = {"dialogue": on_vote}
REPLY_HANDLERS = {"dialogue": on_reply}
REACTION_HANDLERS = {key: on_reaction for key in CONFIRM_REACTIONS}
