"""Log lines a server can provoke, at most one per kind per interval (issue 14).

A server spraying malformed or illegal frames must be visible in the log at WARNING, not only
at DEBUG, yet must not be able to flood it: :class:`LogThrottle` writes the first line of a
kind at once, then at most one per ``interval`` seconds, each saying how many it held back.
The counters in the metrics count every one.
"""

from __future__ import annotations

import logging

__all__ = ["LogThrottle"]


class LogThrottle:
    """At most one WARNING per key per ``interval`` seconds, counting what it held back.

    Args:
        logger: Where the lines go.
        interval: Seconds between two lines of one key.
    """

    def __init__(self, logger: logging.Logger, *, interval: float = 60.0) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, key: str, now: float, message: str, *args: object) -> bool:
        """Log ``message % args`` unless a line of ``key`` went out less than ``interval``
        seconds before ``now`` (then count it); return whether it was logged."""
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        held = self._held.pop(key, 0)
        if held and last is not None:
            message += f" ({held} more like it in the {now - last:.0f} s since the last line)"
        self._last[key] = now
        self.logger.warning(message, *args)
        return True
