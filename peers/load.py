"""Many calls from one process: a lean Twilio caller and a lean agent, for load.

:class:`~peers.caller.TwilioCaller` and :class:`~peers.agent.LocalAgent` run on ``websockets``
and cost more CPU per call than the bridge they would load, so one core of them cannot drive 100
real-time calls. These two speak the same wire protocols with hand-rolled RFC 6455 framing
(:mod:`peers.frames`) on asyncio Protocols, with Twilio's messages from
:mod:`peers.twilio_messages`, and leave the clock to the caller of :meth:`LeanCaller.send_frame`
and :meth:`LeanAgent.speak`.

Every caller frame and every agent chunk carries a tag (:data:`MAGIC` and a global id) at the
start of its audio, so latency is measured end to end in this one process, into :class:`Stats`:
caller frame -> agent, agent chunk -> caller, and ``UserStartedSpeaking`` -> ``clear``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from binascii import a2b_base64
from dataclasses import dataclass, field

from . import twilio_messages
from .frames import (
    BINARY,
    CLOSE,
    PING,
    PONG,
    TEXT,
    FrameReader,
    HeadBuffer,
    client_frame,
    server_frame,
    upgrade_request,
    upgrade_response,
)

MAGIC = b"\xa5\x5a"
FRAME = 160  # 20 ms of mu-law
AGENT_CHUNK = 480  # 60 ms of mu-law
FILLER = b"\x7f" * AGENT_CHUNK
ACCOUNT_SID = "AC" + "0" * 32
_CALLER_ID = re.compile(rb"bench-(\d+)")  # the caller's From parameter, in the agent's Settings


@dataclass
class Stats:
    """Everything measured; latencies are only kept while ``recording`` is on."""

    recording: bool = False
    caller_sent: dict[int, float] = field(default_factory=dict)
    agent_sent: dict[int, float] = field(default_factory=dict)
    caller_received: set[int] = field(default_factory=set)
    agent_received: set[int] = field(default_factory=set)
    inbound_ms: list[float] = field(default_factory=list)  # caller frame -> agent
    outbound_ms: list[float] = field(default_factory=list)  # agent chunk -> caller
    barge_in_ms: list[float] = field(default_factory=list)
    tick_lateness_ms: list[float] = field(default_factory=list)
    uss_sent: dict[int, float] = field(default_factory=dict)
    barge_ins_sent: int = 0  # while recording: how many clears the callers should see
    errors: list[str] = field(default_factory=list)  # upgrades the bridge refused

    def reset_window(self) -> None:
        self.barge_ins_sent = 0
        self.inbound_ms.clear()
        self.outbound_ms.clear()
        self.barge_in_ms.clear()
        self.tick_lateness_ms.clear()


class LeanCaller(asyncio.Protocol):
    """One Twilio media stream, pre-serialised: ``connected`` and ``start`` on the upgrade, a
    tagged ``media`` frame per :meth:`send_frame`, marks echoed at once, ``stop`` on hang-up."""

    def __init__(self, stats: Stats, index: int, path: str) -> None:
        self.stats = stats
        self.index = index
        self.path = path
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.closed = asyncio.get_running_loop().create_future()
        self.reader = FrameReader()
        self.head = HeadBuffer()
        self.sid = f"MZ{index:032x}"
        self.call_sid = f"CA{index:032x}"
        self.sequence = 1
        self.frames = 0
        self.media_parts = twilio_messages.media_template(self.sid)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(self.index.to_bytes(16, "big"))
        transport.write(upgrade_request(self.path, key, "127.0.0.1"))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        if not self.open:
            opened = self.head.feed(data)
            if opened is None:
                return
            head, data = opened
            if not head.startswith(b"HTTP/1.1 101"):
                self.stats.errors.append(f"caller {self.index}: {head[:40]!r}")
                transport.close()
                return
            self.open = True
            self._start()
        stats = self.stats
        for opcode, payload in self.reader.feed(data):
            if opcode != TEXT:
                if opcode == CLOSE:  # answer it
                    transport.write(client_frame(payload[:2], CLOSE))
                continue
            if b'"event":"media"' in payload:
                start = payload.index(b'"payload":"') + 11
                head = a2b_base64(payload[start : start + 8])
                if head[:2] == MAGIC:
                    chunk_id = int.from_bytes(head[2:6], "big")
                    stats.caller_received.add(chunk_id)
                    if stats.recording:
                        stats.outbound_ms.append(
                            (time.perf_counter() - stats.agent_sent[chunk_id]) * 1000
                        )
            elif b'"event":"mark"' in payload:
                name = json.loads(payload)["mark"]["name"]
                echo = twilio_messages.mark(name, self.sid, sequence=self._sequence())
                transport.write(client_frame(echo.encode()))
            elif b'"event":"clear"' in payload:
                sent = stats.uss_sent.pop(self.index, None)
                if sent is not None and stats.recording:
                    stats.barge_in_ms.append((time.perf_counter() - sent) * 1000)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if not self.closed.done():
            self.closed.set_result(None)

    def _sequence(self) -> int:
        self.sequence += 1
        return self.sequence

    def _start(self) -> None:
        assert self.transport is not None
        start = twilio_messages.start(
            self.sid, self.call_sid, ACCOUNT_SID, {"From": f"bench-{self.index}"}
        )
        self.transport.write(
            client_frame(twilio_messages.connected().encode()) + client_frame(start.encode())
        )

    def send_frame(self, frame_id: int, now: float) -> None:
        """One 20 ms media frame, tagged with ``frame_id`` and sent at ``now``."""
        transport = self.transport
        if not self.open or transport is None or transport.is_closing():
            return
        audio = MAGIC + frame_id.to_bytes(4, "big") + FILLER[: FRAME - 6]
        self.frames += 1
        prefix, after_sequence, after_chunk, after_timestamp, suffix = self.media_parts
        message = b"".join(
            (
                prefix,
                str(self._sequence()).encode(),
                after_sequence,
                str(self.frames).encode(),
                after_chunk,
                str(self.frames * 20).encode(),
                after_timestamp,
                base64.b64encode(audio),
                suffix,
            )
        )
        transport.write(client_frame(message))
        self.stats.caller_sent[frame_id] = now

    def hang_up(self) -> None:
        if self.open and self.transport is not None:
            stop = twilio_messages.stop(
                self.sid, self.call_sid, ACCOUNT_SID, sequence=self._sequence()
            )
            self.transport.write(client_frame(stop.encode()))


class LeanAgent(asyncio.Protocol):
    """One agent connection from the bridge: ``Welcome``, ``SettingsApplied``, then tagged
    speech per :meth:`speak` (the cheapest subset of :class:`~peers.agent.LocalAgent`).

    ``caller`` is the index of the :class:`LeanCaller` whose call this is, read from the
    ``bench-N`` parameter the bridge forwards in ``Settings``; ``sessions`` holds the open ones.
    """

    def __init__(self, stats: Stats, sessions: set[LeanAgent]) -> None:
        self.stats = stats
        self.sessions = sessions
        self.transport: asyncio.Transport | None = None
        self.reader = FrameReader()
        self.head = HeadBuffer()
        self.open = False
        self.caller: int | None = None
        self.ready = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sessions.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.sessions.discard(self)
        self.ready = False

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        if not self.open:
            opened = self.head.feed(data)
            if opened is None:
                return
            head, data = opened
            response = upgrade_response(head)
            if response is None:
                transport.close()
                return
            transport.write(response + server_frame(b'{"type":"Welcome","request_id":"bench"}'))
            self.open = True
        stats = self.stats
        for opcode, payload in self.reader.feed(data):
            if opcode == BINARY:
                now = time.perf_counter()
                for offset in range(0, len(payload) - 5, FRAME):
                    if payload[offset : offset + 2] == MAGIC:
                        frame_id = int.from_bytes(payload[offset + 2 : offset + 6], "big")
                        stats.agent_received.add(frame_id)
                        if stats.recording:
                            stats.inbound_ms.append((now - stats.caller_sent[frame_id]) * 1000)
            elif opcode == TEXT:
                if (
                    payload.startswith(b'{"type":"Settings"')
                    or b'"type": "Settings"' in payload[:40]
                ):
                    match = _CALLER_ID.search(payload)
                    self.caller = int(match.group(1)) if match else None
                    transport.write(server_frame(b'{"type":"SettingsApplied"}'))
                    self.ready = True
            elif opcode == PING:
                transport.write(server_frame(payload, PONG))
            elif opcode == CLOSE:
                transport.write(server_frame(payload[:2], CLOSE))
                transport.close()

    def speak(self, chunk_id: int, now: float) -> None:
        """One 60 ms chunk of agent audio, tagged with ``chunk_id`` and sent at ``now``."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(server_frame(MAGIC + chunk_id.to_bytes(4, "big") + FILLER[6:], BINARY))
        self.stats.agent_sent[chunk_id] = now

    def barge_in(self, now: float) -> None:
        """``UserStartedSpeaking``; the caller's next ``clear`` times it."""
        if self.transport is not None and self.caller is not None:
            stats = self.stats
            stats.uss_sent[self.caller] = now
            if stats.recording:
                stats.barge_ins_sent += 1
            self.transport.write(server_frame(b'{"type":"UserStartedSpeaking"}'))
