"""The Twilio leg of one call: the upgraded TCP connection's ``asyncio.Protocol``.

After the ``101``, the HTTP layer hands the transport over (``transport.set_protocol``), so every
read comes straight here: the bytes go through the :class:`~server.ws.WsPeer` framer and the
complete messages go to the call, through the narrow :class:`TwilioEvents` interface. The leg
knows nothing of calls; the call writes through :meth:`TwilioLeg.flush`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from server.ws import WsPeer

log = logging.getLogger("server.call")

FAIR_READ_BYTES = 65536  # a read this big means the peer is sending flat out: see _yield_reading


class TwilioEvents(Protocol):
    """What a Twilio leg reports to the call it belongs to."""

    def twilio_messages(self, messages: list[str | bytes]) -> None:
        """Complete messages from one read (maybe none: then the framer's state changed)."""

    def twilio_lost(self) -> None:
        """The TCP connection is gone."""

    def abort(self) -> None:
        """Drop the whole call at once (its handler failed on this leg's input)."""


class TwilioStream(Protocol):
    """The message side of a media stream, as the call drives it: :class:`~server.ws.WsPeer`
    over a socket, or :class:`~server.asgi_leg.AsgiStream` over an ASGI server's WebSocket."""

    out: list[Any]  # queued output, taken by the link's flush()
    close_code: int | None  # the code the peer closed with
    remote_closed: bool
    error: tuple[int, str] | None  # we failed the stream (code, why)

    @property
    def done(self) -> bool: ...

    def feed(self, data: bytes) -> list[str | bytes]: ...

    def send_text(self, text: str) -> None: ...

    def close(self, code: int, reason: str = "") -> None: ...


class TwilioLink(Protocol):
    """What carries a stream's output: :class:`TwilioLeg`, or the ASGI leg."""

    def flush(self) -> int:
        """Send what the stream queued; return the bytes still unsent (the write cap's count)."""
        ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


StreamFactory = Callable[[TwilioEvents], tuple[TwilioStream, TwilioLink]]


class TwilioLeg(asyncio.Protocol):
    """One media stream's connection: framing and transport, no call logic."""

    __slots__ = ("call", "framer", "loop", "peer", "transport")

    def __init__(
        self, transport: asyncio.Transport, framer: WsPeer, call: TwilioEvents, peer: str = ""
    ) -> None:
        self.transport = transport
        self.framer = framer
        self.call = call
        self.peer = peer
        self.loop = asyncio.get_running_loop()

    # ------------------------------------------------------------------ asyncio callbacks

    def data_received(self, data: bytes) -> None:
        if len(data) >= FAIR_READ_BYTES:
            self._yield_reading()
        try:
            self.call.twilio_messages(self.framer.feed(data))
        except Exception:  # a driver bug must cost one call, never the server
            log.exception("error in the call of media stream %s; dropping it", self.peer)
            self.call.abort()

    def eof_received(self) -> bool | None:
        self.call.twilio_messages(self.framer.eof())
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.framer.connection_lost()
        self.call.twilio_lost()

    def _yield_reading(self) -> None:
        """Stop reading until the loop's next pass. A peer that sends flat out fills every
        read (Twilio sends about 0.4 kB per call every 20 ms); uvloop would otherwise read
        its socket again and again in one pass, starving every other call and /healthz."""
        transport = self.transport
        if not transport.is_closing():
            transport.pause_reading()
            self.loop.call_soon(self._resume_reading)

    def _resume_reading(self) -> None:
        transport = self.transport
        if not transport.is_closing():
            transport.resume_reading()

    # ------------------------------------------------------------------ the call's side

    def flush(self) -> int:
        """Write what the framer queued, in one write; return the bytes still unsent."""
        transport = self.transport
        out = self.framer.take_output()
        if transport.is_closing():
            return 0
        if out:
            transport.write(out)
        return transport.get_write_buffer_size()

    def close(self) -> None:
        """Close the TCP connection (after what was written goes out)."""
        if not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        self.transport.abort()
