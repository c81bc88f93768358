"""The trio runtime (examples/trio_bridge.py: trio sockets, wsproto framing) over loopback.

The peers are ``websockets`` (blocking, in threads), so the example's own framing is checked
against an independent implementation, not against itself.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import trio
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.sync.server import serve

from sansio import CallEnded, EndReason, Notice
from tests.core.test_example_threaded import ScriptedAgent
from tests.helpers import (
    STREAM_SID,
    config,
    twilio_connected,
    twilio_media,
    twilio_start,
    twilio_stop,
)

ROOT = Path(__file__).resolve().parents[2]


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "trio_bridge", ROOT / "examples" / "trio_bridge.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bridge_one_call(
    agent_url: str, twilio_side: Callable[[ClientConnection], Any]
) -> tuple[Any, list[Notice]]:
    """Serve the trio bridge, run ``twilio_side`` against it in a thread, until the call ends."""
    example = load_example()
    notices: list[Notice] = []

    async def main() -> Any:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                serve_bridge = partial(
                    example.serve, "127.0.0.1", 0, config(preroll_policy="keep"),
                    agent_url, "sekret",
                    on_notice=notices.append,
                )  # fmt: skip
                listeners = await nursery.start(serve_bridge)
                port = listeners[0].socket.getsockname()[1]

                def twilio() -> Any:
                    with connect(f"ws://127.0.0.1:{port}/media-stream") as ws:
                        return twilio_side(ws)

                result = await trio.to_thread.run_sync(twilio)
                while not any(isinstance(n, CallEnded) for n in notices):
                    await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
        return result

    return trio.run(main), notices


def _read_until_closed(ws: ClientConnection) -> None:
    try:
        while True:
            ws.recv(timeout=5)
    except ConnectionClosed:
        pass


def test_trio_runtime_bridges_a_call_over_loopback() -> None:
    agent = ScriptedAgent()
    frames = [bytes([i]) * 160 for i in range(1, 26)]

    def twilio_side(twilio: ClientConnection) -> tuple[dict[str, Any], int | None]:
        twilio.send(twilio_connected())
        twilio.send(twilio_start())
        for frame in frames:
            twilio.send(twilio_media(frame))
        media = json.loads(twilio.recv(timeout=5))
        mark = json.loads(twilio.recv(timeout=5))
        assert mark["event"] == "mark" and set(mark) == {"event", "streamSid", "mark"}
        twilio.send(json.dumps({"event": "mark", "streamSid": STREAM_SID, "mark": mark["mark"]}))
        twilio.send(twilio_stop())
        _read_until_closed(twilio)
        return media, twilio.close_code

    with serve(agent.handler, "127.0.0.1", 0) as agent_server:
        threading.Thread(target=agent_server.serve_forever, daemon=True).start()
        agent_url = f"ws://127.0.0.1:{agent_server.socket.getsockname()[1]}/v1/agent/converse"
        try:
            (media, close_code), notices = bridge_one_call(agent_url, twilio_side)
            assert agent.closed.wait(5)
        finally:
            agent_server.shutdown()
    assert media == {
        "event": "media",
        "streamSid": STREAM_SID,
        "media": {"payload": "ERER" * 266 + "ERE="},
    }
    assert close_code == 1000
    assert agent.authorization == "Token sekret"
    assert json.loads(agent.received[0])["type"] == "Settings"
    assert b"".join(m for m in agent.received if isinstance(m, bytes)) == b"".join(frames)
    [end] = [n for n in notices if isinstance(n, CallEnded)]
    assert end.reason is EndReason.HANGUP


def test_trio_runtime_ends_the_call_when_the_agent_is_unreachable() -> None:
    with socket.socket() as s:  # a port that nobody listens on
        s.bind(("127.0.0.1", 0))
        agent_url = f"ws://127.0.0.1:{s.getsockname()[1]}/v1/agent/converse"

    def twilio_side(twilio: ClientConnection) -> tuple[int | None, str | None]:
        twilio.send(twilio_connected())
        twilio.send(twilio_start())
        _read_until_closed(twilio)
        return twilio.close_code, twilio.close_reason

    (code, reason), notices = bridge_one_call(agent_url, twilio_side)
    [end] = [n for n in notices if isinstance(n, CallEnded)]
    assert end.reason is EndReason.AGENT_UNREACHABLE
    assert end.detail == "could not connect to the agent: OSError"
    assert code == 1000 and (reason or "").startswith("agent_unreachable"), (code, reason)
