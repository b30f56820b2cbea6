"""A professional's notification hours (horaires de réception des notifications).

« Chaque PS peut renseigner ses horaires de réception de notifications » [S002 L535]. They only
hold back what is not urgent — follow-up reminders, digests, bordereaux — which then goes out at
the start of the next allowed window; red flags, alertes and response deadlines never wait
(decisions.md 1). Windows are local wall-clock times in the CPTS's time zone, every day; a
window may span midnight (« 20:00-06:00 »), several are separated by commas
(« 09:00-12:30,14:00-17:30 »). No hours set means always.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo

__all__ = ["ALWAYS", "NotificationHours"]

_RANGE = re.compile(r"^\s*(\d{1,2})(?:[:h](\d{2})?)?\s*[-–à]\s*(\d{1,2})(?:[:h](\d{2})?)?\s*$")


def _time(hours: str, minutes: str | None, typed: str) -> time:
    h, m = int(hours), int(minutes or 0)
    if h == 24 and m == 0:
        return time(0, 0)
    if h > 23 or m > 59:
        raise ValueError(f"« {typed} » : heure impossible (de 0h à 23h59)")
    return time(h, m)


@dataclass(frozen=True)
class NotificationHours:
    windows: tuple[tuple[time, time], ...] = ()  # empty: always

    @classmethod
    def parse(cls, text: str | None) -> "NotificationHours":
        """« 08:00-19:00 », « 8h-19h », « 9h-12h30,14h-17h30 », « 20h-6h »; empty or None: always."""
        if text is None or not text.strip():
            return ALWAYS
        windows = []
        for part in text.split(","):
            match = _RANGE.match(part)
            if not match:
                raise ValueError(f"« {part.strip()} » n'est pas une plage horaire : écrivez par exemple 8h-19h "
                                 "ou 09:00-12:30,14:00-17:30")
            windows.append((_time(match[1], match[2], part.strip()), _time(match[3], match[4], part.strip())))
        return cls(tuple(windows))

    def __str__(self) -> str:
        if not self.windows:
            return "à toute heure"
        return ", ".join(f"{_fmt(a)}–{_fmt(b)}" for a, b in self.windows)

    def storage_text(self) -> str | None:
        """The form kept in the directory (`Professional.notification_hours`)."""
        if not self.windows:
            return None
        return ",".join(f"{a:%H:%M}-{b:%H:%M}" for a, b in self.windows)

    def allows(self, instant: datetime, tz: tzinfo) -> bool:
        if not self.windows:
            return True
        local = instant.astimezone(tz).time()
        return any(_inside(local, start, end) for start, end in self.windows)

    def next_allowed(self, instant: datetime, tz: tzinfo) -> datetime:
        """`instant` itself when allowed, else the start of the next window (same tz-awareness
        as `instant`). Window starts are wall-clock times: across a daylight-saving change, 8h
        stays 8h local."""
        if self.allows(instant, tz):
            return instant
        day = instant.astimezone(tz).date()
        starts = [_at(day + timedelta(days=offset), start, tz)
                  for offset in range(0, 3) for start, _ in self.windows]
        later = [s for s in starts if s > instant]
        return min(later).astimezone(instant.tzinfo)


def _inside(t: time, start: time, end: time) -> bool:
    if start == end:
        return True  # « 0h-24h »
    if start < end:
        return start <= t < end
    return t >= start or t < end  # spans midnight


def _at(day: date, wall: time, tz: tzinfo) -> datetime:
    # A wall time skipped by the spring change (02:30 on the last Sunday of March) resolves,
    # with fold=0, to the instant just after the gap; it never goes back in time.
    return datetime.combine(day, wall, tzinfo=tz)


def _fmt(t: time) -> str:
    return f"{t.hour}h{t.minute:02d}" if t.minute else f"{t.hour}h"


ALWAYS = NotificationHours()
