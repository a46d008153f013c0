"""Tests for pipeline/ingest/tastytrade.py against a local fake of tastytrade's REST API."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipeline.config import loads_config
from pipeline.dxlink import AuthenticationError, ConfigurationError
from pipeline.dxlink.client import TokenSource
from pipeline.ingest import (
    QuoteToken,
    SimulatorTokenSource,
    TastytradeAPIError,
    TastytradeAuthError,
    TastytradeTokenSource,
    validate_dxlink_url,
)
from tests.helpers.fake_tastytrade import CUSTOMER_NOT_FOUND, FakeClock, FakeTastytrade

CLIENT_SECRET = "cs-5ecret-Value-0001"
REFRESH_TOKEN = "rt-5ecret-Value-0002"
HOUR = 3600.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake(clock: FakeClock) -> Iterator[FakeTastytrade]:
    with FakeTastytrade(
        client_secret=CLIENT_SECRET, refresh_token=REFRESH_TOKEN, clock=clock
    ) as server:
        yield server


def make_source(fake: FakeTastytrade, clock: FakeClock, **kwargs: Any) -> TastytradeTokenSource:
    options: dict[str, Any] = {
        "client_secret": CLIENT_SECRET,
        "refresh_token": REFRESH_TOKEN,
        "api_url": fake.url,
        "clock": clock,
        "request_timeout": 5.0,
    }
    options.update(kwargs)
    return TastytradeTokenSource(**options)


def all_secrets(fake: FakeTastytrade) -> list[str]:
    """Every credential or token the fake handed out or accepted."""
    return [CLIENT_SECRET, REFRESH_TOKEN, *fake.access_tokens, *fake.quote_tokens]


def assert_no_secret(text: str, fake: FakeTastytrade) -> None:
    for secret in all_secrets(fake):
        assert secret not in text, f"secret leaked into: {text!r}"


# --- happy path and caching ------------------------------------------------------------------


async def test_get_returns_quote_token_from_api(fake: FakeTastytrade, clock: FakeClock) -> None:
    """get() performs the OAuth refresh grant, then fetches the quote token and URL."""
    quote = await make_source(fake, clock).get()
    assert quote.token.get_secret_value() == fake.quote_tokens[0]
    assert quote.dxlink_url == "wss://tasty-openapi-ws.dxfeed.com/realtime"
    assert quote.level == "api"
    assert quote.expires_at == datetime.fromtimestamp(clock.now, UTC) + timedelta(hours=24)
    oauth, quote_call = fake.requests
    assert (oauth.method, oauth.path) == ("POST", "/oauth/token")
    assert oauth.body == {
        "grant_type": "refresh_token",
        "client_secret": CLIENT_SECRET,
        "refresh_token": REFRESH_TOKEN,
    }
    assert "authorization" not in oauth.headers
    assert oauth.headers["content-type"] == "application/json"
    assert (quote_call.method, quote_call.path) == ("GET", "/api-quote-tokens")
    assert quote_call.headers["authorization"] == f"Bearer {next(iter(fake.access_tokens))}"
    for request in fake.requests:
        assert request.headers["user-agent"].startswith("candle-pipeline/")


async def test_quote_token_is_cached_until_an_hour_before_expiry(
    fake: FakeTastytrade, clock: FakeClock
) -> None:
    """The quote token is reused until 1 h before its 24 h expiry, then both tokens renew."""
    source = make_source(fake, clock)
    first = await source.get()
    clock.advance(23 * HOUR - 1)
    assert await source.get() is first
    assert (fake.count("/oauth/token"), fake.count("/api-quote-tokens")) == (1, 1)
    clock.advance(1)
    second = await source.get()
    assert second.token.get_secret_value() != first.token.get_secret_value()
    # The 900 s access token had long expired, so a new one was obtained first.
    assert (fake.count("/oauth/token"), fake.count("/api-quote-tokens")) == (2, 2)


async def test_missing_expires_at_means_24_hours(clock: FakeClock) -> None:
    """Without expires-at the token is assumed to live 24 h (§1)."""
    with FakeTastytrade(
        client_secret=CLIENT_SECRET,
        refresh_token=REFRESH_TOKEN,
        clock=clock,
        send_expires_at=False,
    ) as fake:
        source = make_source(fake, clock)
        quote = await source.get()
        assert quote.expires_at == datetime.fromtimestamp(clock.now, UTC) + timedelta(hours=24)
        clock.advance(23 * HOUR - 1)
        await source.get()
        assert fake.count("/api-quote-tokens") == 1


async def test_short_lived_token_refreshes_half_way(clock: FakeClock) -> None:
    """A token living less than the margin is refreshed half way through its life."""
    with FakeTastytrade(
        client_secret=CLIENT_SECRET,
        refresh_token=REFRESH_TOKEN,
        clock=clock,
        quote_lifetime=timedelta(minutes=20),
    ) as fake:
        source = make_source(fake, clock)
        await source.get()
        clock.advance(10 * 60 - 1)
        await source.get()
        assert fake.count("/api-quote-tokens") == 1
        clock.advance(1)
        await source.get()
        assert fake.count("/api-quote-tokens") == 2


async def test_access_token_is_reused_until_shortly_before_expiry(
    fake: FakeTastytrade, clock: FakeClock
) -> None:
    """Forced quote refreshes reuse the access token until 60 s before it expires."""
    source = make_source(fake, clock)
    await source.get()
    clock.advance(900 - 61)
    await source.get(force_refresh=True)
    assert (fake.count("/oauth/token"), fake.count("/api-quote-tokens")) == (1, 2)
    clock.advance(1)
    await source.get(force_refresh=True)
    assert (fake.count("/oauth/token"), fake.count("/api-quote-tokens")) == (2, 3)


async def test_force_refresh_fetches_a_new_quote_token(
    fake: FakeTastytrade, clock: FakeClock
) -> None:
    """force_refresh (after UNAUTHORIZED) fetches a new quote token even if cached."""
    source = make_source(fake, clock)
    first = await source.get()
    second = await source.get(force_refresh=True)
    assert first.token.get_secret_value() != second.token.get_secret_value()
    assert fake.count("/api-quote-tokens") == 2
    assert await source.get() is second


async def test_failed_forced_refresh_drops_the_rejected_token(
    fake: FakeTastytrade, clock: FakeClock
) -> None:
    """After a forced refresh fails, a plain get() fetches again instead of the old token."""
    source = make_source(fake, clock)
    rejected = await source.get()
    fake.fail_next("/api-quote-tokens", 503, b"")
    with pytest.raises(TastytradeAPIError):
        await source.get(force_refresh=True)
    again = await source.get()
    assert again.token.get_secret_value() != rejected.token.get_secret_value()
    assert fake.count("/api-quote-tokens") == 3


async def test_concurrent_calls_share_one_fetch(fake: FakeTastytrade, clock: FakeClock) -> None:
    """Many concurrent get() calls, forced or not, cause a single fetch."""
    source = make_source(fake, clock)
    plain = await asyncio.gather(*(source.get() for _ in range(5)))
    assert len({id(quote) for quote in plain}) == 1
    forced = await asyncio.gather(*(source.get(force_refresh=True) for _ in range(5)))
    assert len({id(quote) for quote in forced}) == 1
    assert (fake.count("/oauth/token"), fake.count("/api-quote-tokens")) == (1, 2)


async def test_access_token_refused_early_reauthenticates_once(
    fake: FakeTastytrade, clock: FakeClock
) -> None:
    """A 401 from /api-quote-tokens triggers one new OAuth grant and one retry."""
    source = make_source(fake, clock)
    await source.get()
    fake.revoke_access_tokens()
    quote = await source.get(force_refresh=True)
    assert quote.token.get_secret_value() == fake.quote_tokens[-1]
    assert (fake.count("/oauth/token"), fake.count("/api-quote-tokens")) == (2, 3)


async def test_persistent_401_is_an_api_error(fake: FakeTastytrade, clock: FakeClock) -> None:
    """If a fresh access token is refused too, get() fails instead of looping."""
    body = {"error": {"code": "unauthorized", "message": "This token is invalid or has expired"}}
    fake.fail_next("/api-quote-tokens", 401, body, times=2)
    with pytest.raises(TastytradeAPIError) as info:
        await make_source(fake, clock).get()
    assert info.value.status == 401 and not info.value.transient
    assert fake.count("/api-quote-tokens") == 2


# --- errors ----------------------------------------------------------------------------------


async def test_bad_refresh_token_names_the_env_var(fake: FakeTastytrade, clock: FakeClock) -> None:
    """invalid_grant is a fatal TastytradeAuthError naming the refresh-token variable only."""
    source = make_source(fake, clock, refresh_token="rt-WRONG-value-9")
    with pytest.raises(TastytradeAuthError) as info:
        await source.get()
    message = str(info.value)
    assert "TASTYTRADE_REFRESH_TOKEN" in message
    assert "invalid_grant: Invalid JWT" in message
    assert "TASTYTRADE_CLIENT_SECRET" not in message
    assert "rt-WRONG-value-9" not in message
    assert info.value.env_vars == ("TASTYTRADE_REFRESH_TOKEN",)
    assert not info.value.transient
    assert isinstance(info.value, AuthenticationError)
    assert fake.count("/api-quote-tokens") == 0


async def test_bad_client_secret_names_its_env_var(fake: FakeTastytrade, clock: FakeClock) -> None:
    """invalid_client names the client-secret variable (a custom name is honoured)."""
    source = make_source(fake, clock, client_secret="cs-WRONG", client_secret_env="MY_SECRET")
    with pytest.raises(TastytradeAuthError) as info:
        await source.get()
    assert info.value.env_vars == ("MY_SECRET",)
    assert "MY_SECRET" in str(info.value) and "cs-WRONG" not in str(info.value)


async def test_customer_not_found_is_surfaced(clock: FakeClock) -> None:
    """tastytrade's customer_not_found error code and text reach the exception, not retried."""
    with (
        FakeTastytrade(
            client_secret=CLIENT_SECRET, refresh_token=REFRESH_TOKEN, clock=clock, customer=False
        ) as fake,
        pytest.raises(TastytradeAPIError) as info,
    ):
        await make_source(fake, clock).get()
    error = info.value
    assert error.status == 403
    assert error.code == CUSTOMER_NOT_FOUND["error"]["code"]
    assert "You must be a customer to access a quote stream." in str(error)
    assert "quote_streamer.customer_not_found_error" in str(error)
    assert not error.transient


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [
        ("/api-quote-tokens", 503, {"error": {"code": "service_unavailable", "message": "down"}}),
        ("/api-quote-tokens", 502, b"<html><body>Bad Gateway</body></html>"),
        ("/oauth/token", 500, b""),
        ("/api-quote-tokens", 429, {"error": {"code": "rate_limited", "message": "slow down"}}),
    ],
)
async def test_server_errors_are_transient(
    fake: FakeTastytrade, clock: FakeClock, path: str, status: int, body: Any
) -> None:
    """5xx and 429 raise a transient TastytradeAPIError with the status; a retry then works."""
    fake.fail_next(path, status, body)
    source = make_source(fake, clock)
    with pytest.raises(TastytradeAPIError) as info:
        await source.get()
    assert info.value.status == status and info.value.transient
    assert f"HTTP {status}" in str(info.value)
    assert await source.get() is not None


async def test_network_failure_is_transient(clock: FakeClock) -> None:
    """No server listening: a transient error with no status."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    source = TastytradeTokenSource(
        client_secret=CLIENT_SECRET,
        refresh_token=REFRESH_TOKEN,
        api_url=f"http://127.0.0.1:{port}",
        clock=clock,
    )
    with pytest.raises(TastytradeAPIError) as info:
        await source.get()
    assert info.value.status is None and info.value.transient
    assert info.value.request == "POST /oauth/token"


async def test_timeout_is_transient(fake: FakeTastytrade, clock: FakeClock) -> None:
    """A reply slower than request_timeout is a transient error."""
    release = fake.hold_next("/oauth/token")
    try:
        with pytest.raises(TastytradeAPIError) as info:
            await make_source(fake, clock, request_timeout=0.2).get()
    finally:
        release.set()
    assert info.value.status is None and info.value.transient


async def test_redirects_are_not_followed(fake: FakeTastytrade, clock: FakeClock) -> None:
    """A redirect is an error; the bearer token is never sent on to its target."""
    source = make_source(fake, clock)
    fake.fail_next("/api-quote-tokens", 302, b"", headers={"Location": "/elsewhere"})
    with pytest.raises(TastytradeAPIError) as info:
        await source.get()
    assert info.value.status == 302
    assert fake.count("/elsewhere") == 0


@pytest.mark.parametrize(
    ("path", "body", "what"),
    [
        ("/oauth/token", {"token_type": "Bearer"}, "no access_token"),
        ("/api-quote-tokens", {"data": {"dxlink-url": "wss://x/realtime"}}, "no data.token"),
        ("/api-quote-tokens", {"data": {"token": "t"}}, "no data.dxlink-url"),
        ("/api-quote-tokens", b"[1, 2]", "not a JSON object"),
    ],
)
async def test_malformed_replies_are_reported(
    fake: FakeTastytrade, clock: FakeClock, path: str, body: Any, what: str
) -> None:
    """A 200 reply without the expected fields is an invalid_response error."""
    fake.fail_next(path, 200, body)
    with pytest.raises(TastytradeAPIError) as info:
        await make_source(fake, clock).get()
    assert info.value.code == "invalid_response" and what in str(info.value)


async def test_insecure_dxlink_url_from_server_is_refused(clock: FakeClock) -> None:
    """A ws:// dxlink-url for a remote host is refused unless allow_insecure_ws."""
    with FakeTastytrade(
        client_secret=CLIENT_SECRET,
        refresh_token=REFRESH_TOKEN,
        clock=clock,
        dxlink_url="ws://feed.example.com/realtime",
    ) as fake:
        with pytest.raises(ConfigurationError, match="allow_insecure_ws"):
            await make_source(fake, clock).get()
        quote = await make_source(fake, clock, allow_insecure_ws=True).get()
        assert quote.dxlink_url == "ws://feed.example.com/realtime"


async def test_server_echoing_a_secret_is_scrubbed(fake: FakeTastytrade, clock: FakeClock) -> None:
    """Even if an error body echoes a credential, the exception text does not."""
    body = {"error": {"code": "bad_request", "message": f"unknown token {REFRESH_TOKEN}"}}
    fake.fail_next("/oauth/token", 422, body)
    with pytest.raises(TastytradeAPIError) as info:
        await make_source(fake, clock).get()
    assert REFRESH_TOKEN not in str(info.value)
    assert "unknown token **********" in str(info.value)


async def test_secrets_never_reach_reprs_exceptions_or_logs(
    fake: FakeTastytrade, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Across success, refresh, rejection and failure, no secret is in any text we produce."""
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    source = make_source(fake, clock)
    quote = await source.get()
    texts += [repr(source), repr(quote), str(quote.token), repr(quote.token)]
    fake.revoke_access_tokens()
    texts.append(repr(await source.get(force_refresh=True)))
    failures: list[tuple[int, dict[str, Any] | bytes]] = [(503, b"oops"), (403, CUSTOMER_NOT_FOUND)]
    for status, body in failures:
        fake.fail_next("/api-quote-tokens", status, body)
        with pytest.raises(TastytradeAPIError) as api_error:
            await source.get(force_refresh=True)
        texts += [str(api_error.value), repr(api_error.value)]
    bad = make_source(fake, clock, refresh_token="rt-WRONG-value-9")
    with pytest.raises(TastytradeAuthError) as auth_error:
        await bad.get()
    texts += [str(auth_error.value), repr(auth_error.value), repr(bad)]
    texts.append(caplog.text)
    assert "> POST /oauth/token" in caplog.text  # the debug log did run
    for text in texts:
        assert_no_secret(text, fake)
        assert "rt-WRONG-value-9" not in text


# --- construction ----------------------------------------------------------------------------


def test_plain_http_api_url_is_refused_off_loopback() -> None:
    """The constructor refuses to send credentials over http:// to a remote host."""
    with pytest.raises(ConfigurationError, match="https"):
        TastytradeTokenSource(
            client_secret=CLIENT_SECRET,
            refresh_token=REFRESH_TOKEN,
            api_url="http://api.tastyworks.com",
        )


def test_from_env_requires_both_variables() -> None:
    """A missing credential variable is a ConfigurationError naming it."""
    with pytest.raises(ConfigurationError) as info:
        TastytradeTokenSource.from_env(environ={"TASTYTRADE_CLIENT_SECRET": CLIENT_SECRET})
    assert "TASTYTRADE_REFRESH_TOKEN" in str(info.value)
    assert CLIENT_SECRET not in str(info.value)


async def test_from_config_reads_named_variables(fake: FakeTastytrade, clock: FakeClock) -> None:
    """from_config takes api_url and env var names from [source.tastytrade]."""
    config = loads_config(
        f'[source.tastytrade]\napi_url = "{fake.url}"\n'
        'client_secret_env = "TT_SECRET"\nrefresh_token_env = "TT_REFRESH"\n',
        environ={},
    )
    environ = {"TT_SECRET": CLIENT_SECRET, "TT_REFRESH": REFRESH_TOKEN}
    source = TastytradeTokenSource.from_config(
        config.source.tastytrade, environ=environ, clock=clock
    )
    assert isinstance(source, TokenSource)
    assert (await source.get()).level == "api"
    assert "TT_REFRESH" in repr(source) and REFRESH_TOKEN not in repr(source)


@pytest.mark.parametrize(
    ("url", "allow_insecure", "ok"),
    [
        ("wss://tasty-openapi-ws.dxfeed.com/realtime", False, True),
        ("ws://127.0.0.1:8765/realtime", False, True),
        ("ws://[::1]:8765", False, True),
        ("ws://localhost:1", False, True),
        ("ws://feed.example.com/realtime", False, False),
        ("ws://feed.example.com/realtime", True, True),
        ("https://feed.example.com/realtime", True, False),
        ("wss:///realtime", False, False),
        ("wss://host:notaport/x", False, False),
        ("not a url", True, False),
    ],
)
def test_validate_dxlink_url(url: str, allow_insecure: bool, ok: bool) -> None:
    """wss:// always; ws:// for loopback or when allowed; anything else is refused."""
    if ok:
        assert validate_dxlink_url(url, allow_insecure) == url
    else:
        with pytest.raises(ConfigurationError, match="dxlink-url"):
            validate_dxlink_url(url, allow_insecure)


def test_validate_dxlink_url_hides_credentials_and_query() -> None:
    """The error shows the URL without user info or query string."""
    with pytest.raises(ConfigurationError) as info:
        validate_dxlink_url("ws://user:pw@feed.example.com/x?token=abc")
    assert "pw" not in str(info.value) and "abc" not in str(info.value)


# --- simulator -------------------------------------------------------------------------------


async def test_simulator_source_hands_out_its_url_and_token() -> None:
    """SimulatorTokenSource returns the simulator's URL and token and counts requests."""
    clock = FakeClock()
    source = SimulatorTokenSource("ws://127.0.0.1:8765/", "sim-token", clock=clock)
    assert isinstance(source, TokenSource)
    quote = await source.get()
    assert isinstance(quote, QuoteToken)
    assert (quote.dxlink_url, quote.level) == ("ws://127.0.0.1:8765/", "simulator")
    assert quote.token.get_secret_value() == "sim-token"
    assert quote.expires_at > datetime.fromtimestamp(clock.now, UTC)
    source.replace_token("rotated")
    forced = await source.get(force_refresh=True)
    assert forced.token.get_secret_value() == "rotated"
    assert (source.fetches, source.forced) == (2, 1)
    assert "sim-token" not in repr(quote) and "rotated" not in repr(source)


def test_simulator_source_rejects_non_websocket_url() -> None:
    """The simulator URL must be ws:// or wss://."""
    with pytest.raises(ConfigurationError):
        SimulatorTokenSource("http://127.0.0.1:1", "t")
