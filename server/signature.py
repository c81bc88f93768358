"""Twilio request signatures (``X-Twilio-Signature``), validated without the twilio package.

The algorithm (Twilio's security docs): take the full URL Twilio requested, append each POST
parameter's name and value sorted by name (code-point order), HMAC-SHA1 it with the account's
auth token and base64 the digest. Twilio has signed URLs with and without the port over the
years, and the Media Streams handshake may need a trailing ``/``, so several spellings of the
URL are tried; each comparison is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

_DEFAULT_PORTS = {"https": 443, "wss": 443, "http": 80, "ws": 80}


def compute_signature(token: str, url: str, params: Iterable[tuple[str, str]] = ()) -> str:
    """The signature Twilio sends for ``url`` and POST ``params`` (as twilio-python does it:
    names sorted, and a repeated name's values de-duplicated and sorted)."""
    grouped: dict[str, set[str]] = {}
    for name, value in params:
        grouped.setdefault(name, set()).add(value)
    parts = [url]
    for name in sorted(grouped):
        for value in sorted(grouped[name]):
            parts.append(name)
            parts.append(value)
    return _sign(token, "".join(parts))


def _sign(token: str, data: str) -> str:
    digest = hmac.new(token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def url_variants(url: str, *, trailing_slash: bool = False) -> list[str]:
    """``url`` as given, without its port, and with the scheme's default port (deduplicated);
    with ``trailing_slash`` each of those with a ``/`` added to the path as well."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    without_port = urlunsplit(parts._replace(netloc=prefix + host))
    candidates = [url, without_port]
    default = _DEFAULT_PORTS.get(parts.scheme)
    if parts.port is None and default is not None:
        candidates.append(urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default}")))
    if trailing_slash:
        for candidate in list(candidates):
            split = urlsplit(candidate)
            if not split.path.endswith("/"):
                candidates.append(urlunsplit(split._replace(path=split.path + "/")))
    return list(dict.fromkeys(candidates))


def validate(
    token: str,
    urls: Sequence[str],
    params: Sequence[tuple[str, str]],
    signature: str | None,
) -> bool:
    """True if ``signature`` matches any of ``urls`` with ``params``.

    Repeated parameter names are tried both as twilio-python signs them (values de-duplicated
    and sorted) and in the order received, since Twilio does not document which it uses.
    """
    if not signature or not token:
        return False
    given = signature.strip().encode("ascii", "replace")
    ok = False
    names = [name for name, _ in params]
    repeated = len(set(names)) != len(names)
    for url in urls:
        expected = compute_signature(token, url, params)
        ok |= hmac.compare_digest(expected.encode("ascii"), given)
        if repeated:
            ordered = sorted(params, key=lambda item: item[0])  # stable: keeps received order
            data = url + "".join(name + value for name, value in ordered)
            ok |= hmac.compare_digest(_sign(token, data).encode("ascii"), given)
    return ok


# ---------------------------------------------------------------- per-call tokens
# The upgrade signature covers only the wss:// URL, so it is the same for every call: whoever
# sees one can replay it. With --require-call-token the webhook (signed over the call's own
# parameters) adds a token bound to the CallSid and the time to the TwiML, and the call is
# refused at Twilio's start unless the token comes back in customParameters. The token is
# stateless, so any worker or instance sharing the auth token can check it.

CALL_TOKEN_PARAMETER = "bridgeToken"
CALL_TOKEN_MAX_AGE = 300.0  # seconds from the webhook to the stream's start
_CLOCK_SKEW = 30.0  # instances behind one load balancer may disagree a little


def _call_token_mac(token: str, call_sid: str, issued: int) -> str:
    data = f"call-token\n{call_sid}\n{issued}".encode()
    return hmac.new(token.encode("utf-8"), data, hashlib.sha256).hexdigest()[:32]


def issue_call_token(token: str, call_sid: str, now: float) -> str:
    """The ``bridgeToken`` the webhook puts in the TwiML for ``call_sid`` at wall time ``now``."""
    issued = int(now)
    return f"{issued}.{_call_token_mac(token, call_sid, issued)}"


def check_call_token(token: str, call_sid: str, value: str | None, now: float) -> str | None:
    """None if ``value`` is a fresh token issued for ``call_sid``, else why it is not."""
    if not call_sid:
        return "no callSid to check the token against"
    if not value:
        return f"no {CALL_TOKEN_PARAMETER} parameter"
    issued_text, _, mac = value.partition(".")
    if not issued_text.isdigit():
        return f"malformed {CALL_TOKEN_PARAMETER}"
    issued = int(issued_text)
    expected = _call_token_mac(token, call_sid, issued)
    if not hmac.compare_digest(expected.encode(), mac.encode("ascii", "replace")):
        return f"{CALL_TOKEN_PARAMETER} not issued for this call"
    if not issued - _CLOCK_SKEW <= now <= issued + CALL_TOKEN_MAX_AGE:
        return f"{CALL_TOKEN_PARAMETER} expired"
    return None


def call_token_admitter(token: str) -> Callable[[str, Mapping[str, str]], str | None]:
    """The core's ``admit`` hook that requires a fresh ``bridgeToken`` for the call."""

    def admit(call_sid: str, parameters: Mapping[str, str]) -> str | None:
        return check_call_token(token, call_sid, parameters.get(CALL_TOKEN_PARAMETER), time.time())

    return admit
