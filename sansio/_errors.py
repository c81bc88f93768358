"""Errors, typed by who is at fault (h11 style).

Input from a peer never raises: a peer's fault is recorded as a :class:`RemoteProtocolError`
on ``CallBridge.error`` and turned into close actions. Misuse by the driver raises a
:class:`LocalProtocolError` at once.
"""

from __future__ import annotations

from enum import Enum


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
