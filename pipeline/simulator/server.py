"""The DXLink simulator: a websockets server over a deterministic market, with fault injection.

Each connection is a ``SimConnection`` driving a ``ServerProtocol`` (connection.py); this
module owns the listening socket, the market, the clock, the publish rounds and the faults.

Time: with an accelerated or real-time clock a publish task runs a round every
``publish_interval`` real seconds (each channel then sends at most once per its aggregation
period). With a manual clock nothing moves until ``await sim.advance(seconds)``, which
publishes everything up to the new time to every connection and returns once it was sent.

Ground truth: ``truth(series, from_ms, to_ms)`` returns the final candles (corrections and
removals applied) exactly as the simulator serves them, for tests to compare a store against.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
from collections.abc import Callable, Sequence
from functools import partial
from types import TracebackType

from websockets.asyncio.server import Server, ServerConnection, serve

from pipeline.dxlink import Candle, ErrorCode
from pipeline.simulator.bars import bar_to_candle
from pipeline.simulator.clock import SimulatorClock
from pipeline.simulator.connection import ConnectionSettings, SimConnection, SimulatorStats
from pipeline.simulator.faults import Fault, FaultKind
from pipeline.simulator.market import Market, MarketConfig
from pipeline.simulator.periods import DAY_MS, visible_end
from pipeline.simulator.session import Series

__all__ = ["Simulator"]

logger = logging.getLogger("pipeline.simulator")

WELL_KNOWN_TOKENS = frozenset({"sim-token", "simulator"})
"""Tokens anyone can guess: this class's default and ``source.simulator.token``'s/``candles
simulate``'s."""


def _is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost`` (a name may be anything)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# §8: tastytrade publishes no frame limit; ~2,000 symbols in one frame (~100 KB) was seen to
# fail, and dxFeed's JS client stays under ~8 KB. 64 KiB sits between the two.
DEFAULT_MAX_FRAME_SIZE = 65_536
# §8: "keep candle counts in the low thousands per subscription"; beyond this: SNAPSHOT_SNIP.
DEFAULT_HISTORY_LIMIT = 10_000
# Events per FEED_DATA message of a snapshot or an update round.
DEFAULT_CHUNK_SIZE = 500


class Simulator:
    """A DXLink server that real clients cannot tell from tastytrade's, for tests and demos.

    Args:
        host: Interface to listen on.
        port: TCP port; 0 picks a free one (see ``url``).
        token: The token AUTH must carry; ``rotate_token`` changes it. ``None``: no token is
            needed (AUTHORIZED right after SETUP, like dxFeed's demo endpoint).
        seed: Seeds the market; the same seed serves the same candles, across restarts.
        clock: Simulated time; ``SimulatorClock.manual(...)`` for tests. Default: real time.
        keepalive_timeout: Seconds the server promises and expects between messages (§2.6).
        history_limit: Most candles in one snapshot; older ones are SNAPSHOT_SNIPped.
        max_frame_size: Largest client frame; a bigger one closes the connection with 1009.
        subscription_rate: FEED_SUBSCRIPTION messages (or items, see ``rate_items``) per
            second before ERROR BAD_ACTION; None for no limit.
        subscription_burst: Token bucket capacity (default: one second's worth).
        rate_items: Count subscription items instead of messages against the rate.
        chunk_size: Most events per FEED_DATA message.
        publish_interval: Real seconds between publish rounds (not used by a manual clock).
        quiet_fraction: See ``MarketConfig``: forced quiet days/hours/minutes/seconds.
        correction_rate: See ``MarketConfig``: late corrections per symbol and hour.
        symbols: Only these symbols trade; None for every symbol.
        history_days: Days of trades before the clock's start; None for unlimited.
        user_id: The ``userId`` of AUTH_STATE AUTHORIZED.
        faults: Faults to inject on a schedule (real seconds after start), e.g. from the CLI.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = "sim-token",
        seed: int = 1,
        clock: SimulatorClock | None = None,
        keepalive_timeout: float = 60.0,
        history_limit: int = DEFAULT_HISTORY_LIMIT,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        subscription_rate: float | None = None,
        subscription_burst: float | None = None,
        rate_items: bool = False,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        publish_interval: float = 0.1,
        quiet_fraction: float = 0.0,
        correction_rate: float = 0.0,
        symbols: Sequence[str] | None = None,
        history_days: float | None = None,
        user_id: str = "sim-user",
        faults: Sequence[Fault] = (),
    ) -> None:
        if token == "":
            raise ValueError("token must not be empty (None: no token needed)")
        if not publish_interval > 0:
            raise ValueError(f"publish_interval must be > 0 seconds, got {publish_interval}")
        if max_frame_size < 1024:
            raise ValueError(f"max_frame_size must be at least 1024 bytes, got {max_frame_size}")
        if subscription_rate is not None and not subscription_rate > 0:
            raise ValueError(f"subscription_rate must be > 0 per second, got {subscription_rate}")
        self.host = host
        self.port = port
        """The listening port (the real one once started, when 0 was asked)."""
        self.clock = clock or SimulatorClock.realtime()
        """The injected clock."""
        history_start = (
            None if history_days is None else self.clock.start_ms - int(history_days * DAY_MS)
        )
        self.market = Market(
            MarketConfig(
                seed=seed,
                quiet_fraction=quiet_fraction,
                correction_rate=correction_rate,
                symbols=None if symbols is None else frozenset(symbols),
                history_start_ms=history_start,
            )
        )
        """The deterministic market behind every candle served."""
        self.stats = SimulatorStats()
        """Counters: messages, snapshots, BAD_ACTIONs, 1009 closes..."""
        self.send_delay = 0.0
        """Seconds to wait before sending each message (the slow-sending fault)."""
        self.max_frame_size = max_frame_size
        self.publish_interval = publish_interval
        self.faults = tuple(faults)
        self._settings = ConnectionSettings(
            keepalive_timeout=keepalive_timeout,
            history_limit=history_limit,
            chunk_size=chunk_size,
            user_id=user_id,
            subscription_rate=subscription_rate,
            subscription_burst=subscription_burst or max(1.0, subscription_rate or 1.0),
            rate_items=rate_items,
            require_auth=token is not None,
        )
        self._token = token
        self._connections: dict[int, SimConnection] = {}
        self._connect_count = 0
        self._drop_next = 0
        self._changed = asyncio.Event()
        self._server: Server | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        state = "stopped" if self._server is None else self.url
        return f"Simulator({state}, connections={len(self._connections)})"

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen, and start the publish rounds and scheduled faults."""
        if self._server is not None:
            raise RuntimeError("the simulator is already running")
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            max_size=self.max_frame_size,
            ping_interval=None,  # DXLink keeps alive with KEEPALIVE messages (§2.6)
            compression=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        if not self.clock.is_manual:
            self._tasks.append(asyncio.create_task(self._publish_loop(), name="sim-publish"))
        for fault in self.faults:
            self._tasks.append(asyncio.create_task(self._scheduled(fault), name=f"sim-{fault}"))
        logger.info("DXLink simulator listening at %s", self.url)
        if not _is_loopback(self.host):
            # Anyone who can reach the port can read the feed with the token (issue 14).
            default = self._token in WELL_KNOWN_TOKENS
            logger.warning(
                "! the DXLink simulator listens on %s, reachable from other machines%s; "
                "bind it to 127.0.0.1 unless that is what you want",
                self.host or "every interface",
                f", and its token is the well-known default {self._token!r}: set another"
                if default
                else "",
            )

    async def stop(self) -> None:
        """Close every connection (1001, going away) and stop listening."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- state -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``ws://host:port/`` of the running simulator."""
        if self._server is None:
            raise RuntimeError("the simulator is not running; start() it first")
        return f"ws://{self.host}:{self.port}/"

    @property
    def now_ms(self) -> int:
        """The simulated time, ms since the epoch."""
        return self.clock.now_ms()

    @property
    def connections(self) -> int:
        """Connections open right now."""
        return len(self._connections)

    @property
    def connect_count(self) -> int:
        """Connections accepted since start (dropped ones included)."""
        return self._connect_count

    def subscriptions(self) -> dict[int, dict[str, int | None]]:
        """Per open connection (numbered from 1 in accept order): series key -> fromTime."""
        result: dict[int, dict[str, int | None]] = {}
        for number, connection in self._connections.items():
            merged: dict[str, int | None] = {}
            for series in connection.session.subscriptions().values():
                merged.update(series)
            result[number] = merged
        return result

    async def wait_for_subscriptions(self, count: int) -> None:
        """Return once ``count`` subscriptions over all open connections have had their
        snapshot sent. Wrap in ``asyncio.timeout`` to bound the wait."""
        await self.wait_for(
            lambda: sum(c.served_subscriptions() for c in self._connections.values()) >= count
        )

    async def wait_for_connections(self, count: int) -> None:
        """Return once ``connect_count`` (connections accepted so far) reaches ``count``."""
        await self.wait_for(lambda: self._connect_count >= count)

    async def wait_for(self, ready: Callable[[], bool]) -> None:
        """Return once ``ready()`` is true; it is re-checked whenever a connection opens or
        closes or a subscription is applied, served or removed."""
        while not ready():
            self._changed.clear()
            await self._changed.wait()

    def truth(
        self,
        series: str | tuple[str, str],
        from_ms: int,
        to_ms: int | None = None,
        *,
        include_live: bool = False,
    ) -> list[Candle]:
        """The final candles of ``series`` starting in ``[from_ms, to_ms)``, oldest first.

        Args:
            series: A candle symbol (``AAPL{=5m}``, any spelling; events carry the normalised
                ``AAPL{=5m}``) or a ``(base, period)`` pair such as ``("AAPL", "5m")``.
            from_ms: First candle time wanted.
            to_ms: End of the range (exclusive); default: now.
            include_live: Also return the current, incomplete candle.

        Returns:
            The candles as published now: corrections applied, removed ones absent, quiet
            periods absent.
        """
        parsed = Series.parse(series)
        now = self.now_ms
        complete_end = visible_end(now)
        end = complete_end if to_ms is None else to_ms
        bars = self.market.candle_bars(parsed.base, parsed.period, from_ms, end, now)
        length = parsed.period.length_ms
        return [
            bar_to_candle(parsed.key, time_ms, bar)
            for time_ms, bar in bars
            if include_live or time_ms + length <= complete_end
        ]

    # -- time --------------------------------------------------------------------------------

    async def advance(self, seconds: float) -> None:
        """Move a manual clock forward and publish everything up to the new time.

        Returns once every open, authorised, unstalled connection has been sent its updates.

        Raises:
            ValueError: the clock is not manual, or ``seconds`` is negative.
        """
        self.clock.advance_ms(round(seconds * 1000))
        await self._publish_round(wait=True)

    async def _publish_loop(self) -> None:
        while True:
            await asyncio.sleep(self.publish_interval)
            await self._publish_round(wait=False)

    async def _publish_round(self, *, wait: bool) -> None:
        now = self.now_ms
        rounds = [
            connection.request_publish(now)
            for connection in list(self._connections.values())
            if connection.authorized and not connection.stalled
        ]
        if wait:
            await asyncio.gather(*rounds)

    # -- connections -------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        self._connect_count += 1
        number = self._connect_count
        self._changed.set()
        if self._drop_next > 0:
            self._drop_next -= 1
            self.stats.connections_dropped += 1
            logger.info("x connection %d: accepted, then dropped (drop-next fault)", number)
            ws.transport.abort()
            return
        connection = SimConnection(number, ws, self, self._settings)
        self._connections[number] = connection
        logger.debug("= connection %d open from %s", number, ws.remote_address)
        try:
            await connection.run()
        finally:
            del self._connections[number]
            self._changed.set()
            logger.debug("= connection %d closed (code %s)", number, ws.close_code)

    def token_accepted(self, token: str) -> bool:
        """True when ``token`` is the current token (constant-time comparison); any token
        is accepted by a simulator that needs none."""
        if self._token is None:
            return True
        return hmac.compare_digest(token.encode(), self._token.encode())

    def sim_now_ms(self) -> int:
        """The simulated time (for connections)."""
        return self.now_ms

    def clock_is_manual(self) -> bool:
        """True when only ``advance()`` moves time."""
        return self.clock.is_manual

    def subscriptions_changed(self) -> None:
        """Wake the waiters of ``wait_for_*``."""
        self._changed.set()

    def _live(self) -> list[SimConnection]:
        return [c for c in self._connections.values() if not c.stalled]

    # -- faults ------------------------------------------------------------------------------

    async def drop_connections(self) -> None:
        """Abort every connection: no close frame, as if the network failed."""
        for connection in list(self._connections.values()):
            self.stats.connections_dropped += 1
            await connection.abort()

    async def close_connections(self, code: int = 1001, reason: str = "simulated close") -> None:
        """Close every connection with a close frame (1000 normal, 1001 going away...)."""
        await asyncio.gather(
            *(c.ws.close(code, reason) for c in list(self._connections.values())),
            return_exceptions=True,
        )

    def stall(self, on: bool = True) -> None:
        """Stop (or resume) sending anything on the current connections; sockets stay open."""
        for connection in self._connections.values():
            if on:
                connection.running.clear()
            else:
                connection.running.set()

    async def send_malformed(self, text: str = '{"type":"FEED_DATA","channel":') -> None:
        """Send ``text`` as a frame to every connection: garbage where a message should be."""
        await asyncio.gather(*(c.request(raw=text) for c in self._live()))

    async def send_candles(self, candles: Sequence[Candle]) -> None:
        """Send ``candles`` exactly as given (any symbol, time or values: nothing is checked)
        to every connection, on each candle channel that has a subscription; returns once
        sent. For tests of what a client does with odd or hostile data."""
        await asyncio.gather(*(c.request(run=partial(c.send_as_is, candles)) for c in self._live()))

    async def send_error(
        self, code: ErrorCode | str, message: str = "simulated error", channel: int = 0
    ) -> None:
        """Send ERROR ``code`` (§2.7) to every connection; ``channel`` 0 is connection level."""
        await asyncio.gather(
            *(
                c.request(run=partial(c.protocol.send_error, code, message, channel))
                for c in self._live()
            )
        )

    async def rotate_token(self, new_token: str) -> None:
        """Expire the token: authorised clients get AUTH_STATE UNAUTHORIZED; only
        ``new_token`` is accepted from now on."""
        if not new_token:
            raise ValueError("the new token must not be empty")
        self._token = new_token
        await asyncio.gather(
            *(
                c.request(run=partial(c.protocol.send_auth_state, False))
                for c in self._live()
                if c.authorized
            )
        )

    def drop_next_connections(self, count: int) -> None:
        """Accept, then drop at once, the next ``count`` connections (reconnect storms)."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        self._drop_next = count

    def set_send_delay(self, seconds: float) -> None:
        """Wait ``seconds`` before sending each message, on every connection (slow server)."""
        if seconds < 0:
            raise ValueError(f"the send delay must be >= 0 seconds, got {seconds}")
        self.send_delay = seconds

    async def apply_fault(self, fault: Fault) -> None:
        """Inject one fault now (the scheduling of ``fault.at``/``every`` is the caller's)."""
        kind = fault.kind
        logger.warning("! injecting fault %s", fault)
        if kind is FaultKind.DROP:
            await self.drop_connections()
        elif kind is FaultKind.CLOSE:
            await self.close_connections(fault.close_code)
        elif kind is FaultKind.STALL:
            self.stall(True)
            if fault.seconds is not None:
                await asyncio.sleep(fault.seconds)
                self.stall(False)
        elif kind is FaultKind.MALFORMED:
            await self.send_malformed(fault.text)
        elif kind is FaultKind.ERROR:
            await self.send_error(fault.error_code, "simulated fault")
        elif kind is FaultKind.EXPIRE_TOKEN:
            await self.rotate_token(fault.argument or "")
        elif kind is FaultKind.DROP_NEXT:
            self.drop_next_connections(fault.count)
        elif kind is FaultKind.SLOW:
            self.set_send_delay(fault.seconds or 0.0)

    async def _scheduled(self, fault: Fault) -> None:
        await asyncio.sleep(fault.at)
        while True:
            try:
                await self.apply_fault(fault)
            except Exception:  # a scheduled fault must not take the simulator down
                self.stats.fault_failures += 1
                logger.exception("! scheduled fault %s failed", fault)
            if fault.every is None:
                return
            await asyncio.sleep(fault.every)
