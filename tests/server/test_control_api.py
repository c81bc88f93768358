"""The control API: behind BRIDGE_CONTROL_TOKEN, it finds a live call by its CallSid and acts
on it through the core, whichever worker (``--workers 2``, a real process) or instance (two
servers sharing PostgreSQL records) the request reaches."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from server.control_uds import CONTROL_DIR_ENV
from server.metrics import MULTIPROCESS_ENV
from tests.helpers import CALL_SID
from tests.server.test_call_control import FRONT_DESK, rig
from tests.server_support import (
    CONFIG,
    ROOT,
    HttpResult,
    caller,
    closed_within,
    fake_agent,
    http,
    run,
    running_server,
    twilio_start,
    until,
)

TOKEN = "control-secret"
ENV = {"BRIDGE_CONTROL_TOKEN": TOKEN}
AUTH = f"Authorization: Bearer {TOKEN}\r\n"


def request(method: str, path: str, body: object = None, auth: str = AUTH) -> bytes:
    data = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}"
    if method == "POST":
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    return head.encode() + b"\r\n" + data


def answer(result: HttpResult) -> Any:
    assert result.headers["content-type"] == "application/json"
    return json.loads(result.body)


def injected(texts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in texts if t["type"] == "InjectAgentMessage"]


def test_the_control_routes_act_on_a_live_call() -> None:
    async def body() -> None:
        async with fake_agent() as agent, running_server(agent=agent, env=ENV) as server:
            port = server.port
            ws = await caller(server)
            await ws.send(twilio_start({"From": "+15550001", "To": "+15550002"}))
            session = await agent.session()
            await until(lambda: session.applied_at is not None)

            listed = answer(await http(port, request("GET", "/calls")))
            assert [(c["call_sid"], c["from"], c["to"]) for c in listed["calls"]] == [
                (CALL_SID, "+15550001", "+15550002")
            ]
            one = await http(port, request("GET", f"/calls/{CALL_SID}"))
            assert one.status == 200 and answer(one) == listed["calls"][0]

            said = await http(port, request("POST", f"/calls/{CALL_SID}/say", {"text": "Hi"}))
            assert said.status == 200, said.text
            cut = {"text": "Stop", "interrupt": True}
            assert (await http(port, request("POST", f"/calls/{CALL_SID}/say", cut))).status == 200
            await until(lambda: len(injected(session.texts)) == 2, what="both injections")
            first, second = injected(session.texts)
            assert first == {"type": "InjectAgentMessage", "message": "Hi"}
            assert second == {"type": "InjectAgentMessage", "message": "Stop",
                              "behavior": "interrupt"}

            prompt = {"text": "The caller is a patient."}
            assert (await http(port, request("POST", f"/calls/{CALL_SID}/prompt", prompt))).status \
                == 200
            await until(lambda: "UpdatePrompt" in session.types())
            assert [t["prompt"] for t in session.texts if t["type"] == "UpdatePrompt"] == [
                prompt["text"]
            ]

            transfer = {"target": "+15559999999"}  # a number, not a configured name
            refused = await http(port, request("POST", f"/calls/{CALL_SID}/transfer", transfer))
            assert refused.status == 409 and "unknown transfer target" in answer(refused)["error"]

            for bad, why in ((b"{nope", "not JSON"), (b"[1]", "JSON object"), ({}, "text")):
                result = await http(port, request("POST", f"/calls/{CALL_SID}/say", bad))
                assert result.status == 400 and why in answer(result)["error"], result.text

            missing = await http(port, request("POST", "/calls/CAnobody/say", {"text": "x"}))
            assert missing.status == 404 and "no live call" in answer(missing)["error"]
            assert (await http(port, request("GET", "/calls/CAnobody"))).status == 404
            assert (await http(port, request("GET", f"/calls/{CALL_SID}/say"))).status == 405
            for auth in ("", "Authorization: Bearer wrong\r\n"):
                denied = await http(port, request("GET", "/calls", auth=auth))
                assert denied.status == 401 and answer(denied)["error"]
                post = request("POST", f"/calls/{CALL_SID}/hangup", auth=auth)
                assert (await http(port, post)).status == 401
            assert ws.state.name == "OPEN"  # nothing unauthorized touched the call

            hung = await http(port, request("POST", f"/calls/{CALL_SID}/hangup"))
            assert hung.status == 200
            await closed_within(ws, 3)
            await until(lambda: not server.calls)
            assert server.metrics.calls_ended == {"hangup": 1}
            assert answer(await http(port, request("GET", "/calls"))) == {"calls": []}

    run(body())


def test_a_transfer_through_the_control_api_dials_the_named_target() -> None:
    async def body() -> None:
        async with rig(env=ENV) as r:
            await r.call()
            path = f"/calls/{CALL_SID}/transfer"
            result = await http(r.port, request("POST", path, {"target": "front_desk"}))
            assert result.status == 200, result.text
            await until(lambda: bool(r.updates()), 2.0, "the call update")
            assert f">{FRONT_DESK}</Dial>" in (r.updates()[0].field("Twiml") or "")
            again = await http(r.port, request("POST", path, {"target": "on_call"}))
            assert again.status in (404, 409), again.text  # one transfer: the call is leaving
            await until(lambda: not r.server.calls)
            assert len(r.updates()) == 1

    run(body())


def test_without_the_token_the_control_routes_are_off() -> None:
    async def body() -> None:
        async with running_server() as server:
            result = await http(server.port, request("GET", "/calls"))
            assert result.status == 404

    run(body())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_ANSWERED = re.compile(r"(\[worker \d+\])?: control say callSid=\w+ answered (here|relayed)")


def test_say_reaches_the_call_whichever_of_two_workers_answers(tmp_path: Path) -> None:
    port, requests = _free_port(), 24

    async def body() -> None:
        async with fake_agent() as agent:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO", "DEEPGRAM"))}
            for name in (MULTIPROCESS_ENV, CONTROL_DIR_ENV, "BRIDGE_RECORDS"):
                env.pop(name, None)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port),
                "--config", str(CONFIG), "--agent-url", agent.url, "--workers", "2",
                env={**env, "DEEPGRAM_API_KEY": "k", "PYTHONPATH": str(ROOT),
                     "TMPDIR": str(tmp_path), **ENV},
                cwd=ROOT, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            lines: list[str] = []

            async def read_stderr() -> None:
                assert proc.stderr is not None
                async for line in proc.stderr:
                    lines.append(line.decode())

            reader = asyncio.create_task(read_stderr())
            ws = None
            try:
                await until(lambda: sum("listening on" in x for x in lines) == 2, 20, "listening")
                ws = await connect(f"ws://127.0.0.1:{port}/media-stream", compression=None)
                await ws.send(twilio_start())
                session = await agent.session()
                await until(lambda: session.applied_at is not None, 5, "applied")
                for i in range(requests):  # each on a new connection: either worker answers
                    say = {"text": f"note {i}", "interrupt": True}
                    result = await http(port, request("POST", f"/calls/{CALL_SID}/say", say))
                    assert result.status == 200, result.text
                await until(lambda: len(injected(session.texts)) == requests, 5, "injections")
                assert [m["message"] for m in injected(session.texts)] == [
                    f"note {i}" for i in range(requests)
                ]
                listed = answer(await http(port, request("GET", "/calls")))
                assert [c["call_sid"] for c in listed["calls"]] == [CALL_SID]
                unknown = await http(port, request("POST", "/calls/CAnobody/say", {"text": "x"}))
                assert unknown.status == 404
                assert (await http(port, request("GET", "/calls", auth=""))).status == 401
                await until(
                    lambda: sum(bool(_ANSWERED.search(x)) for x in lines) == requests, 5, "logs"
                )
                where = {m[2] for x in lines if (m := _ANSWERED.search(x))}
                assert where == {"here", "relayed"}, "both workers answered"
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(proc.wait(), 15) == 0
                await asyncio.wait_for(reader, 5)
            finally:
                if ws is not None:
                    await ws.close()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            assert "Traceback" not in "".join(lines)
            assert not list(tmp_path.glob("twilio-bridge-control-*")), "socket dir left behind"

    run(body(), timeout=60)


def test_a_request_to_one_instance_reaches_a_call_on_another_through_postgres() -> None:
    url = os.environ.get("TEST_POSTGRES_URL")
    if not url:
        pytest.skip("TEST_POSTGRES_URL is not set")

    async def body() -> None:
        flags = ("--records", url)
        async with (
            fake_agent() as agent,
            running_server(*flags, agent=agent, env=ENV) as a,
            running_server(*flags, agent=agent, env=ENV) as b,
        ):
            ws = await caller(a)
            await ws.send(twilio_start({"From": "+15550001", "To": "+15550002"}))
            session = await agent.session()
            await until(lambda: session.applied_at is not None)

            async def listed() -> list[str]:
                calls = answer(await http(b.port, request("GET", "/calls")))["calls"]
                return [c["call_sid"] for c in calls]

            for _ in range(100):  # the live-calls row is written in the background
                if await listed() == [CALL_SID]:
                    break
                await asyncio.sleep(0.02)
            assert await listed() == [CALL_SID]
            got = answer(await http(b.port, request("GET", f"/calls/{CALL_SID}")))
            assert got["from"] == "+15550001"
            say = {"text": "Your results are in.", "interrupt": True}
            result = await http(b.port, request("POST", f"/calls/{CALL_SID}/say", say))
            assert result.status == 200, result.text
            await until(lambda: bool(injected(session.texts)), what="the relayed injection")
            assert injected(session.texts)[0]["message"] == "Your results are in."
            prompt = {"text": "x" * 10}
            refused = await http(b.port, request("POST", f"/calls/{CALL_SID}/transfer",
                                                 {"target": "nowhere"}))
            assert refused.status == 409, refused.text  # the owner's core refused it
            assert (await http(b.port, request("POST", "/calls/CAnobody/prompt", prompt))) \
                .status == 404
            hung = await http(b.port, request("POST", f"/calls/{CALL_SID}/hangup"))
            assert hung.status == 200
            await closed_within(ws, 3)
            for _ in range(100):
                if await listed() == []:
                    break
                await asyncio.sleep(0.02)
            assert await listed() == []

    run(body(), timeout=40)
