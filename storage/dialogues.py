"""Dialogue rows (storage.models.Dialogue): what was typed so far, encrypted at rest, and their expiry row."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.crypto import FieldCipher
from storage.models import Deadline, Dialogue, OutboxItem

EXPIRY = "dialogue.expiry"  # the deadline kind; ref "dialogue:<id>"


def _purpose(row: Dialogue, what: str) -> str:
    return f"dialogue:{row.id}:{what}"


async def open_dialogue(session: AsyncSession, cipher: FieldCipher, *, sender: str, room_id: str,
                        thread_root: str, command: str, questions: list[str], body: str, now: datetime,
                        expires_at: datetime) -> Dialogue:
    row = Dialogue(sender=sender, room_id=room_id, thread_root=thread_root, command=command,
                   questions=list(questions), command_enc=b"", answers_enc=b"", status="active",
                   created_at=now, expires_at=expires_at)
    session.add(row)
    await session.flush()  # the id is part of the encryption purpose and of the refs
    row.command_enc = cipher.encrypt_text(body, _purpose(row, "command"))
    write_answers(cipher, row, {})
    session.add(Deadline(kind=EXPIRY, ref=f"dialogue:{row.id}", due_at=expires_at, status="pending",
                         payload={"room_id": room_id}, created_at=now))
    return row


def command_text(cipher: FieldCipher, row: Dialogue) -> str:
    return cipher.decrypt_text(row.command_enc, _purpose(row, "command"))


def read_answers(cipher: FieldCipher, row: Dialogue) -> dict[str, str | None]:
    return cipher.decrypt_json(row.answers_enc, _purpose(row, "answers"))


def write_answers(cipher: FieldCipher, row: Dialogue, answers: dict[str, str | None]) -> None:
    row.answers_enc = cipher.encrypt_json(answers, _purpose(row, "answers"))


# Read for every message (is it an answer?): built once, like storage.repositories' hot statements.
ACTIVE_DIALOGUES = (select(Dialogue).where(Dialogue.sender == bindparam("sender"), Dialogue.room_id == bindparam("room_id"),
                                           Dialogue.status == "active").order_by(Dialogue.id.desc()))


async def active_dialogues(session: AsyncSession, sender: str, room_id: str) -> list[Dialogue]:
    """The person's open dialogues in this room, the latest first."""
    return list((await session.scalars(ACTIVE_DIALOGUES, {"sender": sender, "room_id": room_id})).all())


async def postpone(session: AsyncSession, row: Dialogue, expires_at: datetime) -> None:
    """An answer gives the person the full time again: the row and its pending deadline move."""
    row.expires_at = expires_at
    deadline = await session.scalar(select(Deadline).where(Deadline.kind == EXPIRY,
                                                           Deadline.ref == f"dialogue:{row.id}"))
    if deadline is not None and deadline.status == "pending":
        deadline.due_at = expires_at


async def end(session: AsyncSession, row: Dialogue, status: str, now: datetime) -> None:
    row.status = status
    row.ended_at = now
    deadline = await session.scalar(select(Deadline).where(Deadline.kind == EXPIRY,
                                                           Deadline.ref == f"dialogue:{row.id}"))
    if deadline is not None and deadline.status == "pending":
        deadline.status = "cancelled"


async def ref_of_event(session: AsyncSession, event_id: str) -> str | None:
    """The `ref` of the bot's message the homeserver answered with `event_id`."""
    return await session.scalar(select(OutboxItem.ref).where(OutboxItem.event_id == event_id).limit(1))
