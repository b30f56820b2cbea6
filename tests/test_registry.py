"""The declaration-driven command pipeline: prefixes, parsing, help and advertisement all derive
from one declaration."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from commands import build_registry
from commands.arguments import Duration, ParseContext, Text, Word
from commands.registry import CommandGroup, CommandNotFound, CommandRegistry, Option, Param, UsageError

NOW = datetime(2026, 3, 12, 9, 0, tzinfo=timezone.utc)
CTX = ParseContext(now=NOW)


@pytest.fixture
def registry():
    r = CommandRegistry()

    @r.command("declenchement", aliases=["dec", "déclencher"], summary="demander une prise en charge",
               params=[Param("cible", Word(placeholder="<cible>")), Param("commentaire", Text())],
               options=[Option("reponse", Duration(), "délai de réponse")], examples=["!dec ide soins"])
    async def dec(ctx, cible, commentaire, reponse=None):
        pass

    return r


@pytest.mark.parametrize("body", ["!dec ide pansement", "/dec ide pansement", "//dec ide pansement",
                                  "!DÉCLENCHER ide pansement", "  !Declenchement ide pansement  "])
def test_prefixes_aliases_accents_and_case(registry, body):
    inv = registry.parse(body, CTX, direct=False)
    assert inv.command.name == "declenchement"
    assert inv.arguments == {"cible": "ide", "commentaire": "pansement", "reponse": None}


def test_no_prefix_only_in_direct_chat(registry):
    assert registry.parse("dec ide pansement", CTX, direct=False) is None
    assert registry.parse("dec ide pansement", CTX, direct=True).command.name == "declenchement"
    assert registry.parse("/ dec", CTX, direct=False) is None  # a lone slash is not a command


def test_reply_fallback_quote_is_skipped(registry):
    body = "> <@a:b> un message cité\n\n!dec ide pansement"
    assert registry.parse(body, CTX, direct=False).command.name == "declenchement"


def test_options_anywhere_and_typed(registry):
    inv = registry.parse('!dec reponse=4h ide "pansement au talon"', CTX, direct=False)
    assert inv.arguments["reponse"] == timedelta(hours=4)
    assert inv.arguments["commentaire"] == "pansement au talon"


@pytest.mark.parametrize("body, fragment", [
    ("!dec", "il manque <cible>"),
    ("!dec ide", "commentaire"),
    ("!dec ide soins reponse=4", "précisez l'unité"),
    ("!dec ide soins delai=4h", "reponse"),
    ('!dec ide "soins', "guillemet"),
])
def test_bad_arguments_raise_usage_errors_in_french(registry, body, fragment):
    with pytest.raises(UsageError) as e:
        registry.parse(body, CTX, direct=False)
    assert fragment.lower() in e.value.message.lower()
    text = registry.usage_error_text(e.value.command, e.value.message)
    assert "Usage : `!declenchement <cible> [reponse=<durée>] <commentaire>`" in text


def test_unknown_command_suggests(registry):
    with pytest.raises(CommandNotFound) as e:
        registry.parse("!declanchement ide x", CTX, direct=False)
    assert e.value.suggestions == ["declenchement"]


def test_help_and_msc4332_derive_from_declarations():
    r = build_registry()
    overview = r.help_overview()
    for cmd in r.commands:
        assert f"`!{cmd.name}`" in overview
        detail = r.help_for(cmd)
        assert cmd.usage() in detail
    content = r.msc4332_content()
    assert content["sigil"] == "!"
    assert {c["syntax"].split()[0] for c in content["commands"]} == {c.name for c in r.commands}
    for c in content["commands"]:
        for var in c["variables"]:
            assert "{" + var + "}" in c["syntax"]


def test_every_declared_example_parses():
    """The examples shown to clinicians in `aide` must be accepted by the parser itself."""
    r = build_registry()
    for cmd in r.runnable:  # a family's subcommands included
        for example in cmd.examples:
            inv = r.parse(example, CTX, direct=not example.startswith(("!", "/")))
            assert inv.command is cmd, example


def test_a_family_picks_its_subcommand_by_the_second_word():
    r = CommandRegistry()
    group = CommandGroup()
    group.family("tcim", summary="téléconsultation conjointe")

    @group.command("tcim debut", aliases=["démarrer"], summary="démarrer",
                   params=[Param("elements", Text(), optional=True)], examples=["!tcim debut tout"])
    async def debut(ctx, elements=None):
        pass

    r.include(group)
    inv = r.parse("!TCIM Démarrer identite consentement", CTX, direct=False)
    assert inv.command.name == "tcim debut" and inv.arguments == {"elements": "identite consentement"}
    family = r.find("tcim")
    assert family.usage() == "!tcim <debut> …" and inv.command.usage() == "!tcim debut [<commentaire>]"
    for body, said in [("!tcim", "précisez une sous-commande"), ("!tcim fin", "« fin » n'est pas une sous-commande")]:
        with pytest.raises(UsageError) as e:
            r.parse(body, CTX, direct=False)
        assert said in e.value.message and "debut" in e.value.message
    assert "- `!tcim debut [<commentaire>]` : démarrer" in r.help_for(family)
    assert "Autres noms : `!tcim démarrer`" in r.help_for(inv.command)
    assert [c["syntax"] for c in r.msc4332_content()["commands"]] == ["tcim debut {elements}"]


def test_a_subcommand_needs_its_family_first():
    r = CommandRegistry()
    with pytest.raises(ValueError, match="before its family"):
        r.command("tcim debut", summary="x")(lambda ctx: None)


def test_scoped_help_lists_only_what_works_there():
    r = build_registry()
    patient_help = r.help_overview(scope="patient")
    assert "`!cercle`" in patient_help and "`!annuaire`" not in patient_help


@given(st.text(max_size=80))
def test_parser_never_crashes_on_arbitrary_text(text):
    r = build_registry()
    try:
        r.parse(text, CTX, direct=True)
    except (CommandNotFound, UsageError):
        pass
