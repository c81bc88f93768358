"""RFC 6455 framing by hand, for raw clients and servers that want every byte in their control.

The load generator needs frames cheaper than a WebSocket library's, and the fault tests need
frames no library would send (split anywhere, pings by the thousand, an upgrade one byte at a
time). Both pack and parse here. Frames are never fragmented and never compressed.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct

from websockets.speedups import apply_mask

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
ZERO_MASK = b"\x00\x00\x00\x00"
"""A valid mask key that leaves the payload as it is: the cheapest frame a client may send."""
TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def client_frame(payload: bytes, opcode: int = TEXT, mask: bytes = ZERO_MASK) -> bytes:
    """A masked, unfragmented frame, as a client must send (``mask``: the 4-byte key)."""
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    if mask is ZERO_MASK:  # the load generator's hot path: no copy
        return head + mask + payload
    return head + mask + apply_mask(payload, mask)


def server_frame(payload: bytes, opcode: int = TEXT) -> bytes:
    """An unmasked, unfragmented frame, as a server sends."""
    size = len(payload)
    if size < 126:
        return struct.pack("!BB", 0x80 | opcode, size) + payload
    if size < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, size) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, size) + payload


def accept_key(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for the client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def upgrade_request(path: str, key: bytes = b"dGhlIHNhbXBsZSBub25jZQ==", host: str = "x") -> bytes:
    """The HTTP/1.1 request that opens a WebSocket at ``path``."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


_KEY = re.compile(rb"(?i)sec-websocket-key:\s*(\S+)")


def upgrade_response(head: bytes) -> bytes | None:
    """The ``101`` answer to an upgrade request's head, or None if it carries no key."""
    match = _KEY.search(head)
    if match is None:
        return None
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(match.group(1)) + b"\r\n\r\n"
    )


class HeadBuffer:
    """An HTTP head that arrives in pieces before a raw peer's frames begin."""

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data = bytearray()

    def feed(self, data: bytes) -> tuple[bytes, bytes] | None:
        """``(head, rest)`` once the blank line has come (the head without it), else None."""
        buffered = self._data
        buffered += data
        end = buffered.find(b"\r\n\r\n")
        if end < 0:
            return None
        return bytes(buffered[:end]), bytes(buffered[end + 4 :])


class FrameReader:
    """Incremental frame parser; ``feed`` returns the whole frames as (opcode, payload)."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buffer = self.buffer
        buffer += data
        out = []
        while len(buffer) >= 2:
            first, second = buffer[0], buffer[1]
            size = second & 0x7F
            offset = 2
            if size == 126:
                if len(buffer) < 4:
                    break
                size = struct.unpack_from("!H", buffer, 2)[0]
                offset = 4
            elif size == 127:
                if len(buffer) < 10:
                    break
                size = struct.unpack_from("!Q", buffer, 2)[0]
                offset = 10
            masked = second & 0x80
            end = offset + (4 if masked else 0) + size
            if len(buffer) < end:
                break
            if masked:
                mask = bytes(buffer[offset : offset + 4])
                payload = apply_mask(bytes(buffer[offset + 4 : end]), mask)
            else:
                payload = bytes(buffer[offset:end])
            del buffer[:end]
            out.append((first & 0x0F, payload))
        return out
