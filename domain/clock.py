"""Injectable clocks: the bot never calls datetime.now() directly.

All instants are timezone-aware UTC; display converts to the CPTS time zone.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from typing import Callable, Protocol
from zoneinfo import ZoneInfo

DEFAULT_TIMEZONE = "Europe/Paris"  # cpts.timezone when the configuration says nothing
PARIS = ZoneInfo(DEFAULT_TIMEZONE)


def wall_ms() -> int:
    """Real time in ms, to compare with server timestamps (the injectable clock is domain time)."""
    return int(time.time() * 1000)


def wall_now() -> datetime:
    """Real time, for delivery retries (the homeserver lives in real time, not domain time)."""
    return datetime.now(timezone.utc)


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
    """Runs `speed` times faster than real time (cercle up --demo-speed).

    Demo time is a pure function of real (wall-clock) time: `origin` is the demo instant at the
    real instant `real_origin`. Both persist in the bot's state (`state()` / `resume()`), so a
    restart continues the demo time, as if the accelerated clock had kept running while the bot
    was stopped, instead of starting it again from the real time (which would move the demo
    clock back and push every deadline hours away).
    """

    def __init__(self, speed: float, origin: datetime | None = None, *, real_origin: datetime | None = None,
                 real_now: Callable[[], datetime] | None = None):
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._real_now = real_now or _wall_clock
        self.real_origin = real_origin or self._real_now()
        self.origin = origin or self.real_origin
        self._last = self.origin

    def now(self) -> datetime:
        elapsed = (self._real_now() - self.real_origin).total_seconds() * self.speed
        # A wall clock stepped back (NTP) must not move demo time back.
        self._last = max(self._last, self.origin + timedelta(seconds=max(0.0, elapsed)))
        return self._last

    def real_seconds_until(self, instant: datetime) -> float:
        return max(0.0, (instant - self.now()).total_seconds() / self.speed)

    def state(self) -> str:
        """What to persist so that `resume()` continues this clock after a restart."""
        return json.dumps({"speed": self.speed, "origin": self.origin.isoformat(),
                           "real_origin": self.real_origin.isoformat()})

    @classmethod
    def resume(cls, speed: float | None, saved: str | None, *,
               real_now: Callable[[], datetime] | None = None) -> "ScaledClock | None":
        """The demo clock of a (re)start: the saved one continued, or a new one, or None.

        `speed` None keeps the saved speed (a demo data directory stays a demo); a new speed
        takes over from the saved clock's current instant, so demo time never goes back.
        """
        previous = None
        if saved:
            data = json.loads(saved)
            previous = cls(float(data["speed"]), datetime.fromisoformat(data["origin"]),
                           real_origin=datetime.fromisoformat(data["real_origin"]), real_now=real_now)
        if previous is None:
            return cls(speed, real_now=real_now) if speed else None
        if not speed or speed == previous.speed:
            return previous
        return cls(speed, previous.now(), real_now=real_now)


def _wall_clock() -> datetime:
    return datetime.now(timezone.utc)


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
