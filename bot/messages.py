"""Message content: m.notice with HTML and a plain-text body, replies and real mentions."""
from __future__ import annotations

import html
import re

import markdown as markdown_lib

_md = markdown_lib.Markdown(extensions=["sane_lists", "nl2br"], output_format="html")


def _plain(md_text: str) -> str:
    text = re.sub(r"\*\*(.+?)\*\*", r"\1", md_text)
    text = re.sub(r"`([^`]+)`", r"\1", text)
    return text


def render(md_text: str, *, mentions: dict[str, str] | None = None, reply_to: str | None = None,
           msgtype: str = "m.notice") -> dict:
    """Build an m.room.message content from Markdown.

    `mentions` maps user id -> display name: each user id written in the text becomes a pill
    (matrix.to link) in the HTML, and is listed in `m.mentions` so clients notify that person.
    """
    mentions = mentions or {}
    body = _plain(md_text)
    formatted = _md.reset().convert(html.escape(md_text, quote=False).replace("&gt; ", "> "))
    for user_id, name in mentions.items():
        pill = f'<a href="https://matrix.to/#/{html.escape(user_id)}">{html.escape(name)}</a>'
        formatted = formatted.replace(html.escape(user_id), pill)
        body = body.replace(user_id, f"{name} ({user_id})" if name != user_id else user_id)
    content = {"msgtype": msgtype, "body": body, "format": "org.matrix.custom.html",
               "formatted_body": formatted, "m.mentions": {"user_ids": sorted(mentions)}}
    if reply_to:
        content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
    return content
