"""WsPeer's message size cap asserted as a bound (the limit itself passes, one byte more is
refused with 1009) on every path a message can take, the fast path actually taken for
Twilio's frames, the frame encoders at their length boundaries, and the mask pool's reads
(docs/mutation.md: these kill the mutants the stream tests let live)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, Pong, TextMessage

from server.ws import MaskPool, WsPeer, encode_client_frame, encode_text_frame

LIMIT = 70_000  # above 65535: a message at the limit needs the 8-byte length (wsproto's path)


def _frames(*messages: str | bytes) -> bytes:
    client = Connection(ConnectionType.CLIENT)
    out = b""
    for data in messages:
        event = TextMessage(data=data) if isinstance(data, str) else BytesMessage(data=data)
        out += client.send(event)
    return bytes(out)


CLOSE = bytes(Connection(ConnectionType.CLIENT).send(CloseConnection(code=1009)))


def _refused(peer: WsPeer, limit: int) -> None:
    assert peer.error == (1009, f"message over {limit} bytes")
    reply = Connection(ConnectionType.CLIENT)
    reply.receive_data(peer.take_output())
    (event,) = list(reply.events())
    assert isinstance(event, CloseConnection)
    assert (event.code, event.reason) == (1009, f"message over {limit} bytes")


@pytest.mark.parametrize(
    "make",
    [
        lambda n: "a" * n,
        lambda n: b"\x00" * n,
        lambda n: "é" * (n // 2),  # counted in UTF-8 bytes, not characters
    ],
)
@pytest.mark.parametrize("limit", [1000, LIMIT])  # fast path, and wsproto's (8-byte length)
def test_a_whole_message_at_the_limit_passes_and_one_byte_more_is_refused(
    make: Callable[[int], str | bytes], limit: int
) -> None:
    at = make(limit)
    peer = WsPeer(b"", max_message=limit)
    assert peer.feed(_frames(at, at)) == [at, at]
    assert peer.error is None and peer.take_output() == b""
    over = at + "b" if isinstance(at, str) else at + b"b"
    peer = WsPeer(b"", max_message=limit)
    assert peer.feed(_frames(over)) == []
    _refused(peer, limit)
    # nothing is taken after the refusal, and the peer's close behind it completes the close
    assert peer.feed(_frames(at) + CLOSE) == []
    assert peer.done and peer.close_code == 1009
    # the same with a message before, the oversized one, the next one and the close in one read
    peer = WsPeer(b"", max_message=limit)
    assert peer.feed(_frames(at, over, at) + CLOSE) == [at]
    assert peer.error == (1009, f"message over {limit} bytes")
    assert peer.done and peer.close_code == 1009


def test_multibyte_text_within_the_limit_in_characters_but_not_in_bytes() -> None:
    peer = WsPeer(b"", max_message=LIMIT)
    text = "€" * (LIMIT // 3 + 1)  # 3 bytes each: over the limit, characters far below it
    assert peer.feed(_frames(text)) == []
    _refused(peer, LIMIT)


def test_fragmented_message_at_the_limit_passes_and_one_byte_more_is_refused() -> None:
    client = Connection(ConnectionType.CLIENT)
    parts = b"".join(
        client.send(BytesMessage(data=b"x" * 250, message_finished=i == 3)) for i in range(4)
    )
    peer = WsPeer(b"", max_message=1000)
    assert peer.feed(bytes(parts)) == [b"x" * 1000]
    assert peer.feed(bytes(parts)) == [b"x" * 1000]  # the count starts again at 0
    assert peer.error is None
    peer = WsPeer(b"", max_message=999)
    assert peer.feed(bytes(parts) + CLOSE) == []  # the close behind it is still read
    assert peer.error == (1009, "message over 999 bytes")
    assert peer.done and peer.close_code == 1009


def test_twilios_frames_never_reach_wsproto(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fast path is the server's per-call CPU budget: small masked text and binary frames,
    # up to and including the limit, one or two length bytes, are decoded without wsproto.
    seen: list[bytes] = []
    real = Connection.receive_data

    def receive_data(self: Connection, data: bytes | None) -> None:
        if data:  # (a new Connection passes its empty trailing data)
            seen.append(data)
        real(self, data)

    monkeypatch.setattr(Connection, "receive_data", receive_data)
    messages: list[str | bytes] = ["x", "y" * 125, "z" * 126, b"\x01" * 300, "w" * 1000]
    peer = WsPeer(b"", max_message=1000)
    stream = _frames(*messages)
    assert peer.feed(stream[:3]) == []  # a partial header waits for the rest
    assert peer.feed(stream[3:]) == messages
    assert seen == []
    assert peer.feed(_frames("v" * 1001)) == []  # over the limit: wsproto refuses it
    assert seen and peer.error is not None


@pytest.mark.parametrize(
    ("size", "header"), [(124, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)]
)
def test_encoders_use_the_shortest_length_field(size: int, header: int) -> None:
    text = encode_text_frame("t" * size)
    assert len(text) == header + size and text[0] == 0x81
    server = Connection(ConnectionType.SERVER)
    for opcode, event_type in ((1, TextMessage), (2, BytesMessage)):
        frame = encode_client_frame(opcode, b"t" * size, b"\x01\x02\x03\x04")
        assert len(frame) == header + 4 + size and frame[0] == 0x80 | opcode
        server.receive_data(frame)
        events: list[Event] = list(server.events())
        assert [type(e) for e in events] == [event_type]
        data = events[0].data  # type: ignore[attr-defined]
        assert data == ("t" * size if opcode == 1 else b"t" * size)
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(text)
    (event,) = list(client.events())
    assert isinstance(event, TextMessage) and event.data == "t" * size


def test_mask_pool_cuts_keys_from_one_read_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int] = []

    def urandom(n: int) -> bytes:
        reads.append(n)
        return bytes((len(reads) * 16 + i) % 256 for i in range(n))

    monkeypatch.setattr(os, "urandom", urandom)  # what server.ws calls
    pool = MaskPool(batch=2)
    keys = [pool.take() for _ in range(5)]
    assert reads == [8, 8, 8]
    first, second, third = (urandom_bytes(16 * k, 8) for k in (1, 2, 3))
    assert keys == [first[:4], first[4:], second[:4], second[4:], third[:4]]
    pool.reset()  # a forked child: a fresh read, never the parent's keys
    assert pool.take() == urandom_bytes(16 * 4, 4) and reads == [8, 8, 8, 8]
    MaskPool().take()
    assert reads[-1] == 4 * 1024


def urandom_bytes(seed: int, n: int) -> bytes:
    return bytes((seed + i) % 256 for i in range(n))


def test_wsproto_is_given_whole_frames_and_the_fast_path_resumes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Control frames and fragments go to wsproto one whole frame at a time (so it never holds
    # a partial frame); the next simple frame is decoded on the fast path again.
    seen: list[bytes] = []
    real = Connection.receive_data

    def receive_data(self: Connection, data: bytes | None) -> None:
        if data:
            seen.append(bytes(data))
        real(self, data)

    client = Connection(ConnectionType.CLIENT)
    frames = [
        bytes(client.send(Ping(payload=b"p" * 10))),
        bytes(client.send(TextMessage(data="a" * 200, message_finished=False))),
        bytes(client.send(Ping(payload=b""))),
        bytes(client.send(TextMessage(data="b" * 3, message_finished=True))),
        bytes(client.send(Pong(payload=b"q"))),
    ]
    simple = bytes(client.send(TextMessage(data="c" * 130)))
    monkeypatch.setattr(Connection, "receive_data", receive_data)
    peer = WsPeer(b"", max_message=1000)
    assert peer.feed(b"".join(frames) + simple) == ["a" * 200 + "bbb", "c" * 130]
    assert seen == frames
    close = bytes(client.send(CloseConnection(code=1000, reason="bye")))
    assert peer.feed(close + simple) == []  # nothing after the close
    assert seen == [*frames, close]
    assert (peer.close_code, peer.close_reason, peer.remote_closed) == (1000, "bye", True)
