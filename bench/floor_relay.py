"""The least a Python bridge can do per frame, for ``bench_calls --floor``: not a product.

One asyncio protocol per leg, no WebSocket library, no JSON parser, no state machine, no
checks: each Twilio ``media`` frame's payload is base64-decoded and written to the agent as one
binary frame; each agent binary frame is base64-encoded into a ``media`` message; an agent
``UserStartedSpeaking`` becomes a ``clear``. It makes the same reads and writes as a bridge
(one of each per frame per leg), so its CPU is what the event loop, the kernel and the least
parsing cost on this machine, under the same load: the floor under any bridge in Python.

    python -m bench.floor_relay --port 5002 --agent-url ws://127.0.0.1:8765/v1/agent/converse
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
from binascii import a2b_base64, b2a_base64
from urllib.parse import urlsplit

from peers.frames import (
    BINARY,
    CLOSE,
    TEXT,
    FrameReader,
    HeadBuffer,
    client_frame,
    server_frame,
    upgrade_request,
    upgrade_response,
)

_STREAM_SID = re.compile(rb'"streamSid":"([^"]+)"')
_FROM = re.compile(rb'"From":"([^"]*)"')
_PAYLOAD = b'"payload":"'


class FloorRelay:
    def __init__(self, agent_host: str, agent_port: int, agent_path: str) -> None:
        self.agent = (agent_host, agent_port, agent_path)
        self.calls = 0


class TwilioSide(asyncio.Protocol):
    def __init__(self, relay: FloorRelay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.head = HeadBuffer()
        self.reader: FrameReader | None = None
        self.agent: AgentSide | None = None
        self.media = (b"", b"")
        self.opening: asyncio.Task[object] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        reader = self.reader
        if reader is None:
            opened = self.head.feed(data)
            if opened is None:
                return
            head, data = opened
            if head.startswith(b"GET /healthz"):
                body = b'{"calls":%d}\n' % self.relay.calls
                transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                    % (len(body), body)
                )
                transport.close()
                return
            response = upgrade_response(head)
            if response is None:
                transport.close()
                return
            transport.write(response)
            reader = self.reader = FrameReader()
            self.relay.calls += 1
        for opcode, payload in reader.feed(data):
            if opcode == TEXT:
                if b'"event":"media"' in payload:
                    start = payload.index(_PAYLOAD) + len(_PAYLOAD)
                    audio = a2b_base64(payload[start : payload.index(b'"', start)])
                    if self.agent is not None:
                        self.agent.send(client_frame(audio, BINARY))
                elif b'"event":"start"' in payload:
                    self._start(payload)
                elif b'"event":"stop"' in payload:
                    self._end()
            elif opcode == CLOSE:
                self._end()

    def _start(self, start: bytes) -> None:
        sid = _STREAM_SID.search(start)
        caller = _FROM.search(start)
        self.media = (
            b'{"event":"media","streamSid":"' + (sid.group(1) if sid else b"") + b'",'
            b'"media":{"payload":"',
            b'"}}',
        )
        settings = b'{"type":"Settings","tags":["' + (caller.group(1) if caller else b"") + b'"]}'
        host, port, path = self.relay.agent
        loop = asyncio.get_running_loop()
        agent = self.agent = AgentSide(self, upgrade_request(path, host=host), settings)
        self.opening = loop.create_task(loop.create_connection(lambda: agent, host, port))

    def send_media(self, audio: bytes) -> None:
        prefix, suffix = self.media
        self.write(server_frame(prefix + b2a_base64(audio, newline=False) + suffix))

    def write(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def _end(self) -> None:
        if self.agent is not None:
            self.agent.close()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(server_frame(b"\x03\xe8", CLOSE))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.reader is not None:
            self.relay.calls -= 1
            self.reader = None
        if self.agent is not None:
            self.agent.close()


class AgentSide(asyncio.Protocol):
    def __init__(self, twilio: TwilioSide, upgrade: bytes, settings: bytes) -> None:
        self.twilio = twilio
        self.upgrade = upgrade
        self.settings = settings
        self.transport: asyncio.Transport | None = None
        self.head = HeadBuffer()
        self.reader: FrameReader | None = None
        self.pending = [client_frame(settings)]  # until the handshake is done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.upgrade)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        if reader is None:
            opened = self.head.feed(data)
            if opened is None:
                return
            data = opened[1]
            reader = self.reader = FrameReader()
            self.transport.write(b"".join(self.pending))  # type: ignore[union-attr]
            self.pending = []
        twilio = self.twilio
        for opcode, payload in reader.feed(data):
            if opcode == BINARY:
                twilio.send_media(payload)
            elif opcode == TEXT and b"UserStartedSpeaking" in payload:
                stream = twilio.media[0].split(b'"streamSid":"')[1].split(b'"')[0]
                twilio.write(server_frame(b'{"event":"clear","streamSid":"' + stream + b'"}'))

    def send(self, frame: bytes) -> None:
        if self.reader is None:
            self.pending.append(frame)
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(b"\x03\xe8", CLOSE))
            self.transport.close()


async def main(host: str, port: int, agent_url: str) -> None:
    url = urlsplit(agent_url)
    relay = FloorRelay(url.hostname or "127.0.0.1", url.port or 80, url.path or "/")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: TwilioSide(relay), host, port)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5002)
    parser.add_argument("--agent-url", required=True)
    parser.add_argument("--config", help="ignored (bench_calls passes it to every bridge)")
    parser.add_argument("--buffer-ms", help="ignored: every frame is forwarded as it comes")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(args.host, args.port, args.agent_url))
    else:  # the loop the server uses by default
        uvloop.run(main(args.host, args.port, args.agent_url))
