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
from collections.abc import Iterable, Sequence
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
