"""Chunking invariance of the HTTP layer: the same bytes, whole or split at random points,
give the same responses and the same connection fate. (The WebSocket layer has the same
property in tests/server/test_ws.py, and the core's arbitrary message sequences are in
tests/core/test_properties.py.)"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.app import Server
from server.http import HttpProtocol
from tests.server_support import options


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data: Any) -> None:
        if not self.closed:
            self.out += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


REQUESTS = [
    b"GET /healthz HTTP/1.1\r\nHost: bridge.example.com\r\n\r\n",
    b"GET /nope HTTP/1.1\r\nHost: bridge.example.com\r\n\r\n",
    b"DELETE /incoming-call HTTP/1.1\r\nHost: bridge.example.com\r\n\r\n",
    b"GET /incoming-call?From=%2B1555&To=%2B1666 HTTP/1.1\r\nHost: bridge.example.com\r\n\r\n",
    b"POST /incoming-call HTTP/1.1\r\nHost: bridge.example.com\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 21\r\n\r\n"
    b"From=%2B1555&To=%2B16",
    b"GET /metrics HTTP/1.1\r\nHost: bridge.example.com\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
    b"NONSENSE\r\n\r\n",
]

STREAMS = st.one_of(
    st.lists(st.sampled_from(REQUESTS), min_size=1, max_size=4).map(b"".join),
    st.binary(max_size=300),
    st.tuples(st.sampled_from(REQUESTS), st.binary(max_size=50)).map(lambda t: t[0] + t[1]),
)


async def outcome(server: Server, pieces: list[bytes]) -> tuple[list[str], bool]:
    protocol = HttpProtocol(server)
    transport = FakeTransport()
    protocol.connection_made(transport)
    for piece in pieces:
        if transport.closed:
            break
        if piece:  # a transport never delivers empty data (that would be EOF to h11)
            protocol.data_received(piece)
    protocol.connection_lost(None)
    statuses = re.findall(r"HTTP/1\.1 (\d{3})", transport.out.decode("latin-1"))
    return statuses, transport.closed


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=STREAMS, cuts=st.lists(st.integers(min_value=0, max_value=25000), max_size=12))
def test_http_layer_is_chunking_invariant(data: bytes, cuts: list[int]) -> None:
    async def body() -> None:
        server = Server(options())
        points = sorted({c % (len(data) + 1) for c in cuts})
        pieces = [
            data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if b > a
        ]
        one_byte = [data[i : i + 1] for i in range(min(len(data), 400))] + (
            [data[400:]] if len(data) > 400 else []
        )
        whole = await outcome(server, [data])
        assert await outcome(server, pieces) == whole
        assert await outcome(server, one_byte) == whole

    asyncio.run(body())
