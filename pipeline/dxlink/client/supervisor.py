"""The DXLink client's only retry loop (STYLE.md pattern 6).

::

    token_source.get() → connect → SETUP → AUTH_STATE UNAUTHORIZED → AUTH → AUTHORIZED
    → CHANNEL_REQUEST candles (HISTORY) + events (AUTO) → FEED_SETUP (COMPACT) → FEED_CONFIG
    → resubscribe everything in the registry (paced) → read until something fails
    → classify(failure): RETRY | REFRESH_TOKEN | FATAL → backoff → again

Each connection (``connection.py``) raises when it ends and never reconnects; ``classify``
(``retry.py``) decides what the failure means, in one place. Only this loop sleeps before a
reconnect, and the backoff starts over only after a connection stayed healthy for a while.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn

from pipeline.dxlink.client.connection import run_connection
from pipeline.dxlink.client.metrics import ConnectionState, Disconnected
from pipeline.dxlink.client.retry import (
    Action,
    classify,
    describe,
    disconnect_reason,
    explain_fatal,
    fatal_error,
    message_too_big,
)
from pipeline.dxlink.client.state import ClientSettings, ClientState, TokenSource, loop_time
from pipeline.dxlink.pacing import Backoff

__all__ = ["Supervisor"]

logger = logging.getLogger("pipeline.dxlink.client")  # one logger for the whole client


class Supervisor:
    """Connects, runs the connection, classifies its failure, backs off, and again."""

    def __init__(
        self,
        state: ClientState,
        settings: ClientSettings,
        token_source: TokenSource,
        backoff: Backoff,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        """Set up the loop; nothing runs before ``run()``.

        Args:
            state: the client's shared state (metrics, registry, pacer, current connection).
            settings: the client's settings (connect timeout, max_attempts...).
            token_source: hands out a token and URL per attempt (refreshed after a rejection).
            backoff: reconnect delays with the healthy-connection reset rule.
            sleep: awaited with each reconnect delay (tests record the delays).
        """
        self.state = state
        self.settings = settings
        self.token_source = token_source
        self.backoff = backoff
        self.sleep = sleep

    async def run(self) -> NoReturn:
        """Retry until a failure is fatal or ``max_attempts`` is reached; then raise it.

        Raises:
            ConnectionError: ``max_attempts`` consecutive attempts failed (the last cause
                chained).
            Exception: a fatal failure (``classify`` said FATAL), reworded by ``fatal_error``
                when there is advice to give.
        """
        state, settings = self.state, self.settings
        metrics = state.connection_metrics
        refresh = False
        while True:
            metrics.state = ConnectionState.CONNECTING
            started = loop_time()
            try:
                async with asyncio.timeout(settings.connect_timeout):
                    quote = await self.token_source.get(force_refresh=refresh)
                refresh = False
                await run_connection(state, settings, quote, attempt=self.backoff.attempt)
            except Exception as exc:
                action = classify(exc)
                connection, state.connection = state.connection, None
                uptime = 0.0
                if connection is not None and connection.ready_at is not None:
                    uptime = loop_time() - connection.ready_at
                self._disconnected(exc)
                if action is Action.FATAL:
                    fatal = fatal_error(exc, state.pacer.max_bytes, settings.max_message_size)
                    if fatal is exc:
                        raise
                    raise fatal from exc
                if action is Action.REFRESH_TOKEN:
                    refresh = True
                    metrics.token_refreshes += 1
                if message_too_big(exc):  # a fault, counted by its reason; say what to do
                    logger.warning(
                        "! %s",
                        explain_fatal(
                            exc,
                            max_batch_bytes=state.pacer.max_bytes,
                            max_message_size=settings.max_message_size,
                        ),
                    )
                delay = self.backoff.next_delay(uptime)
                max_attempts = settings.max_attempts
                if max_attempts and self.backoff.attempt >= max_attempts:
                    raise ConnectionError(
                        f"gave up after {self.backoff.attempt} consecutive failed "
                        f"connection attempts (max_attempts={max_attempts}); "
                        f"last failure: {describe(exc)}"
                    ) from exc
                metrics.state = ConnectionState.BACKING_OFF
                state.notify(Disconnected(disconnect_reason(exc), describe(exc), delay))
                # One line per failed attempt: what ended it and when the next one starts.
                logger.warning(
                    "! connection ended after %.3f s: %s; reconnecting in %.3f s",
                    loop_time() - started, describe(exc), delay,
                )  # fmt: skip
                await self.sleep(delay)
                metrics.reconnect_attempts += 1

    def _disconnected(self, exc: BaseException) -> None:
        state = self.state
        metrics = state.connection_metrics
        metrics.record_disconnect(disconnect_reason(exc), loop_time())
        metrics.last_error = describe(exc)
        state.registry.on_disconnect()
        state.pacer.clear()
