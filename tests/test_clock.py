"""Clocks: time is injected; demonstrations may run it faster, only under `cercle up`."""
from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from bot.cli import build_parser
from domain.clock import FakeClock, ScaledClock, SystemClock


def test_scaled_clock_runs_faster_and_waits_less():
    origin = datetime(2026, 1, 1, tzinfo=timezone.utc)
    clock = ScaledClock(3600, origin=origin)  # one real second is one hour
    time.sleep(0.05)
    elapsed = clock.now() - origin
    assert timedelta(minutes=2) < elapsed < timedelta(minutes=30)
    # An 8 h deadline is 8 real seconds away at this speed.
    assert 7.5 < clock.real_seconds_until(clock.now() + timedelta(hours=8)) <= 8.0
    with pytest.raises(ValueError):
        ScaledClock(0)


def test_fake_clock_never_wakes_by_itself():
    clock = FakeClock()
    start = clock.now()
    clock.advance(timedelta(hours=5))
    assert clock.now() - start == timedelta(hours=5)
    assert clock.real_seconds_until(clock.now() + timedelta(seconds=1)) == float("inf")
    assert SystemClock().now().tzinfo is not None


def test_demo_speed_only_under_cercle_up():
    args = build_parser().parse_args(["up", "--demo-speed", "60"])
    assert args.demo_speed == 60
    result = subprocess.run([sys.executable, "-m", "bot.cli", "run", "--config", "x.toml", "--demo-speed", "60"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--demo-speed" in result.stderr


class RealTime:
    """An injectable wall clock for the demo clock: moved by the test, never slept."""

    def __init__(self, start: datetime):
        self.instant = start

    def __call__(self) -> datetime:
        return self.instant

    def pass_(self, seconds: float) -> None:
        self.instant += timedelta(seconds=seconds)


async def test_the_demo_clock_continues_across_a_restart(tmp_path):
    """Issue 9: --demo-speed 600, a red flag (8 h), stop at 1.7 h of demo time, restart past 8 h:
    the demo clock must not start again from the real time (« il reste 3 h 59 »)."""
    from bot.cli import resume_demo_clock
    from storage.repositories import open_store

    url, key = f"sqlite+aiosqlite:///{tmp_path / 'cercle.db'}", tmp_path / "storage.key"
    real = RealTime(datetime(2026, 3, 12, 9, 0, tzinfo=timezone.utc))
    store = await open_store(url, key)
    clock = await resume_demo_clock(store, 600, real_now=real)
    raised = clock.now()
    await store.add_deadline("redflag.test", "demande:1", raised + timedelta(hours=8), raised)
    real.pass_(10.2)
    assert clock.now() - raised == timedelta(hours=1.7)
    await store.close()

    real.pass_(40)  # the bot is stopped for 40 real seconds
    store = await open_store(url, key)
    try:
        clock = await resume_demo_clock(store, 600, real_now=real)
        assert clock.now() - raised == timedelta(seconds=50.2 * 600)  # past 8 h of demo time
        assert [d.ref for d in await store.due_deadlines(clock.now())] == ["demande:1"]  # fires at restart

        before = clock.now()
        # Restarted without --demo-speed: a demo data directory keeps its demo clock.
        again = await resume_demo_clock(store, None, real_now=real)
        assert again.now() == before and again.speed == 600
        # A new speed takes over from the demo instant reached, never from the real time.
        slower = await resume_demo_clock(store, 60, real_now=real)
        assert slower.now() == before
        real.pass_(1)
        assert slower.now() - before == timedelta(minutes=1)
        resumed = await resume_demo_clock(store, None, real_now=real)
        assert resumed.speed == 60 and resumed.now() == slower.now()
    finally:
        await store.close()


async def test_without_demo_speed_the_clock_is_the_system_clock(tmp_path):
    from bot.cli import DEMO_CLOCK_STATE, resume_demo_clock
    from storage.repositories import open_store

    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'cercle.db'}", tmp_path / "storage.key")
    try:
        assert isinstance(await resume_demo_clock(store, None), SystemClock)
        assert await store.get_state(DEMO_CLOCK_STATE) is None
    finally:
        await store.close()


def test_a_wall_clock_stepping_back_never_moves_demo_time_back():
    real = RealTime(datetime(2026, 3, 12, 9, 0, tzinfo=timezone.utc))
    clock = ScaledClock(600, real_now=real)
    real.pass_(10)
    reached = clock.now()
    real.pass_(-5)  # NTP correction
    assert clock.now() == reached
