"""What a command handler gets: who, where, when, a transaction, and ways to answer."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import NoReturn

from sqlalchemy.ext.asyncio import AsyncSession

from domain.polls import POLL_START as POLL_START_TYPE
from domain.polls import poll_start_content
from rooms.messages import file_payload, render
from rooms.services import Services


class Refusal(Exception):
    """Raised by a handler to refuse: its transaction is rolled back, then `text` is sent."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


@dataclass
class CommandContext:
    services: Services
    session: AsyncSession  # the handler's transaction: state changes and replies commit together
    room_id: str
    room_kind: str
    sender: str
    event_id: str
    now: datetime
    sigil: str = "!"
    command: object = None  # the Command being run, for usage lines
    sent: list[str] = field(default_factory=list)  # outbox txn ids queued by this handler
    reply_privately: bool = False  # answers go to the sender's direct chat (identity typed in a shared room)

    @property
    def store(self):
        return self.services.store

    @property
    def in_patient_room(self) -> bool:
        return self.room_kind == "patient"  # commands.registry.PATIENT

    def reply(self, md_text: str, *, mentions: dict[str, str] | None = None, ref: str | None = None) -> str:
        """An m.notice in reply to the command; mentioned users are notified."""
        if self.reply_privately:
            content = render(md_text, mentions=mentions)
            return self.queue("direct", "", {"user_id": self.sender, "content": content}, ref=ref)
        return self.send(self.room_id, md_text, mentions=mentions, reply_to=self.event_id, ref=ref)

    def refuse(self, message: str, *, usage: bool = True) -> "NoReturn":
        """Bad input found by the handler: abort the transaction (nothing is written) and answer
        in French, with the usage line."""
        if usage and self.command is not None:
            raise Refusal(self.services.registry.usage_error_text(self.command, message))
        raise Refusal(message if message.startswith(("⚠️", "🙏", "⛔")) else f"⚠️ {message}")

    def send(self, room_id: str, md_text: str, *, mentions: dict[str, str] | None = None,
             reply_to: str | None = None, ref: str | None = None) -> str:
        content = render(md_text, mentions=mentions, reply_to=reply_to)
        txn = self.services.store.queue(self.session, "message", room_id, content, self.now, ref=ref)
        self.sent.append(txn)
        return txn

    def to_coordinators(self, md_text: str) -> None:
        """A message in the coordinators' room (never an identity: patient codes only)."""
        if self.services.coordinator_room:
            self.send(self.services.coordinator_room, md_text)

    def send_poll(self, room_id: str, question: str, choices: list[str], *, ref: str,
                  max_selections: int = 1, reply_to: str | None = None) -> str:
        """A poll Element shows as tappable (domain.polls), with the numbered text fallback.
        Votes reach the POLL_HANDLERS entry named by `ref`'s prefix (« questionnaire:12:3 »)."""
        relates = {"m.in_reply_to": {"event_id": reply_to}} if reply_to else None
        content = poll_start_content(question, choices, max_selections=max_selections, relates_to=relates)
        return self.queue("event", room_id, {"type": POLL_START_TYPE, "content": content}, ref=ref)

    def end_poll(self, room_id: str, poll_ref: str, text: str) -> str:
        """Close the poll sent with `poll_ref`; the sender resolves its event id when it sends."""
        return self.queue("poll_end", room_id, {"poll_ref": poll_ref, "text": text})

    def send_file(self, room_id: str, filename: str, data: bytes, mimetype: str, *, body: str | None = None,
                  msgtype: str = "m.file", ref: str | None = None) -> str:
        """An attachment, sent encrypted (m.file / m.image with its `file` object), never in clear."""
        return self.queue("file", room_id, file_payload(filename, data, mimetype, body=body, msgtype=msgtype), ref=ref)

    def send_file_direct(self, user_id: str, filename: str, data: bytes, mimetype: str, *,
                         body: str | None = None, msgtype: str = "m.file", ref: str | None = None) -> str:
        """The same, in the professional's direct chat with the bot."""
        payload = file_payload(filename, data, mimetype, body=body, msgtype=msgtype)
        return self.queue("direct", "", {"user_id": user_id, "file": payload}, ref=ref)

    def queue(self, action: str, room_id: str, content: dict, ref: str | None = None) -> str:
        txn = self.services.store.queue(self.session, action, room_id, content, self.now, ref=ref)
        self.sent.append(txn)
        return txn
