"""Support for the server tests: a server on 127.0.0.1:0, a websockets agent, raw HTTP.

The agent is the local peer (:mod:`peers.agent`) in passive mode; the caller is a plain
``websockets`` client. Neither shares code with ``server/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from peers.agent import AgentSession, LocalAgent
from server.app import Server
from server.cli import build_parser
from server.options import ServerOptions, make_options
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
    twilio_connected as twilio_connected,
)
from tests.helpers import (
    twilio_mark as twilio_mark,
)
from tests.helpers import (
    twilio_media as twilio_media,
)
from tests.helpers import (
    twilio_start as twilio_start,
)
from tests.helpers import (
    twilio_stop as twilio_stop,
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
    # it and reconnect; tests/server/test_agent_protocol.py runs those).
    base = ["--agent-retries", "0", "--preroll-policy", "keep"]
    args = build_parser().parse_args(
        ["--host", "127.0.0.1", "--port", "0", "--config", str(CONFIG), *base, *flags]
    )
    return make_options(args, environ)


@contextlib.asynccontextmanager
async def running_server(
    *flags: str,
    agent: LocalAgent | None = None,
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


def fake_agent(*, apply_delay: float = 0.0, apply: bool = True) -> LocalAgent:
    """The local agent in passive mode: it records every message the moment it arrives,
    answers Settings with SettingsApplied after ``apply_delay`` (never with ``apply=False``)
    and says nothing else unless a test sends it something.
    """
    return LocalAgent(passive=True, settings_delay=apply_delay, apply_settings=apply)


# ---------------------------------------------------------------------- the caller


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
    server: Server, agent: LocalAgent, **kwargs: Any
) -> tuple[ClientConnection, AgentSession]:
    """A caller that sent ``start``, and its agent leg once ``SettingsApplied`` went out."""
    ws = await caller(server, **kwargs)
    await ws.send(twilio_start())
    session = await agent.session()
    await until(lambda: session.applied_at is not None)
    return ws, session


async def recv_json(ws: ClientConnection, timeout: float = 2.0) -> dict[str, Any]:
    message = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(message, str), "Twilio messages must be text frames"
    data: dict[str, Any] = json.loads(message)
    return data


async def closed_within(ws: Any, timeout: float) -> float:
    """Read until the caller's WebSocket is closed; return how long it took."""
    t0 = time.monotonic()
    try:
        while True:
            await asyncio.wait_for(ws.recv(), max(0.01, timeout - (time.monotonic() - t0)))
    except ConnectionClosed:
        return time.monotonic() - t0


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


@contextlib.asynccontextmanager
async def sent(port: int, raw: bytes) -> AsyncIterator[asyncio.StreamReader]:
    """A connection to the server on 127.0.0.1 that has sent ``raw``, closed on leaving."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        yield reader
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def http(port: int, raw: bytes, timeout: float = 3.0) -> HttpResult:
    """Send raw bytes, read until the server closes (or a full response), parse it."""
    async with sent(port, raw) as reader:
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


async def exchange(port: int, raw: bytes, timeout: float = 3.0) -> bytes:
    """Send ``raw`` and return every byte the server sent until it closed the connection."""
    async with sent(port, raw) as reader:
        data = b""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"the server did not close within {timeout}s: {data!r}")
            chunk = await asyncio.wait_for(reader.read(65536), remaining)
            if not chunk:
                return data
            data += chunk


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


def post_form(path: str, form: str, host: str = "bridge.example.com", extra: str = "") -> bytes:
    body = form.encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (for flags such as --public-url)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
