"""Escalation ladder of a request (decisions.md 3), as pure planning: instants, no I/O.

    CERCLE      at creation: the patient's usual professionals, the médecin traitant first
    POOL        at pool_fraction × délai de réponse (default ½): every professional of the
                profession in the CPTS, through a notice without patient identity; at once
                when the MT is absent or declines (pool_now), or, with an MT priority window
                (SNP: 2 h), when that window ends
    RELANCE     at relance_fraction × délai (default ¾): one reminder to everyone still concerned
    ESCALADE    at the délai de réponse: coordinator room + requester
    INTERVENTION  délai d'intervention expired after acceptance without CR / closure

All délais are calendar time (decisions.md 1): no pause at night, on week-ends or outside a
professional's notification hours. The délai de réponse counts from the creation, the délai
d'intervention from the acceptance (decisions.md 2).

Red flag (decisions.md 6): MT first; « un autre médecin généraliste » after 4 h is the POOL
rung at ½ × 8 h, open to every médecin généraliste of the CPTS.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from domain.flows import Flow

__all__ = [
    "PlannedStep", "Rung", "due_steps", "next_step", "plan_for_flow", "plan_intervention_deadline",
    "plan_response_ladder", "rung_at",
]


class Rung(StrEnum):
    CERCLE = "cercle"
    POOL = "pool"
    RELANCE = "relance"
    ESCALADE = "escalade"
    INTERVENTION = "intervention"  # délai d'intervention expired without report / closure

    @property
    def rank(self) -> int:
        return _RANK[self]

    @property
    def libelle(self) -> str:
        return _LABELS[self]


_RANK = {r: i for i, r in enumerate(Rung)}
_LABELS = {
    Rung.CERCLE: "cercle de soins",
    Rung.POOL: "toute la profession dans la CPTS",
    Rung.RELANCE: "relance",
    Rung.ESCALADE: "escalade aux coordinateurs",
    Rung.INTERVENTION: "délai d'intervention dépassé",
}


@dataclass(frozen=True)
class PlannedStep:
    rung: Rung
    due_at: datetime


def _utc(name: str, instant: datetime) -> datetime:
    """Aware instant in UTC. Python adds timedeltas to a ZoneInfo datetime in *wall-clock* time
    (Paris 22:00 + 8 h = 06:00 across the spring DST switch: 7 real hours), so every
    computation here runs in UTC, which is real elapsed time (decisions.md 1)."""
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got naive {instant!r}")
    return instant.astimezone(timezone.utc)


def plan_response_ladder(created_at: datetime, delai_reponse: timedelta, *, pool_fraction: float = 0.5,
                         relance_fraction: float = 0.75, pool_now: bool = False,
                         mt_priority: timedelta | None = None, with_pool: bool = True) -> list[PlannedStep]:
    """The response ladder of a request created at `created_at`, sorted by due time.

    - `pool_now`: the MT is absent or has declined, or the patient has no usual professional
      of the profession: the POOL rung is due at creation (decisions.md 3.2).
    - `mt_priority`: an MT-only window (SNP 2 h, decisions.md 5). When given, it ends the
      CERCLE phase and replaces `pool_fraction`; a window ending after the relance point
      delays the relance to the pool time (rungs are applied in order).
    - `with_pool=False`: the request names one person, not a profession; decisions.md 3 puts
      the pool only on requests addressed to a profession, so the plan is CERCLE, RELANCE,
      ESCALADE.

    Due instants are in UTC. Invalid arguments are programming errors and raise ValueError.
    """
    created_at = _utc("created_at", created_at)
    if delai_reponse <= timedelta(0):
        raise ValueError(f"delai_reponse must be positive, got {delai_reponse}")
    if not 0 <= pool_fraction <= 1 or not 0 <= relance_fraction < 1:
        raise ValueError(f"fractions must lie in [0, 1): pool={pool_fraction}, relance={relance_fraction}")
    if pool_fraction > relance_fraction:
        raise ValueError(f"pool_fraction ({pool_fraction}) must not exceed relance_fraction ({relance_fraction})")
    if mt_priority is not None and not timedelta(0) <= mt_priority <= delai_reponse:
        raise ValueError(f"mt_priority ({mt_priority}) must lie within delai_reponse ({delai_reponse})")

    steps = [PlannedStep(Rung.CERCLE, created_at)]
    relance_at = created_at + delai_reponse * relance_fraction
    if with_pool:
        if pool_now:
            pool_at = created_at
        elif mt_priority is not None:
            pool_at = created_at + mt_priority
        else:
            pool_at = created_at + delai_reponse * pool_fraction
        steps.append(PlannedStep(Rung.POOL, pool_at))
        # An MT window longer than the relance point: remind everyone once the pool is open,
        # never before (the rungs are applied in order).
        relance_at = max(relance_at, pool_at)
    steps.append(PlannedStep(Rung.RELANCE, relance_at))
    steps.append(PlannedStep(Rung.ESCALADE, created_at + delai_reponse))
    return sorted(steps, key=lambda s: (s.due_at, s.rung.rank))


def plan_for_flow(flow: Flow, created_at: datetime, *, pool_now: bool = False,
                  delai_reponse: timedelta | None = None, with_pool: bool = True) -> list[PlannedStep]:
    """`plan_response_ladder` with the flow's fractions, MT window and pool_immediat.

    `delai_reponse` overrides the flow's (requests whose délais the requester changed).
    A flow without an acceptance ladder (alerte critique) gives an empty plan.
    """
    delai = delai_reponse or flow.delai_reponse
    if flow.echelle is None or delai is None:
        return []
    mt_priority = flow.priorite_mt if flow.medecin_traitant_d_abord else None
    if mt_priority is not None and mt_priority > delai:
        mt_priority = delai
    return plan_response_ladder(created_at, delai, pool_fraction=flow.echelle.pool,
                                relance_fraction=flow.echelle.relance,
                                pool_now=pool_now or flow.pool_immediat, mt_priority=mt_priority,
                                with_pool=with_pool)


def plan_intervention_deadline(accepted_at: datetime, delai_intervention: timedelta) -> PlannedStep:
    """INTERVENTION rung: due `delai_intervention` after the acceptance (decisions.md 2)."""
    accepted_at = _utc("accepted_at", accepted_at)
    if delai_intervention <= timedelta(0):
        raise ValueError(f"delai_intervention must be positive, got {delai_intervention}")
    return PlannedStep(Rung.INTERVENTION, accepted_at + delai_intervention)


def due_steps(plan: Sequence[PlannedStep], now: datetime, done: Iterable[Rung] = ()) -> list[PlannedStep]:
    """Steps due at `now` and not yet done, in order (after a restart, several may be due)."""
    done = set(done)
    return [s for s in plan if s.due_at <= now and s.rung not in done]


def next_step(plan: Sequence[PlannedStep], now: datetime) -> PlannedStep | None:
    """The first step still in the future, for the scheduler."""
    return next((s for s in plan if s.due_at > now), None)


def rung_at(plan: Sequence[PlannedStep], now: datetime) -> Rung | None:
    """The highest rung reached at `now` (None before creation or for an empty plan)."""
    reached = [s.rung for s in plan if s.due_at <= now]
    return max(reached, key=lambda r: r.rank) if reached else None
