"""A lean load generator for whole-call benchmarks: N Twilio callers and one agent server.

The `websockets`-based peers in ``peers`` cost more CPU per call than the server they
would load, so one core of them cannot drive 100 real-time calls. This module speaks the same wire
protocols with hand-rolled RFC 6455 framing (:mod:`peers.frames`) on asyncio Protocols, one
shared clock per side, and pre-built messages, so that the load generator costs far less than the
server it loads.

Every caller frame and every agent chunk carries a tag (a magic prefix and a global id) at
the start of its audio, so latency is measured end to end in this one process:
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

from peers import twilio_messages
from peers.frames import FrameReader, accept_key, client_frame, server_frame

MAGIC = b"\xa5\x5a"
FRAME = 160  # 20 ms of mu-law
AGENT_CHUNK = 480  # 60 ms of mu-law
FILLER = b"\x7f" * AGENT_CHUNK
_CALLER_ID = re.compile(rb"bench-(\d+)")
PHASES = 10  # callers (and agent sessions) are spread over this many phases of a period


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

    def reset_window(self) -> None:
        self.barge_ins_sent = 0
        self.inbound_ms.clear()
        self.outbound_ms.clear()
        self.barge_in_ms.clear()
        self.tick_lateness_ms.clear()


class LeanCaller(asyncio.Protocol):
    """One simulated Twilio media stream, pre-serialised (``peers.caller.TwilioCaller`` is the
    full caller; on websockets it costs more CPU per call than the bridge it would load)."""

    def __init__(self, bench: Load, index: int, path: str) -> None:
        self.bench = bench
        self.index = index
        self.path = path
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.closed = asyncio.get_running_loop().create_future()
        self.reader = FrameReader()
        self.head = bytearray()
        self.sid = f"MZ{index:032x}"
        self.sequence = 1
        self.frames = 0
        self.media_parts = twilio_messages.media_template(self.sid)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(self.index.to_bytes(16, "big")).decode()
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        transport.write(request.encode())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if not self.open:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.head.startswith(b"HTTP/1.1 101"):
                self.bench.errors.append(f"caller {self.index}: {bytes(self.head[:40])!r}")
                assert self.transport is not None
                self.transport.close()
                return
            rest = bytes(self.head[end + 4 :])
            self.open = True
            self._start()
            data = rest
        bench = self.bench
        stats = bench.stats
        for opcode, payload in self.reader.feed(data):
            if opcode != 0x1:
                if opcode == 0x8:  # close: answer it
                    assert self.transport is not None
                    self.transport.write(client_frame(payload[:2], 0x8))
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
                message = json.loads(payload)
                echo = {"event": "mark", "sequenceNumber": self._sequence(), "streamSid": self.sid}
                echo["mark"] = message["mark"]
                assert self.transport is not None
                self.transport.write(client_frame(json.dumps(echo).encode()))
            elif b'"event":"clear"' in payload:
                sent = stats.uss_sent.pop(self.index, None)
                if sent is not None and stats.recording:
                    stats.barge_in_ms.append((time.perf_counter() - sent) * 1000)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if not self.closed.done():
            self.closed.set_result(None)

    def _sequence(self) -> str:
        self.sequence += 1
        return str(self.sequence)

    def _start(self) -> None:
        assert self.transport is not None
        start = twilio_messages.start(
            self.sid, f"CA{self.index:032x}", "AC" + "0" * 32, {"From": f"bench-{self.index}"}
        )
        self.transport.write(
            client_frame(twilio_messages.connected().encode()) + client_frame(start.encode())
        )

    def send_frame(self, frame_id: int, now: float) -> None:
        """One 20 ms media frame, tagged with ``frame_id``."""
        transport = self.transport
        if not self.open or transport is None or transport.is_closing():
            return
        audio = MAGIC + frame_id.to_bytes(4, "big") + FILLER[: FRAME - 6]
        self.frames += 1
        prefix, after_sequence, after_chunk, after_timestamp, suffix = self.media_parts
        message = b"".join(
            (
                prefix,
                self._sequence().encode(),
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
        self.bench.stats.caller_sent[frame_id] = now

    def hang_up(self) -> None:
        if self.open and self.transport is not None:
            stop = {
                "event": "stop",
                "sequenceNumber": self._sequence(),
                "streamSid": self.sid,
                "stop": {"accountSid": "AC" + "0" * 32, "callSid": f"CA{self.index:032x}"},
            }
            self.transport.write(client_frame(json.dumps(stop).encode()))


class LeanAgent(asyncio.Protocol):
    """One agent connection from the bridge: Welcome, SettingsApplied, then tagged speech
    (``peers.agent.LocalAgent`` is the full agent; this is its cheapest subset, for load)."""

    def __init__(self, bench: Load) -> None:
        self.bench = bench
        self.transport: asyncio.Transport | None = None
        self.reader = FrameReader()
        self.head = bytearray()
        self.open = False
        self.caller: int | None = None
        self.ready = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.bench.agent_sessions.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.bench.agent_sessions.discard(self)
        self.ready = False

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if not self.open:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            match = re.search(rb"(?i)sec-websocket-key:\s*(\S+)", bytes(self.head[:end]))
            if match is None:
                self.transport.close()
                return
            accept = accept_key(match.group(1))
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: "
                + accept
                + b"\r\n\r\n"
                + server_frame(b'{"type":"Welcome","request_id":"bench"}')
            )
            self.open = True
            data = bytes(self.head[end + 4 :])
        stats = self.bench.stats
        for opcode, payload in self.reader.feed(data):
            if opcode == 0x2:
                now = time.perf_counter()
                for offset in range(0, len(payload) - 5, FRAME):
                    if payload[offset : offset + 2] == MAGIC:
                        frame_id = int.from_bytes(payload[offset + 2 : offset + 6], "big")
                        stats.agent_received.add(frame_id)
                        if stats.recording:
                            stats.inbound_ms.append((now - stats.caller_sent[frame_id]) * 1000)
            elif opcode == 0x1:
                if (
                    payload.startswith(b'{"type":"Settings"')
                    or b'"type": "Settings"' in payload[:40]
                ):
                    match = _CALLER_ID.search(payload)
                    self.caller = int(match.group(1)) if match else None
                    self.transport.write(server_frame(b'{"type":"SettingsApplied"}'))
                    self.ready = True
            elif opcode == 0x9:  # ping
                self.transport.write(server_frame(payload, 0xA))
            elif opcode == 0x8:
                self.transport.write(server_frame(payload[:2], 0x8))
                self.transport.close()

    def speak(self, chunk_id: int, now: float) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(server_frame(MAGIC + chunk_id.to_bytes(4, "big") + FILLER[6:], 0x2))
        self.bench.stats.agent_sent[chunk_id] = now

    def barge_in(self, now: float) -> None:
        if self.transport is not None and self.caller is not None:
            stats = self.bench.stats
            stats.uss_sent[self.caller] = now
            if stats.recording:
                stats.barge_ins_sent += 1
            self.transport.write(server_frame(b'{"type":"UserStartedSpeaking"}'))


class Load:
    """The callers, the agent server and their two shared clocks."""

    def __init__(self, bridge_port: int, barge_in_every: float = 5.0) -> None:
        self.loop = asyncio.get_running_loop()
        self.bridge_port = bridge_port
        self.barge_in_every = barge_in_every
        self.stats = Stats()
        self.callers: list[LeanCaller] = []
        self.agent_sessions: set[LeanAgent] = set()
        self.errors: list[str] = []
        self.server: asyncio.Server | None = None
        self._next_frame_id = 0
        self._next_chunk_id = 1 << 30
        self._caller_tick: asyncio.TimerHandle | None = None
        self._agent_tick: asyncio.TimerHandle | None = None
        self._running = False

    async def start_agent(self) -> int:
        self.server = await self.loop.create_server(lambda: LeanAgent(self), "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def add_callers(self, count: int, over: float) -> None:
        for _ in range(count):
            index = len(self.callers)
            _, caller = await self.loop.create_connection(
                lambda i=index: LeanCaller(self, i, "/media-stream"), "127.0.0.1", self.bridge_port
            )
            self.callers.append(caller)
            await asyncio.sleep(over / max(1, count))

    def start_clocks(self) -> None:
        self._running = True
        origin = self.loop.time()
        self._tick_callers(origin, 0)
        self._tick_agent(origin, 0)

    def stop_clocks(self) -> None:
        self._running = False
        for handle in (self._caller_tick, self._agent_tick):
            if handle is not None:
                handle.cancel()

    def _tick_callers(self, origin: float, n: int) -> None:
        """Every 2 ms, one phase group of callers sends its 20 ms frame.

        Real calls are not in phase; sending every frame of every call at the same instant
        would measure the burst, not the bridge.
        """
        if not self._running:
            return
        step = 0.02 / PHASES
        if self.stats.recording:
            self.stats.tick_lateness_ms.append((self.loop.time() - (origin + n * step)) * 1000)
        now = time.perf_counter()
        for caller in self.callers[n % PHASES :: PHASES]:
            self._next_frame_id += 1
            caller.send_frame(self._next_frame_id, now)
        self._caller_tick = self.loop.call_at(
            origin + (n + 1) * step, self._tick_callers, origin, n + 1
        )

    def _tick_agent(self, origin: float, n: int) -> None:
        """Every 6 ms, one phase group of agent sessions sends its 60 ms chunk."""
        if not self._running:
            return
        now = time.perf_counter()
        phase = n % PHASES
        period_ticks = max(1, round(self.barge_in_every / 0.06))
        for session in list(self.agent_sessions):
            if not session.ready or session.caller is None or session.caller % PHASES != phase:
                continue
            self._next_chunk_id += 1
            session.speak(self._next_chunk_id, now)
            if (n // PHASES + session.caller * 7) % period_ticks == 0:
                session.barge_in(now)
        self._agent_tick = self.loop.call_at(
            origin + (n + 1) * 0.06 / PHASES, self._tick_agent, origin, n + 1
        )

    def ready_sessions(self) -> int:
        return sum(1 for s in self.agent_sessions if s.ready)

    async def hang_up(self, timeout: float = 5.0) -> None:
        for caller in self.callers:
            caller.hang_up()
        waits = [c.closed for c in self.callers]
        if waits:
            await asyncio.wait(waits, timeout=timeout)
        for caller in self.callers:
            if caller.transport is not None and not caller.transport.is_closing():
                caller.transport.close()
        self.callers.clear()

    async def close(self) -> None:
        self.stop_clocks()
        for session in list(self.agent_sessions):
            if session.transport is not None:
                session.transport.abort()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
