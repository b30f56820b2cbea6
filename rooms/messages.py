"""Message content: m.notice with HTML and a plain-text body, replies and real mentions.

User text reaches a message only as text. Where it is interpolated it is wrapped with
`literal()` (domain.markup): render() keeps it out of Markdown and HTML-escapes it. As a second
line of defence, the Markdown converter ignores links, images and raw HTML altogether, and the
HTML is then cleaned with a whitelist (nh3): only the tags the bot's own messages use, and
links only for the mention pills render() itself created.
"""
from __future__ import annotations

import base64
import functools
import html
import re

import markdown as markdown_lib
import nh3

from domain.markup import LITERAL_RE, literal, unmark

__all__ = ["literal", "render", "unmark"]


def _converter() -> markdown_lib.Markdown:
    md = markdown_lib.Markdown(extensions=["sane_lists", "nl2br"], output_format="html")
    # The bot writes bold, code, lists and quotes, never links, images, entities or raw HTML:
    # without these processors such syntax stays visible text (and `<…>` is escaped once).
    for name in ("html", "entity", "autolink", "automail", "link", "image_link", "image_reference",
                 "reference", "short_reference", "short_image_ref"):
        md.inlinePatterns.deregister(name, strict=False)
    md.preprocessors.deregister("html_block", strict=False)
    md.parser.blockprocessors.deregister("reference", strict=False)
    return md


_md = _converter()

ALLOWED_TAGS = {"p", "br", "strong", "em", "code", "pre", "ul", "ol", "li", "blockquote", "a"}
PILL_PREFIX = "https://matrix.to/#/"
# Placeholders standing for literal spans while Markdown runs: private-use characters and
# digits, which no Markdown rule reads.
_SLOT_OPEN, _SLOT_CLOSE = "\ue002", "\ue003"
_SLOT_RE = re.compile(f"{_SLOT_OPEN}(\\d+){_SLOT_CLOSE}")
_NO_SLOTS = str.maketrans("", "", _SLOT_OPEN + _SLOT_CLOSE)  # typed ones cannot forge a slot


def _plain(md_text: str) -> str:
    text = re.sub(r"\*\*(.+?)\*\*", r"\1", md_text)
    text = re.sub(r"`([^`]+)`", r"\1", text)
    return text


def sanitize(formatted: str, pills: set[str] = frozenset()) -> str:
    """Whitelist clean-up of the HTML: `a` survives only with one of `pills` as its href."""
    def keep(tag: str, attribute: str, value: str) -> str | None:
        if tag == "a" and attribute == "href":
            return value if value in pills else None
        return value

    return nh3.clean(formatted, tags=ALLOWED_TAGS, attributes={"a": {"href"}, "ol": {"start"}},
                     attribute_filter=keep, url_schemes={"https"}, link_rel=None, strip_comments=True)


@functools.lru_cache(maxsize=512)
def _markdown(template: str) -> str:
    """Markdown → HTML of a template: the bot's own text with user spans stashed as slots, so the
    same answer (`aide`, a usage line, a notice) converts once per process, not once per message."""
    return _md.reset().convert(template)


def render(md_text: str, *, mentions: dict[str, str] | None = None, reply_to: str | None = None,
           msgtype: str = "m.notice") -> dict:
    """Build an m.room.message content from Markdown.

    Spans wrapped with `literal()` are shown as typed. `mentions` maps user id -> display name:
    each user id written in the text (outside literal spans) becomes a pill (matrix.to link) in
    the HTML, and is listed in `m.mentions` so clients notify that person.
    """
    mentions = mentions or {}
    spans: list[str] = []

    def stash(m: re.Match) -> str:
        spans.append(m.group(1))
        return f"{_SLOT_OPEN}{len(spans) - 1}{_SLOT_CLOSE}"

    template = unmark(LITERAL_RE.sub(stash, md_text.translate(_NO_SLOTS)))
    body = _plain(template)
    formatted = _markdown(template)
    pills = set()
    for user_id, name in mentions.items():
        name = unmark(name)
        href = PILL_PREFIX + user_id
        pill = f'<a href="{html.escape(href)}">{html.escape(name)}</a>'
        formatted = formatted.replace(html.escape(user_id), pill)
        pills.add(href)
        body = body.replace(user_id, f"{name} ({user_id})" if name != user_id else user_id)

    def slot(index: int, as_html: bool) -> str:
        text = spans[index] if index < len(spans) else ""
        return html.escape(text, quote=False).replace("\n", "<br>") if as_html else text

    body = _SLOT_RE.sub(lambda m: slot(int(m.group(1)), False), body)
    formatted = sanitize(_SLOT_RE.sub(lambda m: slot(int(m.group(1)), True), formatted), pills)
    content = {"msgtype": msgtype, "body": body, "format": "org.matrix.custom.html",
               "formatted_body": formatted, "m.mentions": {"user_ids": sorted(mentions)}}
    if reply_to:
        content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
    return content


def file_payload(filename: str, data: bytes, mimetype: str, *, body: str | None = None,
                 msgtype: str = "m.file") -> dict:
    """What the outbox keeps for an attachment: the bytes (base64, inside the encrypted outbox
    row) and how to present them; the sender encrypts and uploads them (bot.outbox)."""
    if msgtype not in ("m.file", "m.image"):
        raise ValueError(f"type de pièce jointe inconnu : {msgtype}")
    return {"filename": filename, "mimetype": mimetype, "msgtype": msgtype, "body": body or filename,
            "data": base64.b64encode(data).decode("ascii")}
