"""Tests for the DXLink state machines: ClientProtocol, ServerProtocol (protocol*.py).

Sections: dxlink-protocol.md §2.2 (handshake), §2.4 (channels), §2.6 (keepalive), §2.7
(errors), §3.2 (feed config). The codec has its own tests in test_codec.py.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.dxlink import (
    CANDLE_FIELDS,
    Authorized,
    AuthRejected,
    AuthRequested,
    Candle,
    CandlesReceived,
    ChannelCancelled,
    ChannelRequested,
    ChannelState,
    ClientProtocol,
    ClientSetup,
    ConnState,
    DataFormat,
    ErrorCode,
    ErrorReceived,
    EventsReceived,
    FeedConfigured,
    FeedDecoder,
    FeedSetupRequested,
    InvalidMessageReceived,
    KeepaliveReceived,
    MessageType,
    PeerTimedOut,
    ServerInvalidMessage,
    ServerProtocol,
    ServerSetup,
    ServerTimeout,
    SubscriptionItem,
    SubscriptionRequested,
    Unauthorized,
    UsageError,
    ViolationReceived,
)
from pipeline.dxlink import ChannelClosed as ChannelClosedEvent
from pipeline.dxlink import ChannelOpened as ChannelOpenedEvent
from pipeline.dxlink.message_models import FeedConfig
from pipeline.dxlink.protocol_core import MIN_KEEPALIVE_INTERVAL
from tests.dxlink.drivers import (
    AUTHORIZED,
    SERVER_SETUP,
    T4_CONFIG,
    UNAUTHORIZED,
    authorized_client,
    authorized_server,
    configured_client,
    sent,
)
from tests.dxlink.pair import ProtocolPair
from tests.dxlink.vectors import T4_FIELDS, T6, T7, T7_FIELDS, VECTORS, candles_of, same

# --------------------------------------------------------------------------------------------
# ClientProtocol (§2.2 handshake, §2.4 channels, §3.2 feed config, §2.6 keepalive)


def state_of(proto: ClientProtocol | ServerProtocol) -> ConnState:
    """The state, read through a call so mypy does not narrow it across actions."""
    return proto.state


class TestClientHandshake:
    """§2.2: SETUP, server SETUP, AUTH_STATE UNAUTHORIZED, AUTH, AUTHORIZED."""

    def test_start_queues_t1_setup(self) -> None:
        """start() queues exactly T1's client SETUP and enters SETUP_SENT."""
        client = ClientProtocol(token="tok")
        assert client.next_deadline() is None
        client.start(5.0)
        assert sent(client) == [orjson.loads(VECTORS[0][1])]
        assert client.state is ConnState.SETUP_SENT
        with pytest.raises(UsageError, match="cannot start in SETUP_SENT"):
            client.start(6.0)

    def test_auth_waits_for_first_auth_state(self) -> None:
        """AUTH goes out only after the first AUTH_STATE UNAUTHORIZED, not on SETUP."""
        client = ClientProtocol(token="tok")
        client.start(0)
        client.messages_to_send()
        client.receive_message(SERVER_SETUP, 1)
        assert sent(client) == []
        assert client.events_received() == [ServerSetup("1.0-1.2.1-20240722-153442", 60, 60)]
        client.receive_message(UNAUTHORIZED, 2)
        assert sent(client) == [{"type": "AUTH", "channel": 0, "token": "tok"}]
        assert client.events_received() == []  # the first UNAUTHORIZED is no rejection
        assert client.state is ConnState.AUTHORIZING
        client.receive_message(AUTHORIZED, 3)
        assert client.events_received() == [Authorized("u1")]
        assert state_of(client) is ConnState.AUTHORIZED and client.user_id == "u1"

    def test_without_token_waits_then_set_token_sends_auth(self) -> None:
        """With no token the client waits in AWAIT_AUTH; set_token() sends AUTH."""
        client = ClientProtocol(token=None)
        client.start(0)
        client.messages_to_send()
        client.receive_message(UNAUTHORIZED, 1)
        assert sent(client) == [] and client.state is ConnState.AWAIT_AUTH
        client.set_token("late")
        assert sent(client) == [{"type": "AUTH", "channel": 0, "token": "late"}]

    def test_later_unauthorized_is_a_rejection_and_drops_the_token(self) -> None:
        """A second UNAUTHORIZED after AUTH emits AuthRejected and never resends the token."""
        client = ClientProtocol(token="bad")
        client.start(0)
        client.receive_message(UNAUTHORIZED, 1)
        client.messages_to_send()
        client.receive_message(UNAUTHORIZED, 2)
        assert client.events_received() == [AuthRejected()]
        assert client.state is ConnState.AWAIT_AUTH
        client.receive_message(UNAUTHORIZED, 3)
        assert sent(client) == [] and client.events_received() == []
        client.set_token("good")
        assert sent(client) == [{"type": "AUTH", "channel": 0, "token": "good"}]
        client.receive_message(AUTHORIZED, 4)
        assert client.events_received() == [Authorized("u1")]

    def test_unauthorized_after_authorized_is_a_rejection(self) -> None:
        """AUTH_STATE UNAUTHORIZED on an authorized connection revokes it."""
        client = authorized_client()
        client.receive_message(UNAUTHORIZED, 1)
        assert client.events_received() == [AuthRejected()]
        with pytest.raises(UsageError, match="cannot open a channel in AWAIT_AUTH"):
            client.open_channel()

    def test_server_without_auth_authorizes_at_once(self) -> None:
        """A first AUTH_STATE AUTHORIZED (no auth needed) authorizes without AUTH."""
        client = ClientProtocol(token="tok")
        client.start(0)
        client.messages_to_send()
        client.receive_message('{"type":"AUTH_STATE","channel":0,"state":"AUTHORIZED"}', 1)
        assert sent(client) == [] and client.events_received() == [Authorized(None)]

    def test_set_token_while_authorized_only_stores_it(self) -> None:
        """Replacing the token on an authorized connection sends nothing."""
        client = authorized_client()
        client.set_token("new")
        assert sent(client) == []

    def test_token_never_logged(self, caplog: pytest.LogCaptureFixture) -> None:
        """Debug logging of a whole session never contains the token."""
        caplog.set_level(logging.DEBUG, logger="pipeline.dxlink.protocol")
        pair = ProtocolPair(
            token="super-secret-token", client=ClientProtocol(token="super-secret-token")
        )
        pair.handshake()
        pair.open_feed()
        pair.client.set_token("another-secret")
        assert "AUTH" in caplog.text and "secret" not in caplog.text
        assert "secret" not in repr(pair.client) and "secret" not in repr(pair.server_events)


class TestClientChannels:
    """§2.4 channel numbering, §3.2 feed config, §2.3 subscriptions."""

    def test_channels_are_odd_and_never_reused(self) -> None:
        """open_channel hands out 1, 3, 5, ...; a cancelled number is not reused."""
        client = authorized_client()
        assert [client.open_channel(), client.open_channel("AUTO")] == [1, 3]
        client.cancel_channel(1)
        assert client.open_channel() == 5
        assert [m["channel"] for m in sent(client)] == [1, 3, 1, 5]
        assert client.channel_state(1) is ChannelState.CLOSED

    def test_a_channel_number_may_be_chosen(self) -> None:
        """open_channel(number=N) uses N (tastyware's fixed map, a rebuild's recorded numbers);
        later numbers follow it; an open number or one below 1 is refused."""
        client = authorized_client()
        assert client.open_channel("AUTO", number=7) == 7
        assert client.open_channel() == 9
        assert client.open_channel(number=2) == 2
        assert client.open_channel() == 11
        assert [m["channel"] for m in sent(client)] == [7, 9, 2, 11]
        with pytest.raises(UsageError, match="channel 7 is not a free service channel number"):
            client.open_channel(number=7)
        with pytest.raises(UsageError, match="channel 0 is not a free"):
            client.open_channel(number=0)
        client.cancel_channel(7)
        assert client.open_channel(number=7) == 7

    def test_open_channel_needs_authorized_and_a_contract(self) -> None:
        """Opening a channel before AUTHORIZED or with a bad contract is a UsageError."""
        client = ClientProtocol(token="tok")
        client.start(0)
        with pytest.raises(UsageError, match="cannot open a channel in SETUP_SENT"):
            client.open_channel()
        client = authorized_client()
        with pytest.raises(UsageError, match="contract 'CANDLES' is not one of"):
            client.open_channel("CANDLES")

    def test_open_setup_config_and_data(self) -> None:
        """CHANNEL_OPENED, FEED_SETUP, FEED_CONFIG (lazy fields) and FEED_DATA in order."""
        client = authorized_client()
        channel = client.open_channel("HISTORY")
        client.receive_message(VECTORS[8][1].replace("CHANNEL_REQUEST", "CHANNEL_OPENED"), 1)
        assert client.events_received() == [ChannelOpenedEvent(1, {"contract": "HISTORY"})]
        client.setup_feed(channel, aggregation_period=0.1, event_fields={"Candle": T4_FIELDS})
        assert sent(client)[-1] == orjson.loads(VECTORS[9][1])
        client.receive_message(
            '{"type":"FEED_CONFIG","channel":1,"aggregationPeriod":0.1,"dataFormat":"COMPACT"}', 2
        )
        assert client.events_received() == [FeedConfigured(1, 0.1, DataFormat.COMPACT, {})]
        client.receive_message(T4_CONFIG, 3)
        assert client.events_received()[0].event_fields == {"Candle": T4_FIELDS}  # type: ignore[union-attr]
        client.receive_message(T6, 4)
        (event,) = client.events_received()
        assert isinstance(event, CandlesReceived) and event.channel == 1
        assert [c.time for c in event.candles] == [1756303200000, 1756302900000]

    def test_feed_data_before_event_fields_is_invalid_not_fatal(self) -> None:
        """FEED_DATA for a type FEED_CONFIG never listed becomes InvalidMessageReceived."""
        client = configured_client(
            '{"type":"FEED_CONFIG","channel":1,"aggregationPeriod":0.1,"dataFormat":"COMPACT"}'
        )
        client.receive_message(T6, 1)
        (event,) = client.events_received()
        assert isinstance(event, InvalidMessageReceived)
        assert "no eventFields for 'Candle'" in event.error.reason
        assert client.state is ConnState.AUTHORIZED

    def test_feed_config_merges_per_type(self) -> None:
        """A later FEED_CONFIG replaces only the listed types' fields (§3.2)."""
        client = configured_client()
        client.receive_message(
            '{"type":"FEED_CONFIG","channel":1,"aggregationPeriod":1,"dataFormat":"COMPACT",'
            '"eventFields":{"Quote":["eventSymbol","bidPrice"]}}',
            1,
        )
        assert client.event_fields(1) == {"Candle": T4_FIELDS, "Quote": ("eventSymbol", "bidPrice")}
        client.receive_message('{"type":"FEED_DATA","channel":1,"data":["Quote",["AAPL",1.5]]}', 2)
        assert client.events_received()[-1] == EventsReceived(
            1, "Quote", [{"eventType": "Quote", "eventSymbol": "AAPL", "bidPrice": 1.5}]
        )

    def test_subscribe_candles_need_from_time(self) -> None:
        """Candle items need fromTime in add and remove; the T5 shapes go out."""
        client = configured_client()
        item = SubscriptionItem("Candle", "AAPL{=5m,tho=true}", 1756252800000)
        client.subscribe(1, add=[item])
        client.subscribe(1, remove=[item])
        client.subscribe(1, reset=True)
        assert sent(client) == [orjson.loads(VECTORS[i][1]) for i in (11, 12, 13)]
        with pytest.raises(UsageError, match="needs from_time"):
            client.subscribe(1, remove=[SubscriptionItem("Candle", "AAPL{=d}")])
        with pytest.raises(UsageError, match="needs add, remove or reset"):
            client.subscribe(1)
        with pytest.raises(UsageError, match="channel 7 is not open"):
            client.subscribe(7, reset=True)
        client.subscribe(1, add=[SubscriptionItem("Quote", "AAPL")])  # no fromTime needed

    def test_cancel_then_late_frames_are_dropped_quietly(self) -> None:
        """After CHANNEL_CANCEL, in-flight FEED_DATA and the CLOSED reply cause no events."""
        client = configured_client()
        client.cancel_channel(1)
        assert sent(client) == [{"type": "CHANNEL_CANCEL", "channel": 1}]
        client.receive_message(T6, 1)
        client.receive_message(VECTORS[16][1], 1)
        assert client.events_received() == []
        with pytest.raises(UsageError, match="cannot cancel: channel 1 is CLOSED"):
            client.cancel_channel(1)

    def test_server_closing_a_channel(self) -> None:
        """A CHANNEL_CLOSED the server sends on its own closes the channel."""
        client = configured_client()
        client.receive_message(VECTORS[16][1], 1)
        assert client.events_received() == [ChannelClosedEvent(1)]
        assert client.channel_state(1) is ChannelState.CLOSED
        with pytest.raises(UsageError, match="channel 1 is CLOSED"):
            client.setup_feed(1, aggregation_period=1, event_fields={})

    @pytest.mark.parametrize(
        ("frame", "reason"),
        [
            (VECTORS[6][1], "CHANNEL_OPENED not allowed for client in AUTHORIZED"),
            (T6, "FEED_DATA for unknown channel 1 (client)"),
            (VECTORS[3][1], "AUTH not allowed for client in AUTHORIZED"),
            (VECTORS[5][1], "CHANNEL_REQUEST not allowed for client in AUTHORIZED"),
        ],
    )
    def test_illegal_messages_are_violations(self, frame: str, reason: str) -> None:
        """Legal JSON that is illegal here becomes ViolationReceived naming it, role, state."""
        client = authorized_client()
        if "CHANNEL_OPENED" in frame:
            frame = frame.replace('"channel":3', '"channel":9')
            reason = "CHANNEL_OPENED for unknown channel 9 (client)"
        client.receive_message(frame, 1)
        (event,) = client.events_received()
        assert isinstance(event, ViolationReceived) and reason in str(event.error)
        assert event.message_type == reason.split()[0]  # the offending type, e.g. AUTH
        assert client.state is ConnState.AUTHORIZED

    def test_channel_message_before_authorized_names_state(self) -> None:
        """CHANNEL_OPENED during the handshake is a violation naming SETUP_SENT."""
        client = ClientProtocol(token="t")
        client.start(0)
        client.receive_message(VECTORS[6][1], 1)
        (event,) = client.events_received()
        assert str(event.error) == "CHANNEL_OPENED not allowed for client in SETUP_SENT"  # type: ignore[union-attr]

    def test_feed_data_before_feed_config_is_a_violation(self) -> None:
        """FEED_DATA on an OPENED (not yet configured) channel is a violation."""
        client = authorized_client()
        client.open_channel()
        client.receive_message(VECTORS[8][1].replace("CHANNEL_REQUEST", "CHANNEL_OPENED"), 0)
        client.events_received()
        client.receive_message(T6, 1)
        (event,) = client.events_received()
        assert "FEED_DATA not allowed for client on channel 1 in OPENED" in str(event.error)  # type: ignore[union-attr]

    @pytest.mark.parametrize("index", [17, 18, 19])
    def test_errors_become_typed_server_errors(self, index: int) -> None:
        """T10 ERROR messages become ErrorReceived with the §2.7 subclass."""
        client = authorized_client()
        client.receive_message(VECTORS[index][1], 1)
        (event,) = client.events_received()
        assert isinstance(event, ErrorReceived) and event.error.channel == 0
        assert event.error.code == VECTORS[index][2].error  # type: ignore[union-attr]
        assert (
            type(event.error)
            is {17: ServerTimeout, 18: ServerInvalidMessage, 19: Unauthorized}[index]
        )

    def test_channel_error_keeps_its_channel(self) -> None:
        """A channel-level ERROR keeps its channel number; unknown codes stay readable."""
        client = configured_client()
        client.receive_message('{"type":"ERROR","channel":1,"error":"WEIRD","message":"m"}', 1)
        (event,) = client.events_received()
        assert event.error.channel == 1 and event.error.code == "WEIRD"  # type: ignore[union-attr]

    def test_garbled_frames_are_counted_not_fatal(self) -> None:
        """Invalid frames become InvalidMessageReceived and leave the state alone."""
        client = configured_client()
        for frame in ("{", b"\xff", "[]", '{"type":"FEED_DATA","channel":1,"data":5}'):
            client.receive_message(frame, 1)
        events = client.events_received()
        assert len(events) == 4 and all(isinstance(e, InvalidMessageReceived) for e in events)
        client.receive_message(T6, 2)
        assert isinstance(client.events_received()[0], CandlesReceived)

    def test_internal_errors_never_escape(self) -> None:
        """A bug inside a handler becomes ViolationReceived instead of raising."""

        class Broken(ClientProtocol):
            def _on_feed_config(self, message: FeedConfig) -> None:
                raise KeyError("boom")

        client = Broken(token="t")
        client.start(0)
        for frame in (SERVER_SETUP, UNAUTHORIZED, AUTHORIZED):
            client.receive_message(frame, 0)
        client.open_channel()
        client.receive_message(VECTORS[8][1].replace("CHANNEL_REQUEST", "CHANNEL_OPENED"), 0)
        client.events_received()
        client.receive_message(T4_CONFIG, 1)
        (event,) = client.events_received()
        assert isinstance(event, ViolationReceived)
        assert "internal error handling FEED_CONFIG: KeyError" in str(event.error)
        assert event.message_type is MessageType.FEED_CONFIG

    def test_close_ignores_frames_and_refuses_actions(self) -> None:
        """After close() frames are ignored, timers stop and actions raise."""
        client = configured_client()
        client.close()
        client.receive_message(T6, 1)
        assert client.events_received() == [] and client.next_deadline() is None
        with pytest.raises(UsageError, match="CLOSED"):
            client.cancel_channel(1)


class TestClientTimers:
    """§2.6: KEEPALIVE after min(timeouts)/2 of sending nothing; dead server detection."""

    def test_keepalive_when_nothing_sent_for_half_the_timeout(self) -> None:
        """With all timeouts 60, a KEEPALIVE goes out 30 s after the last send."""
        client = authorized_client(now=100.0)
        assert client.next_deadline() == 130.0
        client.handle_timer(129.9)
        assert sent(client) == []
        client.handle_timer(130.0)
        assert sent(client) == [{"type": "KEEPALIVE", "channel": 0}]
        assert client.next_deadline() == 160.0

    def test_other_sends_postpone_the_keepalive(self) -> None:
        """Any sent message restarts the keepalive interval."""
        client = authorized_client(now=0.0)
        client.handle_timer(20.0)
        client.open_channel(now=20.0)
        assert client.next_deadline() == 50.0

    def test_smallest_advertised_timeout_wins(self) -> None:
        """A server advertising keepaliveTimeout 10 makes the client send every 5 s."""
        client = ClientProtocol(token="t", keepalive_timeout=60)
        client.start(0)
        client.receive_message(
            SERVER_SETUP.replace('"keepaliveTimeout":60', '"keepaliveTimeout":10'), 0
        )
        assert client.keepalive_interval == 5
        assert client.next_deadline() == 5

    def test_keepalive_on_receive_when_overdue(self) -> None:
        """A frame arriving after the interval also triggers the overdue KEEPALIVE."""
        client = authorized_client(now=0.0)
        client.receive_message('{"type":"KEEPALIVE","channel":0}', 31.0)
        assert sent(client) == [{"type": "KEEPALIVE", "channel": 0}]

    def test_dead_server_after_sixty_silent_seconds(self) -> None:
        """Nothing received for 60 s: ERROR TIMEOUT queued, PeerTimedOut, CLOSED."""
        client = authorized_client(now=0.0)
        for now in (30.0, 59.0):  # our own keepalives do not count as hearing the server
            client.handle_timer(now)
        assert client.events_received() == []
        assert client.next_deadline() == 60.0
        client.handle_timer(60.0)
        assert client.events_received() == [PeerTimedOut(60.0)]
        assert sent(client)[-1] == {
            "type": "ERROR",
            "channel": 0,
            "error": "TIMEOUT",
            "message": "No keepalive received for 60000ms",
        }
        assert client.state is ConnState.CLOSED and client.next_deadline() is None

    def test_any_received_message_resets_the_dead_peer_timer(self) -> None:
        """A KEEPALIVE (or any frame, even garbled) from the server keeps it alive."""
        client = authorized_client(now=0.0)
        client.receive_message('{"type":"KEEPALIVE","channel":0}', 50.0)
        client.receive_message("garbage", 100.0)
        client.handle_timer(159.0)
        assert not any(isinstance(e, PeerTimedOut) for e in client.events_received())
        client.handle_timer(160.0)
        assert client.events_received()[-1] == PeerTimedOut(60.0)

    @pytest.mark.parametrize(
        ("server_timeout", "floor", "cap", "expected"),
        [
            (60, 60, 60, 60),
            (120, 60, 300, 120),
            (10, 90, 60, 90),  # a cap below the floor does not undercut it
            (120, 60, 60, 60),
            ("1e9", 10, 60, 60),  # issue 14: an absurd advertisement cannot switch it off
            ("1e300", 10, 60, 60),
            (5, 10, 60, 10),
            ("1e-9", 10, 60, 10),
            (-5, 10, 60, 10),
            (0, 10, 60, 10),
        ],
    )
    def test_dead_peer_timeout_is_the_server_value_clamped(
        self, server_timeout: int | str, floor: float, cap: float, expected: float
    ) -> None:
        """The dead-server timeout is the server's keepaliveTimeout clamped to [floor, cap]."""
        client = ClientProtocol(token="t", dead_peer_timeout=floor, max_dead_peer_timeout=cap)
        client.start(0)
        client.receive_message(
            SERVER_SETUP.replace('"keepaliveTimeout":60', f'"keepaliveTimeout":{server_timeout}'), 0
        )
        assert client.dead_peer_timeout == expected

    def test_a_server_advertising_forever_and_saying_nothing_is_dropped_at_the_cap(self) -> None:
        """SETUP keepaliveTimeout 1e9, then silence: PeerTimedOut after the 60 s cap."""
        client = ClientProtocol(token="t", dead_peer_timeout=10, max_dead_peer_timeout=60)
        client.start(0.0)
        client.receive_message(
            SERVER_SETUP.replace('"keepaliveTimeout":60', '"keepaliveTimeout":1e9'), 0.0
        )
        client.handle_timer(59.9)
        assert not any(isinstance(e, PeerTimedOut) for e in client.events_received())
        client.handle_timer(60.0)
        assert client.events_received()[-1] == PeerTimedOut(60.0)

    @pytest.mark.parametrize("field", ["keepaliveTimeout", "acceptKeepaliveTimeout"])
    def test_a_tiny_advertised_timeout_cannot_make_the_client_spin(self, field: str) -> None:
        """A server advertising 1e-9 s gets a KEEPALIVE at most every MIN_KEEPALIVE_INTERVAL."""
        client = ClientProtocol(token="t")
        client.start(0.0)
        client.receive_message(SERVER_SETUP.replace(f'"{field}":60', f'"{field}":1e-9'), 0.0)
        assert client.keepalive_interval == MIN_KEEPALIVE_INTERVAL
        deadline = client.next_deadline()
        assert deadline is not None and deadline >= MIN_KEEPALIVE_INTERVAL

    def test_bad_timeouts_are_rejected(self) -> None:
        """Non-positive timeouts are a UsageError naming the setting."""
        with pytest.raises(UsageError, match="keepalive_timeout"):
            ClientProtocol(token="t", keepalive_timeout=0)
        with pytest.raises(UsageError, match="dead_peer_timeout"):
            ClientProtocol(token="t", dead_peer_timeout=-1)
        with pytest.raises(UsageError, match="max_dead_peer_timeout"):
            ClientProtocol(token="t", max_dead_peer_timeout=0)


# --------------------------------------------------------------------------------------------
# The client's FEED_DATA fast path: same outcome as the full path, frame for frame.

# A DEBUG logger makes the client take the full path for every frame (it logs each message).
FULL_PATH_LOGGER = logging.getLogger("tests.dxlink.full_path")
FULL_PATH_LOGGER.setLevel(logging.DEBUG)
FULL_PATH_LOGGER.propagate = False
FULL_PATH_LOGGER.addHandler(logging.NullHandler())

_junk_value = st.one_of(
    st.integers(-(2**64), 2**64),
    st.floats(),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "AAPL{=5m}", "Candle", "", "1.5"]),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=1),
)


@st.composite
def feed_frames(draw: st.DrawFn) -> str:
    """FEED_DATA-like frames: real T6/T7 data, edited values, odd shapes, channels, types."""
    data: Any = orjson.loads(draw(st.sampled_from([T6, *T7])))["data"]
    values = data[1]
    for position, value in draw(st.lists(st.tuples(st.integers(0, 99), _junk_value), max_size=2)):
        values[position % len(values)] = value
    if draw(st.booleans()):
        del values[draw(st.integers(0, len(values) - 1))]  # a count that is not a multiple
    if draw(st.booleans()):  # many events: the decoder's column path
        data[1] = values * 12
    shape = draw(st.sampled_from(["pair", "pair", "pair", "two pairs", "bare", "FULL", "dict"]))
    if shape == "two pairs":
        data = [*data, draw(st.sampled_from(["Candle", "Quote"])), values]
    elif shape == "bare":
        data = data[1]
    elif shape == "FULL":
        data = [{"eventType": "Candle", "eventSymbol": "A{=d}", "time": 0}]
    elif shape == "dict":
        data = {"Candle": values}
    frame: dict[str, Any] = {
        "type": draw(st.sampled_from(["FEED_DATA", "FEED_DATA", "FEED_CONFIG", "KEEPALIVE"])),
        "channel": draw(st.sampled_from([1, 1, 1, 1.0, True, "1", 3, 0, -1, None])),
        "data": data,
    }
    if draw(st.booleans()):
        frame["extra"] = [1]
    return json.dumps(frame)


def observed(client: ClientProtocol) -> tuple[str, list[dict[str, Any]], ConnState]:
    """What a driver sees after a frame: the events (repr), queued frames and state."""
    return repr(client.events_received()), sent(client), client.state


class TestClientFastPath:
    """receive_message's FEED_DATA fast path (protocol.py) against the full path."""

    @settings(max_examples=150, deadline=None)
    @given(st.lists(feed_frames(), min_size=1, max_size=4))
    def test_fast_path_and_full_path_give_the_same_events(self, frames: list[str]) -> None:
        """For any FEED_DATA-like frames, the same events, replies and state as the full path."""
        fast, full = configured_client(), configured_client(logger=FULL_PATH_LOGGER)
        assert not fast.debug and full.debug
        for step, frame in enumerate(frames):
            fast.receive_message(frame, 1.0 + step)
            full.receive_message(frame, 1.0 + step)
            assert observed(fast) == observed(full)

    @pytest.mark.parametrize(
        "frame",
        [
            T6.replace('"channel":1', '"channel":true'),
            T6.replace('"channel":1', '"channel":1.0'),
            T6.replace('"channel":1', '"channel":"1"'),
            T6.replace('"channel":1', '"channel":3'),
            T6.replace('"data":["Candle",', '"data":["Quote",'),
            T6.replace('"data":["Candle",', '"data":["Candle",[],"Candle",'),
            T6.replace('"NaN"]]}', '"x"]]}'),
            T6.replace('"type":"FEED_DATA"', '"type":"FEED_CONFIG"'),
        ],
        ids=[
            "bool channel",
            "float channel",
            "string channel",
            "unknown channel",
            "Quote",
            "two pairs",
            "bad value",
            "another type",
        ],
    )
    def test_edge_frames_match_the_full_path(self, frame: str) -> None:
        """Frames close to the fast path's shape have the full path's outcome exactly."""
        fast, full = configured_client(), configured_client(logger=FULL_PATH_LOGGER)
        fast.receive_message(frame, 1.0)
        full.receive_message(frame, 1.0)
        assert observed(fast) == observed(full)

    @pytest.mark.parametrize("situation", ["cancelled", "opened", "rejected"])
    def test_channel_and_connection_states_match_the_full_path(self, situation: str) -> None:
        """FEED_DATA on a cancelled or unconfigured channel, or after a token rejection."""
        clients = []
        for logger in (None, FULL_PATH_LOGGER):
            if situation == "opened":
                client = authorized_client(logger=logger)
                client.open_channel("HISTORY")
                client.receive_message(
                    VECTORS[8][1].replace("CHANNEL_REQUEST", "CHANNEL_OPENED"), 0
                )
            else:
                client = configured_client(logger=logger)
                if situation == "cancelled":
                    client.cancel_channel(1)
                else:
                    client.receive_message(UNAUTHORIZED, 0.5)
            client.messages_to_send()
            client.events_received()
            client.receive_message(T6, 1.0)
            clients.append(observed(client))
        assert clients[0] == clients[1]

    def test_t6_through_the_fast_path_is_one_candles_received(self) -> None:
        """A clean T6 frame becomes one CandlesReceived equal to the full path's, frozen."""
        client = configured_client()
        client.receive_message(T6, 1.0)
        (event,) = client.events_received()
        assert isinstance(event, CandlesReceived) and event.channel == 1
        assert same(event, CandlesReceived(1, candles_of(T6, T4_FIELDS)))
        with pytest.raises(AttributeError):
            event.channel = 2  # type: ignore[misc]
        client.receive_message(T6.encode(), 2.0)  # bytes take the same path
        assert same(client.events_received(), [event])

    def test_fast_path_still_sends_a_due_keepalive(self) -> None:
        """Only FEED_DATA arriving for 30 s still makes the client send its KEEPALIVE (§2.6)."""
        client = configured_client()
        client.receive_message(T6, 29.0)
        assert sent(client) == []
        client.receive_message(T6, 30.0)
        assert sent(client) == [{"type": "KEEPALIVE", "channel": 0}]
        assert client.next_deadline() == 60.0

    def test_a_fast_path_bug_falls_back_to_the_full_path(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An exception inside the fast path is logged; the full path still decodes the frame."""
        client = configured_client()

        def broken(values: object) -> None:
            raise RuntimeError("bug")

        monkeypatch.setattr(FeedDecoder, "compact_candles", lambda self, values: broken(values))
        with caplog.at_level(logging.ERROR, logger="pipeline.dxlink.protocol"):
            client.receive_message(T6, 1.0)
        (event,) = client.events_received()
        assert isinstance(event, CandlesReceived) and len(event.candles) == 2
        assert "bug in the fast path" in caplog.text

    def test_timeout_changes_refresh_the_keepalive_interval(self) -> None:
        """Setting any advertised timeout recomputes keepalive_interval (min / 2, §2.6)."""
        client = ClientProtocol(token="t")
        assert client.keepalive_interval == 30
        client.peer_keepalive_timeout = 10
        assert client.keepalive_interval == 5
        client.peer_accept_keepalive_timeout = 4
        client.keepalive_timeout = 6
        assert client.keepalive_interval == 2
        client.peer_keepalive_timeout = client.peer_accept_keepalive_timeout = None
        client.accept_keepalive_timeout = 8
        assert client.keepalive_interval == 3


# --------------------------------------------------------------------------------------------
# ServerProtocol (the simulator's side)


class TestServer:
    """The server role: handshake replies, channels, lazy eventFields, candles."""

    def test_handshake_replies(self) -> None:
        """ClientSetup and AuthRequested events; SETUP and AUTH_STATE replies (§2.2)."""
        server = ServerProtocol()
        server.start(0)
        server.receive_message(VECTORS[0][1], 1)
        assert server.events_received() == [ClientSetup("0.1-DXF-JS/0.3.0", 60, 60)]
        server.send_setup()
        server.send_auth_state(False)
        server.receive_message(VECTORS[3][1], 2)
        (auth,) = server.events_received()
        assert isinstance(auth, AuthRequested) and auth.token == "<redacted>"
        assert "redacted" not in repr(auth) and "redacted" not in str(auth)
        server.send_auth_state(True, "u1")
        assert sent(server) == [
            {
                "type": "SETUP",
                "channel": 0,
                "version": "1.0-candle-pipeline-sim",
                "keepaliveTimeout": 60,
                "acceptKeepaliveTimeout": 60,
            },
            orjson.loads(UNAUTHORIZED),
            {"type": "AUTH_STATE", "channel": 0, "state": "AUTHORIZED", "userId": "u1"},
        ]
        assert server.state is ConnState.AUTHORIZED

    def test_pipelined_auth_is_tolerated(self) -> None:
        """AUTH right after SETUP, before any AUTH_STATE (the JS client), is accepted."""
        server = ServerProtocol()
        server.start(0)
        server.receive_message(VECTORS[0][1], 1)
        server.receive_message(VECTORS[3][1], 1)
        assert [type(e) for e in server.events_received()] == [ClientSetup, AuthRequested]

    def test_rejection_then_retry(self) -> None:
        """UNAUTHORIZED after AUTH returns to AWAIT_AUTH; a new AUTH can follow."""
        server = ServerProtocol()
        server.start(0)
        server.receive_message(VECTORS[0][1], 1)
        server.receive_message(VECTORS[3][1], 1)
        server.send_auth_state(False)
        assert server.state is ConnState.AWAIT_AUTH
        server.receive_message(VECTORS[3][1], 2)
        assert state_of(server) is ConnState.AUTHORIZING

    def test_auth_state_before_setup_is_a_usage_error(self) -> None:
        """send_auth_state before the client's SETUP is a caller bug."""
        server = ServerProtocol()
        server.start(0)
        with pytest.raises(UsageError, match="before SETUP"):
            server.send_auth_state(True)

    def test_channel_traffic_before_authorized_gets_error_unauthorized(self) -> None:
        """Channel messages before AUTHORIZED are answered with ERROR UNAUTHORIZED."""
        server = ServerProtocol()
        server.start(0)
        server.receive_message(VECTORS[0][1], 1)
        server.receive_message(VECTORS[5][1], 1)
        events = server.events_received()
        assert isinstance(events[-1], ViolationReceived)
        assert "CHANNEL_REQUEST not allowed for server in AWAIT_AUTH" in str(events[-1].error)
        assert events[-1].message_type is MessageType.CHANNEL_REQUEST
        assert sent(server) == [
            {
                "type": "ERROR",
                "channel": 3,
                "error": "UNAUTHORIZED",
                "message": "CHANNEL_REQUEST before AUTHORIZED",
            }
        ]

    def test_auth_before_setup_is_a_violation(self) -> None:
        """AUTH before the client's SETUP is not allowed."""
        server = ServerProtocol()
        server.start(0)
        server.receive_message(VECTORS[3][1], 1)
        (event,) = server.events_received()
        assert str(event.error) == "AUTH not allowed for server in CONNECTING"  # type: ignore[union-attr]

    def test_channel_open_echoes_with_sub_format(self) -> None:
        """CHANNEL_REQUEST -> ChannelRequested; open_channel echoes T3's CHANNEL_OPENED."""
        server = authorized_server()
        server.receive_message(VECTORS[5][1], 1)
        assert server.events_received() == [ChannelRequested(3, "FEED", {"contract": "AUTO"})]
        server.open_channel(3)
        assert sent(server) == [orjson.loads(VECTORS[6][1])]
        with pytest.raises(UsageError, match="channel 3 is OPENED"):
            server.open_channel(3)

    def test_duplicate_channel_request_is_a_violation(self) -> None:
        """A CHANNEL_REQUEST for an active channel is a violation (tastyware #113)."""
        server = authorized_server()
        server.receive_message(VECTORS[5][1], 1)
        server.receive_message(VECTORS[5][1], 1)
        events = server.events_received()
        assert isinstance(events[-1], ViolationReceived)
        assert "already REQUESTED" in str(events[-1].error)
        assert events[-1].message_type is MessageType.CHANNEL_REQUEST  # for the simulator's log

    def test_lazy_event_fields_and_candles(self) -> None:
        """FEED_CONFIG first without eventFields, then with them before the first FEED_DATA."""
        server = authorized_server()
        server.receive_message(VECTORS[8][1], 1)
        server.open_channel(1)
        server.receive_message(VECTORS[9][1], 1)
        events = server.events_received()
        assert events[-1] == FeedSetupRequested(1, 0.1, DataFormat.COMPACT, {"Candle": T4_FIELDS})
        server.configure_feed(
            1,
            aggregation_period=0.1,
            data_format="COMPACT",
            event_fields={"Candle": [*T4_FIELDS, "madeUp", "time"], "Quote": ["bidPrice"]},
        )
        assert sent(server)[-1] == orjson.loads(VECTORS[7][1].replace('"channel":3', '"channel":1'))
        assert server.event_fields(1) == {"Candle": T4_FIELDS}
        candles = candles_of(T6, T4_FIELDS)
        server.send_candles(1, candles)
        server.send_candles(1, candles[:1])
        server.send_candles(1, [])
        frames = sent(server)
        assert frames[0] == orjson.loads(T4_CONFIG)
        assert frames[1] == orjson.loads(T6)
        assert [f["type"] for f in frames] == ["FEED_CONFIG", "FEED_DATA", "FEED_DATA"]

    def test_full_format_and_default_fields(self) -> None:
        """FULL channels get objects; with no Candle fields requested the defaults serve."""
        server = authorized_server()
        server.receive_message(VECTORS[8][1], 1)
        server.open_channel(1)
        server.configure_feed(1, aggregation_period=1, data_format=DataFormat.FULL)
        server.send_candles(1, [Candle("A{=d}", 0, index=0)])
        config, data = sent(server)[-2:]
        assert config["eventFields"] == {"Candle": list(CANDLE_FIELDS)}
        assert data["data"][0]["eventType"] == "Candle" and data["data"][0]["open"] == "NaN"
        with pytest.raises(UsageError, match="data_format 'XML'"):
            server.configure_feed(1, aggregation_period=1, data_format="XML")

    def test_cancel_is_answered_with_closed(self) -> None:
        """CHANNEL_CANCEL queues CHANNEL_CLOSED and emits ChannelCancelled (T9)."""
        server = authorized_server()
        server.receive_message(VECTORS[8][1], 1)
        server.receive_message(VECTORS[15][1], 2)
        assert server.events_received()[-1] == ChannelCancelled(1)
        assert sent(server) == [orjson.loads(VECTORS[16][1])]
        assert server.channel_state(1) is ChannelState.CLOSED

    def test_subscription_and_close_and_error(self) -> None:
        """FEED_SUBSCRIPTION -> SubscriptionRequested; close_channel and send_error queue."""
        server = authorized_server()
        server.receive_message(VECTORS[8][1], 1)
        server.open_channel(1)
        server.receive_message(VECTORS[11][1], 2)
        assert server.events_received()[-1] == SubscriptionRequested(
            1, (SubscriptionItem("Candle", "AAPL{=5m,tho=true}", 1756252800000),), (), False
        )
        server.close_channel(1)
        server.send_error(ErrorCode.BAD_ACTION, "too many", channel=1)
        assert sent(server)[-2:] == [
            {"type": "CHANNEL_CLOSED", "channel": 1},
            {"type": "ERROR", "channel": 1, "error": "BAD_ACTION", "message": "too many"},
        ]

    def test_server_timers_follow_the_client_setup(self) -> None:
        """Server keepalive at min(timeouts)/2; client silent past its keepaliveTimeout."""
        server = ServerProtocol()
        server.start(0)
        server.receive_message(
            VECTORS[0][1].replace('"keepaliveTimeout":60', '"keepaliveTimeout":20'), 0
        )
        assert server.dead_peer_timeout == 20 and server.keepalive_interval == 10
        server.handle_timer(10)
        assert sent(server) == [{"type": "KEEPALIVE", "channel": 0}]
        assert server.next_deadline() == 20
        server.handle_timer(20)
        assert server.events_received()[-1] == PeerTimedOut(20)
        assert sent(server)[-1]["error"] == "TIMEOUT"

    def test_keepalive_received_event(self) -> None:
        """A client KEEPALIVE is reported as KeepaliveReceived."""
        server = authorized_server()
        server.receive_message(VECTORS[14][1], 1)
        assert server.events_received() == [KeepaliveReceived()]


# --------------------------------------------------------------------------------------------
# Both machines together (tests/dxlink/pair.py)


class TestPair:
    """Full sessions through a ProtocolPair, time jumped via deadlines."""

    def test_handshake_order(self) -> None:
        """The frames follow §2.2's order and both sides end AUTHORIZED."""
        pair = ProtocolPair()
        pair.handshake()
        kinds = [orjson.loads(f)["type"] for f in pair.to_server + pair.to_client]
        assert kinds == ["SETUP", "AUTH", "SETUP", "AUTH_STATE", "AUTH_STATE"]
        assert pair.client_events == [
            ServerSetup("1.0-candle-pipeline-sim", 60, 60),
            Authorized("user-1"),
        ]
        assert pair.client.state is pair.server.state is ConnState.AUTHORIZED

    @pytest.mark.parametrize("data_format", [DataFormat.COMPACT, DataFormat.FULL])
    def test_candles_travel_server_to_client(self, data_format: DataFormat) -> None:
        """Candles sent by the server arrive at the client identical, in either format."""
        pair = ProtocolPair()
        pair.handshake()
        channel = pair.open_feed(data_format=data_format)
        pair.client.subscribe(
            channel, add=[SubscriptionItem("Candle", "AAPL{=5m,tho=true}", 1756252800000)]
        )
        _, server_events = pair.deliver()
        assert isinstance(server_events[0], SubscriptionRequested)
        candles = candles_of(T6, T4_FIELDS)
        pair.server.send_candles(channel, candles)
        client_events, _ = pair.deliver()
        received = [e for e in client_events if isinstance(e, CandlesReceived)]
        assert len(received) == 1 and same(received[0].candles, candles)

    def test_reduced_field_list_round_trip(self) -> None:
        """With the demo's 10 fields, the client still rebuilds time, index and OHLCV."""
        pair = ProtocolPair()
        pair.handshake()
        channel = pair.open_feed(fields=T7_FIELDS)
        sent_candles = candles_of(T7[1], T7_FIELDS)
        pair.server.send_candles(channel, sent_candles)
        (event,) = [e for e in pair.deliver()[0] if isinstance(e, CandlesReceived)]
        assert same(event.candles, sent_candles)

    def test_idle_session_stays_alive_for_an_hour(self) -> None:
        """Keepalives flow both ways; neither side times out over an idle hour."""
        pair = ProtocolPair()
        pair.handshake()
        pair.run_timers(until=pair.now + 3600)
        assert not any(isinstance(e, PeerTimedOut) for e in pair.client_events + pair.server_events)
        keepalives = [f for f in pair.to_server if '"KEEPALIVE"' in f]
        assert len(keepalives) == 120  # every 30 s
        assert pair.client.state is ConnState.AUTHORIZED

    def test_silent_server_is_detected(self) -> None:
        """A server that goes quiet (socket open) is declared dead 60 s after its last frame."""
        pair = ProtocolPair()
        pair.handshake()
        start = pair.now
        pair.server_muted = True
        pair.run_timers(until=start + 300)
        timeouts = [e for e in pair.client_events if isinstance(e, PeerTimedOut)]
        assert timeouts == [PeerTimedOut(60.0)]
        assert pair.client.state is ConnState.CLOSED

    def test_silent_client_is_detected_by_the_server(self) -> None:
        """The server drops a client that stays silent past its keepaliveTimeout."""
        pair = ProtocolPair()
        pair.handshake()
        pair.client_muted = True
        pair.run_timers(until=pair.now + 300)
        assert [e for e in pair.server_events if isinstance(e, PeerTimedOut)] == [
            PeerTimedOut(60.0)
        ]

    def test_rejected_token_then_new_token(self) -> None:
        """Server rejects the first token; the client reports it and retries with a new one."""
        pair = ProtocolPair(token="old")
        pair.deliver()
        pair.server.send_setup()
        pair.server.send_auth_state(False)
        pair.deliver()
        pair.server.send_auth_state(False)
        client_events, _ = pair.deliver()
        assert client_events == [AuthRejected()]
        pair.client.set_token("new")
        _, server_events = pair.deliver()
        assert [type(e) for e in server_events] == [AuthRequested]
        assert server_events[0].token == "new"  # type: ignore[union-attr]
        pair.server.send_auth_state(True, "u")
        assert pair.deliver()[0] == [Authorized("u")]
