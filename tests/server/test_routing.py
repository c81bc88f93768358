"""Agents per number (--route NUMBER=CONFIG), checked from outside: a real ``python -m server``
process, the webhook's TwiML played to the media stream as Twilio would, and the local agent
recording the Settings each call gets."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html import unescape
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from peers import twilio_messages
from peers.agent import LocalAgent
from server.routing import AGENT_PARAMETER, load_routing
from tests.server.test_cli import _env, _one_error_line, _run_cli
from tests.server_support import CONFIG, fake_agent, http, post_form, run, until

FRONT_DESK, PEDIATRICS, OTHER = "+15550100", "+15550200", "+15550300"
_PARAM = re.compile(r'<Parameter name="([^"]+)" value="([^"]*)"/>')


def _agent_file(tmp: Path, name: str, prompt: str) -> Path:
    settings = json.loads(CONFIG.read_text())
    settings["agent"]["think"]["prompt"] = prompt
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(settings))
    return path


@asynccontextmanager
async def _server(agent: LocalAgent, tmp: Path, *flags: str) -> AsyncIterator[int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", "0",
        "--config", str(CONFIG), "--agent-url", agent.url, "--records", "none", *flags,
        env=_env(DEEPGRAM_API_KEY="k"), cwd=tmp, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
    while "listening on" not in line:
        assert line, "the server exited"
        line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
    port = int(re.search(r"listening on \w+://127.0.0.1:(\d+)", line)[1])  # type: ignore[index]
    try:
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = (await asyncio.wait_for(proc.stderr.read(), 15)).decode()
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        assert "Traceback" not in rest


async def _call(port: int, to: str) -> ClientConnection:
    """Twilio's side: the webhook for a call to ``to``, then a stream with its parameters."""
    form = f"CallSid=CA{to[1:]}&From=%2B15559999&To={to.replace('+', '%2B')}"
    twiml = (await http(port, post_form("/incoming-call", form))).text
    parameters = {unescape(k): unescape(v) for k, v in _PARAM.findall(twiml)}
    ws = await connect(f"ws://127.0.0.1:{port}/media-stream", compression=None)
    await ws.send(twilio_messages.connected())
    await ws.send(twilio_messages.start(f"MZ{to[1:]}", f"CA{to[1:]}", "AC1", parameters))
    return ws


def test_each_number_gets_the_settings_of_its_file(tmp_path: Path) -> None:
    desk = _agent_file(tmp_path, "front_desk", "You are the front desk.")
    kids = _agent_file(tmp_path, "pediatrics", "You are the pediatrics line.")
    prompt = json.loads(CONFIG.read_text())["agent"]["think"]["prompt"]
    default_prompt = prompt.replace("{From}", "+15559999")  # filled from the call's parameters

    async def body() -> None:
        flags = ("--route", f"{FRONT_DESK}={desk}", "--route", f"{PEDIATRICS}={kids}")
        async with fake_agent() as agent, _server(agent, tmp_path, *flags) as port:
            calls = []
            for index, number in enumerate((PEDIATRICS, FRONT_DESK, OTHER)):
                calls.append(await _call(port, number))
                session = await agent.session(index, timeout=10)
                await until(lambda s=session: s.settings is not None, 10, "Settings")
            prompts = [s.settings["agent"]["think"]["prompt"] for s in agent.sessions]  # type: ignore[index]
            assert prompts == ["You are the pediatrics line.", "You are the front desk.",
                               default_prompt]  # fmt: skip
            for ws in calls:
                await ws.close()

    run(body(), timeout=60)


def _read(path: str) -> dict[str, Any]:
    return dict(json.loads(Path(path).read_text()))


def test_only_a_signed_agent_parameter_chooses_an_agent(tmp_path: Path) -> None:
    kids = _agent_file(tmp_path, "pediatrics", "You are the pediatrics line.")
    routing = load_routing({PEDIATRICS: str(kids)}, "key", _read)
    name, signed = routing.agent_parameter("pediatrics")
    assert name == AGENT_PARAMETER
    assert routing.choose({name: signed})["agent"]["think"]["prompt"].startswith("You are the ped")
    assert routing.choose({name: "pediatrics"}) is None  # unsigned: the default
    assert routing.choose({name: "pediatrics." + "0" * 32}) is None  # forged
    assert routing.choose({name: str(kids)}) is None  # a path is no name
    assert routing.choose({"To": PEDIATRICS}) is routing.agents["pediatrics"]
    other = load_routing({PEDIATRICS: str(kids)}, "other key", _read)
    assert other.choose({name: signed}) is None  # another bridge's signature


def test_a_bad_route_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    env = _env(DEEPGRAM_API_KEY="k")
    bad = tmp_path / "broken.json"
    bad.write_text('{"type": "Settings"}')
    good = _agent_file(tmp_path, "desk", "x")
    for route, why in (
        (f"{FRONT_DESK}={bad}", f"invalid config file {bad}: field settings.audio"),
        (f"{FRONT_DESK}={tmp_path / 'missing.json'}", "no such file"),
        (f"5550100={good}", "not an E.164 number"),
        (f"{FRONT_DESK}", "use NAME=VALUE"),
    ):
        result = _run_cli(["--config", str(CONFIG), "--route", route], env, tmp_path)
        assert result.returncode == 2
        assert why in _one_error_line(result)
    twice = ["--route", f"{FRONT_DESK}={good}", "--route", f"{FRONT_DESK}={good}"]
    result = _run_cli(["--config", str(CONFIG), *twice], env, tmp_path)
    assert result.returncode == 2 and "given twice" in _one_error_line(result)
