"""Keeping secrets out of recordings: every line passes :class:`Redactor` before the file.

Three rules, cheapest first:

* **known secrets**: every token the client used on a recorded connection (the recorder is
  told each one) is replaced wherever it appears, in any frame, URL or reason, so a server
  that echoes a token in an error message does not leak it either;
* **secret keys**: in a JSON frame, the value of any key that names a secret (``token``,
  ``secret``, ``password``, ``apiKey``, ``authorization``, ``credential``, ``cookie``,
  ``key``) is replaced, at any depth; DXLink's AUTH carries the token this way. So is
  ``userId`` (AUTH_STATE names the account): not a secret, but not for a bug report either;
* **secret shapes**: JSON Web Tokens (``eyJ...``) and ``Bearer``/``Basic`` credentials in
  any text.

A redacted value becomes ``"<redacted>"``. COMPACT/FULL ``FEED_DATA`` frames (nearly every
frame, and the large ones) carry only event values, so past the first rule they are kept as
they are; a frame is re-encoded only when something in it was redacted.
"""

from __future__ import annotations

import re
from typing import Any, Final

import orjson

__all__ = ["REDACTED", "Redactor"]

REDACTED: Final = "<redacted>"
MIN_SECRET_LENGTH: Final = 6
"""Shorter values are not treated as secrets: replacing them would garble ordinary text."""

_SECRET_KEY = re.compile(
    r"token|secret|passw|api_?key|authori[sz]ation|credential|cookie|^key$|^user_?id$",
    re.IGNORECASE,
)
_KEY_HINT = re.compile(
    r"token|secret|passw|api_?key|authori[sz]ation|credential|cookie|\"key\"|user_?id",
    re.IGNORECASE,
)
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}")
_AUTH_SCHEME = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{6,}", re.IGNORECASE)
_FEED_DATA = '{"type":"FEED_DATA"'


class Redactor:
    """Removes secrets from text before it is recorded (rules: module docstring)."""

    def __init__(self) -> None:
        self._secrets: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"Redactor({len(self._secrets)} known secrets)"  # never the secrets

    def add_secret(self, value: str) -> None:
        """Redact ``value`` wherever it appears from now on (too short a value is ignored)."""
        if len(value) < MIN_SECRET_LENGTH or value in self._secrets:
            return
        # Longest first, so a secret containing another is replaced whole.
        self._secrets = tuple(sorted((*self._secrets, value), key=len, reverse=True))

    def __call__(self, text: str) -> str:
        """``text`` with every secret replaced by :data:`REDACTED`."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if text.startswith(_FEED_DATA):
            return text
        if _KEY_HINT.search(text):
            text = _redact_keys(text)
        if "eyJ" in text:
            text = _JWT.sub(REDACTED, text)
        return _AUTH_SCHEME.sub(lambda m: f"{m[1]} {REDACTED}", text)


def _redact_keys(text: str) -> str:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    if not _walk(value):
        return text
    return orjson.dumps(value).decode()


def _walk(value: Any) -> bool:
    """Replace secret-keyed values in place; True when anything was replaced."""
    changed = False
    if isinstance(value, dict):
        for key, inner in value.items():
            if _SECRET_KEY.search(key) and inner not in (None, "", REDACTED):
                value[key] = REDACTED
                changed = True
            elif isinstance(inner, dict | list):
                changed |= _walk(inner)
    elif isinstance(value, list):
        for inner in value:
            if isinstance(inner, dict | list):
                changed |= _walk(inner)
    return changed
