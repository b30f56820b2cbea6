"""Persistence of questionnaire runs (storage.models.QuestionnaireRun) and their settle timer."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import Deadline, QuestionnaireRun


async def runs_of_patient(session: AsyncSession, patient_code: str) -> list[QuestionnaireRun]:
    return list((await session.scalars(select(QuestionnaireRun).where(QuestionnaireRun.patient_code == patient_code)
                                       .order_by(QuestionnaireRun.id))).all())


async def runs_of_inclusion(session: AsyncSession, inclusion_id: int) -> list[QuestionnaireRun]:
    return list((await session.scalars(select(QuestionnaireRun).where(QuestionnaireRun.inclusion_id == inclusion_id)
                                       .order_by(QuestionnaireRun.id))).all())


async def postpone(session: AsyncSession, kind: str, ref: str, due_at: datetime, now: datetime, payload: dict) -> None:
    """The one pending row of (kind, ref) now due at `due_at` with `payload` (later or earlier):
    a settle timer that each new vote pushes back."""
    row = await session.scalar(select(Deadline).where(Deadline.kind == kind, Deadline.ref == ref))
    if row is None:
        session.add(Deadline(kind=kind, ref=ref, due_at=due_at, status="pending", payload=payload, created_at=now))
    elif row.status == "pending":
        row.due_at, row.payload = due_at, payload
