"""Fault specifications for the simulator, as written on the command line.

``candles simulate --fault drop@30 --fault stall:10@60/300`` schedules faults in *real*
seconds after the simulator starts. Each spec is ``KIND[:ARG][@AT[/EVERY]]``:

=================  =========================================================  ============
kind               what happens to the current connections                    ARG
=================  =========================================================  ============
``drop``           abrupt disconnect: the transport is aborted, no close      none
                   frame
``close``          graceful close frame                                       code (1001)
``stall``          stop sending anything, keepalives included; socket stays   seconds
                   open                                                       (forever)
``malformed``      a frame that is not a DXLink message                       text
``error``          an ERROR message on channel 0 (§2.7)                       code
                                                                              (UNKNOWN)
``expire-token``   AUTH_STATE UNAUTHORIZED; only the new token is accepted    new token
``drop-next``      accept, then drop at once, the next N connections          N (1)
``slow``           wait this long before sending each message                 seconds
=================  =========================================================  ============

Tests call the ``Simulator`` methods directly; this module only parses and validates. No I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from pipeline.dxlink import ErrorCode

__all__ = ["FAULT_HELP", "Fault", "FaultKind", "parse_fault"]

FAULT_HELP = (
    "KIND[:ARG][@AT[/EVERY]] with KIND one of drop, close[:CODE], stall[:SECONDS], "
    "malformed[:TEXT], error[:CODE], expire-token:NEW_TOKEN, drop-next[:N], slow:SECONDS; "
    "AT and EVERY are real seconds after start, e.g. drop@30, stall:10@60/300, close:1000@5"
)


class FaultKind(StrEnum):
    """The faults the simulator can inject."""

    DROP = "drop"
    CLOSE = "close"
    STALL = "stall"
    MALFORMED = "malformed"
    ERROR = "error"
    EXPIRE_TOKEN = "expire-token"
    DROP_NEXT = "drop-next"
    SLOW = "slow"


@dataclass(frozen=True)
class Fault:
    """One scheduled fault: ``kind`` with ``argument``, at ``at`` s, then every ``every`` s."""

    kind: FaultKind
    at: float = 0.0
    every: float | None = None
    argument: str | None = None

    def __str__(self) -> str:
        # The argument of expire-token is a token: never shown.
        shown = "<hidden>" if self.kind is FaultKind.EXPIRE_TOKEN else self.argument
        argument = "" if shown is None else f":{shown}"
        every = "" if self.every is None else f"/{self.every:g}"
        return f"{self.kind}{argument}@{self.at:g}{every}"

    __repr__ = __str__

    @property
    def close_code(self) -> int:
        """The close code of ``close`` (1001, going away, unless given)."""
        return int(self.argument) if self.argument else 1001

    @property
    def seconds(self) -> float | None:
        """The duration of ``stall`` (None: until stopped) or the delay of ``slow``."""
        return float(self.argument) if self.argument else None

    @property
    def count(self) -> int:
        """How many connections ``drop-next`` drops."""
        return int(self.argument) if self.argument else 1

    @property
    def error_code(self) -> str:
        """The ERROR code of ``error`` (UNKNOWN unless given)."""
        return self.argument or ErrorCode.UNKNOWN.value

    @property
    def text(self) -> str:
        """The frame ``malformed`` sends: broken JSON unless given."""
        return self.argument if self.argument is not None else '{"type":"FEED_DATA","channel":'


def _seconds(text: str, what: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"fault {spec!r}: {what} must be a number of seconds >= 0, got {text!r}")
    return value


def _split_when(spec: str) -> tuple[str, str, str]:
    """``KIND[:ARG]``, ``@`` and ``AT[/EVERY]``; the last ``@`` counts (a token may hold one)."""
    text = spec.strip()
    return text.rpartition("@") if "@" in text else (text, "", "")


def _shown(spec: str) -> str:
    """The spec as error messages may show it: an expire-token's token is hidden."""
    head, at, when = _split_when(spec)
    name, colon, _ = head.partition(":")
    if name == FaultKind.EXPIRE_TOKEN and colon:
        head = f"{name}:<hidden>"
    return head + at + when


def parse_fault(text: str) -> Fault:
    """Parse ``KIND[:ARG][@AT[/EVERY]]`` (see the module docstring).

    Raises:
        ValueError: naming the part that is wrong and the accepted form (never a token).
    """
    spec = _shown(text)
    head, _, when = _split_when(text)
    name, colon, argument = head.partition(":")
    try:
        kind = FaultKind(name)
    except ValueError:
        raise ValueError(f"fault {spec!r}: unknown kind {name!r}; use {FAULT_HELP}") from None
    at, every = 0.0, None
    if when:
        start, slash, period = when.partition("/")
        at = _seconds(start, "AT", spec)
        if slash:
            every = _seconds(period, "EVERY", spec)
            if every <= 0:
                raise ValueError(f"fault {spec!r}: EVERY must be more than 0 seconds")
    fault = Fault(kind, at, every, argument if colon else None)
    _check_argument(fault, spec)
    return fault


def _check_argument(fault: Fault, spec: str) -> None:
    kind, argument = fault.kind, fault.argument
    if kind is FaultKind.DROP and argument is not None:
        raise ValueError(f"fault {spec!r}: drop takes no argument")
    bad_code = argument is not None and not (argument.isdigit() and 1000 <= int(argument) <= 4999)
    if kind is FaultKind.CLOSE and bad_code:
        raise ValueError(f"fault {spec!r}: close takes a close code 1000-4999, e.g. close:1001")
    if kind in (FaultKind.STALL, FaultKind.SLOW) and argument is not None:
        _seconds(argument, f"the {kind} duration", spec)
    if kind is FaultKind.SLOW and argument is None:
        raise ValueError(f"fault {spec!r}: slow needs the delay per message, e.g. slow:0.2")
    bad_count = argument is not None and not (argument.isdigit() and int(argument) >= 1)
    if kind is FaultKind.DROP_NEXT and bad_count:
        raise ValueError(f"fault {spec!r}: drop-next takes a count >= 1, e.g. drop-next:5")
    if kind is FaultKind.ERROR and argument is not None and not argument:
        raise ValueError(f"fault {spec!r}: error takes a code, e.g. error:TIMEOUT")
    if kind is FaultKind.EXPIRE_TOKEN and not argument:
        raise ValueError(
            f"fault {spec!r}: expire-token needs the new token, e.g. expire-token:NEW_TOKEN"
        )
