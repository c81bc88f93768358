"""A server-side WebSocket peer over a bare ``wsproto`` connection.

``feed(bytes)`` returns the complete messages in order; pings are answered, the close
handshake is completed, and the size of each message is capped *as it streams in*: wsproto
hands out the payload of a large frame piece by piece as bytes arrive, so an oversized
message is refused with 1009 after at most one read past the limit, and never held whole.
Everything to send (pongs, close frames, messages) is collected and taken with
:meth:`WsPeer.take_output`, so the driver writes once per batch.
"""

from __future__ import annotations

import struct

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Ping,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError

OPEN = ConnectionState.OPEN
REMOTE_CLOSING = ConnectionState.REMOTE_CLOSING
LOCAL_CLOSING = ConnectionState.LOCAL_CLOSING
CLOSED = ConnectionState.CLOSED

_TEXT_HEADER_SHORT = [bytes((0x81, n)) for n in range(126)]
_pack_medium = struct.Struct("!BBH").pack
_pack_long = struct.Struct("!BBQ").pack


def encode_text_frame(text: str) -> bytes:
    """One unmasked, unfragmented text frame (what a server sends)."""
    payload = text.encode("utf-8")
    size = len(payload)
    if size < 126:
        return _TEXT_HEADER_SHORT[size] + payload
    if size < 65536:
        return _pack_medium(0x81, 126, size) + payload
    return _pack_long(0x81, 127, size) + payload


class WsPeer:
    """The Twilio side of one call: framing only, no call logic."""

    __slots__ = (
        "_parts",
        "_size",
        "close_code",
        "close_reason",
        "conn",
        "error",
        "max_message",
        "out",
        "remote_closed",
    )

    def __init__(self, trailing_data: bytes = b"", max_message: int = 65536) -> None:
        self.conn = Connection(ConnectionType.SERVER, trailing_data=trailing_data)
        self.max_message = max_message
        self.out: list[bytes] = []
        self.close_code: int | None = None  # the code the peer closed with (None: not yet)
        self.close_reason = ""
        self.remote_closed = False  # a close frame arrived, or the stream ended
        self.error: tuple[int, str] | None = None  # we failed the connection (code, why)
        self._parts: list[str | bytes] = []
        self._size = 0

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> ConnectionState:
        return self.conn.state

    @property
    def open(self) -> bool:
        return self.conn.state is OPEN

    @property
    def done(self) -> bool:
        """The close handshake is complete (or failed): the TCP connection may be closed."""
        return self.conn.state is CLOSED

    # ------------------------------------------------------------------ input

    def feed(self, data: bytes) -> list[str | bytes]:
        """Take bytes from the network; return the complete messages they finish."""
        conn = self.conn
        if data:
            if conn.state is CLOSED or self.remote_closed:
                return []
            try:
                conn.receive_data(data)
            except LocalProtocolError:  # pragma: no cover - guarded by the state check
                return []
        return self._events()

    def eof(self) -> list[str | bytes]:
        """The peer closed its side of the TCP stream."""
        if self.remote_closed or self.conn.state is CLOSED:
            self.remote_closed = True
            return []
        self.conn.receive_data(None)
        return self._events()

    def _events(self) -> list[str | bytes]:
        messages: list[str | bytes] = []
        conn = self.conn
        for event in conn.events():
            cls = type(event)
            if cls is TextMessage or cls is BytesMessage:
                data = event.data  # type: ignore[attr-defined]
                if self.error is not None or conn.state is not OPEN:
                    continue  # failing or closing: drain without keeping anything
                if event.message_finished and not self._parts:  # type: ignore[attr-defined]
                    if self._too_big(data, 0):
                        continue
                    messages.append(data)
                    continue
                if self._too_big(data, self._size):
                    continue
                self._parts.append(data)
                self._size += len(data)
                if event.message_finished:  # type: ignore[attr-defined]
                    parts, self._parts, self._size = self._parts, [], 0
                    if cls is TextMessage:
                        messages.append("".join(parts))  # type: ignore[arg-type]
                    else:
                        messages.append(b"".join(parts))  # type: ignore[arg-type]
            elif cls is Ping:
                if conn.state is OPEN:
                    self.out.append(conn.send(event.response()))  # type: ignore[attr-defined]
            elif cls is CloseConnection:
                self._on_close(event)  # type: ignore[arg-type]
            # Pong and anything else: nothing to do
        return messages

    def _too_big(self, data: str | bytes, before: int) -> bool:
        limit = self.max_message
        size = before + len(data)
        if type(data) is str and size * 4 > limit:  # characters can be up to 4 bytes
            size = before + len(data.encode("utf-8"))
        if size <= limit:
            return False
        self._parts, self._size = [], 0
        self.fail(1009, f"message over {limit} bytes")
        return True

    def _on_close(self, event: CloseConnection) -> None:
        conn = self.conn
        state = conn.state
        if state is REMOTE_CLOSING:  # the peer started the close handshake: answer it
            self.remote_closed = True
            self.close_code, self.close_reason = event.code, event.reason or ""
            self.out.append(conn.send(event.response()))
        elif state is CLOSED:
            if self.close_code is None:  # our close was answered, or the stream ended (1006)
                self.close_code, self.close_reason = event.code, event.reason or ""
            self.remote_closed = True
        else:
            # wsproto reports a frame it cannot parse as a CloseConnection event without
            # changing state: fail the connection with that code; nothing after it is usable.
            self.fail(event.code, event.reason or "protocol error")
            self.remote_closed = True

    def fail(self, code: int, reason: str) -> None:
        """Start closing because of the peer's fault (the close frame goes out at once)."""
        if self.error is None:
            self.error = (code, reason)
        self.close(code, reason)

    # ------------------------------------------------------------------ output

    def send_text(self, text: str) -> None:
        """Queue one message as a single unfragmented text frame (nothing once closing)."""
        if self.conn.state is OPEN:
            self.out.append(encode_text_frame(text))

    def close(self, code: int, reason: str = "") -> None:
        """Queue a close frame, if none was sent yet."""
        conn = self.conn
        if conn.state is OPEN or conn.state is REMOTE_CLOSING:
            self.out.append(conn.send(CloseConnection(code=code, reason=reason)))

    def take_output(self) -> bytes:
        out = self.out
        if not out:
            return b""
        self.out = []
        return out[0] if len(out) == 1 else b"".join(out)
