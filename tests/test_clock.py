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
