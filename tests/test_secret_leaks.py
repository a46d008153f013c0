"""Not even part of a secret reaches a log line or an error (issue 14, item 7).

Every failure mode of the fake tastytrade REST API (``tests/helpers/fake_tastytrade.py``) is
driven through the real client: a ``DXLinkManager`` whose ``TastytradeTokenSource`` talks to the
fake, with every logger at DEBUG. The log text (tracebacks included), the error the manager
stops with (its whole cause chain) and the reprs are then searched for any substring of six
characters or more of any secret: the OAuth client secret and refresh token, every access and
quote token the fake issued, and the password and token a ``dxlink-url`` may carry.

Secrets are drawn from letters that form no words and no hex, so a six-character window of
one in the log can only be a leak.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr
from websockets.exceptions import InvalidURI

from pipeline.dxlink.client import DXLinkManager
from pipeline.dxlink.client.retry import describe, explain_fatal
from pipeline.ingest import QuoteToken, SimulatorTokenSource, TastytradeTokenSource
from pipeline.simulator import SimulatorClock
from tests.helpers.fake_tastytrade import FakeTastytrade, IssuedTokenSimulator
from tests.helpers.timing import TIMEOUT

ALPHABET = "QXZJKVWYqxzjkvwy"
WINDOW = 6


def _secret(seed: str, length: int = 20) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(ALPHABET) for _ in range(length))


CLIENT_SECRET = _secret("client secret")
REFRESH_TOKEN = _secret("refresh token", 16)
WRONG_SECRET = _secret("a wrong client secret")
WRONG_REFRESH = _secret("a wrong refresh token", 16)
URL_PASSWORD = _secret("password in the dxlink-url", 12)
URL_TOKEN = _secret("token in the dxlink-url")


def _mint(kind: str, serial: int) -> str:
    return _secret(f"{kind} {serial}", 24)


def _windows(secret: str) -> set[str]:
    return {secret[i : i + WINDOW] for i in range(len(secret) - WINDOW + 1)}


def _leaks(text: str, secrets: list[str]) -> list[str]:
    found = []
    for secret in secrets:
        pieces = sorted(piece for piece in _windows(secret) if piece in text)
        if pieces:
            found.append(f"{len(pieces)} pieces of {secret[:2]}...: {pieces[:3]}")
    return found


def _chain(error: BaseException | None) -> list[str]:
    texts: list[str] = []
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        texts += [str(error), repr(error), *(str(a) for a in error.args)]
        error = error.__cause__ or error.__context__
    return texts


@dataclass
class Mode:
    """One way the REST API (or what it returns) can go wrong, and what the source gets."""

    name: str
    script: Callable[[FakeTastytrade], None] = lambda fake: None
    source: dict[str, Any] = field(default_factory=dict)
    dxlink_url: str | None = None
    """``{sim}`` is replaced by the simulator's host:port."""
    connects: bool = False


def _echo(position: int, secret: str) -> bytes:
    """A non-JSON error body with ``secret`` starting at ``position`` (the old 200 cut)."""
    return (b"e" * position) + f"{secret}&client_secret={CLIENT_SECRET}".encode()


MODES = [
    Mode("wrong client secret", source={"client_secret": WRONG_SECRET}),
    Mode("wrong refresh token", source={"refresh_token": WRONG_REFRESH}),
    Mode(
        "oauth 400 text echoing the token across the old cut",
        lambda fake: fake.fail_next("/oauth/token", 400, _echo(191, REFRESH_TOKEN)),
    ),
    Mode(
        "oauth 500 html echoing the secrets",
        lambda fake: fake.fail_next(
            "/oauth/token", 500, b"<html>" + _echo(120, REFRESH_TOKEN) + b"</html>"
        ),
    ),
    Mode(
        "oauth 422 json echoing the secrets",
        lambda fake: fake.fail_next(
            "/oauth/token",
            422,
            {
                "error_code": f"bad_{CLIENT_SECRET}",
                "error_description": f"unknown {REFRESH_TOKEN[:10]} / {REFRESH_TOKEN[8:]}",
            },
        ),
    ),
    Mode(
        "oauth 401 json echoing a piece of the refresh token",
        lambda fake: fake.fail_next(
            "/oauth/token",
            401,
            {"error_code": "invalid_grant", "error_description": f"jwt {REFRESH_TOKEN[3:12]}"},
        ),
    ),
    Mode(
        "quote token 401 twice, body echoing the bearer",
        lambda fake: fake.fail_next(
            "/api-quote-tokens",
            401,
            b"x" * 197 + b"Bearer " + b"".join(t.encode() for t in fake.access_tokens),
            times=2,
        ),
    ),
    Mode("quote token 403 not a customer", lambda fake: setattr(fake, "customer", False)),
    Mode(
        "quote token 429 text echoing the secrets",
        lambda fake: fake.fail_next("/api-quote-tokens", 429, _echo(180, REFRESH_TOKEN)),
    ),
    Mode(
        "quote token 503 html",
        lambda fake: fake.fail_next("/api-quote-tokens", 503, b"<html>" + _echo(300, WRONG_SECRET)),
    ),
    Mode(
        "quote token redirect carrying a token",
        lambda fake: fake.fail_next(
            "/api-quote-tokens", 302, b"", headers={"Location": f"/elsewhere?t={URL_TOKEN}"}
        ),
    ),
    Mode(
        "quote token reply without a token",
        lambda fake: fake.fail_next(
            "/api-quote-tokens", 200, {"data": {"dxlink-url": f"wss://{URL_PASSWORD}@x/"}}
        ),
    ),
    Mode("quote token reply not an object", lambda fake: fake.fail_next("/oauth/token", 200, b"[")),
    Mode(
        "remote ws:// dxlink-url with credentials (refused)",
        dxlink_url=f"ws://qx:{URL_PASSWORD}@feed.example.com/realtime?token={URL_TOKEN}",
    ),
    Mode(
        "malformed dxlink-url with credentials (refused)",
        dxlink_url=f"wss://qx:{URL_PASSWORD}@feed.example.com:99999/?token={URL_TOKEN}",
    ),
    Mode(
        "dxlink-url with a password and a token in its query (connects)",
        dxlink_url=f"ws://qx:{URL_PASSWORD}@{{sim}}/realtime?token={URL_TOKEN}",
        connects=True,
    ),
    Mode("network error", source={"api_url": "http://127.0.0.1:9"}),
]


@pytest.mark.parametrize("mode", MODES, ids=[mode.name for mode in MODES])
async def test_no_piece_of_a_secret_reaches_logs_or_errors(
    mode: Mode, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever the REST API answers, no 6-character piece of a secret is logged or raised."""
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    rest = FakeTastytrade(
        client_secret=CLIENT_SECRET, refresh_token=REFRESH_TOKEN, clock=time.time, mint=_mint
    )
    with rest:
        clock = SimulatorClock.manual(1_750_000_000_000)
        async with IssuedTokenSimulator(rest, seed=14, clock=clock) as sim:
            host = sim.url.split("//", 1)[1].rstrip("/")
            rest.dxlink_url = sim.url
            options: dict[str, Any] = {
                "client_secret": CLIENT_SECRET,
                "refresh_token": REFRESH_TOKEN,
                "api_url": rest.url,
                "request_timeout": 5.0,
            }
            source = TastytradeTokenSource(**options)
            await source.get()  # a healthy first round: real tokens are in play (and in logs)
            if mode.source:
                source = TastytradeTokenSource(**(options | mode.source))
            mode.script(rest)
            rest.dxlink_url = (mode.dxlink_url or "ws://{sim}/").replace("{sim}", host)
            client = DXLinkManager(source, max_attempts=1, backoff_initial=0.01, backoff_max=0.01)
            texts.append(repr(source))
            async with client:
                # Force the whole flow again: no cached access or quote token.
                source._access = source._quote = None
                if mode.connects:
                    await client.subscribe_to_candles(
                        symbol="AAPL", interval="1m", from_time=1_749_990_000_000
                    )
                    await asyncio.wait_for(sim.wait_for_subscriptions(1), TIMEOUT)
                else:
                    with pytest.raises(Exception) as stopped:
                        async with asyncio.timeout(TIMEOUT):
                            async for _ in client.candles():
                                pass
                    texts += _chain(stopped.value)
            texts.append(repr(client.get_metrics()))
    # The simulator stands in for dxFeed's server here; what *it* logs is not the pipeline's.
    server = ("websockets.server", "pipeline.simulator")
    texts += [
        caplog.handler.format(record)
        for record in caplog.records
        if not record.name.startswith(server)
    ]
    assert "pipeline.ingest.tastytrade" in {r.name for r in caplog.records}, "nothing was logged"
    secrets = [CLIENT_SECRET, REFRESH_TOKEN, WRONG_SECRET, WRONG_REFRESH, URL_PASSWORD]
    secrets += [URL_TOKEN, *rest.access_tokens, *rest.quote_tokens]
    leaks = [
        f"{leak} in {line!r}"
        for text in texts
        for line in text.splitlines()
        for leak in _leaks(line, secrets)
    ]
    assert leaks == []


def test_an_invalid_uri_is_described_without_its_credentials() -> None:
    """websockets' InvalidURI carries the whole URL; our descriptions of it do not."""
    url = f"wss://qx:{URL_PASSWORD}@feed.example.com:1/x?token={URL_TOKEN}"
    error = InvalidURI(url, "test")
    texts = [describe(error), explain_fatal(error, max_batch_bytes=1, max_message_size=1)]
    assert all("feed.example.com:1/x" in text for text in texts), texts
    assert [leak for text in texts for leak in _leaks(text, [URL_PASSWORD, URL_TOKEN])] == []


def test_reprs_of_quote_tokens_hide_the_url_credentials() -> None:
    """A QuoteToken's and a SimulatorTokenSource's repr show the URL without credentials."""
    url = f"ws://qx:{URL_PASSWORD}@127.0.0.1:1/x?token={URL_TOKEN}"
    quote = QuoteToken(SecretStr(URL_TOKEN), url, "api", datetime.now(UTC))
    texts = [repr(quote), repr(SimulatorTokenSource(url, "simulator"))]
    assert all("127.0.0.1:1/x" in text for text in texts), texts
    assert [leak for text in texts for leak in _leaks(text, [URL_PASSWORD, URL_TOKEN])] == []
