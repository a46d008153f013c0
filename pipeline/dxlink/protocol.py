"""Sans-I/O DXLink state machines: ``ClientProtocol``, ``ServerProtocol`` (dxlink-protocol.md §2).

Both roles share ``protocol_core.ProtocolCore``: the codec, channel/feed state, timers and
the one table of allowed (state, message type) pairs. ``ServerProtocol`` lives in
``server_protocol.py``; drivers import both roles and every event class from the package's
face, :mod:`pipeline.dxlink`.

Driver contract (the I/O layer, e.g. the client's ``connection.py`` or the simulator, does
exactly this)::

    proto = ClientProtocol(token=token)      # or ServerProtocol() per accepted socket
    proto.start(now)                         # client: queues SETUP; both: arm the timers
    loop:
        send every text in proto.messages_to_send()
        deadline = proto.next_deadline()     # float | None: re-arm ONE timer at it
        wait for a frame or the deadline:
            frame    -> proto.receive_message(frame, now)
            deadline -> proto.handle_timer(now)
        for event in proto.events_received(): handle it (may call actions)

* ``receive_message`` never raises: garbled frames become ``InvalidMessageReceived``,
  illegal-in-state messages ``ViolationReceived``; both are counted, never fatal here.
* ``events_received()`` and ``messages_to_send()`` return the pending list and clear it.
* COMPACT Candle FEED_DATA on a CONFIGURED channel, nearly every frame, takes a fast path
  (``ClientProtocol._receive_fast``) with exactly the full path's events; with the logger at
  DEBUG every frame takes the full path, which logs each message.
* Actions (``open_channel``, ``subscribe``, ``send_candles``...) only queue outgoing text; they
  raise ``UsageError`` when called in a state that does not allow them (a caller bug). Each
  takes an optional keyword ``now``; without it the latest ``now`` the protocol was given is
  used, which can only make a KEEPALIVE come early, never late.
* After ``PeerTimedOut`` the protocol has queued ERROR TIMEOUT and is CLOSED: flush, close
  the socket, reconnect with a new protocol object. ``close()`` marks a lost connection.
* A driver that stops reading for a while (a slow consumer) brackets it with
  ``pause_reading(now)`` / ``resume_reading(now)``: KEEPALIVEs keep going out, and the peer
  counts as dead only on silence measured while reading (§2.6).

Time is whatever monotonic seconds the driver passes in; this module imports no clock,
asyncio or websockets. Logging prefixes: ``=`` state, ``<`` received, ``>`` sent,
``%`` keepalive, ``!`` error. Tokens are never logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Final

from pipeline.dxlink.errors import UsageError
from pipeline.dxlink.feed_codec import CANDLE, CandleEvents
from pipeline.dxlink.message_models import (
    Auth,
    AuthState,
    AuthStateValue,
    ChannelCancel,
    ChannelRequest,
    Contract,
    DataFormat,
    Error,
    FeedConfig,
    FeedData,
    FeedSetup,
    FeedSubscription,
    JsonObject,
    Message,
    Setup,
    SubscriptionItem,
)
from pipeline.dxlink.message_models import ChannelClosed as ChannelClosedMessage
from pipeline.dxlink.message_models import ChannelOpened as ChannelOpenedMessage
from pipeline.dxlink.message_models import MessageType as M
from pipeline.dxlink.protocol_core import (
    AUTHORIZED,
    AUTHORIZING,
    AWAIT_AUTH,
    CHANNEL_CLOSED,
    CONFIGURED,
    CONNECTING,
    OPENED,
    REQUESTED,
    SETUP_SENT,
    ChannelRecord,
    ProtocolCore,
    Role,
)
from pipeline.dxlink.protocol_events import (
    Authorized,
    AuthRejected,
    CandlesReceived,
    ChannelClosed,
    ChannelOpened,
    EventsReceived,
    FeedConfigured,
    InvalidMessageReceived,
    ServerSetup,
)

__all__ = [
    "DEFAULT_CLIENT_VERSION",
    "DEFAULT_DEAD_PEER_TIMEOUT",
    "DEFAULT_MAX_DEAD_PEER_TIMEOUT",
    "ClientProtocol",
]

# The fast path builds one CandlesReceived per frame. A frozen dataclass's __init__ sets
# each slot through object.__setattr__, a detour around the slot descriptors; setting the two
# slots directly makes the same frozen, equal object with less work per frame (bench_decode).
_new_event = object.__new__
_set_event_channel = getattr(CandlesReceived, "channel").__set__  # noqa: B009
_set_event_candles = getattr(CandlesReceived, "candles").__set__  # noqa: B009

DEFAULT_CLIENT_VERSION: Final = "0.1-DXF-JS/0.3.0"  # §2.5: what tastytrade's own clients send
# §2.6: the dead-peer floor; tastytrade advertises 60 s everywhere.
DEFAULT_DEAD_PEER_TIMEOUT: Final = 60.0
# The most silence a server's SETUP can make us tolerate: without a cap a server advertising
# keepaliveTimeout 1e9 and then saying nothing would switch dead-peer detection off (issue 14).
# 60 s is what tastytrade advertises, so a server that ignores a shorter
# acceptKeepaliveTimeout of ours is still never dropped while it keeps its own promise.
DEFAULT_MAX_DEAD_PEER_TIMEOUT: Final = 60.0


class ClientProtocol(ProtocolCore):
    """The client side of DXLink (§2.2): handshake, auth, channels, feed, keepalive."""

    role = Role.CLIENT

    def __init__(
        self,
        *,
        token: str | None,
        version: str = DEFAULT_CLIENT_VERSION,
        keepalive_timeout: float = 60,
        accept_keepalive_timeout: float = 60,
        dead_peer_timeout: float = DEFAULT_DEAD_PEER_TIMEOUT,
        max_dead_peer_timeout: float = DEFAULT_MAX_DEAD_PEER_TIMEOUT,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> None:
        """Create the protocol for one connection.

        Args:
            token: the DXLink token for AUTH; ``None`` until ``set_token()`` provides one.
            version: our SETUP version string (§2.5).
            keepalive_timeout: seconds we promise to never stay silent longer than.
            accept_keepalive_timeout: seconds we ask the server to advertise.
            dead_peer_timeout: floor of the dead-server timeout (§2.6).
            max_dead_peer_timeout: cap of the dead-server timeout, whatever the server
                advertises; the effective value is the server's keepaliveTimeout clamped to
                [dead_peer_timeout, max(dead_peer_timeout, this)].
            logger: where to log; defaults to ``pipeline.dxlink.protocol``.
        """
        super().__init__(
            keepalive_timeout=keepalive_timeout,
            accept_keepalive_timeout=accept_keepalive_timeout,
            logger=logger,
        )
        if not dead_peer_timeout > 0:
            raise UsageError(f"dead_peer_timeout must be > 0 seconds, not {dead_peer_timeout}")
        if not max_dead_peer_timeout > 0:
            raise UsageError(
                f"max_dead_peer_timeout must be > 0 seconds, not {max_dead_peer_timeout}"
            )
        self.version = version
        self._token = token
        self._dead_peer_floor = dead_peer_timeout
        self._dead_peer_cap = max(max_dead_peer_timeout, dead_peer_timeout)
        self._next_channel = 1  # §2.4: odd numbers 1, 3, 5, ... never reused
        self.server_version: str | None = None
        """The server's SETUP version, for logging (§2.5)."""
        self.user_id: str | None = None
        """The ``userId`` of the last AUTH_STATE AUTHORIZED."""

    def __repr__(self) -> str:
        return f"ClientProtocol(state={self._state.name}, channels={sorted(self._channels)})"

    @property
    def dead_peer_timeout(self) -> float:
        """The server's keepaliveTimeout clamped to [dead_peer_timeout, max_dead_peer_timeout]
        (§2.6): a server can lengthen our patience up to the cap, never switch it off."""
        advertised = self.peer_keepalive_timeout or 0.0
        return min(max(advertised, self._dead_peer_floor), self._dead_peer_cap)

    # -- actions -------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Queue SETUP and arm the timers (§2.2)."""
        self._require({CONNECTING}, "start")
        self._start_timers(now)
        self._send(Setup(self.version, self.keepalive_timeout, self.accept_keepalive_timeout))
        self._set_state(SETUP_SENT)

    def set_token(self, token: str | None, *, now: float | None = None) -> None:
        """Replace the token; sends AUTH at once if the server is waiting for one (§2.2)."""
        self._token = token
        if token and self._state is AWAIT_AUTH:
            self._send(Auth(token), now)
            self._set_state(AUTHORIZING)

    def open_channel(
        self,
        contract: Contract | str = Contract.HISTORY,
        service: str = "FEED",
        *,
        number: int | None = None,
        now: float | None = None,
    ) -> int:
        """Queue CHANNEL_REQUEST and return the new channel number (§2.4, §3.1).

        Args:
            contract: The FEED contract.
            service: The service (``FEED``).
            number: The channel number to use (§2.4: odd; tastyware uses a fixed map, a
                rebuild the numbers a recording holds); default: the next of 1, 3, 5...
            now: See the module docstring.

        Raises:
            UsageError: not AUTHORIZED yet, ``contract`` is not a FEED contract, or
                ``number`` is not positive or names a channel that is still open.
        """
        self._require({AUTHORIZED}, "open a channel")  # §2.2: channels only once AUTHORIZED
        if contract not in Contract.__members__:
            raise UsageError(f"contract {contract!r} is not one of {', '.join(Contract)}")
        if number is None:
            number = self._next_channel
        else:
            known = self._channels.get(number)
            if number < 1 or (known is not None and known.state is not CHANNEL_CLOSED):
                raise UsageError(f"channel {number} is not a free service channel number (>= 1)")
        # Never hand out a number at or below one already used (§2.4: not reused).
        self._next_channel = max(self._next_channel, number + 1 + number % 2)
        parameters: JsonObject = {"contract": str(contract)}
        self._channels[number] = ChannelRecord(number, service, parameters)
        self._send(ChannelRequest(number, service, parameters), now)
        return number

    def setup_feed(
        self,
        channel: int,
        *,
        aggregation_period: float,
        data_format: DataFormat | str = DataFormat.COMPACT,
        event_fields: Mapping[str, Sequence[str]],
        now: float | None = None,
    ) -> None:
        """Queue FEED_SETUP with our preferences; FEED_CONFIG is authoritative (§3.2)."""
        self._require({AUTHORIZED}, "set up a feed")
        self._known_channel(channel, {OPENED, CONFIGURED}, "set up a feed")
        if data_format not in DataFormat.__members__:
            raise UsageError(f"data_format {data_format!r} is not one of {', '.join(DataFormat)}")
        fields = {event_type: tuple(names) for event_type, names in event_fields.items()}
        self._send(FeedSetup(channel, aggregation_period, DataFormat(data_format), fields), now)

    def subscribe(
        self,
        channel: int,
        *,
        add: Sequence[SubscriptionItem] = (),
        remove: Sequence[SubscriptionItem] = (),
        reset: bool = False,
        now: float | None = None,
    ) -> None:
        """Queue one FEED_SUBSCRIPTION (batching and pacing are ``subscriptions.py``'s job).

        Raises:
            UsageError: the channel is not open, nothing to do, or a Candle item has no
                ``from_time`` (§2.3: required for time series, also in remove).
        """
        self._require({AUTHORIZED}, "subscribe")
        self._known_channel(channel, {OPENED, CONFIGURED}, "subscribe")
        if not (add or remove or reset):
            raise UsageError("subscribe needs add, remove or reset")
        for item in (*add, *remove):
            if item.type == CANDLE and item.from_time is None:
                raise UsageError(
                    f"Candle item {item.symbol!r} needs from_time (ms), also in remove (§2.3)"
                )
        self._send(FeedSubscription(channel, tuple(add), tuple(remove), reset), now)

    def cancel_channel(self, channel: int, *, now: float | None = None) -> None:
        """Queue CHANNEL_CANCEL; the channel is closed for us at once (§2.3)."""
        known = self._known_channel(channel, {REQUESTED, OPENED, CONFIGURED}, "cancel")
        self._send(ChannelCancel(channel), now)
        self._set_channel_state(known, CHANNEL_CLOSED)

    # -- received ------------------------------------------------------------------------

    def _receive_fast(self, decoded: JsonObject) -> bool:
        """COMPACT Candle FEED_DATA on a CONFIGURED channel, straight to CandlesReceived.

        Nearly every frame of a session is one of these, so this path skips the message
        model, the allowed-message tables and the batch objects: same checks, fewer objects.
        Anything else, or anything that does not decode cleanly, returns False untouched and
        goes the full path (§2.3 shape checks, §3.4 decoding, one error per bad pair).
        """
        try:  # a missing key, or data that is not a two-item array: not ours
            if decoded["type"] != "FEED_DATA" or self._state is not AUTHORIZED:
                return False
            number = decoded["channel"]
            data = decoded["data"]
            event_type, values = data
        except (KeyError, TypeError, ValueError):
            return False
        if number.__class__ is not int or data.__class__ is not list or event_type != CANDLE:
            return False
        channel = self._channels.get(number)
        if channel is None or channel.state is not CONFIGURED:
            return False
        candles = channel.decoder.compact_candles(values)
        if candles is None:
            return False
        # CandlesReceived(number, candles) without its frozen __init__ (see _new_event).
        event = _new_event(CandlesReceived)
        _set_event_channel(event, number)
        _set_event_candles(event, candles)
        self._events.append(event)
        return True

    def _dispatch(self, message: Message) -> None:
        if isinstance(message, Setup):
            self.server_version = message.version
            self.peer_keepalive_timeout = message.keepalive_timeout
            self.peer_accept_keepalive_timeout = message.accept_keepalive_timeout
            self._emit(
                ServerSetup(
                    message.version, message.keepalive_timeout, message.accept_keepalive_timeout
                )
            )
        elif isinstance(message, AuthState):
            self._on_auth_state(message)
        elif isinstance(message, Error):
            self._on_error(message)
        elif isinstance(message, ChannelOpenedMessage):
            self._on_channel_opened(message)
        elif isinstance(message, ChannelClosedMessage):
            channel = self._channel_for(M.CHANNEL_CLOSED, message.channel)
            if channel is not None:
                self._set_channel_state(channel, CHANNEL_CLOSED)
                self._emit(ChannelClosed(message.channel))
        elif isinstance(message, FeedConfig):
            self._on_feed_config(message)
        elif isinstance(message, FeedData):
            self._on_feed_data(message)
        # KEEPALIVE: receiving it already reset the dead-peer timer (§2.6).

    def _on_auth_state(self, message: AuthState) -> None:
        if message.state is AuthStateValue.AUTHORIZED:
            self.user_id = message.user_id
            if self._state is not AUTHORIZED:
                self._set_state(AUTHORIZED)
                self._emit(Authorized(message.user_id))
            return
        if self._state is SETUP_SENT:
            # §2.2: the first UNAUTHORIZED is the handshake ("auth required"), not a verdict.
            self._set_state(AWAIT_AUTH)
            self.set_token(self._token)
        elif self._state in (AUTHORIZING, AUTHORIZED):
            # §2.2: a later UNAUTHORIZED rejects the token; drop it so we never loop on it.
            self.logger.warning("! the server rejected the token")
            self._token = None
            self._set_state(AWAIT_AUTH)
            self._emit(AuthRejected())

    def _on_channel_opened(self, message: ChannelOpenedMessage) -> None:
        channel = self._channel_for(M.CHANNEL_OPENED, message.channel)
        if channel is not None:
            channel.parameters = message.parameters
            self._set_channel_state(channel, OPENED)
            self._emit(ChannelOpened(message.channel, message.parameters))

    def _on_feed_config(self, message: FeedConfig) -> None:
        channel = self._channel_for(M.FEED_CONFIG, message.channel)
        if channel is None:
            return
        if message.event_fields:
            channel.decoder.update(message.event_fields)  # §3.2: merge per event type
        channel.data_format = message.data_format
        channel.aggregation_period = message.aggregation_period
        if channel.state is not CONFIGURED:
            self._set_channel_state(channel, CONFIGURED)
        self._emit(
            FeedConfigured(
                message.channel,
                message.aggregation_period,
                message.data_format,
                channel.decoder.event_fields,
            )
        )

    def _on_feed_data(self, message: FeedData) -> None:
        channel = self._channel_for(M.FEED_DATA, message.channel)
        if channel is None:
            return
        batches, errors = channel.decoder.decode(message)
        for batch in batches:
            if isinstance(batch, CandleEvents):
                self._emit(CandlesReceived(message.channel, batch.candles))
            else:
                self._emit(EventsReceived(message.channel, batch.event_type, batch.events))
        for error in errors:
            if self.debug:
                self.logger.debug(
                    "! undecodable FEED_DATA on channel %d: %s", message.channel, error
                )
            self._emit(InvalidMessageReceived(error))
