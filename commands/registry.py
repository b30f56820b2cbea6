"""Commands are declared once; parsing, `aide`, usage lines and the MSC4332 advertisement derive from it.

Each command module declares its handlers at module level, in a CommandGroup:

    group = CommandGroup()

    @group.command("declenchement", aliases=["dec", "déclencher"], summary="…",
                   params=[Param("cible", Word())], options=[Option("reponse", Duration())])
    async def declenchement(ctx, cible, reponse=None): ...

and commands.build_registry() adds the groups, in order, to a fresh CommandRegistry (there is no
global registry: each bot, and each test, builds its own).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable

from commands.arguments import (
    ArgType,
    ArgumentError,
    ParseContext,
    Text,
    Token,
    parse_option_value,
    split_options,
    tokenize,
)
from domain.markup import literal, unmark
from domain.text import normalize

# Where a command may be used; the dispatcher knows each room's kind.
PATIENT, COORDINATION, DIRECT = "patient", "coordination", "direct"
ANYWHERE = frozenset({PATIENT, COORDINATION, DIRECT, "other"})

SCOPE_NAMES = {
    PATIENT: "le salon d'un patient (cercle de soins)",
    COORDINATION: "le salon des coordinateurs",
    DIRECT: "la conversation directe avec le bot",
    "other": "un autre salon",
}

PREFIXES = ("//", "/", "!")
LOOSE = "! "  # « ! aide »: a space after the sigil (phone keyboards), only before a known command


@dataclass(frozen=True)
class Param:
    name: str
    type: ArgType
    optional: bool = False
    help: str = ""

    def usage(self) -> str:
        return f"[{self.type.placeholder}]" if self.optional else self.type.placeholder


@dataclass(frozen=True)
class Option:
    """A `clé=valeur` argument, e.g. reponse=4h."""

    key: str
    type: ArgType
    help: str = ""
    required: bool = False
    required_when: str = ""  # e.g. "pour : BPCO, Plaie": optional in the syntax, required by the data


    def usage(self) -> str:
        return f"{self.key}={self.type.placeholder}" if self.required else f"[{self.key}={self.type.placeholder}]"


@dataclass(eq=False)  # identity: a family and its subcommands point at each other
class Command:
    name: str
    aliases: tuple[str, ...]
    summary: str
    handler: Callable[..., Awaitable[None]]
    params: tuple[Param, ...] = ()
    options: tuple[Option, ...] = ()
    help: str = ""
    examples: tuple[str, ...] = ()
    scopes: frozenset[str] = ANYWHERE
    requires: str | None = "membre"  # None | "membre" (directory member) | "coordinateur"
    category: str = "Général"
    passthrough_options: bool = False  # leave unknown key=value tokens to the params (e.g. spo2=91)
    # The command's text holds a patient's identity: outside a direct chat with the bot, it is
    # redacted and every answer goes to the sender's direct chat (issue 8; decisions.md 8).
    carries_identity: bool = False
    # A family (`!tcim`): its first word picks one of these; each is a full command named
    # "<family> <word>" (e.g. "tcim demande"), with its own parameters, help and examples.
    subcommands: dict = field(default_factory=dict)  # normalized word -> Command
    parent: "Command | None" = field(default=None, repr=False)

    @property
    def family(self) -> bool:
        return self.handler is None

    def children(self) -> list["Command"]:
        return list(dict.fromkeys(self.subcommands.values()))

    def usage(self, sigil: str = "!") -> str:
        if self.family:
            words = "|".join(c.name.split(" ", 1)[1] for c in self.children())
            return f"{sigil}{self.name} <{words}> …"
        # Options go before a trailing free-text argument, which takes the rest of the line.
        params = list(self.params)
        tail = [params.pop()] if params and isinstance(params[-1].type, Text) else []
        parts = [f"{sigil}{self.name}", *(p.usage() for p in params), *(o.usage() for o in self.options),
                 *(p.usage() for p in tail)]
        return " ".join(parts)

    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


@dataclass
class Invocation:
    command: Command
    arguments: dict
    sigil: str


def argument_name(item: Param | Option) -> str:
    return item.name if isinstance(item, Param) else item.key


def ordered_arguments(cmd: Command) -> list[Param | Option]:
    """Usage order: positional arguments, options, then a trailing free text (what `usage()` prints)."""
    params = list(cmd.params)
    tail = [params.pop()] if params and isinstance(params[-1].type, Text) else []
    return [*params, *cmd.options, *tail]


def answer_tokens(item: Param | Option, text: str, ctx: ParseContext) -> list[Token]:
    """`text`, typed as the answer to one argument, as the tokens its type reads in full.

    Tried as one quoted value first (« 3 rue des Lilas », a comment), then word by word
    (« demain 14h »). Raises the type's own French ArgumentError."""
    text = text.strip()
    if not text:
        raise ArgumentError("réponse vide")
    if isinstance(item, Option):
        parse_option_value(item.key, item.type, text, ctx)
        return [Token(f"{item.key}={text}")]
    attempts = [[Token(text, quoted=True)]]
    if len(text.split()) > 1 or not isinstance(item.type, Text):
        attempts.append([Token(word) for word in text.split()])
    error: ArgumentError | None = None
    for candidate in attempts:
        try:
            _, end = item.type.parse(candidate, 0, ctx)
        except ArgumentError as exc:
            error = error or exc
            continue
        if end == len(candidate):
            return candidate
        error = error or ArgumentError(f"je ne comprends pas « {literal(' '.join(t.text for t in candidate[end:]))} »")
    assert error is not None
    raise error


class CommandNotFound(Exception):
    def __init__(self, word: str, suggestions: list[str]):
        self.word = word
        self.suggestions = suggestions


class UsageError(Exception):
    """Bad arguments: a French message plus the command whose usage line must be shown."""

    def __init__(self, command: Command, message: str):
        super().__init__(unmark(message))
        self.command = command
        self.message = unmark(message)
        self.markup = message  # user input wrapped in literal(), for render()


class CommandGroup:
    """A module's declarations, recorded at import on module-level handlers, in declaration order.

    `command()` takes exactly the arguments of CommandRegistry.command; nothing is checked until
    the group is added to a registry (CommandRegistry.include)."""

    def __init__(self) -> None:
        self._declarations: list[tuple[str, dict, Callable[..., Awaitable[None]]]] = []

    def command(self, name: str, **declaration):
        def record(handler):
            self._declarations.append((name, declaration, handler))
            return handler

        return record

    def family(self, name: str, **declaration) -> None:
        """A command made of subcommands (`!tcim demande …`): declare it, then each subcommand
        with `command("<name> <word>", …)`."""
        self._declarations.append((name, declaration, None))

    def __iter__(self):
        return iter(self._declarations)


class CommandRegistry:
    def __init__(self) -> None:
        self._commands: list[Command] = []
        self._index: dict[str, Command] = {}

    def command(self, name: str, *, summary: str, aliases: Iterable[str] = (), params: Iterable[Param] = (),
                options: Iterable[Option] = (), help: str = "", examples: Iterable[str] = (),
                scopes: Iterable[str] = ANYWHERE, requires: str | None = "membre", category: str = "Général",
                passthrough_options: bool = False, carries_identity: bool = False):
        def register(handler):
            cmd = Command(name=name, aliases=tuple(aliases), summary=summary, handler=handler,
                          params=tuple(params), options=tuple(options), help=help, examples=tuple(examples),
                          scopes=frozenset(scopes), requires=requires, category=category,
                          passthrough_options=passthrough_options, carries_identity=carries_identity)
            if " " in name:  # "tcim demande": a subcommand of the family declared before it
                family_name, word = name.split(" ", 1)
                family = self._index.get(normalize(family_name))
                if family is None or not family.family:
                    raise ValueError(f"subcommand {name!r} before its family {family_name!r}")
                cmd.parent = family
                for w in (word, *cmd.aliases):
                    if family.subcommands.get(normalize(w), cmd) is not cmd:
                        raise ValueError(f"subcommand name clash: {family_name} {w!r}")
                    family.subcommands[normalize(w)] = cmd
                return handler
            for word in cmd.names():
                key = normalize(word)
                if key in self._index and self._index[key] is not cmd:
                    raise ValueError(f"command name clash: {word!r}")
                self._index[key] = cmd
            self._commands.append(cmd)
            return handler

        return register

    def include(self, group: CommandGroup) -> None:
        for name, declaration, handler in group:
            self.command(name, **declaration)(handler)

    @property
    def commands(self) -> list[Command]:
        """Top-level commands (a family once, not its subcommands)."""
        return list(self._commands)

    @property
    def runnable(self) -> list[Command]:
        """Every command a message can run: the top-level ones and each family's subcommands."""
        out = []
        for cmd in self._commands:
            out += cmd.children() if cmd.family else [cmd]
        return out

    def find(self, word: str) -> Command | None:
        return self._index.get(normalize(word))

    def named(self, name: str) -> Command | None:
        """A runnable command by its full name: « rdv », or a family's « tcim demande »."""
        family, _, word = name.partition(" ")
        cmd = self.find(family)
        if cmd is not None and word:
            return cmd.subcommands.get(normalize(word)) if cmd.family else None
        return cmd

    def suggestions(self, word: str) -> list[str]:
        import difflib

        close = difflib.get_close_matches(normalize(word), list(self._index), n=3, cutoff=0.6)
        return sorted({self._index[c].name for c in close})

    # --- parsing -----------------------------------------------------------------------
    @staticmethod
    def strip_prefix(body: str, *, direct: bool) -> tuple[str, str] | None:
        """('!', 'aide …') if the message is addressed to the bot, else None.

        `/cmd` (Element Web and Element X send unknown slash commands as text), `//cmd`
        (Element's escape for a literal slash) and `!cmd` everywhere; no prefix in a direct chat.
        Phones also type `！cmd` (full-width) and `! cmd`: the latter comes back as LOOSE, a
        command only if its first word is one (« ! attention … » is conversation).
        """
        text = body.strip()
        # Replies quote the original message in the body as "> …" lines followed by a blank line.
        if text.startswith("> "):
            text = re.split(r"\n\s*\n", text, maxsplit=1)[-1].strip()
        if text.startswith("！"):  # U+FF01, the full-width exclamation mark of CJK and some phone keyboards
            text = "!" + text[1:]
        for prefix in PREFIXES:
            if text.startswith(prefix) and len(text) > len(prefix) and not text[len(prefix)].isspace():
                return prefix, text[len(prefix):]
        if text.startswith("!") and text[1:].strip():
            return LOOSE, text[1:].lstrip()
        if direct and text:
            return "", text
        return None

    def addressed_command(self, body: str, *, direct: bool) -> Command | None:
        """The command a message names, even if its arguments are wrong (None if it names none)."""
        stripped = self.strip_prefix(body, direct=direct)
        words = stripped[1].split() if stripped else []
        return self.find(words[0]) if words else None

    def parse(self, body: str, ctx: ParseContext, *, direct: bool) -> Invocation | None:
        stripped = self.strip_prefix(body, direct=direct)
        if stripped is None:
            return None
        sigil, text = stripped
        try:
            tokens = tokenize(text)
        except ArgumentError as e:
            word = text.split()[0] if text.split() else text
            cmd = self.find(word)
            if cmd is None and sigil == LOOSE and not direct:
                return None
            if cmd is None:
                raise CommandNotFound(word, self.suggestions(word))
            raise UsageError(cmd, e.markup)
        if not tokens:
            return None
        word = tokens[0].text
        cmd = self.find(word)
        if cmd is None and sigil == LOOSE and not direct:
            return None
        if sigil == LOOSE:
            sigil = "!"
        if cmd is None:
            # In a direct chat, ordinary conversation is not an error unless it looks like a command.
            raise CommandNotFound(word, self.suggestions(word))
        rest = tokens[1:]
        if cmd.family:
            if not rest or normalize(rest[0].text) not in cmd.subcommands:
                words = ", ".join(c.name.split(" ", 1)[1] for c in cmd.children())
                said = f"« {literal(rest[0].text)} » n'est pas une sous-commande de !{cmd.name}" if rest else \
                    f"précisez une sous-commande de !{cmd.name}"
                raise UsageError(cmd, f"{said} ({words})")
            cmd, rest = cmd.subcommands[normalize(rest[0].text)], rest[1:]
        try:
            return Invocation(cmd, self.bind(cmd, rest, ctx), sigil or "!")
        except ArgumentError as e:
            raise UsageError(cmd, e.markup)

    @staticmethod
    def bind(cmd: Command, tokens: list[Token], ctx: ParseContext) -> dict:
        arguments, missing = CommandRegistry.bind_partial(cmd, tokens, ctx)
        options = [item for item in missing if isinstance(item, Option)]
        if options:
            raise ArgumentError("il manque " + ", ".join(f"{o.key}= ({o.help or o.type.description})" for o in options))
        if missing:
            param = missing[0]
            raise ArgumentError(f"il manque {param.type.placeholder} ({param.type.description})")
        return arguments

    @staticmethod
    def bind_partial(cmd: Command, tokens: list[Token], ctx: ParseContext) -> tuple[dict, list[Param | Option]]:
        """The arguments given, and the required ones missing; a wrong value raises ArgumentError.

        Missing is not wrong: a bare `!dec` lacks its target and comment, which a dialogue can ask
        for (commands.dialogue), while `!dec infirmier reponse=4x` is a mistake to correct."""
        known = {o.key: o.type for o in cmd.options}
        positional, values = split_options(tokens, known, passthrough_unknown=cmd.passthrough_options, ctx=ctx)
        arguments = {o.key: None for o in cmd.options} | values
        missing: list[Param | Option] = [o for o in cmd.options if o.required and o.key not in values]
        pos = 0
        for index, param in enumerate(cmd.params):
            if pos >= len(positional):
                arguments[param.name] = None
                if not param.optional:
                    missing.append(param)
                continue
            try:
                value, pos_after = param.type.parse(positional, pos, ctx)
            except ArgumentError as e:
                # An optional argument that does not fit leaves the words to the next one.
                if param.optional and index < len(cmd.params) - 1 and not e.final:
                    arguments[param.name] = None
                    continue
                raise
            arguments[param.name] = value
            pos = pos_after
        if pos < len(positional):
            extra = " ".join(t.text for t in positional[pos:])
            raise ArgumentError(f"je ne comprends pas « {literal(extra)} » à la fin de la commande")
        return arguments, missing

    def incomplete(self, body: str, ctx: ParseContext, *, direct: bool) -> tuple[Command, list[Param | Option]] | None:
        """The command and the arguments a dialogue must ask, when what was typed is right but
        required arguments are missing; None when something typed is wrong (the usage error stands).

        Asked, in usage order: the missing required arguments, the choices left out after them
        (asked as polls, with « passer »), and the options the data may require (required_when)."""
        stripped = self.strip_prefix(body, direct=direct)
        if stripped is None:
            return None
        try:
            tokens = tokenize(stripped[1])
        except ArgumentError:
            return None
        cmd = self.find(tokens[0].text) if tokens else None
        if cmd is None:
            return None
        rest = tokens[1:]
        if cmd.family:  # `!tcim demande`: the subcommand's own arguments
            if not rest or normalize(rest[0].text) not in cmd.subcommands:
                return None
            cmd, rest = cmd.subcommands[normalize(rest[0].text)], rest[1:]
        try:
            arguments, missing = self.bind_partial(cmd, rest, ctx)
        except ArgumentError:
            return None
        if not missing:
            return None
        given = {o.key for o in cmd.options if arguments.get(o.key) is not None}
        first_missing = min((cmd.params.index(m) for m in missing if isinstance(m, Param)), default=len(cmd.params))
        asked = []
        for item in ordered_arguments(cmd):
            if item in missing:
                asked.append(item)
            elif isinstance(item, Param) and cmd.params.index(item) > first_missing and item.optional \
                    and item.type.choices(ctx) is not None:
                asked.append(item)
            elif isinstance(item, Option) and item.required_when and item.key not in given:
                asked.append(item)
        return cmd, asked

    def complete(self, cmd: Command, body: str, answers: dict[str, str | None], ctx: ParseContext, *,
                 direct: bool) -> Invocation:
        """The invocation of `body` with the dialogue's answers added, bound exactly as a command
        typed in full (same parser, same checks); raises UsageError like parse()."""
        sigil, text = self.strip_prefix(body, direct=direct) or ("!", cmd.name)
        try:
            tokens = tokenize(text)[len(cmd.name.split()):]  # after « rdv », or « tcim demande »
            for item in ordered_arguments(cmd):
                answer = answers.get(argument_name(item))
                if answer is None:
                    continue
                if isinstance(item, Option):
                    tokens.append(Token(f"{item.key}={answer}"))
                else:
                    tokens += answer_tokens(item, answer, ctx)
            return Invocation(cmd, self.bind(cmd, tokens, ctx), "!" if sigil in ("", LOOSE) else sigil)
        except ArgumentError as e:
            raise UsageError(cmd, e.markup)

    # --- derived texts -------------------------------------------------------------------
    def help_overview(self, scope: str | None = None) -> str:
        lines = ["**Commandes de Cercle** (préfixe `!` ou `/`) :"]
        by_category: dict[str, list[Command]] = {}
        for cmd in self._commands:
            if scope is None or scope in cmd.scopes:
                by_category.setdefault(cmd.category, []).append(cmd)
        for category, cmds in by_category.items():
            lines.append(f"\n**{category}**\n")  # blank line: Markdown lists need one
            for cmd in cmds:
                alias = f" (ou {', '.join('`' + a + '`' for a in cmd.aliases)})" if cmd.aliases else ""
                lines.append(f"- `!{cmd.name}`{alias} : {cmd.summary}")
        lines.append("\nDétail d'une commande : `!aide <commande>`, par exemple `!aide dec`.")
        lines.append("Une commande tapée seule (`!dec`, `!rdv`…) : je demande ce qui manque, une question à la fois.")
        return "\n".join(lines)

    def help_for(self, cmd: Command) -> str:
        lines = [f"**!{cmd.name}** : {cmd.summary}", f"Usage : `{cmd.usage()}`"]
        if cmd.family:
            if cmd.help:
                lines += ["", cmd.help]
            lines += ["", "Sous-commandes :"]
            lines += [f"- `{c.usage()}` : {c.summary}" for c in cmd.children()]
            lines += ["", f"Détail d'une sous-commande : `!aide {cmd.name} <sous-commande>`, "
                          f"par exemple `!aide {cmd.children()[0].name}`."]
            return "\n".join(lines)
        if cmd.aliases:
            family = f"{cmd.parent.name} " if cmd.parent else ""
            lines.append("Autres noms : " + ", ".join(f"`!{family}{a}`" for a in cmd.aliases))
        if cmd.help:
            lines.append("")
            lines.append(cmd.help)
        described = [p for p in cmd.params] + [o for o in cmd.options]
        if described:
            lines.append("")
            for item in described:
                label = f"`{item.key}=`" if isinstance(item, Option) else f"`{item.type.placeholder}`"
                text = item.help or item.type.description
                opt = " (facultatif)" if not getattr(item, "required", not getattr(item, "optional", False)) else ""
                if getattr(item, "required_when", ""):
                    opt = f" (obligatoire {item.required_when})"
                lines.append(f"- {label}{opt} : {text}")
        if cmd.scopes != ANYWHERE:
            lines.append("")
            lines.append("À utiliser dans " + " ou ".join(SCOPE_NAMES[s] for s in sorted(cmd.scopes)) + ".")
        if cmd.examples:
            lines.append("")
            lines.append("Exemples :")
            lines += [f"- `{e}`" for e in cmd.examples]
        return "\n".join(lines)

    def usage_error_text(self, cmd: Command, message: str) -> str:
        text = f"⚠️ {message[0].upper() + message[1:]}\n\nUsage : `{cmd.usage()}`"
        if cmd.examples:
            text += f"\nExemple : `{cmd.examples[0]}`"
        elif cmd.family:
            text += "\nExemple : `" + cmd.children()[0].examples[0] + "`" if cmd.children()[0].examples else ""
        return text + f"\nDétail : `!aide {cmd.name}`"

    def msc4332_content(self, scope: str | None = None) -> dict:
        """The `org.matrix.msc4332.commands` state content advertising the commands to clients."""
        commands = []
        for cmd in self.runnable:
            if scope is not None and scope not in cmd.scopes:
                continue
            variables = {}
            syntax = cmd.name.split(" ")
            for p in cmd.params:
                var = p.name
                syntax.append(f"{{{var}}}")
                variables[var] = {"m.text": [{"body": p.help or p.type.description}]}
            commands.append({
                "syntax": " ".join(syntax),
                "variables": variables,
                "description": {"m.text": [{"body": cmd.summary}]},
            })
        return {"sigil": "!", "commands": commands}

    @staticmethod
    def digest(content: dict) -> str:
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
