"""A local HTTP server that behaves like tastytrade's REST API for quote tokens.

Endpoints (dxlink-protocol.md §1; tastyware 13.2.3 ``Session.refresh``):

* ``POST /oauth/token`` with JSON ``{grant_type: "refresh_token", client_secret,
  refresh_token}`` → ``{"access_token", "token_type": "Bearer", "expires_in": 900}``.
  A wrong refresh token gets HTTP 400 ``{"error_code": "invalid_grant",
  "error_description": "Invalid JWT"}`` (the body tastyware/tastytrade #281 shows); a wrong
  client secret HTTP 401 ``invalid_client`` in the same shape (RFC 6749 §5.2 status).
* ``GET /api-quote-tokens`` with ``Authorization: Bearer <access token>`` →
  ``{"data": {"token", "dxlink-url", "level": "api", "issued-at", "expires-at"},
  "context": "/api-quote-tokens"}``. Not a customer: ``{"error": {"code":
  "quote_streamer.customer_not_found_error", "message": "You must be a customer to access
  a quote stream."}}`` (documented body; the 403 status is assumed). A missing, unknown or
  expired access token: 401 with an ``{"error": {"code", "message"}}`` body (shape as
  tastyware's ``validate_response`` parses it; the exact code is assumed).

Tests script failures with :meth:`FakeTastytrade.fail_next` and hold a request open with
:meth:`FakeTastytrade.hold_next`. Time comes from an injected clock so expiry is exact.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from pipeline.simulator import Simulator

__all__ = ["CUSTOMER_NOT_FOUND", "FakeClock", "FakeTastytrade", "RecordedRequest"]

CUSTOMER_NOT_FOUND = {
    "error": {
        "code": "quote_streamer.customer_not_found_error",
        "message": "You must be a customer to access a quote stream.",
    }
}
HOLD_LIMIT = 30.0
"""Seconds a held request waits at most, so a forgotten release cannot hang the suite."""


def _opaque(kind: str, serial: int) -> str:
    """A token as opaque as tastytrade's (deterministic: the same kind and serial, the same)."""
    digest = hashlib.sha256(f"{kind} {serial}".encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()[:32]


class FakeClock:
    """A wall clock (epoch seconds) that moves only when a test advances it."""

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None


@dataclass
class _Scripted:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class FakeTastytrade:
    """tastytrade's token endpoints on 127.0.0.1, port picked by the OS.

    Use as a context manager; ``url`` is the base URL to give the token source.
    """

    def __init__(
        self,
        *,
        client_secret: str,
        refresh_token: str,
        clock: Callable[[], float],
        dxlink_url: str = "wss://tasty-openapi-ws.dxfeed.com/realtime",
        access_lifetime: int = 900,
        quote_lifetime: timedelta = timedelta(hours=24),
        send_expires_at: bool = True,
        customer: bool = True,
        mint: Callable[[str, int], str] | None = None,
    ) -> None:
        self.client_secret = client_secret
        self.refresh_token = refresh_token
        self.clock = clock
        self.dxlink_url = dxlink_url
        self.access_lifetime = access_lifetime
        self.quote_lifetime = quote_lifetime
        self.send_expires_at = send_expires_at
        self.customer = customer
        self.mint = mint or _opaque
        """Makes each issued token from its kind (``access``/``quote``) and a serial number."""
        self.requests: list[RecordedRequest] = []
        self.access_tokens: dict[str, float] = {}
        """Issued access token -> expiry (clock seconds)."""
        self.quote_tokens: list[str] = []
        self._serial = 0
        self._scripted: dict[str, deque[_Scripted]] = defaultdict(deque)
        self._holds: dict[str, deque[threading.Event]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        # serve_forever notices shutdown() only between polls; 20 ms keeps teardown quick.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeTastytrade:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for queue in self._holds.values():
            for event in queue:
                event.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    # --- test controls -------------------------------------------------------------------

    def count(self, path: str) -> int:
        """How many requests reached ``path``."""
        return sum(1 for request in self.requests if request.path == path)

    def fail_next(
        self,
        path: str,
        status: int,
        body: dict[str, Any] | bytes,
        *,
        times: int = 1,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``times`` requests to ``path`` with this status and body."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        for _ in range(times):
            self._scripted[path].append(_Scripted(status, raw, dict(headers or {})))

    def hold_next(self, path: str) -> threading.Event:
        """Keep the next request to ``path`` unanswered until the returned event is set."""
        event = threading.Event()
        self._holds[path].append(event)
        return event

    def revoke_access_tokens(self) -> None:
        """Invalidate every issued access token (as if they expired early)."""
        with self._lock:
            self.access_tokens.clear()

    # --- behaviour -----------------------------------------------------------------------

    def _next_serial(self) -> int:
        with self._lock:
            self._serial += 1
            return self._serial

    def _oauth(self, body: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        body = body or {}
        if body.get("grant_type") != "refresh_token":
            return 400, {
                "error_code": "unsupported_grant_type",
                "error_description": "grant_type must be refresh_token",
            }
        if body.get("client_secret") != self.client_secret:
            return 401, {
                "error_code": "invalid_client",
                "error_description": "Client authentication failed",
            }
        if body.get("refresh_token") != self.refresh_token:
            return 400, {"error_code": "invalid_grant", "error_description": "Invalid JWT"}
        token = self.mint("access", self._next_serial())
        with self._lock:
            self.access_tokens[token] = self.clock() + self.access_lifetime
        reply = {"access_token": token, "token_type": "Bearer", "expires_in": self.access_lifetime}
        return 200, reply

    def _quote_token(self, authorization: str) -> tuple[int, dict[str, Any]]:
        token = authorization.removeprefix("Bearer ")
        with self._lock:
            expiry = self.access_tokens.get(token) if authorization.startswith("Bearer ") else None
        if expiry is None or self.clock() >= expiry:
            return 401, {
                "error": {"code": "unauthorized", "message": "This token is invalid or has expired"}
            }
        if not self.customer:
            return 403, CUSTOMER_NOT_FOUND
        quote = self.mint("quote", self._next_serial())
        self.quote_tokens.append(quote)
        issued = datetime.fromtimestamp(self.clock(), UTC)
        data: dict[str, Any] = {
            "token": quote,
            "dxlink-url": self.dxlink_url,
            "level": "api",
            "issued-at": issued.isoformat().replace("+00:00", "Z"),
        }
        if self.send_expires_at:
            expires = issued + self.quote_lifetime
            data["expires-at"] = expires.isoformat().replace("+00:00", "Z")
        return 200, {"data": data, "context": "/api-quote-tokens"}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Silence the default stderr access log."""

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                headers = {key.lower(): value for key, value in self.headers.items()}
                fake.requests.append(RecordedRequest(self.command, self.path, headers, body))
                if fake._holds[self.path]:
                    fake._holds[self.path].popleft().wait(HOLD_LIMIT)
                scripted = fake._scripted[self.path]
                if scripted:
                    answer = scripted.popleft()
                    self._reply(answer.status, answer.body, answer.headers)
                elif (self.command, self.path) == ("POST", "/oauth/token"):
                    self._reply_json(*fake._oauth(body))
                elif (self.command, self.path) == ("GET", "/api-quote-tokens"):
                    self._reply_json(*fake._quote_token(headers.get("authorization", "")))
                else:
                    self._reply_json(404, {"error": {"code": "not_found", "message": "Not Found"}})

            def _reply_json(self, status: int, payload: dict[str, Any]) -> None:
                self._reply(status, json.dumps(payload).encode(), {})

            def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = _serve
            do_POST = _serve

        return Handler


class IssuedTokenSimulator(Simulator):
    """A simulator that accepts exactly the quote tokens the fake tastytrade API handed out."""

    def __init__(self, rest: FakeTastytrade, **options: Any) -> None:
        super().__init__(**options)
        self._rest = rest

    def token_accepted(self, token: str) -> bool:
        return token in self._rest.quote_tokens
