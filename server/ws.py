"""A server-side WebSocket peer over a bare ``wsproto`` connection.

``feed(bytes)`` returns the complete messages in order; pings are answered, the close
handshake is completed, and the size of each message is capped *as it streams in*: wsproto
hands out the payload of a large frame piece by piece as bytes arrive, so an oversized
message is refused with 1009 after at most one read past the limit, and never held whole.
Everything to send (pongs, close frames, messages) is collected and taken with
:meth:`WsPeer.take_output`, so the driver writes once per batch.

Fast path: Twilio sends one small, masked, unfragmented text frame per message, 50 times a
second per call, and wsproto's pure-Python parser costs several times more than the rest of
the call. So complete frames of that one shape (FIN, no RSV bits, text or binary, masked,
length within the message limit) are decoded here; every other frame (ping, close,
fragments, anything malformed or oversized) is handed whole to wsproto, which stays the
authority for the protocol. wsproto is only ever given whole frames while the fast path is
on, so it holds no partial state when the next fast frame comes; after a frame the fast path
cannot take at a frame boundary (an oversized or malformed one), the rest of the stream goes
to wsproto for good.
"""

from __future__ import annotations

import os
import struct

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Ping,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError

_TEXT_HEADER_SHORT = [bytes((0x81, n)) for n in range(126)]
_pack_medium = struct.Struct("!BBH").pack
_pack_long = struct.Struct("!BBQ").pack


def _apply_mask_py(
    data: bytes | bytearray | memoryview, mask: bytes | bytearray
) -> bytes:  # pragma: no cover
    """XOR ``data`` with the 4-byte ``mask`` (RFC 6455 section 5.3)."""
    size = len(data)
    key = int.from_bytes((mask * ((size >> 2) + 1))[:size], "little")
    return (int.from_bytes(data, "little") ^ key).to_bytes(size, "little")


try:  # websockets' C function itself, not a wrapper: it runs once per frame from Twilio
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets ships the C extension for common platforms
    apply_mask = _apply_mask_py


def encode_text_frame(text: str) -> bytes:
    """One unmasked, unfragmented text frame (what a server sends)."""
    payload = text.encode("utf-8")
    size = len(payload)
    if size < 126:
        return _TEXT_HEADER_SHORT[size] + payload
    if size < 65536:
        return _pack_medium(0x81, 126, size) + payload
    return _pack_long(0x81, 127, size) + payload


def encode_client_frame(opcode: int, payload: bytes, mask: bytes) -> bytes:
    """One masked, unfragmented frame (what a client sends: the agent leg)."""
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 65536:
        head = _pack_medium(0x80 | opcode, 0xFE, size)
    else:
        head = _pack_long(0x80 | opcode, 0xFF, size)
    return head + mask + apply_mask(payload, mask)


class MaskPool:
    """Masking keys for client frames, cut from one ``os.urandom`` read per ``batch`` frames
    instead of one ``getrandom`` call per frame. RFC 6455 section 5.3 asks for unpredictable
    keys from a strong source, which this still is; a forked child starts a fresh batch, so
    workers never share keys."""

    __slots__ = ("_batch", "_keys", "_next")

    def __init__(self, batch: int = 1024) -> None:
        self._batch = batch
        self._keys = b""
        self._next = 0

    def take(self) -> bytes:
        start = self._next
        if start >= len(self._keys):
            self._keys = os.urandom(4 * self._batch)
            start = 0
        self._next = start + 4
        return self._keys[start : start + 4]

    def reset(self) -> None:
        self._keys = b""
        self._next = 0


MASKS = MaskPool()
os.register_at_fork(after_in_child=MASKS.reset)


class WsPeer:
    """The Twilio side of one call: framing only, no call logic."""

    __slots__ = (
        "_fast",
        "_fragmented",
        "_parts",
        "_pending",
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
        # Bytes that came behind the upgrade request go through feed() like any others
        # (the fast path must see them first); the first feed() call processes them.
        self.conn = Connection(ConnectionType.SERVER)
        self._pending = bytes(trailing_data)
        self._fast = True  # wsproto holds nothing; whole simple frames may be decoded here
        self._fragmented = False  # a fragmented message is in progress inside wsproto
        self.max_message = max_message
        self.out: list[bytes] = []
        self.close_code: int | None = None  # the code the peer closed with (None: not yet)
        self.close_reason = ""
        self.remote_closed = False  # a close frame arrived, or the stream ended
        self.error: tuple[int, str] | None = None  # we failed the connection (code, why)
        self._parts: list[str | bytes] = []
        self._size = 0

    @property
    def done(self) -> bool:
        """The close handshake is complete (or failed): the TCP connection may be closed."""
        return self.conn.state is ConnectionState.CLOSED

    # ------------------------------------------------------------------ input

    def feed(self, data: bytes) -> list[str | bytes]:
        """Take bytes from the network; return the complete messages they finish.

        The fast path is written inline (not in a helper) because it runs for every read."""
        conn = self.conn
        if conn.state is ConnectionState.CLOSED or self.remote_closed:
            return []
        if not self._fast:
            return self._to_wsproto(data)
        pending = self._pending
        if pending:
            buf = pending + data
            self._pending = b""
        else:
            buf = data
        size = len(buf)
        pos = 0
        messages: list[str | bytes] = []
        limit = self.max_message
        while size - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            if length < 126:
                start = pos + 6
            elif length == 126:
                if size - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                start = pos + 8
            else:
                start = -1  # 8-byte length: over 64 KiB, never a Twilio message
            simple = (
                (b0 == 0x81 or b0 == 0x82)
                and b1 & 0x80
                and start > 0
                and length <= limit
                and not self._fragmented
                and conn.state is ConnectionState.OPEN
                and self.error is None
            )
            if not simple:
                end = self._frame_end(buf, pos, size)
                if end is None:  # cannot delimit it (oversized or partial): wsproto from here
                    self._fast = False
                    messages.extend(self._to_wsproto(buf[pos:]))
                    return messages
                if end > size:
                    break  # a whole small control/fragment frame is still arriving
                messages.extend(self._to_wsproto(buf[pos:end]))
                pos = end
                if not self._fast or self.done or self.remote_closed:
                    return messages
                continue
            end = start + length
            if end > size:
                break
            payload = apply_mask(buf[start:end], buf[start - 4 : start])
            if b0 == 0x81:
                try:
                    messages.append(payload.decode("utf-8"))
                except UnicodeDecodeError:
                    self._fast = False  # let wsproto report it (1007)
                    messages.extend(self._to_wsproto(buf[pos:]))
                    return messages
            else:
                messages.append(payload)
            pos = end
        if pos < size:
            self._pending = buf[pos:]
        return messages

    def _frame_end(self, buf: bytes, pos: int, size: int) -> int | None:
        """End offset of the frame at ``pos`` if it is small enough to hand over whole
        (it may lie beyond ``size``: not all received yet); None to leave the fast path."""
        b0 = buf[pos]
        b1 = buf[pos + 1]
        length = b1 & 0x7F
        header = 2 + (4 if b1 & 0x80 else 0)
        if length == 126:  # the caller made sure the two length bytes are there
            length = (buf[pos + 2] << 8) | buf[pos + 3]
            header += 2
        elif length == 127:
            return None
        opcode = b0 & 0x0F
        if b0 & 0x70 or not b1 & 0x80 or opcode not in (0, 1, 2, 8, 9, 10):
            return None  # malformed: wsproto fails the connection with the right code
        if length > self.max_message:
            return None  # oversized: refused with 1009 as it streams through wsproto
        if opcode in (0, 1, 2):  # a fragment (or a data frame while one is in progress)
            self._fragmented = not (b0 & 0x80)
        return pos + header + length

    def _to_wsproto(self, data: bytes) -> list[str | bytes]:
        if not data:
            return []
        try:
            self.conn.receive_data(data)
        except LocalProtocolError:  # pragma: no cover - only called while not CLOSED
            return []
        return self._events()

    def eof(self) -> list[str | bytes]:
        """The peer closed its side of the TCP stream."""
        if self.remote_closed or self.conn.state is ConnectionState.CLOSED:
            self.remote_closed = True
            return []
        self.conn.receive_data(None)
        return self._events()

    def connection_lost(self) -> None:
        """The TCP connection is gone: nothing more will arrive."""
        self.remote_closed = True

    def _events(self) -> list[str | bytes]:
        messages: list[str | bytes] = []
        conn = self.conn
        for event in conn.events():
            cls = type(event)
            if cls is TextMessage or cls is BytesMessage:
                data = event.data  # type: ignore[attr-defined]
                if self.error is not None or conn.state is not ConnectionState.OPEN:
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
                if conn.state is ConnectionState.OPEN:
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
        if state is ConnectionState.REMOTE_CLOSING:  # the peer started the close handshake
            self.remote_closed = True
            self.close_code, self.close_reason = event.code, event.reason or ""
            self.out.append(conn.send(event.response()))
        elif state is ConnectionState.CLOSED:
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
        if self.conn.state is ConnectionState.OPEN:
            self.out.append(encode_text_frame(text))

    def close(self, code: int, reason: str = "") -> None:
        """Queue a close frame, if none was sent yet."""
        if self.conn.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            self.out.append(self.conn.send(CloseConnection(code=code, reason=reason)))

    def take_output(self) -> bytes:
        out = self.out
        if not out:
            return b""
        self.out = []
        return out[0] if len(out) == 1 else b"".join(out)
