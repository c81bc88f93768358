"""The bearer check of the control routes (``/calls*``), shared by every route behind
``BRIDGE_CONTROL_TOKEN`` so that there is one constant-time comparison to get right."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

CHALLENGE = (b"www-authenticate", b'Bearer realm="calls"')
UNAUTHORIZED = {"error": "a valid bearer token is required"}


def authorized(headers: Sequence[tuple[bytes, bytes]], token: str | None) -> bool:
    """True when ``Authorization: Bearer <token>`` is present and matches ``token``.
    Without a configured token nothing is authorized (the routes are off)."""
    if not token:
        return False
    values = [value for key, value in headers if key.lower() == b"authorization"]
    if len(values) != 1:
        return False
    scheme, _, given = values[0].partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    return hmac.compare_digest(given.strip(), token.encode())
