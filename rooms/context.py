"""What a command handler gets: who, where, when, a transaction, and ways to answer."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import NoReturn

from sqlalchemy.ext.asyncio import AsyncSession

from rooms.messages import render
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

    def queue(self, action: str, room_id: str, content: dict, ref: str | None = None) -> str:
        txn = self.services.store.queue(self.session, action, room_id, content, self.now, ref=ref)
        self.sent.append(txn)
        return txn
