"""Secrets never reach a recording: AUTH tokens, secret keys, known tokens, token shapes."""

from __future__ import annotations

import orjson

from pipeline.recording import REDACTED, Redactor

TOKEN = "dxlink-quote-token-9f8e7d6c"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


def test_the_auth_token_is_replaced_and_the_rest_kept() -> None:
    """AUTH's token becomes <redacted>; type and channel stay as they were."""
    redact = Redactor()
    frame = f'{{"type":"AUTH","channel":0,"token":"{TOKEN}"}}'
    assert orjson.loads(redact(frame)) == {"type": "AUTH", "channel": 0, "token": REDACTED}


def test_the_account_id_is_left_out() -> None:
    """AUTH_STATE's userId names the account: not for a bug report."""
    redact = Redactor()
    frame = '{"type":"AUTH_STATE","channel":0,"state":"AUTHORIZED","userId":"U0001234"}'
    assert orjson.loads(redact(frame))["userId"] == REDACTED


def test_secret_keys_are_replaced_at_any_depth() -> None:
    """Any key naming a secret, nested in objects and lists, loses its value."""
    redact = Redactor()
    frame = orjson.dumps(
        {
            "type": "X",
            "auth": {"refresh_token": "r-1234567", "clientSecret": "s-1234567"},
            "list": [{"password": "p-1234567", "apiKey": "k-1234567", "keep": "visible"}],
            "Authorization": "Basic dXNlcjpwYXNz",
        }
    ).decode()
    cleaned = orjson.loads(redact(frame))
    assert cleaned["auth"] == {"refresh_token": REDACTED, "clientSecret": REDACTED}
    assert cleaned["list"] == [{"password": REDACTED, "apiKey": REDACTED, "keep": "visible"}]
    assert cleaned["Authorization"] == REDACTED


def test_a_known_token_is_replaced_anywhere_even_in_data_and_errors() -> None:
    """The client's token, echoed in an error message or anywhere else, is replaced."""
    redact = Redactor()
    redact.add_secret(TOKEN)
    error = f'{{"type":"ERROR","channel":0,"error":"UNAUTHORIZED","message":"bad {TOKEN}"}}'
    assert TOKEN not in redact(error) and REDACTED in redact(error)
    data = f'{{"type":"FEED_DATA","channel":1,"data":["Quote",["{TOKEN}"]]}}'
    assert TOKEN not in redact(data)
    assert TOKEN not in redact(f"ws://host/?t={TOKEN}")
    assert repr(redact) == "Redactor(1 known secrets)"  # never the secret


def test_token_shapes_are_replaced_in_any_text() -> None:
    """A JSON Web Token or a Bearer credential is replaced even outside JSON."""
    redact = Redactor()
    assert JWT not in redact(f"rejected {JWT} at login")
    assert redact("Authorization: Bearer abc.def-ghi_123") == f"Authorization: Bearer {REDACTED}"


def test_candle_data_passes_untouched() -> None:
    """FEED_DATA with candle values (the bulk of a recording) comes out identical."""
    redact = Redactor()
    redact.add_secret(TOKEN)
    frame = '{"type":"FEED_DATA","channel":1,"data":["Candle",["AAPL{=5m}",0,1.5,"NaN"]]}'
    assert redact(frame) is frame
    short = Redactor()
    short.add_secret("abc")  # too short to be a secret: replacing it would garble text
    assert short("abc def") == "abc def"
