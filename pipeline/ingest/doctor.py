"""``candles doctor``: first contact with a source, one step at a time (issue 17).

A new account fails in one of a handful of places, and ``candles ingest``'s reconnect loop is
the wrong tool to find which: it retries what a newcomer needs explained. The doctor walks the
path a connection takes, once, and stops at the first step that fails, saying what it found
and what to do:

1. secrets in the environment (the variables the config names; never their values);
2. the OAuth access token (tastytrade only: ``POST /oauth/token``);
3. the quote token and DXLink URL (tastytrade: ``GET /api-quote-tokens``; a ``dxlink``
   source: its URL and token variable; the simulator: its URL);
4. the WebSocket connect;
5. SETUP and AUTH_STATE (§2.2);
6. a HISTORY channel and its FEED_CONFIG (§3.2);
7. one Candle subscription from ``since`` back (an hour by default, §6.2);
8. the first candles received and assembled by the
   :class:`~pipeline.candles.CandleDataManager` (until the snapshot ends, §6.3).

Each step is timed. Steps 4 to 8 drive the sans-I/O :class:`~pipeline.dxlink.ClientProtocol`
directly over one WebSocket, with the client's own transport settings, so a failure is seen
where it happens rather than after a retry. Every text a step reports passes through a scrub
that masks the secrets the doctor read, so none can reach the terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from pipeline.candles import CandleDataManager
from pipeline.config import Config
from pipeline.dxlink import (
    AUTHORIZED,
    AWAIT_AUTH,
    CANDLE_FIELDS,
    SNAPSHOT_END,
    SNAPSHOT_SNIP,
    Authorized,
    AuthRejected,
    Candle,
    CandlesReceived,
    CandleSymbol,
    ChannelOpened,
    ClientProtocol,
    Contract,
    DataFormat,
    ErrorReceived,
    FeedConfigured,
    ServerSetup,
    SubscriptionItem,
)
from pipeline.dxlink.client import (
    DEFAULT_MAX_MESSAGE_SIZE,
    QuoteToken,
    loggable_url,
    open_websocket,
)
from pipeline.ingest.runner import open_source, token_source_for
from pipeline.ingest.sources import QuoteToken as IssuedToken
from pipeline.ingest.tastytrade import TastytradeError, TastytradeTokenSource

__all__ = ["DoctorReport", "Outcome", "Step", "StepResult", "run_doctor"]

CLOSE_TIMEOUT_S = 2.0


class Step(StrEnum):
    """The steps, in the order a connection takes them."""

    SECRETS = "secrets in the environment"
    ACCESS_TOKEN = "OAuth access token"
    QUOTE_TOKEN = "quote token and DXLink URL"
    CONNECT = "WebSocket connect"
    AUTH = "SETUP and AUTH_STATE"
    CHANNEL = "channel and FEED_CONFIG"
    SUBSCRIBE = "Candle subscription"
    CANDLES = "first candles received and assembled"


class Outcome(StrEnum):
    """How a step ended."""

    OK = "ok"
    FAILED = "FAILED"
    SKIPPED = "skipped"
    """Not part of this source's path (the OAuth token of a dxlink source)."""
    NOT_RUN = "not run"
    """An earlier step failed."""


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one step found."""

    step: Step
    outcome: Outcome
    seconds: float
    detail: str
    """What was found (never a secret)."""
    advice: str = ""
    """What to do, when it failed."""


@dataclass
class DoctorReport:
    """Every step's result, in order."""

    source: str
    """The source as checked, e.g. ``tastytrade (https://api.tastyworks.com)``."""
    series: str
    """The candle series subscribed, e.g. ``AAPL{=1m}``."""
    steps: list[StepResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no step failed and every step ran."""
        return all(s.outcome in (Outcome.OK, Outcome.SKIPPED) for s in self.steps)

    @property
    def failed(self) -> StepResult | None:
        """The step that failed, if one did."""
        return next((s for s in self.steps if s.outcome is Outcome.FAILED), None)


class _Failed(Exception):
    """A step failed: what was found and what to do."""

    def __init__(self, detail: str, advice: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.advice = advice


class _Run:
    """Runs the steps in order, times each, and scrubs what they say."""

    def __init__(self, report: DoctorReport, secrets: Sequence[str], on_step: _OnStep) -> None:
        self.report = report
        self._secrets = [s for s in secrets if len(s) >= 4]
        self._on_step = on_step

    def add_secret(self, value: str) -> None:
        if len(value) >= 4:
            self._secrets.append(value)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "****")
        return text

    def record(
        self, step: Step, outcome: Outcome, seconds: float, detail: str, advice: str = ""
    ) -> None:
        result = StepResult(step, outcome, seconds, self.scrub(detail), self.scrub(advice))
        self.report.steps.append(result)
        self._on_step(result)

    async def step(self, step: Step, action: Callable[[], Awaitable[str]]) -> None:
        """Run ``action`` as ``step``; its text is the detail. Raises _Failed after recording."""
        started = time.perf_counter()
        try:
            detail = await action()
        except _Failed as failure:
            self.record(
                step, Outcome.FAILED, time.perf_counter() - started, failure.detail, failure.advice
            )
            raise
        self.record(step, Outcome.OK, time.perf_counter() - started, detail)

    def skip(self, step: Step, why: str) -> None:
        self.record(step, Outcome.SKIPPED, 0.0, why)

    def not_run(self) -> None:
        done = {result.step for result in self.report.steps}
        for step in Step:
            if step not in done:
                self.record(step, Outcome.NOT_RUN, 0.0, "")


_OnStep = Callable[[StepResult], None]


async def run_doctor(
    config: Config,
    *,
    series: CandleSymbol | None = None,
    since: timedelta = timedelta(hours=1),
    wait: float = 30.0,
    environ: Mapping[str, str] | None = None,
    on_step: _OnStep | None = None,
) -> DoctorReport:
    """Check the configured source step by step; see the module docstring.

    Args:
        config: The configuration; ``source.kind`` picks the source.
        series: The candle series to subscribe; default: the first configured symbol with
            the first configured interval.
        since: How far back the subscription's ``fromTime`` lies.
        wait: Longest wait, in seconds, for the first candles to arrive and their snapshot
            to end.
        environ: The environment holding the secrets (default ``os.environ``).
        on_step: Called with each step's result as soon as it is known (the CLI prints it).

    Returns:
        The report; ``report.ok`` tells whether every step passed.
    """
    env = os.environ if environ is None else environ
    subs = config.subscriptions
    wanted = series or CandleSymbol.of(
        subs.symbols[0], subs.intervals[0], **({} if subs.extended_hours else {"tho": "true"})
    )
    report = DoctorReport(_describe(config), wanted.normalized)
    run = _Run(report, _secret_values(config, env), on_step or (lambda result: None))
    try:
        await _check(run, config, env, wanted, since, wait)
    except _Failed:
        run.not_run()
    return report


async def _check(
    run: _Run,
    config: Config,
    env: Mapping[str, str],
    series: CandleSymbol,
    since: timedelta,
    wait: float,
) -> None:
    kind = config.source.kind
    await run.step(Step.SECRETS, lambda: _secrets_step(config, env))
    async with contextlib.AsyncExitStack() as stack:
        source = _Source(config, env, stack)
        if kind == "tastytrade":
            await run.step(Step.ACCESS_TOKEN, source.access_token)
        else:
            run.skip(Step.ACCESS_TOKEN, f"not used by the {kind} source")
        await run.step(Step.QUOTE_TOKEN, source.quote_token)
        assert source.quote is not None
        run.add_secret(_token_text(source.quote))  # the quote token is a credential too
        async with _connected(run, config, source.quote) as ws:
            session = _Session(ws, source.quote, config, source.now_ms)
            await run.step(Step.AUTH, session.authorize)
            await run.step(Step.CHANNEL, session.open_channel)
            # An hour back on the source's clock: the built-in simulator's runs behind.
            from_ms = source.now_ms() - int(since.total_seconds() * 1000)
            await run.step(Step.SUBSCRIBE, lambda: session.subscribe(series, from_ms, since))
            await run.step(Step.CANDLES, lambda: session.candles(series, from_ms, wait))


class _Source:
    """The token source of the config, and the built-in simulator when it needs one."""

    def __init__(
        self, config: Config, env: Mapping[str, str], stack: contextlib.AsyncExitStack
    ) -> None:
        self.config = config
        self.env = env
        self.stack = stack
        self.tokens: Any = None
        self.quote: QuoteToken | None = None
        self._clock: Callable[[], int] | None = None

    def now_ms(self) -> int:
        """The source's clock: the built-in simulator's, else the wall clock."""
        return self._clock() if self._clock is not None else int(time.time() * 1000)

    async def _build(self) -> Any:
        if self.tokens is not None:
            return self.tokens
        try:
            url, self._clock = await self.stack.enter_async_context(open_source(self.config))
        except OSError as exc:  # the built-in simulator could not listen
            raise _Failed(
                f"the built-in simulator could not start: {exc}",
                "set source.simulator.port to a free port, or 0 to pick one",
            ) from None
        try:
            self.tokens = token_source_for(self.config, simulator_url=url, environ=self.env)
        except Exception as exc:  # ConfigurationError: an env var or URL the config names
            raise _Failed(str(exc), "fix the setting the message names") from None
        return self.tokens

    async def access_token(self) -> str:
        return await _access_token_step(await self._build())

    async def quote_token(self) -> str:
        self.quote, detail = await _quote_step(await self._build(), self.config.source.kind)
        return detail


# ---------------------------------------------------------------------------------- the steps


async def _secrets_step(config: Config, env: Mapping[str, str]) -> str:
    source = config.source
    if source.kind == "tastytrade":
        names = (source.tastytrade.client_secret_env, source.tastytrade.refresh_token_env)
        missing = source.tastytrade.missing_env(env)
        if missing:
            raise _Failed(
                f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set",
                f"export {missing[0]}=... in the shell that runs candles (the OAuth "
                f"{'client secret' if missing[0] == names[0] else 'refresh token'} from "
                "tastytrade's developer portal); secrets never go in config.toml",
            )
        return f"{names[0]} and {names[1]} are set (values not shown)"
    if source.kind == "dxlink":
        problem = source.dxlink.token_problem(env)
        if problem is not None:
            raise _Failed(problem, f"export {source.dxlink.token_env}=<the DXLink token>")
        if source.dxlink.token_env is None:
            return "no token configured (source.dxlink.token_env unset): AUTH is not sent"
        return f"{source.dxlink.token_env} is set (value not shown)"
    return "none needed: the simulator's token is source.simulator.token, not a secret"


async def _access_token_step(tokens: TastytradeTokenSource) -> str:
    try:
        await tokens.login()
    except TastytradeError as exc:
        raise _Failed(str(exc), _tastytrade_advice(exc, "POST /oauth/token")) from None
    return f"received from {tokens.api_url}/oauth/token (value not shown)"


async def _quote_step(tokens: Any, kind: str) -> tuple[QuoteToken, str]:
    try:
        quote: QuoteToken = await tokens.get()
    except TastytradeError as exc:
        raise _Failed(str(exc), _tastytrade_advice(exc, "GET /api-quote-tokens")) from None
    except Exception as exc:  # a dxlink-url we refuse (ConfigurationError)
        raise _Failed(str(exc), "see the message; the URL must be wss:// off loopback") from None
    url = loggable_url(quote.dxlink_url)
    if kind == "tastytrade" and isinstance(quote, IssuedToken):
        expiry = quote.expires_at.strftime("%Y-%m-%d %H:%M UTC")
        return quote, f"{url} (level {quote.level!r}, quote token valid until {expiry})"
    token = "a token" if _token_text(quote) else "no token"
    return quote, f"{url}, with {token}"


def _tastytrade_advice(exc: TastytradeError, request: str) -> str:
    status = getattr(exc, "status", None)
    env_vars = getattr(exc, "env_vars", ())
    if env_vars:
        return (
            f"generate a new refresh token for your OAuth application in tastytrade's "
            f"developer portal and export it as {' and '.join(env_vars)}; check the client "
            "secret too"
        )
    if status is None:
        return (
            f"tastytrade's API did not answer {request}: check the network and "
            "source.tastytrade.api_url"
        )
    if status >= 500 or status in (408, 429):
        return (
            f"tastytrade's API failed {request} on its side (HTTP {status}); try again in a "
            "few minutes"
        )
    if getattr(exc, "code", "") == "quote_streamer.customer_not_found_error":
        return "market data needs a tastytrade brokerage account: open one, then run doctor again"
    return f"tastytrade refused {request} (HTTP {status}); see the message"


@contextlib.asynccontextmanager
async def _connected(
    run: _Run, config: Config, quote: QuoteToken
) -> AsyncIterator[ClientConnection]:
    """Step 4: the WebSocket, open for the steps after it."""
    url = loggable_url(quote.dxlink_url)
    holder: list[Any] = []

    async def connect() -> str:
        opener = open_websocket(
            quote.dxlink_url,
            open_timeout=config.client.connect_timeout,
            close_timeout=CLOSE_TIMEOUT_S,
            max_size=DEFAULT_MAX_MESSAGE_SIZE,
        )
        try:
            holder.append(await opener.__aenter__())
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            raise _Failed(
                f"cannot connect to {url}: {_why(exc)}", _connect_advice(config, exc)
            ) from None
        holder.append(opener)
        return f"connected to {url}"

    await run.step(Step.CONNECT, connect)
    ws, opener = holder
    try:
        yield ws
    finally:
        with contextlib.suppress(Exception):
            await opener.__aexit__(None, None, None)


def _why(exc: BaseException) -> str:
    if isinstance(exc, InvalidStatus):
        return f"the server answered the WebSocket upgrade with HTTP {exc.response.status_code}"
    if isinstance(exc, TimeoutError):
        return "no answer within client.connect_timeout"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _connect_advice(config: Config, exc: BaseException) -> str:
    where = {
        "tastytrade": "tastytrade's dxlink-url (quote token step) should work; check the network",
        "dxlink": "check source.dxlink.url: scheme, host, port and path",
        "simulator": "check source.simulator.url, and that `candles simulate` is running there",
    }[config.source.kind]
    if isinstance(exc, InvalidStatus):
        return f"that address is a web server but not a DXLink endpoint; {where}"
    return where


class _Session:
    """Steps 5 to 8 over one WebSocket, driving a ClientProtocol."""

    def __init__(
        self,
        ws: ClientConnection,
        quote: QuoteToken,
        config: Config,
        now_ms: Callable[[], int],
    ) -> None:
        self.ws = ws
        self.now_ms = now_ms
        self.url = loggable_url(quote.dxlink_url)
        self.token = _token_text(quote)
        self.kind = config.source.kind
        self.token_env = config.source.dxlink.token_env
        self.handshake_timeout = config.client.handshake_timeout
        self.protocol = ClientProtocol(
            token=self.token or None,
            keepalive_timeout=config.client.keepalive_timeout,
            dead_peer_timeout=config.client.dead_peer_timeout,
        )
        self.channel = 0
        self.aggregation = config.client.aggregation_period

    async def _flush(self) -> None:
        for text in self.protocol.messages_to_send():
            await self.ws.send(text)

    async def _next_events(
        self, deadline: float, settled: Callable[[], bool] = lambda: False
    ) -> list[Any]:
        """Receive until the protocol has events (keepalives meanwhile); [] at the deadline
        or once ``settled()`` (a state the caller waits for without an event)."""
        loop = asyncio.get_running_loop()
        while True:
            events = self.protocol.events_received()
            if events:
                return events
            now = loop.time()
            if now >= deadline or settled():
                return []
            wake = min(deadline, self.protocol.next_deadline() or deadline)
            try:
                async with asyncio.timeout_at(max(wake, now)):
                    frame = await self.ws.recv(decode=False)
            except TimeoutError:
                self.protocol.handle_timer(loop.time())
            else:
                self.protocol.receive_message(frame, loop.time())
            await self._flush()

    async def authorize(self) -> str:
        loop = asyncio.get_running_loop()
        self.protocol.start(loop.time())
        await self._flush()
        deadline = loop.time() + self.handshake_timeout
        version = None

        def unanswerable() -> bool:
            # §2.2: the first AUTH_STATE UNAUTHORIZED asks for a token; with none to send,
            # no event follows, only silence.
            return self.protocol.state is AWAIT_AUTH and not self.token

        try:
            while True:
                for event in await self._next_events(deadline, unanswerable):
                    if isinstance(event, ServerSetup):
                        version = event.version
                    elif isinstance(event, Authorized):
                        how = "with the token" if self.token else "no token needed"
                        return f"server {version or '(no SETUP)'}: AUTHORIZED ({how})"
                    elif isinstance(event, AuthRejected):
                        raise _Failed(
                            "the server refused AUTH (AUTH_STATE UNAUTHORIZED after our token)",
                            self._token_advice(),
                        )
                    elif isinstance(event, ErrorReceived):
                        raise _Failed(f"the server sent {event.error}", self._token_advice())
                if unanswerable():
                    raise _Failed(
                        "the server requires a token (AUTH_STATE UNAUTHORIZED) and none is "
                        "configured",
                        "name the environment variable holding the token in source.dxlink.token_env"
                        if self.kind == "dxlink"
                        else "the source gave no token",
                    )
                if loop.time() >= deadline:
                    got = "no SETUP reply" if version is None else "SETUP but no AUTHORIZED"
                    raise _Failed(
                        f"{got} within client.handshake_timeout ({self.handshake_timeout:g}s)",
                        f"is {self.url} a DXLink endpoint? (dxFeed serves DXLink on paths such "
                        "as /dxlink-ws or /realtime)",
                    )
        except ConnectionClosed as exc:
            raise _Failed(
                f"the server closed the connection during the handshake ({_closed(exc)})",
                self._token_advice() if self.protocol.state is not AUTHORIZED else "",
            ) from None

    def _token_advice(self) -> str:
        if self.kind == "tastytrade":
            return (
                "the quote token was refused: run doctor again for a fresh one; if that is "
                "refused too, contact tastytrade's API support"
            )
        if self.kind == "dxlink":
            return (
                f"check the value of the environment variable {self.token_env} "
                "(source.dxlink.token_env)"
            )
        return "check source.simulator.token against the simulator's --token"

    async def open_channel(self) -> str:
        loop = asyncio.get_running_loop()
        self.channel = self.protocol.open_channel(Contract.HISTORY)
        await self._flush()
        deadline = loop.time() + self.handshake_timeout
        opened = False
        try:
            while loop.time() < deadline:
                for event in await self._next_events(deadline):
                    if isinstance(event, ErrorReceived):
                        raise _Failed(
                            f"the server sent {event.error}",
                            "the channel request was refused; report it with this output",
                        )
                    if isinstance(event, ChannelOpened) and not opened:
                        opened = True
                        self.protocol.setup_feed(
                            self.channel,
                            aggregation_period=self.aggregation,
                            data_format=DataFormat.COMPACT,
                            event_fields={"Candle": CANDLE_FIELDS},
                        )
                        await self._flush()
                    if isinstance(event, FeedConfigured):
                        return (
                            f"channel {self.channel} (HISTORY), {event.data_format} data, "
                            f"aggregation {event.aggregation_period:g}s"
                        )
        except ConnectionClosed as exc:
            raise _Failed(f"the server closed the connection ({_closed(exc)})", "") from None
        step = "FEED_CONFIG" if opened else "CHANNEL_OPENED"
        raise _Failed(
            f"no {step} within client.handshake_timeout ({self.handshake_timeout:g}s)",
            "the server accepted the login but not the feed channel; report it with this output",
        )

    async def subscribe(self, series: CandleSymbol, from_ms: int, since: timedelta) -> str:
        item = SubscriptionItem("Candle", series.normalized, from_time=from_ms)
        try:
            self.protocol.subscribe(self.channel, add=[item])
            await self._flush()
        except ConnectionClosed as exc:
            raise _Failed(f"the server closed the connection ({_closed(exc)})", "") from None
        start = datetime.fromtimestamp(from_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")
        return f"{series.normalized} from {start} ({_span(since)} back)"

    async def candles(self, series: CandleSymbol, from_ms: int, wait: float) -> str:
        loop = asyncio.get_running_loop()
        manager = CandleDataManager(max_series=4, max_historical_candles=100_000)
        deadline = loop.time() + wait
        received = 0
        ended = False
        try:
            while not ended and loop.time() < deadline:
                for event in await self._next_events(deadline):
                    if isinstance(event, ErrorReceived):
                        raise _Failed(
                            f"the server refused the subscription: {event.error}",
                            f"check that {series.base} is a streamer symbol this feed serves",
                        )
                    if isinstance(event, CandlesReceived) and event.channel == self.channel:
                        candles: Sequence[Candle] = event.candles
                        received += len(candles)
                        manager.update(candles, self.now_ms())
                        ended = ended or any(
                            c.flags & (SNAPSHOT_END | SNAPSHOT_SNIP) for c in candles
                        )
        except ConnectionClosed as exc:
            raise _Failed(f"the server closed the connection ({_closed(exc)})", "") from None
        assembled = [c for key in manager.series() for c in manager.history(key)]
        live = [c for key in manager.series() if (c := manager.live_candle(key)) is not None]
        count = len(assembled) + len(live)
        if count == 0:
            what = (
                f"{received} events, none a candle (an empty snapshot)"
                if received
                else f"nothing within {wait:g}s"
            )
            raise _Failed(
                f"no candles for {series.normalized}: {what}",
                f"is {series.base} a streamer symbol this feed serves, and were there trades "
                "in that time? A closed market has no recent candles: try --since 3d or "
                "--interval 1d",
            )
        times = sorted(int(c.timestamp.timestamp() * 1000) for c in (*assembled, *live))
        first, last = (
            datetime.fromtimestamp(t / 1000, UTC).strftime("%H:%M") for t in (times[0], times[-1])
        )
        snapshot = "snapshot complete" if ended else f"snapshot not finished within {wait:g}s"
        return f"{count} candles from {first} to {last} UTC ({received} events; {snapshot})"


def _closed(exc: ConnectionClosed) -> str:
    frame = exc.rcvd or exc.sent
    if frame is None:
        return "no close frame"
    return f"code {frame.code}" + (f", {frame.reason!r}" if frame.reason else "")


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _token_text(quote: QuoteToken) -> str:
    secret = quote.token
    return secret if isinstance(secret, str) else secret.get_secret_value()


def _secret_values(config: Config, env: Mapping[str, str]) -> list[str]:
    """Every secret value the doctor could come across, for the scrub."""
    names = [config.source.tastytrade.client_secret_env, config.source.tastytrade.refresh_token_env]
    if config.source.dxlink.token_env:
        names.append(config.source.dxlink.token_env)
    return [env[name].strip() for name in names if env.get(name, "").strip()]


def _describe(config: Config) -> str:
    source = config.source
    if source.kind == "tastytrade":
        return f"tastytrade ({source.tastytrade.api_url})"
    if source.kind == "dxlink":
        return f"dxlink ({loggable_url(source.dxlink.url)})"
    where = source.simulator.url or "built in, started here"
    return f"simulator ({loggable_url(where) if source.simulator.url else where})"
