"""A second runtime for the same core: plain threads and blocking sockets.

No asyncio anywhere: `websockets.sync` serves Twilio's WebSocket (one thread per call) and
opens the agent leg (one reader thread per call). A lock serialises every call into the
core, and one timer thread per call waits on a condition until ``next_deadline()``.

    python examples/threaded_bridge.py --port 5001 --agent-url ws://127.0.0.1:8765/v1/agent/converse

It has no HTTP webhook, signatures or metrics: see ``server/`` for the production driver.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.sync.server import Server, ServerConnection, serve

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


class ThreadedCall:
    """Drives one CallBridge from three threads: Twilio reader, agent reader, timer."""

    def __init__(
        self,
        twilio: ServerConnection,
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
        self.agent: ClientConnection | None = None
        self.agent_wanted = True
        self.lock = threading.Condition()
        self.core = CallBridge(config, now=time.monotonic())

    def run(self) -> None:
        """Serve the call on the current thread until both legs are closed."""
        timer = threading.Thread(target=self._timer, daemon=True)
        timer.start()
        try:
            for message in self.twilio:
                with self.lock:
                    if isinstance(message, str):
                        self.core.twilio_text(message, time.monotonic())
                    else:
                        self.core.twilio_bytes(message, time.monotonic())
                    self._pump()
        except ConnectionClosed:
            pass
        with self.lock:
            code = self.twilio.close_code
            self.core.twilio_closed(code, time.monotonic())
            self._pump()
            while not self.core.finished:
                self.lock.wait(0.1)
        timer.join()

    # ---- the three threads feed the core under the lock, then pump its actions

    def _timer(self) -> None:
        with self.lock:
            while not self.core.finished:
                deadline = self.core.next_deadline()
                now = time.monotonic()
                if deadline is not None and deadline <= now:
                    self.core.handle_timeout(now)
                    self._pump()
                else:
                    self.lock.wait(None if deadline is None else deadline - now)

    def _agent_reader(self) -> None:
        reason = ""
        try:
            agent = connect(
                self.agent_url,
                additional_headers={"Authorization": f"Token {self.api_key}"},
                open_timeout=self.core.config.agent_connect_timeout,
            )
        except Exception as exc:  # any connect failure ends the call the same way
            agent, reason = None, type(exc).__name__
        with self.lock:
            if agent is None or not self.agent_wanted:
                if agent is not None:
                    with agent:
                        pass  # connected too late: the call no longer wants it
                self.core.agent_closed(None, time.monotonic(), reason)
                self._pump()
                return
            self.agent = agent
            self.core.agent_connected(time.monotonic())
            self._pump()
        with agent:  # the context manager closes the socket however the loop ends
            try:
                for message in agent:
                    with self.lock:
                        if isinstance(message, str):
                            self.core.agent_text(message, time.monotonic())
                        else:
                            self.core.agent_audio(message, time.monotonic())
                        self._pump()
            except ConnectionClosed:
                pass
        with self.lock:
            self.core.agent_closed(agent.close_code, time.monotonic())
            self._pump()

    def _pump(self) -> None:
        """Carry out every queued action; the caller holds the lock."""
        for action in self.core.actions():
            self._execute(action)
        self.lock.notify_all()  # the deadline may have moved, or the call finished

    def _execute(self, action: Action) -> None:
        if isinstance(action, SendAgentAudio) and self.agent is not None:
            self.agent.send(action.audio)
        elif isinstance(action, SendAgentText) and self.agent is not None:
            self.agent.send(action.text)
        elif isinstance(action, SendTwilioText):
            self.twilio.send(action.text)
        elif isinstance(action, OpenAgent):
            threading.Thread(target=self._agent_reader, daemon=True).start()
        elif isinstance(action, CloseTwilio):
            threading.Thread(target=self.twilio.close, args=(action.code, action.reason)).start()
        elif isinstance(action, CloseAgent):
            self.agent_wanted = False
            if self.agent is not None:
                threading.Thread(target=self.agent.close, args=(action.code, action.reason)).start()
        elif isinstance(action, RunTool):
            tool = self.tools.get(action.name)
            result = tool(action.arguments) if tool else json.dumps({"error": "unknown tool"})
            self.core.tool_result(action.call_id, result, time.monotonic())
        elif isinstance(action, CancelTool):
            pass  # tools here run inline, so there is never one to cancel
        elif isinstance(action, Notice):
            self.on_notice(action)


def make_server(
    host: str,
    port: int,
    config: BridgeConfig,
    agent_url: str,
    api_key: str,
    tools: Mapping[str, Tool] | None = None,
    on_notice: Callable[[Notice], None] = lambda notice: None,
) -> Server:
    """A blocking WebSocket server whose every connection is one bridged call."""

    def handler(twilio: ServerConnection) -> None:
        ThreadedCall(twilio, config, agent_url, api_key, tools or {}, on_notice).run()

    return serve(handler, host, port, compression=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--config", default="config.json")
    parser.add_argument("--agent-url", default="wss://agent.deepgram.com/v1/agent/converse")
    args = parser.parse_args()
    config = BridgeConfig(settings=json.loads(Path(args.config).read_text()))

    def log(notice: Notice) -> None:
        if isinstance(notice, CallEnded):
            print(f"call ended: {notice.reason.value}: {notice.detail}", flush=True)

    key = os.environ.get("DEEPGRAM_API_KEY", "")
    with make_server(args.host, args.port, config, args.agent_url, key, on_notice=log) as server:
        print(f"threaded bridge on ws://{args.host}:{args.port}", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
