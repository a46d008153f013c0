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
    * ``catching_up(speed, start_ms)``: starts behind the wall clock, runs ``speed`` times
      faster until it reaches it, then follows it: never ahead of the wall clock, so the
      candles it serves never lie in the future (what ``candles ingest`` and
      ``candles simulate`` use).
    """

    def __init__(
        self,
        *,
        start_ms: int,
        speed: float | None,
        time_source: Callable[[], float] = time.monotonic,
        capped: bool = False,
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
        self._capped = capped
        self._last_ms = start_ms

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

    @classmethod
    def catching_up(
        cls, speed: float, start_ms: int, *, wall: Callable[[], float] = time.time
    ) -> SimulatorClock:
        """A clock that runs ``speed`` times faster than ``wall`` from ``start_ms`` until it
        reaches ``wall``'s time, then runs with it; it never gets ahead of ``wall``.

        Args:
            speed: Simulated seconds per real second while behind.
            start_ms: Simulated time at creation, at or before ``wall``'s time (a later start
                is held back to it).
            wall: The wall clock in seconds since the epoch; injected by tests.
        """
        return cls(start_ms=start_ms, speed=float(speed), time_source=wall, capped=True)

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
        real = self._time_source()
        now = self._start_ms + int((real - self._real_start) * self._speed * 1000.0)
        if self._capped:
            # Never ahead of the wall clock, and never back when the wall clock steps back.
            now = max(min(now, int(real * 1000.0)), self._last_ms)
            self._last_ms = now
        return now

    def behind_ms(self) -> int:
        """How far the simulated time is behind the wall clock now (0 once caught up, and
        for clocks that do not follow the wall clock)."""
        if not self._capped:
            return 0
        return max(0, int(self._time_source() * 1000.0) - self.now_ms())

    def real_seconds_to_catch_up(self) -> float | None:
        """Real seconds until a catching-up clock reaches the wall clock (0 when it has);
        ``None`` when it never will (speed 1 or less) or does not follow the wall clock."""
        if not self._capped or self._speed is None:
            return None
        behind = self.behind_ms()
        if behind == 0:
            return 0.0
        if self._speed <= 1.0:
            return None
        return behind / 1000.0 / (self._speed - 1.0)

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
        now = self.now_ms()
        remaining = max(0, sim_ms - now) / 1000.0
        catch_up = self.real_seconds_to_catch_up()
        if catch_up is None:
            return remaining / self._speed
        # Fast until the wall clock is reached, then one simulated second per real second.
        fast = catch_up * self._speed
        return remaining / self._speed if remaining <= fast else catch_up + remaining - fast

    def __repr__(self) -> str:
        kind = "manual" if self._speed is None else f"speed={self._speed:g}"
        kind += ", never ahead of the wall clock" if self._capped else ""
        return f"SimulatorClock({kind}, now_ms={self.now_ms()})"
