"""§2.6 while the driver is not reading: keepalives go on, the dead-peer clock stops.

A slow consumer makes the client stop reading the socket (back-pressure). Keepalives must not
depend on receiving, and the peer may only be judged dead on silence measured while reading
(``pause_reading`` / ``resume_reading``). Time is the number each call is given.
"""

from __future__ import annotations

from pipeline.dxlink import ClientProtocol, PeerTimedOut, ServerProtocol
from tests.dxlink.drivers import authorized_client, sent
from tests.dxlink.pair import ProtocolPair

KEEPALIVE = {"type": "KEEPALIVE", "channel": 0}


def run_until(client: ClientProtocol, until: float) -> list[float]:
    """Fire the client's timer at each deadline up to ``until``; return when KEEPALIVEs left."""
    sent_at: list[float] = []
    while (deadline := client.next_deadline()) is not None and deadline <= until:
        client.handle_timer(deadline)
        sent_at += [deadline for frame in sent(client) if frame == KEEPALIVE]
    return sent_at


def test_keepalives_continue_for_minutes_while_reading_is_paused() -> None:
    """Paused for 10 minutes: a KEEPALIVE every 30 s, never PeerTimedOut, never CLOSED."""
    client = authorized_client(now=0.0)
    client.pause_reading(10.0)
    assert client.reading_paused
    sent_at = run_until(client, 600.0)
    assert sent_at == [30.0 * n for n in range(1, 21)]
    assert client.events_received() == []
    assert client.next_deadline() == 630.0  # only the keepalive is armed


def test_paused_time_does_not_count_as_silence() -> None:
    """40 s silent, paused 460 s, resumed: the peer is dead 20 s of reading later, not before."""
    client = authorized_client(now=0.0)
    run_until(client, 40.0)
    client.pause_reading(40.0)
    run_until(client, 500.0)
    assert client.peer_silence(500.0) == 40.0
    client.resume_reading(500.0)
    assert not client.reading_paused
    assert client.peer_silence(510.0) == 50.0
    assert client.next_deadline() == 510.0  # the next KEEPALIVE (last one at 480)
    client.handle_timer(519.9)
    assert client.events_received() == []
    client.handle_timer(520.0)
    assert client.events_received() == [PeerTimedOut(60.0)]


def test_silent_server_is_still_detected_while_reading() -> None:
    """Without a pause the dead-peer timer runs as before: 60 s of silence ends it."""
    client = authorized_client(now=0.0)
    client.pause_reading(5.0)
    client.resume_reading(5.0)  # a zero-length pause changes nothing
    assert client.next_deadline() == 30.0
    run_until(client, 59.9)
    assert client.events_received() == []
    client.handle_timer(60.0)
    assert client.events_received() == [PeerTimedOut(60.0)]


def test_frame_fed_while_paused_restarts_the_silence() -> None:
    """A frame the driver still feeds during a pause counts: silence restarts at the resume."""
    client = authorized_client(now=0.0)
    client.pause_reading(10.0)
    client.receive_message('{"type":"KEEPALIVE","channel":0}', 50.0)
    assert client.peer_silence(55.0) == 0.0
    client.resume_reading(100.0)
    assert client.peer_silence(100.0) == 0.0
    run_until(client, 159.9)
    assert client.events_received() == []
    client.handle_timer(160.0)
    assert client.events_received() == [PeerTimedOut(60.0)]


def test_pause_and_resume_are_idempotent() -> None:
    """A second pause keeps the first start; a resume without a pause changes nothing."""
    client = authorized_client(now=0.0)
    client.resume_reading(20.0)
    assert client.peer_silence(20.0) == 20.0
    client.pause_reading(30.0)
    client.pause_reading(45.0)
    client.resume_reading(100.0)
    client.resume_reading(200.0)
    assert client.peer_silence(100.0) == 30.0


def test_a_paused_deaf_client_keeps_the_server_from_dropping_it() -> None:
    """Client paused for 120 s and seeing no server frame: the server (same 10 s timeout)
    still receives a KEEPALIVE every 5 s, and neither side declares the other dead."""
    pair = ProtocolPair(
        client=ClientProtocol(token="t", keepalive_timeout=10, dead_peer_timeout=10),
        server=ServerProtocol(keepalive_timeout=10),
    )
    pair.handshake()
    start, sent_before = pair.now, len(pair.to_server)
    pair.client.pause_reading(start)
    pair.server_muted = True  # frames from the server wait unread in the transport
    pair.run_timers(start + 120.0)
    dead = [e for e in pair.client_events + pair.server_events if isinstance(e, PeerTimedOut)]
    assert dead == []
    keepalives = [frame for frame in pair.to_server[sent_before:] if '"KEEPALIVE"' in frame]
    assert len(keepalives) == 24  # one every 5 s for 120 s
    assert pair.server.peer_silence(pair.now) < 10.0
