"""The simulator's clock: real time, accelerated, or advanced by hand.

The market and the server never read a clock of their own; they ask a ``SimulatorClock``
(injected), so tests can make time stand still (``manual``) and move it explicitly, and demos can
run a day of trading in half an hour (``accelerated(speed=48)``).

Simulated time is milliseconds since the epoch (UTC), the unit of every DXLink timestamp
(dxlink-protocol.md §4.1). A ``SimulatorClock`` only converts between that and the real time
source it was given; it never sleeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["SimulatorClock"]


class SimulatorClock:
    """Simulated time in ms since the epoch; build one with a class method.

    * ``manual(start_ms)``: time moves only when ``advance_ms()`` is called (by
      ``Simulator.advance``). No wall-clock dependence at all.
    * ``accelerated(speed, start_ms)``: ``speed`` simulated seconds pass per real second.
    * ``realtime(start_ms)``: ``accelerated(1.0)``; with no ``start_ms`` it follows the wall clock.
    """

    def __init__(
        self,
        *,
        start_ms: int,
        speed: float | None,
        time_source: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(start_ms, int) or isinstance(start_ms, bool) or start_ms < 0:
            raise ValueError(
                f"start_ms must be a non-negative int (ms since the epoch), got {start_ms!r}"
            )
        if speed is not None and not speed > 0:
            raise ValueError(
                f"speed must be a positive number of simulated s per real s, got {speed!r}"
            )
        self._start_ms = start_ms
        self._manual_ms = start_ms
        self._speed = speed
        self._time_source = time_source
        self._real_start = time_source()

    @classmethod
    def manual(cls, start_ms: int) -> SimulatorClock:
        """A clock that stands still until ``advance_ms()`` moves it."""
        return cls(start_ms=start_ms, speed=None)

    @classmethod
    def accelerated(
        cls,
        speed: float,
        start_ms: int | None = None,
        *,
        time_source: Callable[[], float] = time.monotonic,
    ) -> SimulatorClock:
        """A clock running ``speed`` times faster than ``time_source`` (seconds).

        Args:
            speed: Simulated seconds per real second, e.g. 60.
            start_ms: Simulated time at creation; the current wall time when omitted.
            time_source: The real clock in seconds; injected by tests.
        """
        if start_ms is None:
            start_ms = int(time.time() * 1000)
        return cls(start_ms=start_ms, speed=float(speed), time_source=time_source)

    @classmethod
    def realtime(
        cls, start_ms: int | None = None, *, time_source: Callable[[], float] = time.monotonic
    ) -> SimulatorClock:
        """A clock running at the speed of ``time_source``; starts at the wall time if no start."""
        return cls.accelerated(1.0, start_ms, time_source=time_source)

    @property
    def is_manual(self) -> bool:
        """True when time moves only through ``advance_ms()``."""
        return self._speed is None

    @property
    def speed(self) -> float | None:
        """Simulated seconds per real second; None for a manual clock."""
        return self._speed

    @property
    def start_ms(self) -> int:
        """Simulated time when the clock was created."""
        return self._start_ms

    def now_ms(self) -> int:
        """The current simulated time in ms since the epoch."""
        if self._speed is None:
            return self._manual_ms
        elapsed = self._time_source() - self._real_start
        return self._start_ms + int(elapsed * self._speed * 1000.0)

    def advance_ms(self, ms: int) -> int:
        """Move a manual clock forward by ``ms`` and return the new time.

        Raises:
            ValueError: the clock is not manual, or ``ms`` is negative (time never goes back).
        """
        if self._speed is not None:
            raise ValueError(
                "advance() needs a manual clock (SimulatorClock.manual); this one runs at "
                f"speed {self._speed:g}"
            )
        if ms < 0:
            raise ValueError(f"cannot advance by a negative amount ({ms} ms); time never goes back")
        self._manual_ms += ms
        return self._manual_ms

    def real_seconds_until(self, sim_ms: int) -> float | None:
        """Real seconds until simulated time reaches ``sim_ms`` (0 if past); None when manual."""
        if self._speed is None:
            return None
        remaining = sim_ms - self.now_ms()
        return max(0.0, remaining / 1000.0 / self._speed)

    def __repr__(self) -> str:
        kind = "manual" if self._speed is None else f"speed={self._speed:g}"
        return f"SimulatorClock({kind}, now_ms={self.now_ms()})"
