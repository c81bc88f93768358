"""WsPeer in memory: the same results however the bytes are split (h11's afl-server idea)."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    TextMessage,
)

from server.ws import WsPeer, encode_text_frame


def _client_stream() -> tuple[bytes, list[str | bytes]]:
    client = Connection(ConnectionType.CLIENT)
    out = b""
    expected: list[str | bytes] = []
    for i in range(5):
        payload = "A" * (100 + 60 * i)
        text = f'{{"event":"media","n":{i},"payload":"{payload}"}}'
        out += client.send(TextMessage(data=text))
        expected.append(text)
    out += client.send(Ping(payload=b"p1"))
    out += client.send(BytesMessage(data=b"\x00\x01" * 50))
    expected.append(b"\x00\x01" * 50)
    out += client.send(TextMessage(data="héllo ", message_finished=False))
    out += client.send(Ping(payload=b"p2"))
    out += client.send(TextMessage(data="wörld", message_finished=True))
    expected.append("héllo wörld")
    big = "B" * 3000  # two-byte length
    out += client.send(TextMessage(data=big))
    expected.append(big)
    out += client.send(CloseConnection(code=1000, reason="bye"))
    return bytes(out), expected


STREAM, EXPECTED = _client_stream()


def _run(chunks: list[bytes]) -> tuple[list[str | bytes], list[Event], WsPeer]:
    peer = WsPeer(b"", max_message=65536)
    messages: list[str | bytes] = []
    out = b""
    for chunk in chunks:
        messages.extend(peer.feed(chunk))
        out += peer.take_output()
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(out)
    return messages, list(client.events()), peer


def _check(chunks: list[bytes]) -> None:
    messages, replies, peer = _run(chunks)
    assert messages == EXPECTED
    assert [type(e) for e in replies] == [Pong, Pong, CloseConnection]
    assert peer.remote_closed and peer.close_code == 1000 and peer.done


def test_whole() -> None:
    _check([STREAM])


def test_one_byte_at_a_time() -> None:
    _check([STREAM[i : i + 1] for i in range(len(STREAM))])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=20))
def test_random_splits(cuts: list[int]) -> None:
    points = [0, *sorted(set(cuts)), len(STREAM)]
    _check([STREAM[a:b] for a, b in itertools.pairwise(points)])


def test_trailing_data_is_processed_first() -> None:
    client = Connection(ConnectionType.CLIENT)
    first = client.send(TextMessage(data="one"))
    second = client.send(TextMessage(data="two"))
    peer = WsPeer(first + second[:3])
    assert peer.feed(b"") == ["one"]
    assert peer.feed(second[3:]) == ["two"]


def test_oversized_single_frame_refused_with_1009_without_buffering() -> None:
    client = Connection(ConnectionType.CLIENT)
    frame = bytes(client.send(TextMessage(data="x" * (10 * 1024 * 1024))))
    peer = WsPeer(b"", max_message=65536)
    # only the first 64 KiB + a bit arrive: the refusal must not wait for the rest
    assert peer.feed(frame[: 70 * 1024]) == []
    assert peer.error is not None and peer.error[0] == 1009
    reply = Connection(ConnectionType.CLIENT)
    reply.receive_data(peer.take_output())
    events = list(reply.events())
    assert isinstance(events[0], CloseConnection) and events[0].code == 1009
    # the rest streams through and is dropped; nothing large is held
    for i in range(70 * 1024, len(frame), 256 * 1024):
        assert peer.feed(frame[i : i + 256 * 1024]) == []
        assert len(peer.conn._proto._frame_decoder.buffer) <= 256 * 1024  # type: ignore[attr-defined]
    peer.feed(bytes(client.send(CloseConnection(code=1009))))
    assert peer.done


def test_oversized_fragmented_message_refused() -> None:
    client = Connection(ConnectionType.CLIENT)
    peer = WsPeer(b"", max_message=1000)
    data = b""
    for _ in range(5):
        data += client.send(TextMessage(data="y" * 300, message_finished=False))
    assert peer.feed(bytes(data)) == []
    assert peer.error is not None and peer.error[0] == 1009


def test_malformed_frames_fail_with_wsproto_codes() -> None:
    # unmasked frame from a client: protocol error 1002
    peer = WsPeer(b"")
    assert peer.feed(encode_text_frame("hi")) == []
    assert peer.error is not None and peer.error[0] == 1002 and peer.remote_closed
    # invalid UTF-8 in a text frame: 1007
    client = Connection(ConnectionType.CLIENT)
    frame = bytearray(client.send(BytesMessage(data=b"\xff\xfe")))
    frame[0] = 0x81  # claim it is text
    peer = WsPeer(b"")
    assert peer.feed(bytes(frame)) == []
    assert peer.error is not None and peer.error[0] == 1007


def test_text_frames_sent_are_single_unfragmented_frames() -> None:
    client = Connection(ConnectionType.CLIENT)
    for text in ("x", "y" * 200, "z" * 70000):
        client.receive_data(encode_text_frame(text))
        events = list(client.events())
        assert len(events) == 1
        event = events[0]
        assert isinstance(event, TextMessage) and event.data == text
        assert event.frame_finished and event.message_finished
