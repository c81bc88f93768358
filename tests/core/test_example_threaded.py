"""The second runtime (examples/threaded_bridge.py: threads, blocking sockets) over loopback."""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path
from types import ModuleType

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.sync.server import ServerConnection, serve

from sansio import CallEnded, EndReason, Notice
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
        "threaded_bridge", ROOT / "examples" / "threaded_bridge.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ScriptedAgent:
    """A tiny Deepgram-protocol agent: Welcome, SettingsApplied, one reply, then it listens."""

    def __init__(self) -> None:
        self.received: list[str | bytes] = []
        self.authorization = ""
        self.closed = threading.Event()

    def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.authorization = ws.request.headers.get("Authorization", "")
        ws.send(json.dumps({"type": "Welcome", "request_id": "r"}))
        try:
            for message in ws:
                self.received.append(message)
                if isinstance(message, str) and json.loads(message)["type"] == "Settings":
                    ws.send(json.dumps({"type": "SettingsApplied"}))
                    ws.send(b"\x11" * 800)
                    ws.send(json.dumps({"type": "AgentAudioDone"}))
        except ConnectionClosed:
            pass
        self.closed.set()


def test_threaded_runtime_bridges_a_call_over_loopback() -> None:
    example = load_example()
    agent = ScriptedAgent()
    notices: list[Notice] = []
    with serve(agent.handler, "127.0.0.1", 0) as agent_server:
        threading.Thread(target=agent_server.serve_forever, daemon=True).start()
        agent_url = f"ws://127.0.0.1:{agent_server.socket.getsockname()[1]}/v1/agent/converse"
        bridge = example.make_server(
            "127.0.0.1",
            0,
            config(preroll_policy="keep"),
            agent_url,
            "sekret",
            on_notice=notices.append,
        )
        threading.Thread(target=bridge.serve_forever, daemon=True).start()
        try:
            port = bridge.socket.getsockname()[1]
            with connect(f"ws://127.0.0.1:{port}/media-stream") as twilio:
                twilio.send(twilio_connected())
                twilio.send(twilio_start())
                frames = [bytes([i]) * 160 for i in range(1, 26)]
                for frame in frames:
                    twilio.send(twilio_media(frame))
                media = json.loads(twilio.recv(timeout=5))
                assert media == {
                    "event": "media",
                    "streamSid": STREAM_SID,
                    "media": {"payload": "ERER" * 266 + "ERE="},
                }
                mark = json.loads(twilio.recv(timeout=5))
                assert mark["event"] == "mark" and set(mark) == {"event", "streamSid", "mark"}
                twilio.send(
                    json.dumps({"event": "mark", "streamSid": STREAM_SID, "mark": mark["mark"]})
                )
                twilio.send(twilio_stop())
                try:
                    while True:
                        twilio.recv(timeout=5)
                except ConnectionClosed:
                    pass
                assert twilio.close_code == 1000
            assert agent.closed.wait(5)
        finally:
            bridge.shutdown()
            agent_server.shutdown()
    assert agent.authorization == "Token sekret"
    assert json.loads(agent.received[0])["type"] == "Settings"
    assert b"".join(m for m in agent.received if isinstance(m, bytes)) == b"".join(frames)
    [end] = [n for n in notices if isinstance(n, CallEnded)]
    assert end.reason is EndReason.HANGUP
