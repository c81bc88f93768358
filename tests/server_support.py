"""Support for the server tests: a server on 127.0.0.1:0, a websockets agent, raw HTTP.

The peers here are plain ``websockets`` clients and servers written for the tests; they share
no code with ``server/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

from server.app import Server
from server.cli import build_parser
from server.settings import ServerOptions, make_options
from server.tools import ToolRegistry
from tests.helpers import (
    CALL_SID as CALL_SID,
)
from tests.helpers import (
    SETTINGS as SETTINGS,
)
from tests.helpers import (
    STREAM_SID as STREAM_SID,
)
from tests.helpers import (
    twilio_connected,
    twilio_mark,
    twilio_media,
    twilio_start,
    twilio_stop,
)

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config.json"
API_KEY = "test-key-0123456789"


def run(coro: Coroutine[Any, Any, Any], timeout: float = 30.0, loop: str | None = None) -> Any:
    """Run one async test body with an overall bound (on uvloop if SERVER_TEST_LOOP=uvloop)."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    if (loop or os.environ.get("SERVER_TEST_LOOP")) == "uvloop":
        import uvloop

        return uvloop.run(bounded())
    return asyncio.run(bounded())


def options(*flags: str, env: dict[str, str] | None = None) -> ServerOptions:
    environ = {"DEEPGRAM_API_KEY": API_KEY}
    environ.update(env or {})
    # The suite's older server tests check the transport and the end of a call on a failure:
    # they keep the whole pre-roll and do not reconnect unless they say so (the defaults drop
    # it and reconnect; tests/test_agent_protocol_server.py runs those).
    base = ["--agent-retries", "0", "--preroll-policy", "keep"]
    args = build_parser().parse_args(
        ["--host", "127.0.0.1", "--port", "0", "--config", str(CONFIG), *base, *flags]
    )
    return make_options(args, environ)


@contextlib.asynccontextmanager
async def running_server(
    *flags: str,
    agent: FakeAgent | None = None,
    env: dict[str, str] | None = None,
    tools: ToolRegistry | None = None,
    grace: float = 0.0,
) -> AsyncIterator[Server]:
    if agent is not None:
        flags = ("--agent-url", agent.url, *flags)
    server = Server(options(*flags, env=env), tools)
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(grace)


async def until(predicate: Callable[[], bool], timeout: float = 3.0, what: str = "") -> float:
    """Wait until ``predicate()``; return the time it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.002)
    return time.monotonic() - start


# ---------------------------------------------------------------------- the agent


@dataclass
class AgentSession:
    ws: ServerConnection
    headers: dict[str, str]
    path: str
    texts: list[dict[str, Any]] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)
    audio_before_applied: int = 0
    applied_at: float | None = None
    first_audio_at: float | None = None
    order: list[str] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None
    closed_at: float | None = None

    async def send(self, message: str | bytes | dict[str, Any]) -> None:
        if isinstance(message, dict):
            message = json.dumps(message)
        await self.ws.send(message)

    def types(self) -> list[str]:
        return [t.get("type", "?") for t in self.texts]


class FakeAgent:
    """A websockets server that speaks enough of the Voice Agent protocol for the tests."""

    def __init__(self, *, apply_delay: float = 0.0, apply: bool = True) -> None:
        self.apply_delay = apply_delay
        self.apply = apply
        self.sessions: list[AgentSession] = []
        self.port = 0
        self._server: Any = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/agent/converse"

    async def __aenter__(self) -> FakeAgent:
        self._server = await serve(self._handle, "127.0.0.1", 0, compression=None)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    @property
    def open_connections(self) -> int:
        return sum(1 for s in self.sessions if not s.closed.is_set())

    async def session(self, index: int = 0, timeout: float = 3.0) -> AgentSession:
        await until(lambda: len(self.sessions) > index, timeout, "an agent connection")
        return self.sessions[index]

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        session = AgentSession(ws, dict(ws.request.headers.raw_items()), ws.request.path)
        self.sessions.append(session)
        try:
            await ws.send(json.dumps({"type": "Welcome", "request_id": "req-1"}))
            async for message in ws:
                if isinstance(message, str):
                    data = json.loads(message)
                    session.texts.append(data)
                    session.order.append(data.get("type", "?"))
                    if data.get("type") == "Settings" and self.apply:
                        if self.apply_delay:
                            await asyncio.sleep(self.apply_delay)
                        session.applied_at = time.monotonic()
                        await ws.send(json.dumps({"type": "SettingsApplied"}))
                else:
                    if session.applied_at is None:
                        session.audio_before_applied += len(message)
                    if session.first_audio_at is None:
                        session.first_audio_at = time.monotonic()
                    session.audio += message
                    if session.order[-1:] != ["audio"]:
                        session.order.append("audio")
        except Exception:
            pass
        finally:
            session.close_code = ws.close_code
            session.closed_at = time.monotonic()
            session.closed.set()


# ---------------------------------------------------------------------- the caller


# Twilio's messages, as the core's tests build them.
connected = twilio_connected
start = twilio_start
media = twilio_media
mark = twilio_mark
stop = twilio_stop


def frame(i: int) -> bytes:
    """160 distinct-ish bytes of 'audio' for frame ``i``."""
    return bytes((i * 7 + k) % 256 for k in range(160))


async def caller(
    server: Server, headers: dict[str, str] | None = None, **kwargs: Any
) -> ClientConnection:
    return await connect(
        f"ws://127.0.0.1:{server.port}/media-stream",
        additional_headers=headers or {},
        compression=None,
        open_timeout=3,
        close_timeout=2,
        **kwargs,
    )


async def ready_call(
    server: Server, agent: FakeAgent, **kwargs: Any
) -> tuple[ClientConnection, AgentSession]:
    """A caller that sent ``start``, and its agent leg once ``SettingsApplied`` went out."""
    ws = await caller(server, **kwargs)
    await ws.send(start())
    session = await agent.session()
    await until(lambda: session.applied_at is not None)
    return ws, session


async def recv_json(ws: ClientConnection, timeout: float = 2.0) -> dict[str, Any]:
    message = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(message, str), "Twilio messages must be text frames"
    data: dict[str, Any] = json.loads(message)
    return data


async def recv_until(
    ws: ClientConnection, event: str, timeout: float = 2.0
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Receive until a message with ``event``; return it and everything before it."""
    before: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        message = await recv_json(ws, max(0.01, deadline - time.monotonic()))
        if message.get("event") == event:
            return message, before
        before.append(message)


# ---------------------------------------------------------------------- raw HTTP


@dataclass
class HttpResult:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


async def http(port: int, raw: bytes, timeout: float = 3.0) -> HttpResult:
    """Send raw bytes, read until the server closes (or a full response), parse it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        data = b""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                chunk = await asyncio.wait_for(reader.read(65536), remaining)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
            result = _parse(data)
            if result is not None:
                return result
        result = _parse(data)
        if result is None:
            raise AssertionError(f"no complete HTTP response: {data[:200]!r}")
        return result
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _parse(data: bytes) -> HttpResult | None:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if len(body) < length:
        return None
    return HttpResult(status, headers, body[:length])


def get(path: str, host: str = "bridge.example.com", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def post_form(
    path: str, form: str, host: str = "bridge.example.com", extra: str = ""
) -> bytes:
    body = form.encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body
