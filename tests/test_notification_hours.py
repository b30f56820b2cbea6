"""Notification hours: what waits for the next allowed window, across midnight and DST (decisions.md 1)."""
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from domain.notification_hours import ALWAYS, NotificationHours

PARIS = ZoneInfo("Europe/Paris")


def paris(*args) -> datetime:
    return datetime(*args, tzinfo=PARIS).astimezone(timezone.utc)


def test_a_reminder_computed_at_23h_for_8h_19h_waits_until_8h_next_morning():
    hours = NotificationHours.parse("08:00-19:00")
    assert hours.next_allowed(paris(2026, 11, 3, 23, 0), PARIS) == paris(2026, 11, 4, 8, 0)
    assert hours.next_allowed(paris(2026, 11, 4, 7, 59), PARIS) == paris(2026, 11, 4, 8, 0)
    inside = paris(2026, 11, 4, 12, 0)
    assert hours.next_allowed(inside, PARIS) is inside
    assert not hours.allows(paris(2026, 11, 4, 19, 0), PARIS)  # the end is excluded


def test_hours_that_span_midnight():
    nuit = NotificationHours.parse("20h-6h")
    assert nuit.allows(paris(2026, 11, 4, 23, 30), PARIS)
    assert nuit.allows(paris(2026, 11, 5, 5, 59), PARIS)
    assert not nuit.allows(paris(2026, 11, 5, 6, 0), PARIS)
    assert nuit.next_allowed(paris(2026, 11, 5, 6, 0), PARIS) == paris(2026, 11, 5, 20, 0)


def test_several_windows_a_day():
    hours = NotificationHours.parse("9h-12h30, 14h-17h30")
    assert hours.next_allowed(paris(2026, 11, 4, 12, 45), PARIS) == paris(2026, 11, 4, 14, 0)
    assert hours.next_allowed(paris(2026, 11, 4, 18, 0), PARIS) == paris(2026, 11, 5, 9, 0)
    assert str(hours) == "9h–12h30, 14h–17h30"
    assert hours.storage_text() == "09:00-12:30,14:00-17:30"
    assert NotificationHours.parse(hours.storage_text()) == hours


def test_eight_oclock_stays_eight_oclock_across_daylight_saving_changes():
    hours = NotificationHours.parse("08:00-19:00")
    # Spring forward: night of 28 to 29 March 2026 (UTC+1 → UTC+2).
    assert hours.next_allowed(paris(2026, 3, 28, 22, 0), PARIS) == datetime(2026, 3, 29, 6, 0, tzinfo=timezone.utc)
    # Fall back: night of 24 to 25 October 2026 (UTC+2 → UTC+1).
    assert hours.next_allowed(paris(2026, 10, 24, 22, 0), PARIS) == datetime(2026, 10, 25, 7, 0, tzinfo=timezone.utc)


def test_a_window_starting_in_the_spring_gap_never_goes_back_in_time():
    hours = NotificationHours.parse("02:30-04:00")
    before = datetime(2026, 3, 29, 0, 30, tzinfo=timezone.utc)  # 01:30 local, before the gap
    assert hours.next_allowed(before, PARIS) > before


def test_no_hours_means_always_and_bad_hours_are_refused_in_french():
    assert NotificationHours.parse(None) is ALWAYS and NotificationHours.parse("  ") is ALWAYS
    assert ALWAYS.allows(paris(2026, 1, 1, 3, 0), PARIS)
    assert str(ALWAYS) == "à toute heure"
    with pytest.raises(ValueError, match="plage horaire"):
        NotificationHours.parse("le matin")
    with pytest.raises(ValueError, match="heure impossible"):
        NotificationHours.parse("8h-25h")
