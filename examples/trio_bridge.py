"""A third runtime for the same core: trio, with wsproto framing both WebSocket legs.

No asyncio and no ``websockets``: trio's sockets carry the bytes and ``wsproto`` (sans-I/O, like
the core) frames them, for Twilio's leg (server side) and the agent's (client side). Each call
is one nursery: the Twilio reader, the agent reader and a timer that sleeps until
``next_deadline()``. A ``trio.Lock`` serialises every input to the core with the execution of
the actions it returns, so actions go out in order.

    python examples/trio_bridge.py --port 5002 --agent-url ws://127.0.0.1:8765/v1/agent/converse

It has no HTTP webhook, signatures or metrics: see ``server/`` for the production driver.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import ssl
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from sansio import (
    Action,
    BridgeConfig,
    CallBridge,
    CallEnded,
    CancelTool,
    CloseAgent,
    CloseTwilio,
    Notice,
    OpenAgent,
    RunTool,
    SendAgentAudio,
    SendAgentText,
    SendTwilioText,
)

Tool = Callable[[Mapping[str, Any]], str]
_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class HandshakeFailed(Exception):
    """The peer did not complete the WebSocket opening handshake."""


class WsLeg:
    """One WebSocket over a trio stream: wsproto frames it, one lock orders the writes."""

    def __init__(self, stream: trio.abc.Stream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self.close_code: int | None = None
        self._send_lock = trio.Lock()
        self._text: list[str] = []  # a fragmented message so far
        self._data = bytearray()

    async def send(self, event: Event) -> None:
        async with self._send_lock:
            await self.stream.send_all(self.ws.send(event))

    async def handshake_event(self) -> Event:
        """The first event of the opening handshake (a Request, or the server's answer)."""
        while True:
            for event in self.ws.events():
                return event
            data = await self.stream.receive_some(65536)
            if not data:
                raise HandshakeFailed("connection closed during the handshake")
            self.ws.receive_data(bytes(data))

    async def next_message(self) -> str | bytes | None:
        """The next whole message, or None once the WebSocket (or its connection) is closed."""
        while True:
            for event in self.ws.events():
                if isinstance(event, TextMessage):
                    self._text.append(event.data)
                    if event.message_finished:
                        text, self._text = "".join(self._text), []
                        return text
                elif isinstance(event, BytesMessage):
                    self._data += event.data
                    if event.message_finished:
                        data = bytes(self._data)
                        self._data.clear()
                        return data
                elif isinstance(event, Ping):
                    await self.send(event.response())
                elif isinstance(event, CloseConnection):
                    self.close_code = event.code
                    if self.ws.state is ConnectionState.REMOTE_CLOSING:
                        await self.send(event.response())  # they closed first: answer
                    return None
            received = await self.stream.receive_some(65536)
            self.ws.receive_data(bytes(received) or None)  # b"": the TCP connection is gone

    async def close(self, code: int, reason: str, abort: bool) -> None:
        if not abort and self.ws.state is ConnectionState.OPEN:
            try:
                await self.send(CloseConnection(code, reason))
                return  # the reader ends when the close comes back
            except _BROKEN:
                pass
        await self.stream.aclose()


async def open_agent(url: str, api_key: str) -> WsLeg:
    """Open the agent WebSocket (``ws://`` or ``wss://``) with the Deepgram token header."""
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    host = parts.hostname or "localhost"
    port = parts.port or (443 if secure else 80)
    stream: trio.abc.Stream
    if secure:
        stream = await trio.open_ssl_over_tcp_stream(
            host, port, ssl_context=ssl.create_default_context()
        )
    else:
        stream = await trio.open_tcp_stream(host, port)
    leg = WsLeg(stream, WSConnection(ConnectionType.CLIENT))
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = [(b"authorization", f"Token {api_key}".encode())]
    try:
        await leg.send(Request(host=parts.netloc, target=target, extra_headers=headers))
        answer = await leg.handshake_event()
        if not isinstance(answer, AcceptConnection):
            status = answer.status_code if isinstance(answer, RejectConnection) else "?"
            raise HandshakeFailed(f"agent refused the WebSocket: HTTP {status}")
    except BaseException:
        await stream.aclose()
        raise
    return leg


class TrioCall:
    """Drives one CallBridge from three tasks: Twilio reader, agent reader, timer."""

    def __init__(
        self,
        twilio: WsLeg,
        config: BridgeConfig,
        agent_url: str,
        api_key: str,
        tools: Mapping[str, Tool],
        on_notice: Callable[[Notice], None],
    ) -> None:
        self.twilio = twilio
        self.agent_url = agent_url
        self.api_key = api_key
        self.tools = tools
        self.on_notice = on_notice
        self.agent: WsLeg | None = None
        self.agent_scope = trio.CancelScope()
        self.lock = trio.Lock()
        self.moved = trio.Event()  # set after every pump: the deadline may have moved
        self.core = CallBridge(config, now=trio.current_time())
        self._nursery: trio.Nursery | None = None

    async def run(self) -> None:
        """Serve the call until both legs are closed."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._timer)
            await self._twilio_reader()

    async def _feed(self, method: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Give the core one input at the current time, then carry out its actions."""
        async with self.lock:
            method(*args, now=trio.current_time(), **kwargs)
            await self._pump()

    async def _twilio_reader(self) -> None:
        core = self.core
        try:
            while (message := await self.twilio.next_message()) is not None:
                if isinstance(message, str):
                    await self._feed(core.twilio_text, message)
                else:
                    await self._feed(core.twilio_bytes, message)
        except _BROKEN:
            pass
        await self.twilio.stream.aclose()
        await self._feed(core.twilio_closed, self.twilio.close_code)

    async def _timer(self) -> None:
        while not self.core.finished:
            deadline = self.core.next_deadline()
            with trio.move_on_at(math.inf if deadline is None else deadline) as scope:
                await self.moved.wait()
            self.moved = trio.Event()
            if scope.cancelled_caught:
                await self._feed(self.core.handle_timeout)

    async def _agent_reader(self) -> None:
        core = self.core
        with self.agent_scope:
            try:
                self.agent = await open_agent(self.agent_url, self.api_key)
            except (HandshakeFailed, *_BROKEN) as exc:
                await self._feed(core.agent_closed, None, reason=type(exc).__name__)
                return
        agent = self.agent
        if agent is None:  # the core gave up while we were connecting
            await self._feed(core.agent_closed, None, reason="cancelled")
            return
        await self._feed(core.agent_connected)
        try:
            while (message := await agent.next_message()) is not None:
                if isinstance(message, str):
                    await self._feed(core.agent_text, message)
                else:
                    await self._feed(core.agent_audio, message)
        except _BROKEN:
            pass
        await agent.stream.aclose()
        await self._feed(core.agent_closed, agent.close_code)

    async def _pump(self) -> None:
        """Carry out every queued action, including those a tool's result queues; hold the lock."""
        while actions := self.core.actions():
            for action in actions:
                await self._execute(action)
        self.moved.set()

    async def _execute(self, action: Action) -> None:
        now = trio.current_time()
        try:
            if isinstance(action, SendAgentAudio) and self.agent is not None:
                await self.agent.send(BytesMessage(action.audio))
            elif isinstance(action, SendAgentText) and self.agent is not None:
                await self.agent.send(TextMessage(action.text))
            elif isinstance(action, SendTwilioText):
                await self.twilio.send(TextMessage(action.text))
            elif isinstance(action, OpenAgent):
                assert self._nursery is not None
                self._nursery.start_soon(self._agent_reader)
            elif isinstance(action, CloseTwilio):
                await self.twilio.close(action.code, action.reason, action.abort)
            elif isinstance(action, CloseAgent):
                if self.agent is None:
                    self.agent_scope.cancel()  # still connecting: give up
                else:
                    await self.agent.close(action.code, action.reason, action.abort)
            elif isinstance(action, RunTool):
                tool = self.tools.get(action.name)
                result = tool(action.arguments) if tool else json.dumps({"error": "unknown tool"})
                self.core.tool_result(action.call_id, result, now)
            elif isinstance(action, CancelTool):
                pass  # tools here run inline, so there is never one to cancel
            elif isinstance(action, Notice):
                self.on_notice(action)
        except _BROKEN:
            pass  # that leg's reader reports the loss to the core


async def handle_connection(
    stream: trio.SocketStream,
    config: BridgeConfig,
    agent_url: str,
    api_key: str,
    tools: Mapping[str, Tool] | None = None,
    on_notice: Callable[[Notice], None] = lambda notice: None,
) -> None:
    """Accept Twilio's WebSocket on ``stream`` and bridge the call it carries."""
    twilio = WsLeg(stream, WSConnection(ConnectionType.SERVER))
    try:
        request = await twilio.handshake_event()
        if not isinstance(request, Request):
            raise HandshakeFailed(f"expected a WebSocket upgrade, got {type(request).__name__}")
        await twilio.send(AcceptConnection())
    except (HandshakeFailed, *_BROKEN):
        await stream.aclose()
        return
    await TrioCall(twilio, config, agent_url, api_key, tools or {}, on_notice).run()


async def serve(
    host: str,
    port: int,
    config: BridgeConfig,
    agent_url: str,
    api_key: str,
    tools: Mapping[str, Tool] | None = None,
    on_notice: Callable[[Notice], None] = lambda notice: None,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; every connection is one bridged call (start with nursery.start)."""
    handler = partial(
        handle_connection,
        config=config,
        agent_url=agent_url,
        api_key=api_key,
        tools=tools,
        on_notice=on_notice,
    )
    await trio.serve_tcp(handler, port, host=host, task_status=task_status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5002)
    parser.add_argument("--config", default="config.json")
    parser.add_argument("--agent-url", default="wss://agent.deepgram.com/v1/agent/converse")
    args = parser.parse_args()
    config = BridgeConfig(settings=json.loads(Path(args.config).read_text()))

    def log(notice: Notice) -> None:
        if isinstance(notice, CallEnded):
            print(f"call ended: {notice.reason.value}: {notice.detail}", flush=True)

    key = os.environ.get("DEEPGRAM_API_KEY", "")
    print(f"trio bridge on ws://{args.host}:{args.port}", flush=True)
    trio.run(partial(serve, args.host, args.port, config, args.agent_url, key, on_notice=log))


if __name__ == "__main__":
    main()
