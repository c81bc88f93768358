"""The agent leg's frame path (server/agent_leg.py): the same stream, split anywhere, gives the
same messages, the same frames sent back (pongs, closes) and the same close as websockets'
``ClientProtocol`` alone, fed one frame at a time; the common frames never reach it."""

from __future__ import annotations

import asyncio
import itertools
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from bench.bench_frames import accepted, connect_to
from server.agent_leg import AgentLeg

URL = "ws://agent.test/v1/agent/converse"
LIMIT = 4096  # the leg's max message size in these tests


def frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = False,
    form: int | None = None,  # force the 7-bit (0), 16-bit (126) or 64-bit (127) length form
) -> bytes:
    """One frame, as a server would send it (or, with ``masked``/``rsv``, as it must not)."""
    size = len(payload)
    if form is None:
        form = 0 if size < 126 else 126 if size < 65536 else 127
    mask_bit = 0x80 if masked else 0
    head = bytes(((0x80 if fin else 0) | rsv << 4 | opcode,))
    if form == 0:
        head += bytes((mask_bit | size,))
    elif form == 126:
        head += struct.pack("!BH", mask_bit | 126, size)
    else:
        head += struct.pack("!BQ", mask_bit | 127, size)
    if masked:
        key = b"\x37\xfa\x21\x3d"
        payload = bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))
        head += key
    return head + payload


def close_frame(code: int, reason: str = "") -> bytes:
    return frame(0x8, struct.pack("!H", code) + reason.encode())


class Recorder:
    """The call's side of the leg: what it was told, in order."""

    def __init__(self) -> None:
        self.messages: list[str | bytes] = []
        self.connected = 0
        self.closed: list[tuple[int | None, str, tuple[int, str] | None]] = []

    def agent_connected(self) -> None:
        self.connected += 1

    def agent_message(self, message: str | bytes) -> None:
        self.messages.append(message)

    def agent_closed(self, code: int | None, reason: str, failure: tuple[int, str] | None) -> None:
        self.closed.append((code, reason, failure))


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.aborted = False

    def write(self, data: Any) -> None:
        self.out += data

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.aborted

    def close(self) -> None:
        self.aborted = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0


async def open_leg(limit: int = LIMIT) -> tuple[AgentLeg, Transport, Recorder, bytes]:
    """A leg whose connection is a fake transport; returns it and the 101 it must be fed."""
    transport = Transport()
    connect_to(transport)
    call = Recorder()
    leg = AgentLeg(call, URL, "key", connect_timeout=5, max_message_bytes=limit, close_timeout=5)
    while not transport.out:
        await asyncio.sleep(0)
    response = accepted(bytes(transport.out))
    transport.out.clear()
    return leg, transport, call, response


def sent_frames(data: bytes) -> list[tuple[Opcode, bytes, bool]]:
    """What the client wrote, read back by websockets' own server-side parser."""
    server = ServerProtocol(max_size=None)
    server.state = State.OPEN
    server.parser = server.parse()
    next(server.parser)
    server.receive_data(data)
    return [
        (event.opcode, bytes(event.data), event.fin)
        for event in server.events_received()
        if isinstance(event, Frame)
    ]


def outcome(protocol: ClientProtocol) -> tuple[object, ...]:
    return (
        protocol.state,
        protocol.close_rcvd,
        protocol.close_sent,
        protocol.close_rcvd_then_sent,
    )


def reference(
    frames: list[bytes], eof: bool, limit: int = LIMIT
) -> tuple[list[str | bytes], list[tuple[Opcode, bytes, bool]], tuple[object, ...]]:
    """websockets' ClientProtocol alone, one frame per read; text must be UTF-8 (else 1007,
    and nothing after that is delivered); fragments are joined."""
    protocol = ClientProtocol(parse_uri(URL), max_size=limit)
    protocol.state = State.OPEN
    protocol.parser = protocol.parse()
    next(protocol.parser)
    messages: list[str | bytes] = []
    parts: list[bytes] = []
    kind = Opcode.CONT
    failed = False
    for data in frames:
        if protocol.state is State.CLOSED:
            break
        protocol.receive_data(data)
        for event in protocol.events_received():
            if failed or not isinstance(event, Frame) or event.opcode not in (0, 1, 2):
                continue
            if event.opcode is not Opcode.CONT:
                kind, parts = event.opcode, []
            parts.append(bytes(event.data))
            if not event.fin:
                continue
            whole = b"".join(parts)
            if kind is Opcode.BINARY:
                messages.append(whole)
                continue
            try:
                messages.append(whole.decode("utf-8"))
            except UnicodeDecodeError:
                protocol.fail(1007, "invalid UTF-8")
                failed = True
    if eof:
        protocol.receive_eof()
    out = b"".join(protocol.data_to_send())
    return messages, sent_frames(out), outcome(protocol)


def through_the_leg(
    frames: list[bytes], cuts: list[int], eof: bool, limit: int = LIMIT
) -> tuple[list[str | bytes], list[tuple[Opcode, bytes, bool]], tuple[object, ...], AgentLeg]:
    """The 101 and the frames as one byte stream, read in pieces cut at ``cuts``."""

    async def body() -> tuple[Any, ...]:
        leg, transport, call, handshake = await open_leg(limit)
        stream = handshake + b"".join(frames)
        edges = [0, *sorted(cut % (len(stream) + 1) for cut in cuts), len(stream)]
        for start, end in itertools.pairwise(edges):
            if start < end:
                leg.data_received(stream[start:end])
        if eof:
            leg.eof_received()
        await leg.task
        assert call.connected == 1
        assert leg.protocol is not None
        return call.messages, sent_frames(bytes(transport.out)), outcome(leg.protocol), leg

    return asyncio.run(body())  # type: ignore[no-any-return]


def same_as_websockets(
    frames: list[bytes], cuts: list[int], eof: bool = False, limit: int = LIMIT
) -> AgentLeg:
    *got, leg = through_the_leg(frames, cuts, eof, limit)
    assert tuple(got) == reference(frames, eof, limit)
    return leg


# ---------------------------------------------------------------- the frames of a stream

payloads = st.binary(max_size=1700)
texts = st.text(max_size=300).map(str.encode)
forms = st.sampled_from([None, 126, 127])
GOOD = st.one_of(
    st.builds(lambda p, f: frame(0x2, p, form=f), payloads, forms),
    st.builds(lambda p, f: frame(0x1, p, form=f), texts, forms),
    st.builds(lambda p: frame(0x2, p), st.binary(min_size=120, max_size=130)),
    st.builds(lambda p: frame(0x9, p), st.binary(max_size=20)),  # ping
    st.builds(lambda p: frame(0xA, p), st.binary(max_size=20)),  # pong
    st.builds(  # a fragmented text message with a ping in the middle
        lambda a, b, ping: (
            frame(0x1, a, fin=False) + (frame(0x9, b"p") if ping else b"") + frame(0x0, b, fin=True)
        ),
        texts,
        texts,
        st.booleans(),
    ),
    st.builds(
        lambda a, b, c: frame(0x2, a, fin=False) + frame(0x0, b, fin=False) + frame(0x0, c),
        payloads,
        payloads,
        payloads,
    ),
)
BAD = st.sampled_from(
    [
        frame(0x1, b"caf\xc3"),  # invalid UTF-8
        frame(0x1, b"\xff" * 300, form=127),
        frame(0x2, b"masked audio", masked=True),
        frame(0x2, b"x" * 200, rsv=4),  # RSV1 without an extension
        frame(0x1, b"{}", rsv=1),
        frame(0x2, b"y" * (LIMIT + 1)),  # oversized
        frame(0x2, b"", form=127)[:2] + struct.pack("!Q", 1 << 40),  # a huge length
        frame(0x3, b"reserved opcode"),
        frame(0x0, b"a continuation out of nowhere"),
        frame(0x1, b"a", fin=False) + frame(0x2, b"no continuation"),
        frame(0x9, b"p" * 126),  # a control frame over 125 bytes
        frame(0x9, b"p", fin=False),  # a fragmented control frame
        close_frame(1000, "bye"),
        close_frame(1011, "agent error"),
        frame(0x8, b""),
    ]
)
STREAMS = st.tuples(
    st.lists(GOOD, max_size=10), st.lists(BAD, max_size=1), st.lists(GOOD, max_size=4)
).map(lambda parts: [*parts[0], *parts[1], *parts[2]])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STREAMS, st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=8), st.booleans())
def test_any_stream_split_anywhere_is_what_websockets_alone_makes_of_it(
    frames: list[bytes], cuts: list[int], eof: bool
) -> None:
    same_as_websockets(frames, cuts, eof)


@settings(max_examples=60, deadline=None)
@given(st.lists(GOOD, min_size=1, max_size=8), st.integers(min_value=0, max_value=2000))
def test_a_stream_read_a_byte_at_a_time_is_the_same(frames: list[bytes], start: int) -> None:
    same_as_websockets(frames, list(range(start, start + 60)))  # 60 one-byte reads somewhere


# ---------------------------------------------------------------- the table


AUDIO = bytes(range(256)) * 3 + bytes(32)  # 800 bytes: 100 ms of mu-law


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([frame(0x2, AUDIO), frame(0x1, b"caf\xc3"), frame(0x2, AUDIO)], 1007),
        ([frame(0x2, AUDIO), frame(0x2, AUDIO, masked=True), frame(0x2, AUDIO)], 1002),
        ([frame(0x2, AUDIO), frame(0x2, b"z" * (LIMIT + 1)), frame(0x2, AUDIO)], 1009),
        ([frame(0x2, AUDIO), frame(0x2, AUDIO, rsv=4), frame(0x2, AUDIO)], 1002),
        ([frame(0x2, AUDIO), frame(0x1, b'{"type":"Welcome"}', rsv=4), frame(0x2, AUDIO)], 1002),
    ],
    ids=["invalid-utf8", "masked", "oversized", "rsv1", "rsv1-text"],
)
@pytest.mark.parametrize("cuts", [[], [1000], [805, 1700]], ids=["whole", "cut", "cuts"])
def test_a_broken_frame_fails_the_connection_as_before(
    frames: list[bytes], code: int, cuts: list[int]
) -> None:
    leg = same_as_websockets(frames, cuts)
    assert leg.protocol is not None and leg.protocol.close_sent is not None
    assert leg.protocol.close_sent.code == code
    assert leg.call.messages == [AUDIO]  # type: ignore[attr-defined]  # nothing after it
    leg.connection_lost(None)
    [(_, _, failure)] = leg.call.closed  # type: ignore[attr-defined]
    assert failure is not None and failure[0] == code


def test_a_ping_between_audio_frames_gets_its_pong_in_order() -> None:
    frames = [frame(0x2, AUDIO), frame(0x9, b"are you there"), frame(0x1, b'{"type":"x"}')]
    for cuts in ([], [820], [803, 804, 805]):
        messages, sent, state, _ = through_the_leg(frames, cuts, eof=False)
        assert messages == [AUDIO, '{"type":"x"}']
        assert sent == [(Opcode.PONG, b"are you there", True)]
        assert state[0] is State.OPEN


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
def test_every_length_form_up_to_the_limit(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    text = ("é" * (size // 2) + "a" * (size % 2)).encode()  # size bytes, two-byte characters
    frames = [frame(0x2, payload), frame(0x1, text), frame(0x2, b"tail", form=127)]
    leg = same_as_websockets(frames, [size // 2 + 130], limit=70000)
    assert leg.call.messages == [payload, text.decode(), b"tail"]  # type: ignore[attr-defined]


def test_the_agents_close_is_echoed_and_ends_the_frame_path() -> None:
    frames = [frame(0x2, AUDIO), close_frame(1000, "done"), frame(0x2, AUDIO)]
    leg = same_as_websockets(frames, [900], eof=True)
    assert leg.call.messages == [AUDIO]  # type: ignore[attr-defined]
    assert leg.protocol is not None and leg.protocol.close_rcvd_then_sent


def test_a_frame_cut_short_by_the_end_of_the_stream_is_lost_as_before() -> None:
    leg = same_as_websockets([frame(0x2, AUDIO), frame(0x2, AUDIO)[:500]], [], eof=True)
    leg.connection_lost(None)
    assert leg.call.closed == [(None, "", None)]  # type: ignore[attr-defined]  # 1006


def test_the_common_frames_never_reach_the_protocol_object() -> None:
    """The point of the frame path: audio and JSON frames are decoded by the leg itself."""

    async def body() -> None:
        leg, _, call, handshake = await open_leg()
        leg.data_received(handshake)
        assert leg.protocol is not None
        fed: list[bytes] = []
        receive = leg.protocol.receive_data
        leg.protocol.receive_data = lambda data: (fed.append(data), receive(data))[1]  # type: ignore[method-assign]
        stream = (frame(0x2, AUDIO) + frame(0x1, b'{"type":"AgentAudioDone"}')) * 50
        for start in range(0, len(stream), 1000):  # reads that cut frames
            leg.data_received(stream[start : start + 1000])
        assert len(call.messages) == 100 and fed == []
        leg.data_received(frame(0x9, b"ping") + frame(0x2, AUDIO))
        assert fed == [frame(0x9, b"ping")]  # the ping alone, and the audio after it not
        assert len(call.messages) == 101
        await leg.task

    asyncio.run(body())


def test_the_frame_path_is_on_wherever_the_handshake_response_is_cut() -> None:
    """The frame path starts after the 101's last byte, also when a read ends inside its
    closing CRLF CRLF (else every frame of the call would go to the slow parser)."""

    async def body(cut_from_end: int) -> None:
        leg, _, call, handshake = await open_leg()
        cut = len(handshake) - cut_from_end
        leg.data_received(handshake[:cut])
        leg.data_received(handshake[cut:] + frame(0x2, AUDIO))
        assert leg.protocol is not None
        fed: list[bytes] = []
        receive = leg.protocol.receive_data
        leg.protocol.receive_data = lambda data: (fed.append(data), receive(data))[1]  # type: ignore[method-assign]
        leg.data_received(frame(0x2, AUDIO))
        assert call.messages == [AUDIO, AUDIO] and fed == []
        await leg.task

    for cut_from_end in range(6):
        asyncio.run(body(cut_from_end))


def test_a_ping_cut_across_reads_is_finished_by_websockets_before_the_next_frame() -> None:
    async def body() -> None:
        leg, transport, call, handshake = await open_leg()
        leg.data_received(handshake)
        ping = frame(0x9, b"\x82\x05hello, are you there?")  # its payload looks like a frame
        stream = frame(0x2, AUDIO) + ping + frame(0x1, b'{"type":"x"}')
        cut = len(frame(0x2, AUDIO)) + 2  # where the ping's payload, a frame lookalike, begins
        leg.data_received(stream[:cut])
        leg.data_received(stream[cut:])
        assert call.messages == [AUDIO, '{"type":"x"}']
        assert sent_frames(bytes(transport.out)) == [
            (Opcode.PONG, b"\x82\x05hello, are you there?", True)
        ]
        await leg.task

    asyncio.run(body())


def test_a_fragmented_message_is_joined_by_the_slow_path_between_fast_frames() -> None:
    frames = [
        frame(0x2, AUDIO),
        frame(0x1, b'{"type":', fin=False),
        frame(0x9, b"p"),
        frame(0x0, b'"Welcome"}'),
        frame(0x2, AUDIO),
    ]
    leg = same_as_websockets(frames, [])
    assert leg.call.messages == [AUDIO, '{"type":"Welcome"}', AUDIO]  # type: ignore[attr-defined]
