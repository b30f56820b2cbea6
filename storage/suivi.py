"""Observations (données de base, éléments de suivi): append-only rows, values encrypted at rest."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.crypto import FieldCipher
from storage.models import Observation


def _purpose(patient_code: str) -> str:
    return f"observation:{patient_code}"


@dataclass(frozen=True)
class Recorded:
    """One decrypted observation: the value, the instant it refers to, who and when recorded it."""

    id: int
    parcours: str
    kind: str
    element: str
    value: object
    at: datetime                                 # when it was done / measured (a typed date, or recorded_at)
    recorded_by: str
    recorded_at: datetime
    previous_id: int | None


async def record(session: AsyncSession, cipher: FieldCipher, *, patient_code: str, parcours: str, kind: str,
                 element: str, value, at: datetime, by: str, now: datetime) -> Observation:
    """Append a value; it points at the latest one of the same element (its previous value)."""
    previous = await session.scalar(
        select(Observation.id).where(Observation.patient_code == patient_code, Observation.parcours == parcours,
                                     Observation.kind == kind, Observation.element == element)
        .order_by(Observation.id.desc()).limit(1))
    row = Observation(patient_code=patient_code, parcours=parcours, kind=kind, element=element,
                      value_enc=cipher.encrypt_json({"value": value, "at": at.isoformat()}, _purpose(patient_code)),
                      recorded_by=by, recorded_at=now, previous_id=previous)
    session.add(row)
    await session.flush()
    return row


async def history(session: AsyncSession, cipher: FieldCipher, patient_code: str, *, parcours: str | None = None,
                  kind: str | None = None, element: str | None = None) -> list[Recorded]:
    """Every observation of the patient (filtered), oldest first."""
    stmt = select(Observation).where(Observation.patient_code == patient_code)
    if parcours is not None:
        stmt = stmt.where(Observation.parcours == parcours)
    if kind is not None:
        stmt = stmt.where(Observation.kind == kind)
    if element is not None:
        stmt = stmt.where(Observation.element == element)
    out = []
    for row in (await session.scalars(stmt.order_by(Observation.id))).all():
        data = cipher.decrypt_json(row.value_enc, _purpose(patient_code))
        out.append(Recorded(id=row.id, parcours=row.parcours, kind=row.kind, element=row.element,
                            value=data["value"], at=datetime.fromisoformat(data["at"]), recorded_by=row.recorded_by,
                            recorded_at=row.recorded_at, previous_id=row.previous_id))
    return out
