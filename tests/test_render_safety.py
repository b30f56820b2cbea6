"""Text typed by users never becomes live HTML in the bot's messages (issue 8).

Generated hostile inputs (links, images, `javascript:` URLs, raw HTML, user-written Matrix pills,
backticks, emphasis, nested brackets) go through render() directly and through the places that
quote user text: usage errors of the command registry, request outcomes, the identity card.
"""
from __future__ import annotations

from datetime import datetime, timezone
from html.parser import HTMLParser

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commands.arguments import Integer, ParseContext
from commands.registry import CommandRegistry, Param, UsageError
from domain.demandes import Annulee, Declinee, Rdv, RdvFixe, Refus
from domain.flows import Mode
from rooms.messages import ALLOWED_TAGS, PILL_PREFIX, literal, render
from rooms.patients import Identity

FRAGMENTS = [
    "[clic](javascript:alert(1))", "![t](https://evil.example/t.png)", "[x]", "(y)", "[[a](b)](c)",
    "javascript:alert(1)", "JaVaScRiPt:x", "<img src=x onerror=alert(1)>", '<a href="javascript:x">a</a>',
    "<script>alert(1)</script>", "<b>gras</b>", '" onmouseover="x', "'", "&amp;", "&lt;", "&", "<", ">",
    "https://matrix.to/#/@x:y", "[pill](https://matrix.to/#/@x:y)", "@x:y", "<https://evil.example>",
    "`", "``", "`code`", "*", "**", "_", "__", "~~", "#", "# titre", "- ", "1. ", "> ", "    ", "---",
    "===", "\n", "\n\n", "\\", "[ref]: https://evil.example", "<!-- c -->", "{", "}", "|", "=",
]
# What a person can type: printable text, newlines (no other control characters; the private-use
# characters U+E000-U+E003 are render()'s own markers and are dropped from user text).
TYPED = st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\ue000\ue001\ue002\ue003")
HOSTILE = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(TYPED, max_size=6)), min_size=1, max_size=8).map("".join)

BOT_MENTION = {"@bot.pill:cpts.test": "Dr Pill"}
BOT_PILL = PILL_PREFIX + "@bot.pill:cpts.test"


class _Reader(HTMLParser):
    """Tags, attributes and the visible text of a formatted_body (br = newline)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))
        if tag == "br":
            self.text.append("\n")

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_data(self, data):
        self.text.append(data.replace("\n", ""))  # source newlines between blocks are not text


def check_safe(content: dict, pills: set[str] = frozenset()) -> str:
    """Assert formatted_body holds only whitelisted tags and bot-made pills; return its visible text."""
    formatted = content["formatted_body"]
    reader = _Reader()
    reader.feed(formatted)
    reader.close()
    assert "<img" not in formatted.lower(), formatted
    for tag, attrs in reader.tags:
        assert tag in ALLOWED_TAGS, (tag, formatted)
        for name, value in attrs:
            assert "javascript:" not in (value or "").lower(), formatted
            if tag == "ol" and name == "start":
                continue
            assert tag == "a" and name == "href" and value in pills, (tag, name, value, formatted)
    return "".join(reader.text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(HOSTILE, HOSTILE)
def test_literal_user_text_is_shown_verbatim_and_never_markup(user_text, name):
    md = (f"⚠️ Parcours inconnu : « {literal(user_text)} » (@bot.pill:cpts.test)\n\n"
          f"- **motif** : {literal(user_text)}\n- par {literal(name)}\n\nUsage : `!inclure <parcours>`")
    content = render(md, mentions=BOT_MENTION)
    visible = check_safe(content, {BOT_PILL})
    assert user_text in content["body"] and name in content["body"]
    assert user_text in visible and name in visible
    assert "Usage : !inclure <parcours>" in content["body"]
    assert "<code>!inclure &lt;parcours&gt;</code>" in content["formatted_body"]  # escaped once
    assert f'<a href="{BOT_PILL}">Dr Pill</a>' in content["formatted_body"]  # the bot's own pill survives


@settings(max_examples=300, deadline=None)
@given(HOSTILE)
def test_unwrapped_user_text_still_cannot_produce_links_images_or_tags(user_text):
    # Defence in depth: a place that forgot literal() still yields no live HTML.
    content = render(f"Vous avez écrit : {user_text} @bot.pill:cpts.test", mentions=BOT_MENTION)
    check_safe(content, {BOT_PILL})


def test_reported_cases():
    for typed in ("[clic](javascript:alert(1))", "![t](https://evil.example/t.png)"):
        content = render(f"⚠️ Parcours inconnu : « {literal(typed)} »")
        assert "href" not in content["formatted_body"] and "<img" not in content["formatted_body"]
        assert typed in content["body"]
        content = render(f"⚠️ Parcours inconnu : « {typed} »")
        assert "href" not in content["formatted_body"] and "<img" not in content["formatted_body"]
    usage = render("Usage : `!inclure <parcours>` ou <parcours>")["formatted_body"]
    assert "&amp;lt;" not in usage and usage.count("&lt;parcours&gt;") == 2


def test_pills_of_the_bot_keep_working_and_user_written_pills_do_not_link():
    content = render(f"{literal('[moi](https://matrix.to/#/@x:y)')} @a:cpts.test", mentions={"@a:cpts.test": "Anne"})
    assert content["formatted_body"].count("<a ") == 1
    assert '<a href="https://matrix.to/#/@a:cpts.test">Anne</a>' in content["formatted_body"]
    assert content["body"] == "[moi](https://matrix.to/#/@x:y) Anne (@a:cpts.test)"
    assert content["m.mentions"] == {"user_ids": ["@a:cpts.test"]}


@pytest.fixture(scope="module")
def registry():
    reg = CommandRegistry()

    @reg.command("essai", summary="test", params=[Param("nombre", Integer())])
    async def essai(ctx, nombre):  # pragma: no cover - never run
        pass

    return reg


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.sampled_from([f for f in FRAGMENTS if not any(c.isspace() or c in '"“«»=' for c in f)]),
                          st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"),
                                                blacklist_characters='"“«»=\ue000\ue001\ue002\ue003'),
                                  min_size=1, max_size=4)),
                min_size=1, max_size=6).map("".join))
def test_usage_errors_quote_the_typed_word_as_text(registry, word):
    try:
        registry.parse(f"!essai {word}", ParseContext(now=datetime.now(timezone.utc)), direct=False)
    except UsageError as e:
        content = render(registry.usage_error_text(e.command, e.markup))
    else:
        return  # an integer: nothing to quote
    visible = check_safe(content)
    assert f"« {word} »" in content["body"] and f"« {word} »" in visible
    assert "Usage : !essai <nombre>" in content["body"]


NOW = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


@settings(max_examples=200, deadline=None)
@given(HOSTILE, HOSTILE)
def test_request_outcomes_quote_motifs_names_and_precisions_as_text(motif, name):
    noms = {"@ide:cpts.test": literal(name)}  # as rooms.demandes.names() gives them
    outcomes = [
        Declinee(numero=1, par="@ide:cpts.test", motif=motif),
        Annulee(numero=1, par="@ide:cpts.test", motif=motif),
        RdvFixe(numero=1, par="@ide:cpts.test", rdv=Rdv(mode=Mode("domicile"), debut=NOW, texte=motif)),
        Refus(numero=1, raison="etat", gabarit="Seul·e {acceptant} peut le faire.", personnes={"acceptant": "@ide:cpts.test"}),
    ]
    for outcome in outcomes:
        content = render(outcome.texte(noms), mentions={"@ide:cpts.test": literal(name)})
        visible = check_safe(content, {PILL_PREFIX + "@ide:cpts.test"})
        assert name in content["body"] and name in visible
        if not isinstance(outcome, Refus):
            assert motif in content["body"] and motif in visible


@settings(max_examples=100, deadline=None)
@given(HOSTILE, HOSTILE)
def test_identity_card_fields_are_text(nom, adresse):
    card = Identity(nom=nom, prenom=adresse, naissance="1950-03-12", sexe="F", telephone=nom,
                    adresse=adresse, nir=nom).card("P-7K3Q", adresse)
    content = render(card)
    visible = check_safe(content)
    for value in (nom.upper(), adresse):
        assert value in content["body"] and value in visible


@pytest.mark.synapse
async def test_patient_room_replies_quote_markdown_as_text(harness, people):
    from tests.test_patient_rooms_e2e import command, create_patient

    dr = await people("drsafe", name="Irène Safe")
    ide = await people("idesafe", "infirmier", name="Noé Safe")
    _, room = await create_patient(dr, ide, harness)
    for typed, quoted in (("!inclure [clic](javascript:alert(1))", "[clic](javascript:alert(1))"),
                          ("![t](https://evil.example/t.png)", "[t](https://evil.example/t.png)")):
        reply = await command(dr, room, harness, typed)
        assert reply.formatted_body, reply.content
        check_safe(reply.content)
        assert "href" not in reply.formatted_body and "<img" not in reply.formatted_body, reply.formatted_body
        assert f"« {quoted} »" in reply.body, reply.body
        assert "&amp;lt;" not in reply.formatted_body
