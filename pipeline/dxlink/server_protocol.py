"""The server side of the DXLink state machine, for the simulator (dxlink-protocol.md §2).

Same core, codec and driver contract as ``protocol.ClientProtocol`` (see ``protocol.py``);
the application (the simulator) decides every reply: ``send_setup``, ``send_auth_state``,
``open_channel``, ``configure_feed``, ``send_candles`` (or, for a caller that encodes FEED_DATA
itself, ``feed_layout`` and ``send_feed_data``). Two replies are automatic because
the real server makes them: CHANNEL_CLOSED answers CHANNEL_CANCEL, and channel traffic
before AUTHORIZED is answered with ERROR UNAUTHORIZED.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

from pipeline.dxlink.errors import ProtocolViolation, UsageError
from pipeline.dxlink.events import CANDLE_FIELDS, Candle
from pipeline.dxlink.feed_codec import CANDLE, CANDLE_WIRE_FIELDS, FeedDecoder, encode_candles
from pipeline.dxlink.message_models import (
    Auth,
    AuthState,
    AuthStateValue,
    ChannelCancel,
    ChannelRequest,
    DataFormat,
    Error,
    ErrorCode,
    FeedConfig,
    FeedData,
    FeedSetup,
    FeedSubscription,
    JsonObject,
    Keepalive,
    Message,
    Setup,
)
from pipeline.dxlink.message_models import ChannelClosed as ChannelClosedMessage
from pipeline.dxlink.message_models import ChannelOpened as ChannelOpenedMessage
from pipeline.dxlink.message_models import MessageType as M
from pipeline.dxlink.messages import message_type
from pipeline.dxlink.protocol_core import (
    AUTHORIZED,
    AUTHORIZING,
    AWAIT_AUTH,
    CHANNEL_CLOSED,
    CONFIGURED,
    CONNECTING,
    OPENED,
    REQUESTED,
    SERVER_CHANNEL_MESSAGES,
    ChannelRecord,
    ProtocolCore,
    Role,
)
from pipeline.dxlink.protocol_events import (
    AuthRequested,
    ChannelCancelled,
    ChannelRequested,
    ClientSetup,
    FeedSetupRequested,
    KeepaliveReceived,
    SubscriptionRequested,
    ViolationReceived,
)

__all__ = ["DEFAULT_SERVER_VERSION", "ServerProtocol"]

DEFAULT_SERVER_VERSION: Final = "1.0-candle-pipeline-sim"


class ServerProtocol(ProtocolCore):
    """The server side of DXLink, for the simulator (§2.2, §3.2). The app decides replies."""

    role = Role.SERVER

    def __init__(
        self,
        *,
        version: str = DEFAULT_SERVER_VERSION,
        keepalive_timeout: float = 60,
        accept_keepalive_timeout: float = 60,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> None:
        super().__init__(
            keepalive_timeout=keepalive_timeout,
            accept_keepalive_timeout=accept_keepalive_timeout,
            logger=logger,
        )
        self.version = version
        self.client_version: str | None = None
        """The client's SETUP version."""

    def __repr__(self) -> str:
        return f"ServerProtocol(state={self._state.name}, channels={sorted(self._channels)})"

    @property
    def dead_peer_timeout(self) -> float:
        """The client's advertised keepaliveTimeout (our accept value until it arrives)."""
        return self.peer_keepalive_timeout or self.accept_keepalive_timeout

    # -- actions -------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Arm the timers when the connection is accepted; nothing is sent."""
        self._require({CONNECTING}, "start")
        self._start_timers(now)

    def send_setup(self, *, now: float | None = None) -> None:
        """Queue our SETUP reply (§2.2)."""
        self._send(Setup(self.version, self.keepalive_timeout, self.accept_keepalive_timeout), now)

    def send_auth_state(
        self, authorized: bool, user_id: str | None = None, *, now: float | None = None
    ) -> None:
        """Queue AUTH_STATE. UNAUTHORIZED after an AUTH (or once AUTHORIZED) is a rejection."""
        self._require({AWAIT_AUTH, AUTHORIZING, AUTHORIZED}, "send AUTH_STATE before SETUP")
        if authorized:
            self._send(AuthState(AuthStateValue.AUTHORIZED, user_id), now)
            self._set_state(AUTHORIZED)
            return
        self._send(AuthState(AuthStateValue.UNAUTHORIZED), now)
        if self._state is not AWAIT_AUTH:
            self._set_state(AWAIT_AUTH)

    def open_channel(
        self, channel: int, parameters: JsonObject | None = None, *, now: float | None = None
    ) -> None:
        """Queue CHANNEL_OPENED echoing the request's parameters plus ``subFormat: LIST``."""
        known = self._known_channel(channel, {REQUESTED}, "open the channel")
        echoed = {**(known.parameters if parameters is None else parameters), "subFormat": "LIST"}
        known.parameters = echoed
        self._send(ChannelOpenedMessage(channel, known.service, echoed), now)
        self._set_channel_state(known, OPENED)

    def configure_feed(
        self,
        channel: int,
        *,
        aggregation_period: float,
        data_format: DataFormat | str,
        event_fields: Mapping[str, Sequence[str]] | None = None,
        now: float | None = None,
    ) -> None:
        """Queue FEED_CONFIG without eventFields, as tastytrade does (§3.2).

        Only known Candle field names are kept (default: ``CANDLE_FIELDS``); other event
        types are not served. The field list goes out lazily in a second FEED_CONFIG
        before the first FEED_DATA (``send_candles``).
        """
        known = self._known_channel(channel, {OPENED, CONFIGURED}, "configure the feed")
        if data_format not in DataFormat.__members__:
            raise UsageError(f"data_format {data_format!r} is not one of {', '.join(DataFormat)}")
        requested = (event_fields or {}).get(CANDLE) or CANDLE_FIELDS
        fields = tuple(dict.fromkeys(name for name in requested if name in CANDLE_WIRE_FIELDS))
        known.decoder = FeedDecoder({CANDLE: fields or CANDLE_FIELDS})
        known.data_format = DataFormat(data_format)
        known.aggregation_period = aggregation_period
        known.announced = set()
        self._send(FeedConfig(channel, aggregation_period, known.data_format), now)
        self._set_channel_state(known, CONFIGURED)

    def send_candles(
        self, channel: int, candles: Sequence[Candle], *, now: float | None = None
    ) -> None:
        """Queue FEED_DATA for ``candles`` in the channel's format (one message; may be 0)."""
        known = self._known_channel(channel, {CONFIGURED}, "send candles")
        if not candles:
            return
        fields = known.decoder.event_fields[CANDLE]
        if CANDLE not in known.announced:
            # §3.2: eventFields arrive lazily, before the first FEED_DATA of the type.
            self._send(
                FeedConfig(
                    channel, known.aggregation_period or 0, known.data_format, {CANDLE: fields}
                ),
                now,
            )
            known.announced.add(CANDLE)
        data = encode_candles(candles, fields=fields, data_format=known.data_format)
        self._send(FeedData(channel, data), now)

    def feed_layout(
        self, channel: int, event_type: str = CANDLE
    ) -> tuple[DataFormat, tuple[str, ...]] | None:
        """The format and field list that FEED_DATA of ``event_type`` on ``channel`` follows,
        once the lazy FEED_CONFIG has announced the fields (§3.2); None before that (the
        first ``send_candles`` announces them).

        Raises:
            UsageError: the channel is not CONFIGURED.
        """
        known = self._known_channel(channel, {CONFIGURED}, "send feed data")
        if event_type not in known.announced:
            return None
        return known.data_format, known.decoder.event_fields[event_type]

    def send_feed_data(self, channel: int, data: list[Any], *, now: float | None = None) -> None:
        """Queue FEED_DATA whose ``data`` the caller encoded (§3.3 COMPACT, §3.4 FULL).

        For a caller with its own encoder (the simulator's column-wise one): ``data`` must be
        in the channel's format and laid out as ``feed_layout`` says, for event types whose
        fields are already announced. Only the envelope is checked here, not every value.

        Raises:
            UsageError: the channel is not CONFIGURED, ``data`` is empty or in the other
                format, an event type's fields were not announced yet, or a COMPACT value
                list is not a whole number of events.
        """
        known = self._known_channel(channel, {CONFIGURED}, "send feed data")
        if not isinstance(data, list) or not data:
            raise UsageError("FEED_DATA data must be a non-empty list of events")
        data_format = DataFormat.COMPACT if isinstance(data[0], str) else DataFormat.FULL
        if data_format is not known.data_format:
            raise UsageError(
                f"channel {channel} is configured for {known.data_format} FEED_DATA, "
                f"not {data_format}; encode it as {known.data_format}"
            )
        fields = known.decoder.event_fields
        if data_format is DataFormat.COMPACT:
            if len(data) % 2:
                raise UsageError("COMPACT FEED_DATA data must hold event type / values pairs")
            pairs = zip(data[0::2], data[1::2], strict=True)
            for event_type, values in pairs:
                self._check_announced(known, channel, event_type)
                width = len(fields[event_type])
                if not isinstance(values, list) or len(values) % width:
                    raise UsageError(
                        f"COMPACT {event_type} values must be a list of whole events "
                        f"({width} values each, §3.3)"
                    )
        else:
            if not all(isinstance(event, dict) for event in data):
                raise UsageError("FULL FEED_DATA data must be a list of event objects (§3.4)")
            for event_type in {event.get("eventType") for event in data}:
                self._check_announced(known, channel, event_type)
        self._send(FeedData(channel, data), now)

    @staticmethod
    def _check_announced(known: ChannelRecord, channel: int, event_type: object) -> None:
        if event_type not in known.announced:
            raise UsageError(
                f"cannot send {event_type!r:.40} events on channel {channel}: their "
                f"eventFields were not announced; send the first ones with send_candles (§3.2)"
            )

    def close_channel(self, channel: int, *, now: float | None = None) -> None:
        """Queue CHANNEL_CLOSED: the server closes the channel on its own (§2.3)."""
        known = self._known_channel(channel, {REQUESTED, OPENED, CONFIGURED}, "close")
        self._send(ChannelClosedMessage(channel), now)
        self._set_channel_state(known, CHANNEL_CLOSED)

    def send_error(
        self, code: ErrorCode | str, message: str, channel: int = 0, *, now: float | None = None
    ) -> None:
        """Queue an ERROR (§2.7); ``channel`` 0 is connection level."""
        self._send(Error(str(code), message, channel), now)

    # -- received ------------------------------------------------------------------------

    def _on_violation(self, message: Message, error: ProtocolViolation) -> None:
        kind = message_type(message)
        if kind in SERVER_CHANNEL_MESSAGES and self._state is not AUTHORIZED:
            # Channel traffic before AUTHORIZED is refused the way the server does it (§2.7).
            channel = getattr(message, "channel", 0)
            self._send(Error(ErrorCode.UNAUTHORIZED, f"{kind} before AUTHORIZED", channel))
        self._emit(ViolationReceived(error, kind))

    def _dispatch(self, message: Message) -> None:
        if isinstance(message, Setup):
            self.client_version = message.version
            self.peer_keepalive_timeout = message.keepalive_timeout
            self.peer_accept_keepalive_timeout = message.accept_keepalive_timeout
            self._set_state(AWAIT_AUTH)
            self._emit(
                ClientSetup(
                    message.version, message.keepalive_timeout, message.accept_keepalive_timeout
                )
            )
        elif isinstance(message, Auth):
            self._set_state(AUTHORIZING)
            self._emit(AuthRequested(message.token))
        elif isinstance(message, Keepalive):
            self._emit(KeepaliveReceived())
        elif isinstance(message, Error):
            self._on_error(message)
        elif isinstance(message, ChannelRequest):
            self._on_channel_request(message)
        elif isinstance(message, ChannelCancel):
            channel = self._channel_for(M.CHANNEL_CANCEL, message.channel)
            if channel is not None:
                self._send(ChannelClosedMessage(message.channel))
                self._set_channel_state(channel, CHANNEL_CLOSED)
                self._emit(ChannelCancelled(message.channel))
        elif isinstance(message, FeedSetup):
            if self._channel_for(M.FEED_SETUP, message.channel) is not None:
                self._emit(
                    FeedSetupRequested(
                        message.channel,
                        message.accept_aggregation_period,
                        message.accept_data_format,
                        message.accept_event_fields,
                    )
                )
        elif isinstance(message, FeedSubscription) and (
            self._channel_for(M.FEED_SUBSCRIPTION, message.channel) is not None
        ):
            self._emit(
                SubscriptionRequested(message.channel, message.add, message.remove, message.reset)
            )

    def _on_channel_request(self, message: ChannelRequest) -> None:
        known = self._channels.get(message.channel)
        if known is not None and known.state is not CHANNEL_CLOSED:
            # tastyware #113: old clients re-sent CHANNEL_REQUEST for an open channel.
            raise ProtocolViolation(
                f"CHANNEL_REQUEST for channel {message.channel}, which is already "
                f"{known.state.name}"
            )
        self._channels[message.channel] = ChannelRecord(
            message.channel, message.service, dict(message.parameters)
        )
        self._emit(ChannelRequested(message.channel, message.service, message.parameters))
