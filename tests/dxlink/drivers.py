"""Protocol objects driven to a state by raw server or client frames (dxlink-protocol.md §2.2).

Where :class:`tests.dxlink.pair.ProtocolPair` wires both roles together, these drive one role
with literal frames, so a test starts from a known state without the other side's logic.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from pipeline.dxlink import ClientProtocol, ServerProtocol
from tests.dxlink.vectors import T4_FIELDS, VECTORS

SERVER_SETUP = (
    '{"type":"SETUP","channel":0,"keepaliveTimeout":60,"acceptKeepaliveTimeout":60,'
    '"version":"1.0-1.2.1-20240722-153442"}'
)
UNAUTHORIZED = '{"type":"AUTH_STATE","channel":0,"state":"UNAUTHORIZED"}'
AUTHORIZED = '{"type":"AUTH_STATE","channel":0,"state":"AUTHORIZED","userId":"u1"}'
T4_CONFIG = (
    '{"type":"FEED_CONFIG","channel":1,"aggregationPeriod":0.1,"dataFormat":"COMPACT",'
    '"eventFields":{"Candle":' + orjson.dumps(list(T4_FIELDS)).decode() + "}}"
)


def sent(proto: ClientProtocol | ServerProtocol) -> list[dict[str, Any]]:
    """The queued outgoing frames, decoded."""
    return [orjson.loads(frame) for frame in proto.messages_to_send()]


def authorized_client(
    token: str | None = "tok", now: float = 0.0, logger: logging.Logger | None = None
) -> ClientProtocol:
    """A client driven through §2.2 to AUTHORIZED by raw server frames."""
    client = ClientProtocol(token=token, logger=logger)
    client.start(now)
    for frame in (SERVER_SETUP, UNAUTHORIZED, AUTHORIZED):
        client.receive_message(frame, now)
    client.messages_to_send()
    client.events_received()
    return client


def configured_client(
    fields: str = T4_CONFIG, logger: logging.Logger | None = None
) -> ClientProtocol:
    """An authorized client with channel 1 opened and configured with T4's fields."""
    client = authorized_client(logger=logger)
    assert client.open_channel("HISTORY") == 1
    client.receive_message(VECTORS[8][1].replace("CHANNEL_REQUEST", "CHANNEL_OPENED"), 0)
    client.receive_message(fields, 0)
    client.messages_to_send()
    client.events_received()
    return client


def authorized_server() -> ServerProtocol:
    """A server that has authorized a client, queues and events drained."""
    server = ServerProtocol()
    server.start(0)
    server.receive_message(VECTORS[0][1], 0)
    server.send_setup()
    server.send_auth_state(False)
    server.receive_message(VECTORS[3][1], 0)
    server.send_auth_state(True, "u1")
    server.messages_to_send()
    server.events_received()
    return server
