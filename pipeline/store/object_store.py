"""Object storage (S3 and compatible stores) as the lake's data path: where, and with what key.

``store.data_path = "s3://bucket/prefix/"`` puts the lake's Parquet files in a bucket; the
catalog stays where ``store.catalog`` says (docs/scaling.md). DuckDB reaches the bucket through
its ``httpfs`` extension and a *temporary* S3 secret (held in the connection's memory, never
written to disk: DuckDB's persistent secrets are plain files under ``~/.duckdb``), scoped to
the lake's data path so no other URL the connection reads is signed with it.

The keys come from the environment only, by default the AWS SDKs' own variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``); the configuration
may name other variables (``store.s3.*_env``), never hold a key. The endpoint and region may
come from the configuration or from the AWS SDKs' variables (``AWS_ENDPOINT_URL_S3``,
``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_DEFAULT_REGION``), so a notebook with the usual
AWS environment attaches the lake with no settings at all.

Every secret value read is remembered for :func:`scrub`, which the store applies to every
message it logs or raises: DuckDB's own error text could echo a statement that holds one.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

__all__ = [
    "ENDPOINT_ENVS",
    "REGION_ENVS",
    "S3Access",
    "S3Options",
    "is_object_store",
    "parse_s3_url",
    "scrub",
]

ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
"""The AWS SDKs' endpoint variables, read in this order when ``endpoint`` is unset."""
REGION_ENVS = ("AWS_REGION", "AWS_DEFAULT_REGION")
"""The AWS SDKs' region variables, read in this order when ``region`` is unset."""
DEFAULT_REGION = "us-east-1"

UrlStyle = Literal["auto", "path", "vhost"]

# Bucket names (S3's rules, loosely): 3-63 lowercase letters, digits, dots and hyphens.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_HOST_PORT = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")
_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()
_MIN_SCRUBBED = 4  # shorter values would scrub ordinary words out of messages


def is_object_store(data_path: object) -> bool:
    """Whether a data path is an object-storage URL (``s3://...``) rather than a folder."""
    return isinstance(data_path, str) and "://" in data_path


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of an ``s3://bucket/prefix/`` data path; the prefix ends in ``/``.

    Raises:
        ValueError: Another scheme, credentials or a query in the URL, or no valid bucket;
            the message says what to write instead.
    """
    parts = urlsplit(url.strip())
    if parts.scheme != "s3":
        raise ValueError(
            f"{parts.scheme}:// is not supported as a data path; use s3://bucket/prefix/ "
            "(S3-compatible stores such as MinIO, R2 or GCS interoperability through "
            "store.s3.endpoint)"
        )
    if "@" in parts.netloc or parts.query or parts.fragment:
        raise ValueError(
            "the s3:// URL must not carry credentials, a query or a fragment (value not shown); "
            "write s3://bucket/prefix/ and put the keys in AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY"
        )
    bucket = parts.netloc
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError(
            f"{bucket[:70]!r} is not an S3 bucket name: 3-63 lowercase letters, digits, dots "
            "and hyphens, e.g. s3://candles-lake/prod/"
        )
    prefix = parts.path.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def scrub(text: str) -> str:
    """``text`` with every secret value read by :meth:`S3Options.resolve` replaced by ``***``."""
    with _SECRETS_LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _remember(secret: str) -> None:
    if len(secret) >= _MIN_SCRUBBED:
        with _SECRETS_LOCK:
            _SECRETS.add(secret)


@dataclass(frozen=True)
class S3Options:
    """How to reach an S3 (or S3-compatible) data path; secrets only as variable names.

    Args:
        endpoint: ``host[:port]`` or an ``http(s)://host[:port]`` URL of an S3-compatible
            service; ``None`` reads :data:`ENDPOINT_ENVS`, else AWS S3 itself.
        region: The bucket's region; ``None`` reads :data:`REGION_ENVS`, else ``us-east-1``.
        url_style: ``path`` (``endpoint/bucket/key``), ``vhost`` (``bucket.endpoint/key``),
            or ``auto``: ``path`` with a custom endpoint (MinIO and most compatibles need it),
            ``vhost`` on AWS.
        use_ssl: TLS to the endpoint; ``None`` means on, unless the endpoint is an
            ``http://`` URL.
        access_key_id_env: Variable holding the access key id.
        secret_access_key_env: Variable holding the secret access key.
        session_token_env: Variable holding a session token (temporary credentials); unset
            or empty means none.
    """

    endpoint: str | None = None
    region: str | None = None
    url_style: UrlStyle = "auto"
    use_ssl: bool | None = None
    access_key_id_env: str = "AWS_ACCESS_KEY_ID"
    secret_access_key_env: str = "AWS_SECRET_ACCESS_KEY"
    session_token_env: str = "AWS_SESSION_TOKEN"

    def missing_env(self, environ: Mapping[str, str] | None = None) -> list[str]:
        """Names of the credential variables that are unset or empty (the token is optional)."""
        env = os.environ if environ is None else environ
        names = (self.access_key_id_env, self.secret_access_key_env)
        return [name for name in names if not env.get(name, "").strip()]

    def resolve(self, environ: Mapping[str, str] | None = None) -> S3Access:
        """Read the environment: the endpoint, region and keys to use now.

        Raises:
            ValueError: The endpoint (from the options or the environment) is not
                ``host[:port]`` or an ``http(s)://`` URL without a path.
        """
        env = os.environ if environ is None else environ
        raw_endpoint = self.endpoint
        source = "store.s3.endpoint"
        if raw_endpoint is None:
            for name in ENDPOINT_ENVS:
                if env.get(name, "").strip():
                    raw_endpoint, source = env[name].strip(), name
                    break
        endpoint, endpoint_tls = (
            (None, None) if raw_endpoint is None else _endpoint(raw_endpoint, source)
        )
        region = self.region or next(
            (env[name].strip() for name in REGION_ENVS if env.get(name, "").strip()),
            DEFAULT_REGION,
        )
        style = self.url_style
        if style == "auto":
            style = "vhost" if endpoint is None else "path"
        use_ssl = self.use_ssl
        if use_ssl is None:
            use_ssl = True if endpoint_tls is None else endpoint_tls
        key_id = env.get(self.access_key_id_env, "").strip() or None
        secret = env.get(self.secret_access_key_env, "").strip() or None
        token = env.get(self.session_token_env, "").strip() or None
        for value in (key_id, secret, token):
            if value:
                _remember(value)
        return S3Access(endpoint, region, style, use_ssl, key_id, secret, token)


@dataclass(frozen=True)
class S3Access:
    """What :meth:`S3Options.resolve` found: where to connect, and the keys (never shown)."""

    endpoint: str | None
    """``host[:port]``, or ``None`` for AWS S3."""
    region: str
    url_style: Literal["path", "vhost"]
    use_ssl: bool
    key_id: str | None = field(repr=False)
    secret: str | None = field(repr=False)
    session_token: str | None = field(repr=False)

    @property
    def has_keys(self) -> bool:
        """Both the key id and the secret key are set."""
        return bool(self.key_id and self.secret)

    def secret_sql(self, name: str, scope: str) -> str:
        """``CREATE OR REPLACE TEMPORARY SECRET`` for DuckDB, limited to ``scope``.

        The statement holds the keys: never log it (the store runs it and scrubs errors).
        """
        options = [
            "TYPE s3",
            f"REGION {_literal(self.region)}",
            f"URL_STYLE {_literal(self.url_style)}",
            f"USE_SSL {'true' if self.use_ssl else 'false'}",
            f"SCOPE {_literal(scope)}",
        ]
        if self.endpoint is not None:
            options.append(f"ENDPOINT {_literal(self.endpoint)}")
        if self.key_id and self.secret:
            options += [f"KEY_ID {_literal(self.key_id)}", f"SECRET {_literal(self.secret)}"]
            if self.session_token:
                options.append(f"SESSION_TOKEN {_literal(self.session_token)}")
        return f"CREATE OR REPLACE TEMPORARY SECRET {name} ({', '.join(options)})"


def _endpoint(raw: str, source: str) -> tuple[str, bool | None]:
    """(``host[:port]``, TLS from the URL scheme or ``None``) of an endpoint setting."""
    text = raw.strip()
    tls: bool | None = None
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or parts.path.strip("/") or parts.query:
            raise ValueError(
                f"{source} {text[:60]!r} is not an endpoint; write host[:port] or "
                "http(s)://host[:port] with no path, e.g. https://minio.internal:9000"
            )
        if parts.username or parts.password:
            raise ValueError(f"{source} must not carry credentials (value not shown)")
        tls = parts.scheme == "https"
        text = parts.netloc
    if not _HOST_PORT.fullmatch(text):
        raise ValueError(
            f"{source} {text[:60]!r} is not host[:port]; e.g. s3.eu-west-1.amazonaws.com or "
            "127.0.0.1:9000"
        )
    return text, tls


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
