"""Tests for pipeline/simulator/clock.py: manual, accelerated and real-time simulated clocks."""

from __future__ import annotations

import pytest

from pipeline.simulator import SimulatorClock

START = 1_756_252_800_000  # 2025-08-27T00:00Z


class FakeTime:
    """A real-time source that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_manual_clock_stands_still_until_advanced() -> None:
    """A manual clock returns its start until advance_ms moves it."""
    clock = SimulatorClock.manual(START)
    assert clock.is_manual and clock.speed is None
    assert clock.now_ms() == START
    assert clock.advance_ms(1500) == START + 1500
    assert clock.now_ms() == START + 1500
    assert clock.real_seconds_until(START + 10_000) is None


def test_manual_clock_never_goes_back() -> None:
    """advance_ms with a negative amount is refused with a clear message."""
    clock = SimulatorClock.manual(START)
    with pytest.raises(ValueError, match="negative"):
        clock.advance_ms(-1)


def test_accelerated_clock_runs_speed_times_faster() -> None:
    """60x: one real second is one simulated minute."""
    source = FakeTime()
    clock = SimulatorClock.accelerated(60, START, time_source=source)
    assert clock.now_ms() == START
    source.now += 1.0
    assert clock.now_ms() == START + 60_000
    assert clock.real_seconds_until(START + 120_000) == pytest.approx(1.0)
    assert clock.real_seconds_until(START) == 0.0


def test_accelerated_clock_cannot_be_advanced_by_hand() -> None:
    """advance_ms on a running clock names the problem."""
    clock = SimulatorClock.realtime(START, time_source=FakeTime())
    with pytest.raises(ValueError, match="manual clock"):
        clock.advance_ms(1000)


def test_realtime_clock_defaults_to_the_wall_clock() -> None:
    """Without a start, a real-time clock starts at the current wall time."""
    clock = SimulatorClock.realtime(time_source=FakeTime())
    assert clock.speed == 1.0
    assert clock.now_ms() > START


@pytest.mark.parametrize("speed", [0, -5])
def test_speed_must_be_positive(speed: float) -> None:
    """A zero or negative speed is rejected."""
    with pytest.raises(ValueError, match="speed must be a positive"):
        SimulatorClock.accelerated(speed, START)


def test_start_must_be_a_non_negative_int() -> None:
    """A float or negative start time is rejected."""
    with pytest.raises(ValueError, match="start_ms"):
        SimulatorClock.manual(-1)
    with pytest.raises(ValueError, match="start_ms"):
        SimulatorClock.manual(1.5)  # type: ignore[arg-type]


def test_catching_up_clock_runs_fast_until_the_wall_clock_then_with_it() -> None:
    """60x from an hour behind: one real second is a simulated minute until it reaches the
    wall clock (after ~61 s), then one real second is one simulated second."""
    wall = FakeTime()
    wall.now = START / 1000
    clock = SimulatorClock.catching_up(60, START - 3_600_000, wall=wall)
    assert clock.behind_ms() == 3_600_000
    assert clock.real_seconds_to_catch_up() == pytest.approx(3600 / 59)
    wall.now += 1.0
    assert clock.now_ms() == START - 3_600_000 + 60_000
    wall.now += 61.0  # 3,720 simulated seconds since the start: past the wall clock
    assert clock.now_ms() == int(wall.now * 1000)  # caught up: never ahead
    assert clock.behind_ms() == 0 and clock.real_seconds_to_catch_up() == 0.0
    wall.now += 10.0
    assert clock.now_ms() == int(wall.now * 1000)
    assert clock.real_seconds_until(clock.now_ms() + 5_000) == pytest.approx(5.0)


def test_catching_up_clock_never_goes_back_when_the_wall_clock_does() -> None:
    """A wall clock stepped back (NTP) holds simulated time still instead of reversing it."""
    wall = FakeTime()
    wall.now = START / 1000
    clock = SimulatorClock.catching_up(60, START, wall=wall)
    wall.now += 5.0
    seen = clock.now_ms()
    wall.now -= 3.0
    assert clock.now_ms() == seen


def test_catching_up_clock_started_ahead_is_held_to_the_wall_clock() -> None:
    """A start after the wall time is not served until the wall clock gets there."""
    wall = FakeTime()
    wall.now = START / 1000
    clock = SimulatorClock.catching_up(60, START + 60_000, wall=wall)
    assert clock.now_ms() == START + 60_000  # never moves backwards from its start
    wall.now += 30.0
    assert clock.now_ms() == START + 60_000
    wall.now += 40.0
    assert clock.now_ms() == START + 70_000
