"""Quote tokens for DXLink from tastytrade's REST API (§1).

tastytrade hands out DXLink access in two steps:

1. ``POST /oauth/token`` with the OAuth refresh-token grant (JSON body ``grant_type``,
   ``client_secret``, ``refresh_token``) returns ``access_token`` and ``expires_in``
   (seconds; about 15 minutes). This mirrors ``tastytrade.Session.refresh`` in tastyware
   13.2.3.
2. ``GET /api-quote-tokens`` with ``Authorization: Bearer <access token>`` returns
   ``{"data": {"token", "dxlink-url", "level", "expires-at"?}}``. The quote token lives
   24 h (§1, §8) and may be reused for new connections until then.

:class:`TastytradeTokenSource` caches both: the access token until shortly before
``expires_in`` runs out, the quote token until an hour before ``expires-at`` (or 24 h when
tastytrade leaves that out). ``get(force_refresh=True)`` is what the DXLink client calls
after an ``UNAUTHORIZED`` from the server (§2.7). A 401 from ``/api-quote-tokens`` means
the access token died early; the source re-authenticates once and retries.

Errors, all :class:`~pipeline.dxlink.errors.AuthenticationError` subclasses carrying a
``transient`` flag for the client's ``classify()``:

* :class:`TastytradeAuthError`: the refresh token or client secret was rejected. Fatal;
  the message names the environment variable to fix.
* :class:`TastytradeAPIError`: any other failure, with HTTP status and tastytrade's error
  code and message. ``transient`` for network errors, timeouts, 408, 429 and 5xx.

Credentials come only from environment variables, are held as ``SecretStr`` and never
reach logs, exception texts or reprs; server-provided error text is scrubbed of them too.
HTTP is stdlib ``urllib`` in a worker thread: TLS verification is always on, and
redirects are refused so the bearer token can never be forwarded to another host.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from http.client import HTTPException
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from pipeline import __version__
from pipeline.config import DEFAULT_API_URL, is_loopback_host
from pipeline.dxlink import AuthenticationError, ConfigurationError
from pipeline.dxlink.client import loggable_url
from pipeline.ingest.sources import QUOTE_TOKEN_LIFETIME, QuoteToken, validate_dxlink_url

if TYPE_CHECKING:
    from pipeline.config import TastytradeSourceConfig

__all__ = [
    "TastytradeAPIError",
    "TastytradeAuthError",
    "TastytradeError",
    "TastytradeTokenSource",
]

logger = logging.getLogger(__name__)

QUOTE_TOKEN_MARGIN = 3600.0
"""Refresh the quote token this many seconds before it expires."""
ACCESS_TOKEN_MARGIN = 60.0
"""Refresh the access token this many seconds before it expires (tastyware uses 60)."""
DEFAULT_ACCESS_LIFETIME = 900.0
"""``expires_in`` assumed when the OAuth reply omits it (tastyware's default: 15 min)."""
MAX_BODY = 1 << 20
"""Bytes read from any response; tastytrade's replies are a few hundred."""
MAX_ERROR_TEXT = 1 << 16
"""Bytes of a non-JSON error body scrubbed for secrets; then shortened to SHOWN_ERROR_TEXT."""
SHOWN_ERROR_TEXT = 500
"""Characters of a server's error text kept in our errors and logs."""
SECRET_PIECE = 6
"""A run this long of any secret counts as the secret: masked wherever it appears."""
_MASK = "**********"
_TRANSIENT_STATUSES = frozenset({408, 425, 429})


class TastytradeError(AuthenticationError):
    """A quote token could not be obtained from tastytrade."""

    transient = False
    """True when retrying later may succeed (network, timeout, 429, 5xx)."""


class TastytradeAuthError(TastytradeError):
    """tastytrade rejected the OAuth refresh token or client secret. Fatal: fix the env var."""

    def __init__(self, message: str, *, env_vars: tuple[str, ...], code: str = "") -> None:
        self.env_vars = env_vars
        """The environment variables whose values were rejected."""
        self.code = code
        """tastytrade's error code, e.g. ``invalid_grant``."""
        super().__init__(message)


class TastytradeAPIError(TastytradeError):
    """A failed tastytrade request: HTTP status (None: no response), error code and message."""

    def __init__(
        self, request: str, *, status: int | None, code: str = "", message: str = ""
    ) -> None:
        self.request = request
        """Method and path, e.g. ``GET /api-quote-tokens``."""
        self.status = status
        self.code = code
        self.message = message
        self.transient = status is None or status >= 500 or status in _TRANSIENT_STATUSES
        outcome = "no response" if status is None else f"HTTP {status}"
        detail = ": ".join(part for part in (code, message) if part)
        kind = "transient" if self.transient else "not retryable"
        super().__init__(
            f"tastytrade {request} failed ({outcome}, {kind})" + (f": {detail}" if detail else "")
        )


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: it could carry the bearer token to another host."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _error_details(body: bytes) -> tuple[str, str]:
    """(code, message) from any of the error shapes tastytrade uses, uncut: the caller
    scrubs secrets out first and shortens after (a cut first could split a secret)."""
    try:
        payload = json.loads(body)
    except ValueError:
        text = body[:MAX_ERROR_TEXT].decode("utf-8", "replace").strip()
        return "", "non-JSON body" if text.startswith("<") else text
    if not isinstance(payload, dict):
        return "", ""
    error = payload.get("error")
    if isinstance(error, dict):
        # REST shape: {"error": {"code", "message", "errors"?: [{"code", "message"}]}}
        items = [error, *[e for e in error.get("errors") or [] if isinstance(e, dict)]]
        codes = [str(e["code"]) for e in items if e.get("code")]
        messages = [str(e.get("message") or e.get("reason") or "") for e in items]
        return (codes[0] if codes else ""), "; ".join(m for m in messages if m)
    # OAuth shapes: {"error_code", "error_description"} (seen, tastyware #281) or RFC 6749's.
    code = payload.get("error_code") or (error if isinstance(error, str) else "")
    return str(code or ""), str(payload.get("error_description") or "")


def _parse_expiry(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)


def _secret(value: str | SecretStr) -> SecretStr:
    return value if isinstance(value, SecretStr) else SecretStr(value)


class TastytradeTokenSource:
    """Quote tokens from tastytrade, cached and refreshed before they expire.

    Build it with :meth:`from_config` or :meth:`from_env`; the constructor takes the
    secrets themselves for tests and embedding.
    """

    def __init__(
        self,
        *,
        client_secret: str | SecretStr,
        refresh_token: str | SecretStr,
        api_url: str = DEFAULT_API_URL,
        client_secret_env: str = "TASTYTRADE_CLIENT_SECRET",
        refresh_token_env: str = "TASTYTRADE_REFRESH_TOKEN",
        allow_insecure_ws: bool = False,
        request_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        quote_token_margin: float = QUOTE_TOKEN_MARGIN,
        access_token_margin: float = ACCESS_TOKEN_MARGIN,
    ) -> None:
        self._client_secret = _secret(client_secret)
        self._refresh_token = _secret(refresh_token)
        parts = urlsplit(api_url)
        if parts.scheme != "https" and not (
            parts.scheme == "http" and is_loopback_host(parts.hostname or "")
        ):
            raise ConfigurationError(
                f"api_url {loggable_url(api_url)!r} must be https:// "
                "(plain http:// only to a loopback host): it carries the OAuth credentials"
            )
        self.api_url = api_url.rstrip("/")
        """Base URL of the REST API."""
        self.client_secret_env = client_secret_env
        self.refresh_token_env = refresh_token_env
        self.allow_insecure_ws = allow_insecure_ws
        self.request_timeout = request_timeout
        self._clock = clock
        self._quote_margin = quote_token_margin
        self._access_margin = access_token_margin
        self._access: SecretStr | None = None
        self._issued: deque[SecretStr] = deque(maxlen=8)
        """The latest access and quote tokens tastytrade issued us, for ``_scrub``."""
        self._access_refresh_at = 0.0
        self._quote: QuoteToken | None = None
        self._quote_refresh_at = 0.0
        self._generation = 0
        self._lock = asyncio.Lock()
        handlers: list[urllib.request.BaseHandler] = [_RefuseRedirects()]
        if self.api_url.startswith("https:"):
            handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context()))
        self._opener = urllib.request.build_opener(*handlers)
        self.debug = logger.isEnabledFor(logging.DEBUG)

    @classmethod
    def from_env(
        cls,
        *,
        environ: Mapping[str, str] | None = None,
        client_secret_env: str = "TASTYTRADE_CLIENT_SECRET",
        refresh_token_env: str = "TASTYTRADE_REFRESH_TOKEN",
        **options: Any,
    ) -> TastytradeTokenSource:
        """Read the credentials from environment variables.

        Raises:
            ConfigurationError: a variable is unset or empty (the message names it).
        """
        env = os.environ if environ is None else environ
        missing = [n for n in (client_secret_env, refresh_token_env) if not env.get(n, "").strip()]
        if missing:
            names = " and ".join(missing)
            raise ConfigurationError(
                f"environment variable {names} {'is' if len(missing) == 1 else 'are'} not set; "
                "tastytrade needs the OAuth client secret and refresh token there "
                "(never in config.toml)"
            )
        return cls(
            client_secret=env[client_secret_env].strip(),
            refresh_token=env[refresh_token_env].strip(),
            client_secret_env=client_secret_env,
            refresh_token_env=refresh_token_env,
            **options,
        )

    @classmethod
    def from_config(
        cls,
        config: TastytradeSourceConfig,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> TastytradeTokenSource:
        """Build from ``[source.tastytrade]``; the secrets come from the env vars it names."""
        return cls.from_env(
            environ=environ,
            client_secret_env=config.client_secret_env,
            refresh_token_env=config.refresh_token_env,
            api_url=config.api_url,
            allow_insecure_ws=config.allow_insecure_ws,
            request_timeout=config.request_timeout,
            clock=clock,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(api_url={self.api_url!r}, "
            f"client_secret_env={self.client_secret_env!r}, "
            f"refresh_token_env={self.refresh_token_env!r})"
        )

    async def login(self) -> None:
        """Exchange the refresh token for an access token now; ``get()`` then reuses it.

        ``candles doctor`` checks this step on its own, before the quote token.

        Raises:
            TastytradeAuthError: the credentials were rejected (the message names the variable).
            TastytradeAPIError: the request failed; see its ``transient`` flag.
        """
        async with self._lock:
            await self._refresh_access_token()

    async def get(self, force_refresh: bool = False) -> QuoteToken:
        """Return a valid quote token, fetching one only when needed.

        Args:
            force_refresh: fetch a new quote token even if the cached one looks valid
                (after the DXLink server answered UNAUTHORIZED). Concurrent forced calls
                share one fetch.

        Raises:
            TastytradeAuthError: the credentials were rejected (fatal).
            TastytradeAPIError: the request failed; see its ``transient`` flag.
            ConfigurationError: tastytrade returned a dxlink-url we refuse to use.
        """
        generation = self._generation
        async with self._lock:
            quote = self._quote
            refreshed_meanwhile = self._generation != generation
            fresh = self._clock() < self._quote_refresh_at
            if quote is not None and fresh and (not force_refresh or refreshed_meanwhile):
                return quote
            # The cached token was rejected or is stale: never hand it out again, even if
            # this fetch fails.
            self._quote = None
            quote = await self._fetch_quote()
            now = self._clock()
            lifetime = quote.expires_at.timestamp() - now
            # Refresh `margin` early, but never sooner than half way through a short life.
            self._quote_refresh_at = now + max(lifetime - self._quote_margin, lifetime / 2)
            self._quote, self._generation = quote, self._generation + 1
            return quote

    async def _fetch_quote(self) -> QuoteToken:
        if self._access is None or self._clock() >= self._access_refresh_at:
            await self._refresh_access_token()
        status, body = await self._call("GET", "/api-quote-tokens")
        if status == 401:
            # The access token died before its expires_in; get a new one and retry once.
            if self.debug:
                logger.debug("! access token refused; re-authenticating once")
            await self._refresh_access_token()
            status, body = await self._call("GET", "/api-quote-tokens")
        data = self._json_or_raise("GET /api-quote-tokens", status, body).get("data")
        token = data.get("token") if isinstance(data, dict) else None
        url = data.get("dxlink-url") if isinstance(data, dict) else None
        if not isinstance(data, dict) or not isinstance(token, str) or not token:
            raise self._bad_reply("GET /api-quote-tokens", status, "no data.token")
        if not isinstance(url, str):
            raise self._bad_reply("GET /api-quote-tokens", status, "no data.dxlink-url")
        validate_dxlink_url(url, self.allow_insecure_ws)
        expires_at = _parse_expiry(data.get("expires-at")) or (
            datetime.fromtimestamp(self._clock(), UTC) + QUOTE_TOKEN_LIFETIME
        )
        level = str(data.get("level") or "")
        self._issued.append(SecretStr(token))
        logger.info(
            "= quote token for %s (level %r) valid until %s", loggable_url(url), level, expires_at
        )
        return QuoteToken(SecretStr(token), url, level, expires_at)

    async def _refresh_access_token(self) -> None:
        request = "POST /oauth/token"
        status, body = await self._call(
            "POST",
            "/oauth/token",
            {
                "grant_type": "refresh_token",
                "client_secret": self._client_secret.get_secret_value(),
                "refresh_token": self._refresh_token.get_secret_value(),
            },
        )
        if status in (400, 401, 403):
            code, message = _error_details(body)
            raise self._auth_error(self._scrub(code), self._scrub(message))
        payload = self._json_or_raise(request, status, body)
        access = payload.get("access_token")
        expires_in = payload.get("expires_in", DEFAULT_ACCESS_LIFETIME)
        if not isinstance(access, str) or not access:
            raise self._bad_reply(request, status, "no access_token")
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
            expires_in = DEFAULT_ACCESS_LIFETIME
        self._access = SecretStr(access)
        self._issued.append(self._access)
        margin = min(self._access_margin, expires_in / 2)
        self._access_refresh_at = self._clock() + expires_in - margin
        if self.debug:
            logger.debug("= access token refreshed, valid for %g s", expires_in)

    def _auth_error(self, code: str, message: str) -> TastytradeAuthError:
        """Name the variable to fix: OAuth says invalid_grant (token) or invalid_client."""
        if code == "invalid_grant":
            env_vars: tuple[str, ...] = (self.refresh_token_env,)
        elif code in ("invalid_client", "unauthorized_client"):
            env_vars = (self.client_secret_env,)
        else:
            env_vars = (self.refresh_token_env, self.client_secret_env)
        detail = ": ".join(part for part in (code, message) if part) or "no details given"
        return TastytradeAuthError(
            f"tastytrade rejected the OAuth credentials ({detail}); check the value of the "
            f"environment variable {' and '.join(env_vars)}",
            env_vars=env_vars,
            code=code,
        )

    def _json_or_raise(self, request: str, status: int, body: bytes) -> dict[str, Any]:
        if not 200 <= status < 300:
            code, message = _error_details(body)
            raise TastytradeAPIError(
                request, status=status, code=self._scrub(code), message=self._scrub(message)
            )
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise self._bad_reply(request, status, "the body is not a JSON object")
        return payload

    @staticmethod
    def _bad_reply(request: str, status: int, what: str) -> TastytradeAPIError:
        return TastytradeAPIError(
            request, status=status, code="invalid_response", message=f"unexpected reply: {what}"
        )

    def _scrub(self, text: str) -> str:
        """Mask every credential a server's error text echoes back, whole or in part (any run
        of ``SECRET_PIECE`` characters of one), then shorten it: never the other way round."""
        pieces: set[str] = set()
        for value in self._secret_values():
            pieces.update(value[i : i + SECRET_PIECE] for i in range(len(value) - SECRET_PIECE + 1))
        masked = bytearray(len(text))
        if pieces:
            for start in range(len(text) - SECRET_PIECE + 1):
                if text[start : start + SECRET_PIECE] in pieces:
                    masked[start : start + SECRET_PIECE] = b"\x01" * SECRET_PIECE
        if any(masked):
            runs: list[str] = []
            for start, char in enumerate(text):
                if not masked[start]:
                    runs.append(char)
                elif start == 0 or not masked[start - 1]:
                    runs.append(_MASK)
            text = "".join(runs)
        return text[:SHOWN_ERROR_TEXT]

    def _secret_values(self) -> list[str]:
        """The credentials and every token handed to us that a server could echo."""
        values = [self._client_secret.get_secret_value(), self._refresh_token.get_secret_value()]
        values += [secret.get_secret_value() for secret in self._issued]
        return [value for value in values if len(value) >= SECRET_PIECE]

    async def _call(
        self, method: str, path: str, body: Mapping[str, str] | None = None
    ) -> tuple[int, bytes]:
        if self.debug:
            logger.debug("> %s %s", method, path)
        status, reply = await asyncio.to_thread(self._request, method, path, body)
        if self.debug:
            logger.debug("< %s %s: HTTP %d, %d bytes", method, path, status, len(reply))
        return status, reply

    def _request(self, method: str, path: str, body: Mapping[str, str] | None) -> tuple[int, bytes]:
        """Blocking HTTP exchange (run in a thread); any HTTP status is returned, not raised."""
        headers = {
            "Accept": "application/json",
            "User-Agent": f"candle-pipeline/{__version__}",
        }
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif self._access is not None:
            headers["Authorization"] = f"Bearer {self._access.get_secret_value()}"
        request = urllib.request.Request(
            self.api_url + path, data=data, headers=headers, method=method
        )
        try:
            with self._opener.open(request, timeout=self.request_timeout) as response:
                return int(response.status), response.read(MAX_BODY)
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read(MAX_BODY)
        except (urllib.error.URLError, OSError, HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise TastytradeAPIError(
                f"{method} {path}",
                status=None,
                code="network",
                message=f"{loggable_url(self.api_url)}: {reason}",
            ) from exc
