"""Where DXLink tokens come from: the shape every source has, and the fixed-token sources.

The DXLink client asks a :class:`TokenSource` for a :class:`QuoteToken` (a token and the URL
to use it on) before every connection, and again with ``force_refresh=True`` after the
server said UNAUTHORIZED (§2.7). :class:`SimulatorTokenSource` hands out the built-in
simulator's fixed token; :class:`DXLinkTokenSource` any DXLink endpoint's URL with a token
from an environment variable, or none (``source.kind = "dxlink"``); tastytrade's OAuth flow
is :mod:`pipeline.ingest.tastytrade`. Every URL is checked by :func:`validate_dxlink_url`
(wss://, or ws:// to a loopback host).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from pydantic import SecretStr

from pipeline.config import DXLinkSourceConfig, is_loopback_host
from pipeline.dxlink import AuthenticationError, ConfigurationError
from pipeline.dxlink.client import loggable_url

__all__ = [
    "QUOTE_TOKEN_LIFETIME",
    "DXLinkTokenSource",
    "QuoteToken",
    "SimulatorTokenSource",
    "validate_dxlink_url",
]

QUOTE_TOKEN_LIFETIME = timedelta(hours=24)
"""§1: a quote token is valid for 24 hours; used when ``expires-at`` is absent."""


@dataclass(frozen=True, slots=True)
class QuoteToken:
    """What a DXLink connection needs: where to connect and what to send in AUTH."""

    token: SecretStr
    """The opaque DXLink token (§1); ``repr``/``str`` are masked, use ``get_secret_value()``."""
    dxlink_url: str
    """The WebSocket URL to connect to; always the one tastytrade returned (§1)."""
    level: str
    """Entitlement level as reported (tastytrade: ``"api"``; simulator: ``"simulator"``)."""
    expires_at: datetime
    """When the token stops working (UTC)."""

    def __repr__(self) -> str:
        # The URL may carry credentials too (user info, a token in the query).
        return (
            f"QuoteToken(token={self.token!r}, dxlink_url={loggable_url(self.dxlink_url)!r}, "
            f"level={self.level!r}, expires_at={self.expires_at!r})"
        )


def validate_dxlink_url(
    url: str, allow_insecure: bool = False, *, option: str = "source.tastytrade.allow_insecure_ws"
) -> str:
    """Check a DXLink URL: wss://, or ws:// to a loopback host, or ws:// when allowed.

    Args:
        url: the URL, typically tastytrade's ``dxlink-url``.
        allow_insecure: accept plain ws:// to any host (``option``).
        option: the setting that allows plain ws://, named in the message.

    Returns:
        The URL unchanged.

    Raises:
        ConfigurationError: naming the URL (without credentials) and what is accepted.
    """
    try:
        parts = urlsplit(url)
        scheme, host, _ = parts.scheme, parts.hostname, parts.port  # port: ValueError if bad
    except ValueError:
        scheme, host = "", None
    if scheme not in ("ws", "wss") or not host:
        raise ConfigurationError(
            f"dxlink-url {loggable_url(url)!r} is not a WebSocket URL; allowed: wss://<host>/<path>"
        )
    if scheme == "ws" and not allow_insecure and not is_loopback_host(host):
        raise ConfigurationError(
            f"dxlink-url {loggable_url(url)!r} is unencrypted; allowed: wss:// for "
            f"remote hosts, ws:// only to 127.0.0.1, ::1 or localhost, unless {option} = true"
        )
    return url


class SimulatorTokenSource:
    """The built-in simulator's fixed URL and token, behind the same ``get()``.

    Args:
        url: the simulator's ws:// URL (known once it listens, port 0 picks one).
        token: the token the simulator expects (``source.simulator.token``; not a secret).
        clock: wall clock in seconds, for ``expires_at``.
    """

    def __init__(self, url: str, token: str, *, clock: Callable[[], float] = time.time) -> None:
        self.url = validate_dxlink_url(url, allow_insecure=True)
        """The simulator's WebSocket URL."""
        self._token = SecretStr(token)
        self._clock = clock
        self.fetches = 0
        """How many times ``get()`` was called."""
        self.forced = 0
        """How many of those asked for a forced refresh (after UNAUTHORIZED)."""

    def replace_token(self, token: str) -> None:
        """Hand out ``token`` from now on (tests: the simulator rotated its token)."""
        self._token = SecretStr(token)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={loggable_url(self.url)!r})"

    async def get(self, force_refresh: bool = False) -> QuoteToken:
        """Return the simulator's token; it never expires while the simulator runs."""
        self.fetches += 1
        self.forced += force_refresh
        expires_at = datetime.fromtimestamp(self._clock(), UTC) + QUOTE_TOKEN_LIFETIME
        return QuoteToken(self._token, self.url, "simulator", expires_at)


class DXLinkTokenSource:
    """Any DXLink endpoint: a fixed URL, and a token from an environment variable or none.

    For dxFeed endpoints other than tastytrade's (dxFeed's public demo, another broker's
    DXLink feed): the token does not expire on a schedule we know, so it is handed out as
    is. A server that rejects it (AUTH_STATE UNAUTHORIZED, §2.2) makes the client ask for a
    fresh one; a fixed token cannot be refreshed, so that ends ingest with what to fix.

    Args:
        url: the endpoint's ws(s):// URL (checked by :func:`validate_dxlink_url`).
        token: the token for AUTH, or ``None`` to send none.
        token_env: the variable the token came from, named in messages (never its value).
        allow_insecure_ws: accept plain ws:// to a non-loopback host.
        clock: wall clock in seconds, for ``expires_at``.
    """

    def __init__(
        self,
        url: str,
        token: str | SecretStr | None = None,
        *,
        token_env: str | None = None,
        allow_insecure_ws: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = validate_dxlink_url(
            url, allow_insecure_ws, option="source.dxlink.allow_insecure_ws"
        )
        """The endpoint's WebSocket URL."""
        self.token_env = token_env
        self._token = SecretStr(token) if isinstance(token, str) else token
        self._clock = clock
        self.fetches = 0
        """How many times ``get()`` was called."""

    @classmethod
    def from_config(
        cls, config: DXLinkSourceConfig, *, environ: Mapping[str, str] | None = None
    ) -> DXLinkTokenSource:
        """Build from ``[source.dxlink]``; the token comes from the variable ``token_env`` names.

        Raises:
            ConfigurationError: ``token_env`` names a variable that is unset or empty, or the
                URL is not acceptable.
        """
        env = os.environ if environ is None else environ
        problem = config.token_problem(env)
        if problem is not None:
            raise ConfigurationError(problem)
        token = env[config.token_env].strip() if config.token_env else None
        return cls(
            config.url,
            token,
            token_env=config.token_env,
            allow_insecure_ws=config.allow_insecure_ws,
        )

    @property
    def has_token(self) -> bool:
        """Whether a token is sent in AUTH."""
        return self._token is not None

    def __repr__(self) -> str:
        url = loggable_url(self.url)
        return f"{type(self).__name__}(url={url!r}, token_env={self.token_env!r})"

    async def get(self, force_refresh: bool = False) -> QuoteToken:
        """The URL and token; a forced refresh (the server rejected the token) is fatal.

        Raises:
            AuthenticationError: ``force_refresh``: the server refused the token, or wanted
                one and none is configured; the message says which variable to fix.
        """
        self.fetches += 1
        where = loggable_url(self.url)
        if force_refresh:
            if self._token is None:
                raise AuthenticationError(
                    f"the DXLink server at {where} wants a token and none is configured; "
                    "name the environment variable that holds it in source.dxlink.token_env"
                )
            raise AuthenticationError(
                f"the DXLink server at {where} rejected the token from the environment "
                f"variable {self.token_env or '(unnamed)'}; check its value"
            )
        token = self._token if self._token is not None else SecretStr("")
        expires_at = datetime.fromtimestamp(self._clock(), UTC) + QUOTE_TOKEN_LIFETIME
        return QuoteToken(token, self.url, "dxlink", expires_at)
