"""Tests for pipeline/simulator/faults.py: the fault specs of ``candles simulate --fault``."""

from __future__ import annotations

import pytest

from pipeline.simulator import Fault, FaultKind, parse_fault


@pytest.mark.parametrize(
    ("spec", "fault"),
    [
        ("drop", Fault(FaultKind.DROP)),
        ("drop@30", Fault(FaultKind.DROP, 30.0)),
        ("close:1000@5", Fault(FaultKind.CLOSE, 5.0, None, "1000")),
        ("stall:10@60/300", Fault(FaultKind.STALL, 60.0, 300.0, "10")),
        ("malformed:oops", Fault(FaultKind.MALFORMED, 0.0, None, "oops")),
        ("error:TIMEOUT@1.5", Fault(FaultKind.ERROR, 1.5, None, "TIMEOUT")),
        ("drop-next:5", Fault(FaultKind.DROP_NEXT, 0.0, None, "5")),
        ("slow:0.2@10", Fault(FaultKind.SLOW, 10.0, None, "0.2")),
        ("expire-token:new@tok@120", Fault(FaultKind.EXPIRE_TOKEN, 120.0, None, "new@tok")),
    ],
)
def test_specs_parse(spec: str, fault: Fault) -> None:
    """KIND[:ARG][@AT[/EVERY]] in every variant."""
    assert parse_fault(spec) == fault


def test_argument_defaults() -> None:
    """close 1001, one dropped connection, UNKNOWN errors, broken JSON, stall forever."""
    assert parse_fault("close").close_code == 1001
    assert parse_fault("drop-next").count == 1
    assert parse_fault("error").error_code == "UNKNOWN"
    assert parse_fault("malformed").text.startswith('{"type"')
    assert parse_fault("stall").seconds is None


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("explode@1", "unknown kind 'explode'"),
        ("drop:now", "drop takes no argument"),
        ("close:99", "close code 1000-4999"),
        ("stall:soon", "stall duration must be a number"),
        ("slow", "slow needs the delay"),
        ("drop-next:0", "count >= 1"),
        ("drop@-1", "AT must be a number of seconds >= 0"),
        ("drop@1/0", "EVERY must be more than 0"),
        ("expire-token", "needs the new token"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, problem: str) -> None:
    """Each mistake is named in the error."""
    with pytest.raises(ValueError, match=problem):
        parse_fault(spec)


def test_tokens_never_show() -> None:
    """An expire-token's token appears neither in str/repr nor in error messages."""
    fault = parse_fault("expire-token:s3cret@5")
    assert "s3cret" not in str(fault) and "s3cret" not in repr(fault)
    with pytest.raises(ValueError) as error:
        parse_fault("expire-token:s3cret@later")
    assert "s3cret" not in str(error.value)
