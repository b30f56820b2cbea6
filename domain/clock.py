"""Injectable clocks: the bot never calls datetime.now() directly.

All instants are timezone-aware UTC; display converts to the CPTS time zone.
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Protocol
from zoneinfo import ZoneInfo

PARIS = ZoneInfo("Europe/Paris")


class Clock(Protocol):
    def now(self) -> datetime: ...

    def real_seconds_until(self, instant: datetime) -> float:
        """Wall-clock seconds to wait before `instant` is reached on this clock."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def real_seconds_until(self, instant: datetime) -> float:
        return max(0.0, (instant - self.now()).total_seconds())


class ScaledClock:
    """Runs `speed` times faster than real time from its creation (cercle up --demo-speed)."""

    def __init__(self, speed: float, origin: datetime | None = None):
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._origin = origin or datetime.now(timezone.utc)
        self._mono0 = time.monotonic()

    def now(self) -> datetime:
        return self._origin + timedelta(seconds=(time.monotonic() - self._mono0) * self.speed)

    def real_seconds_until(self, instant: datetime) -> float:
        return max(0.0, (instant - self.now()).total_seconds() / self.speed)


class FakeClock:
    """Test clock: moves only when told to."""

    def __init__(self, start: datetime | None = None):
        self._now = start or datetime(2026, 3, 12, 9, 0, tzinfo=timezone.utc)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> datetime:
        self._now += delta
        return self._now

    def set(self, instant: datetime) -> None:
        self._now = instant

    def real_seconds_until(self, instant: datetime) -> float:
        # Never wakes by itself: tests fire due work explicitly after advance().
        return float("inf")
