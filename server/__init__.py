"""The bundled asyncio server (h11 + wsproto) that bridges Twilio calls to a Deepgram agent.

It is a thin driver: all call logic lives in :class:`sansio.CallBridge`; this package parses
HTTP and WebSocket framing, opens the agent leg, executes the core's actions and keeps one
timer per call. Run it with ``python -m server`` or the ``twilio-agent-bridge`` script.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
