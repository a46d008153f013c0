"""ProtocolPair: a ClientProtocol and a ServerProtocol wired together in memory.

Modelled on h11's ``tests/helpers.py::ConnectionPair`` and aioquic's ``roundtrip()``: frames
move between the two state machines with no sockets, and time is a number the test moves
(``advance``, ``run_timers``), never a sleep. Helpers play the simulator's part where a test
only needs a working handshake or channel.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.dxlink import (
    CANDLE_FIELDS,
    AuthRequested,
    ClientProtocol,
    ClientSetup,
    DataFormat,
    FeedSetupRequested,
    ProtocolEvent,
    ServerProtocol,
)

__all__ = ["ProtocolPair"]


class ProtocolPair:
    """Both protocol roles connected back to back, with a shared test clock."""

    def __init__(
        self,
        *,
        token: str | None = "test-token",
        now: float = 1000.0,
        client: ClientProtocol | None = None,
        server: ServerProtocol | None = None,
    ) -> None:
        self.now = now
        self.client = client or ClientProtocol(token=token)
        self.server = server or ServerProtocol()
        self.client_events: list[ProtocolEvent] = []
        """Every event the client emitted so far."""
        self.server_events: list[ProtocolEvent] = []
        """Every event the server emitted so far."""
        self.to_server: list[str] = []
        """Every frame the client sent, in order."""
        self.to_client: list[str] = []
        """Every frame the server sent, in order."""
        self.server_muted = False
        """When True, frames from the server are dropped (a silent server)."""
        self.client_muted = False
        """When True, frames from the client are dropped (a silent client)."""
        self.server.start(now)
        self.client.start(now)

    def deliver(self) -> tuple[list[ProtocolEvent], list[ProtocolEvent]]:
        """Move queued frames both ways until both sides are quiet.

        Returns:
            The events each side emitted during this call: (client, server).
        """
        client_new: list[ProtocolEvent] = []
        server_new: list[ProtocolEvent] = []
        while True:
            from_client = self.client.messages_to_send()
            from_server = self.server.messages_to_send()
            if not from_client and not from_server:
                break
            for frame in from_client:
                self.to_server.append(frame)
                if not self.client_muted:
                    self.server.receive_message(frame, self.now)
            for frame in from_server:
                self.to_client.append(frame)
                if not self.server_muted:
                    self.client.receive_message(frame, self.now)
            client_new += self.client.events_received()
            server_new += self.server.events_received()
        self.client_events += client_new
        self.server_events += server_new
        return client_new, server_new

    def advance(self, seconds: float) -> None:
        """Move the shared clock forward without firing timers."""
        self.now += seconds

    def run_timers(self, until: float) -> None:
        """Jump from deadline to deadline up to ``until``, firing both sides' timers."""
        while True:
            armed = (self.client.next_deadline(), self.server.next_deadline())
            deadlines = [d for d in armed if d is not None]
            if not deadlines or min(deadlines) > until:
                break
            self.now = max(self.now, min(deadlines))
            self.client.handle_timer(self.now)
            self.server.handle_timer(self.now)
            self.deliver()
        self.now = max(self.now, until)

    def handshake(self, *, user_id: str = "user-1") -> None:
        """Play the server's side of §2.2 until the client is AUTHORIZED (or rejected)."""
        pending = list(self.deliver()[1])
        while pending:
            event = pending.pop(0)
            if isinstance(event, ClientSetup):
                self.server.send_setup()
                self.server.send_auth_state(False)  # §2.2: the unsolicited "auth required"
            elif isinstance(event, AuthRequested):
                self.server.send_auth_state(True, user_id)
            pending += self.deliver()[1]

    def open_feed(
        self,
        *,
        contract: str = "HISTORY",
        fields: Sequence[str] = CANDLE_FIELDS,
        data_format: DataFormat = DataFormat.COMPACT,
    ) -> int:
        """Open and configure one FEED channel the way the simulator would; return its number."""
        channel = self.client.open_channel(contract)
        self.deliver()
        self.server.open_channel(channel)
        self.deliver()
        self.client.setup_feed(
            channel,
            aggregation_period=0.1,
            data_format=data_format,
            event_fields={"Candle": fields},
        )
        _, server_events = self.deliver()
        (request,) = [e for e in server_events if isinstance(e, FeedSetupRequested)]
        self.server.configure_feed(
            channel,
            aggregation_period=request.accept_aggregation_period or 0.1,
            data_format=request.accept_data_format or DataFormat.COMPACT,
            event_fields=request.accept_event_fields,
        )
        self.deliver()
        return channel
