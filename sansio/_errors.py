"""Errors, typed by who is at fault (h11 style).

Input from a peer never raises: a peer's fault is recorded as a :class:`RemoteProtocolError`
on ``CallBridge.error`` and turned into close actions. Misuse by the driver raises a
:class:`LocalProtocolError` at once.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any


class Peer(Enum):
    """The two legs of a call."""

    TWILIO = "twilio"
    AGENT = "agent"


class BridgeError(Exception):
    """Base class of every error this package defines."""


class LocalProtocolError(BridgeError):
    """The driver used the core wrongly (an input in a state that cannot take it)."""


class RemoteProtocolError(BridgeError):
    """A peer broke its protocol. ``close_code`` is the WebSocket code to close its leg with."""

    def __init__(self, peer: Peer, message: str, close_code: int = 1008) -> None:
        super().__init__(message)
        self.peer = peer
        self.close_code = close_code

    def __repr__(self) -> str:
        return (
            f"RemoteProtocolError({self.peer.value}, {str(self)!r}, close_code={self.close_code})"
        )


class ConfigError(BridgeError, ValueError):
    """A configuration value is invalid. ``field`` names it with a dotted path."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


MAX_CLOSE_REASON_BYTES = 120  # a WebSocket close reason must fit in 123 bytes


def close_reason(text: str) -> str:
    """``text`` cut to fit a WebSocket close frame, on a character boundary."""
    encoded = text.encode("utf-8")
    if len(encoded) <= MAX_CLOSE_REASON_BYTES:
        return text
    return encoded[:MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore")


def decode_object(loads: Callable[[str], Any], text: str) -> dict[str, Any] | str:
    """A peer's message as a JSON object, or what is wrong with it (the call fails, 1007)."""
    try:
        message = loads(text)
    except (ValueError, TypeError, RecursionError):
        return "a message that is not JSON"
    return message if type(message) is dict else "JSON that is not an object"
