"""The bridge embedded in FastAPI (examples/fastapi_app.py) under a real uvicorn on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import socket
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from peers.agent import LocalAgent
from peers.audio import load_clip
from peers.caller import TwilioCaller, twilio_signature
from server.asgi_leg import AsgiLeg, AsgiStream
from tests.server_support import CONFIG, ROOT, run, until

TOKEN = "asgi-test-auth-token"
PUBLIC = "https://bridge.example.com"


def load_example(monkeypatch: pytest.MonkeyPatch, flags: str, env: dict[str, str]) -> ModuleType:
    """A fresh copy of examples/fastapi_app.py, configured as its docstring says (BRIDGE_FLAGS)."""
    monkeypatch.setenv("BRIDGE_FLAGS", f"--config {CONFIG} --agent-retries 0 {flags}")
    monkeypatch.setenv("DEEPGRAM_API_KEY", "asgi-test-key")
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("PUBLIC_URL", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location("fastapi_app", ROOT / "examples/fastapi_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.asynccontextmanager
async def uvicorn_on_loopback(app: Any) -> AsyncIterator[int]:
    """A real uvicorn server on 127.0.0.1 (an ephemeral port), stopped at the end."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await until(lambda: server.started, timeout=10, what="uvicorn started")
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
        sock.close()


def test_fastapi_app_bridges_a_call_end_to_end(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body() -> None:
        async with LocalAgent(hangup_after_utterances=1) as agent:
            example = load_example(monkeypatch, f"--agent-url {agent.url}", {})
            async with uvicorn_on_loopback(example.app) as port:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                    assert (await http.get("/hello")).json() == {"hello": "from the host app"}
                    health = await http.get("/healthz")
                    assert health.status_code == 200 and health.json()["calls"] == 0
                url = f"ws://127.0.0.1:{port}/media-stream"
                async with TwilioCaller(url, speed=4.0) as call:
                    assert await call.wait_agent_speaking(5), "the agent's greeting"
                    await call.play(load_clip("caller-hello"), "hello")
                    assert await call.wait_closed(20), "the agent hangs up after one reply"
                figures = call.figures()
                assert figures.violations == ()
                assert figures.closed_by == "bridge"
                assert figures.bytes_received > 8000  # agent audio reached the caller
                assert figures.marks_received >= 1 and figures.marks_echoed >= 1
                session = agent.sessions[0]
                assert session.audio_bytes >= len(load_clip("caller-hello"))  # caller audio
                await asyncio.wait_for(session.closed.wait(), 5)  # the agent leg ended too
                bridge = example.bridge.server
                assert bridge is not None
                await until(lambda: not bridge.calls, timeout=5, what="call removed")
                assert bridge.metrics.calls_started == 1
                assert sum(bridge.metrics.calls_ended.values()) == 1
            assert example.bridge.server is None  # the lifespan shut the bridge down

    run(body(), timeout=60)


def test_signatures_and_limits_are_the_bundled_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"TWILIO_AUTH_TOKEN": TOKEN, "PUBLIC_URL": PUBLIC}

    async def body() -> None:
        async with LocalAgent() as agent:
            flags = f"--agent-url {agent.url} --max-calls 1 --max-body-bytes 2048"
            example = load_example(monkeypatch, flags, env)
            async with (
                uvicorn_on_loopback(example.app) as port,
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
            ):
                form = {"CallSid": "CA" + "1" * 32, "From": "+15550001", "To": "+15550002"}
                unsigned = await http.post("/incoming-call", data=form)
                assert unsigned.status_code == 403
                signed = await http.post(
                    "/incoming-call",
                    data=form,
                    headers={
                        "X-Twilio-Signature": twilio_signature(
                            TOKEN, f"{PUBLIC}/incoming-call", form
                        )
                    },
                )
                assert signed.status_code == 200
                assert "wss://bridge.example.com/media-stream" in signed.text
                big = await http.post("/incoming-call", content=b"x" * 4096)
                assert big.status_code == 413

                ws_url = f"ws://127.0.0.1:{port}/media-stream"
                with pytest.raises(InvalidStatus) as refused:
                    await connect(ws_url, open_timeout=5)
                assert refused.value.response.status_code == 403
                signed_ws = f"{PUBLIC.replace('https', 'wss')}/media-stream"
                async with TwilioCaller(ws_url, auth_token=TOKEN, signed_url=signed_ws) as call:
                    assert await call.wait_agent_speaking(5)
                    # --max-calls 1: a second stream is turned away while this one runs
                    with pytest.raises(InvalidStatus) as busy:
                        headers = {"X-Twilio-Signature": twilio_signature(TOKEN, signed_ws)}
                        await connect(ws_url, additional_headers=headers, open_timeout=5)
                    assert busy.value.response.status_code == 503
                    await call.hangup()
                assert call.figures().violations == ()
                assert call.figures().closed_by == "caller"
                server = example.bridge.server
                await until(lambda: not server.calls, timeout=5, what="call removed")
                assert server.metrics.calls_ended == {"hangup": 1}
                await asyncio.wait_for(agent.sessions[0].closed.wait(), 5)  # the agent leg too
                assert server.metrics.calls_rejected.get("bad_signature", 0) >= 2

    run(body(), timeout=60)


def test_the_write_cap_counts_what_the_server_has_not_taken() -> None:
    """A caller that stops reading: ASGI ``send`` never returns, the leg's unsent count grows
    past what was sent, so the call's --max-write-buffer check sees it."""

    class Call:
        lost = 0

        def twilio_messages(self, messages: list[str | bytes]) -> None: ...

        def twilio_lost(self) -> None:
            self.lost += 1

        def abort(self) -> None: ...

    async def body() -> None:
        stuck = asyncio.Event()
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message["type"] == "websocket.send":
                await stuck.wait()  # the peer does not read

        async def receive() -> dict[str, Any]:
            await asyncio.Event().wait()
            return {}

        stream = AsgiStream(65536)
        call = Call()
        leg = AsgiLeg(stream, call, receive, send, "peer")
        running = asyncio.create_task(leg.run({"type": "websocket.accept"}))
        unsent = 0
        for _ in range(100):
            stream.send_text("m" * 1000)
            unsent = leg.flush()
            await asyncio.sleep(0)
        assert unsent >= 99_000  # only the first message is with the server
        assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send"]
        leg.abort()  # the call ends it: the application returns at once
        await asyncio.wait_for(running, 2)
        assert call.lost == 1 and leg.flush() == 0

    run(body())


def test_a_bare_bridge_is_an_asgi_app_with_its_own_lifespan() -> None:
    from server.asgi import BridgeASGI

    bridge = BridgeASGI.from_flags(["--config", str(CONFIG)], {"DEEPGRAM_API_KEY": "k"})

    async def body() -> None:
        async with uvicorn_on_loopback(bridge) as port:
            assert bridge.server is not None  # started by lifespan.startup, before any request
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                health = await http.get("/healthz")
                assert health.json()["status"] == "ok"
                assert (await http.get("/nowhere")).status_code == 404
                assert "calls_started" in (await http.get("/metrics")).text
        assert bridge.server is None  # lifespan.shutdown closed it

    run(body())


def test_docs_show_the_example_that_the_tests_run() -> None:
    example = (ROOT / "examples/fastapi_app.py").read_text()
    code = example.split('"""', 2)[2].strip()
    docs = (ROOT / "docs/asgi.md").read_text()
    assert f"```python\n{code}\n```" in docs
