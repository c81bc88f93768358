"""server/signature.py by itself: the exact URL spellings tried, the received-order signature of
repeated parameters, input that must be refused rather than raise, and the per-call token's
format, bounds and refusal reasons (docs/mutation.md: these kill the mutants the route tests
let live)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from server import signature

TOKEN = "tok-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
SID = "CA0123456789abcdef0123456789abcdef"
URL = "https://bridge.example.com/incoming-call"


@pytest.mark.parametrize(
    ("url", "trailing_slash", "variants"),
    [
        (
            "wss://bridge.example.com/media-stream",
            True,
            [
                "wss://bridge.example.com/media-stream",
                "wss://bridge.example.com:443/media-stream",
                "wss://bridge.example.com/media-stream/",
                "wss://bridge.example.com:443/media-stream/",
            ],
        ),
        # an explicit port: the URL without it, and no default port added
        (
            "https://bridge.example.com:8443/incoming-call",
            False,
            [
                "https://bridge.example.com:8443/incoming-call",
                "https://bridge.example.com/incoming-call",
            ],
        ),
        # a path already ending in "/" gets no second one
        ("ws://h.example/x/", True, ["ws://h.example/x/", "ws://h.example:80/x/"]),
        # IPv6 literals keep their brackets without the port
        (
            "wss://[::1]:8443/media-stream",
            False,
            ["wss://[::1]:8443/media-stream", "wss://[::1]/media-stream"],
        ),
        # userinfo is kept in every variant
        (
            "https://u:p@h.example:8443/a",
            False,
            ["https://u:p@h.example:8443/a", "https://u:p@h.example/a"],
        ),
        (
            "https://u:p@h.example/a",
            False,
            ["https://u:p@h.example/a", "https://u:p@h.example:443/a"],
        ),
        # an unknown scheme has no default port; a URL without a host stays as it is
        ("sip://h.example/a", False, ["sip://h.example/a"]),
        ("/media-stream", False, ["/media-stream"]),
    ],
)
def test_url_variants_exactly(url: str, trailing_slash: bool, variants: list[str]) -> None:
    assert signature.url_variants(url, trailing_slash=trailing_slash) == variants


def _by_hand(url: str, pairs: list[tuple[str, str]]) -> str:
    """Twilio's documented algorithm over ``pairs`` in the order given."""
    data = url + "".join(name + value for name, value in pairs)
    mac = hmac.new(TOKEN.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


@pytest.mark.parametrize(
    "received",
    [
        [("Digits", "2"), ("CallSid", "CA1"), ("Digits", "1")],  # not sorted by value
        [("Digits", "1"), ("Digits", "1"), ("CallSid", "CA1")],  # not de-duplicated
    ],
)
def test_repeated_names_are_also_tried_in_the_order_received(
    received: list[tuple[str, str]],
) -> None:
    ordered = sorted(received, key=lambda pair: pair[0])  # by name only, received order kept
    as_received = _by_hand(URL, ordered)
    assert as_received != signature.compute_signature(TOKEN, URL, received)
    assert signature.validate(TOKEN, [URL], received, as_received)
    # other values are another request
    others = [
        (name, "9" + value) if name == "Digits" else (name, value) for name, value in received
    ]
    assert not signature.validate(TOKEN, [URL], others, as_received)


def test_validate_refuses_without_raising() -> None:
    params = [("CallSid", "CA1")]
    good = signature.compute_signature(TOKEN, URL, params)
    assert signature.validate(TOKEN, [URL], params, f"  {good}\r\n")  # header whitespace
    for bad in ("sïgnature", good[:-1] + "é", "", None):
        assert signature.validate(TOKEN, [URL], params, bad) is False
    assert signature.validate("", [URL], params, good) is False  # no auth token: nothing passes


def test_call_token_format_is_stable_across_versions() -> None:
    # Workers and instances sharing the auth token check each other's tokens, also across a
    # rolling upgrade: the format is "<issued>.<first 32 hex of HMAC-SHA256>".
    issued = 1_790_000_000
    data = f"call-token\n{SID}\n{issued}".encode()
    mac = hmac.new(TOKEN.encode(), data, hashlib.sha256).hexdigest()[:32]
    assert signature.issue_call_token(TOKEN, SID, issued + 0.9) == f"{issued}.{mac}"
    assert signature.check_call_token(TOKEN, SID, f"{issued}.{mac}", issued + 1) is None


def test_call_token_window_bounds() -> None:
    issued = 1_790_000_000
    token = signature.issue_call_token(TOKEN, SID, issued)
    expired = "bridgeToken expired"
    assert signature.check_call_token(TOKEN, SID, token, issued - 30) is None  # clock skew
    assert signature.check_call_token(TOKEN, SID, token, issued - 30.01) == expired
    assert signature.check_call_token(TOKEN, SID, token, issued + 300) is None  # max age
    assert signature.check_call_token(TOKEN, SID, token, issued + 300.01) == expired


def test_call_token_refusal_reasons() -> None:
    now = 1_790_000_000
    token = signature.issue_call_token(TOKEN, SID, now)
    issued, mac = token.split(".")

    def check(value: str | None, call_sid: str = SID) -> str | None:
        return signature.check_call_token(TOKEN, call_sid, value, now)

    assert check(token, "") == "no callSid to check the token against"
    assert check(None) == "no bridgeToken parameter"
    assert check("") == "no bridgeToken parameter"
    assert check(mac) == "malformed bridgeToken"
    assert check(f"-{issued}.{mac}") == "malformed bridgeToken"
    not_ours = "bridgeToken not issued for this call"
    assert check(token, SID[:-1] + "0") == not_ours
    assert check(f"{issued}.{mac}.{mac}") == not_ours  # the MAC is all after the first "."
    assert check(f"{issued}.{mac[:-1]}é") == not_ours  # non-ASCII refused, not raised
    assert check(f"{int(issued) + 1}.{mac}") == not_ours
