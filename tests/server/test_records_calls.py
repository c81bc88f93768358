"""Records of real calls on loopback: what ``calls show`` and ``GET /calls/{sid}/record`` give,
and that the server's whole log output at DEBUG keeps the caller's words and number private.

The store cases run on SQLite and on PostgreSQL (see tests/server/test_records.py for the rules).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from peers.agent import LocalAgent
from server.records import cli as records_cli
from server.tools import ToolRegistry
from tests.helpers import twilio_dtmf
from tests.server.test_records import spec as spec
from tests.server_support import (
    CALL_SID,
    CONFIG,
    ROOT,
    caller,
    fake_agent,
    get,
    http,
    recv_until,
    run,
    running_server,
    twilio_connected,
    twilio_mark,
    twilio_start,
    twilio_stop,
    until,
)

PHRASE = "my chest hurts since Tuesday"
NUMBER = "+15557654321"
TOKEN = "control-token-0123456789"


def say(role: str, content: str) -> dict[str, Any]:
    return {"type": "ConversationText", "role": role, "content": content}


async def _lookup(arguments: Any) -> dict[str, Any]:
    return {"open": "9am"}


async def _scripted_call(server: Any, agent: LocalAgent) -> None:
    """A call with two replies (the first cut by a barge-in), a keypress and a tool call."""
    ws = await caller(server)
    await ws.send(twilio_connected())
    await ws.send(twilio_start({"From": NUMBER, "To": "+15550002"}))
    session = await agent.session()
    await until(lambda: session.applied_at is not None)
    await session.send(say("user", PHRASE))
    await session.send(say("assistant", "Please hang up and call 911."))
    await session.send(b"\x01" * 4000)
    first, _ = await recv_until(ws, "mark")
    await session.send(b"\x01" * 4000)
    second, _ = await recv_until(ws, "mark")
    await ws.send(twilio_mark(first["mark"]["name"]))  # the first half was heard...
    await asyncio.sleep(0.05)
    await session.send({"type": "UserStartedSpeaking"})  # ...then the caller barged in
    await recv_until(ws, "clear")
    await ws.send(twilio_mark(second["mark"]["name"]))  # Twilio echoes cleared marks too
    await ws.send(twilio_dtmf("7"))
    function = {"id": "f1", "name": "lookup", "arguments": "{}", "client_side": True}
    await session.send({"type": "FunctionCallRequest", "functions": [function]})
    await until(lambda: "FunctionCallResponse" in session.types(), what="tool result")
    await session.send(say("user", "thanks"))
    await session.send(say("assistant", "Goodbye."))
    await session.send(b"\x02" * 1600)
    await session.send({"type": "AgentAudioDone"})
    end, _ = await recv_until(ws, "mark")
    await ws.send(twilio_mark(end["mark"]["name"]))
    await asyncio.sleep(0.05)
    await ws.send(twilio_stop())
    await until(lambda: not server.calls, what="the call to end")


def _show(spec: str) -> dict[str, Any]:
    out = io.StringIO()
    assert records_cli.main(["--records", spec, "show", CALL_SID, "--json"], out) == 0
    data: dict[str, Any] = json.loads(out.getvalue())
    return data


def test_a_real_call_is_recorded_whole_with_what_the_caller_heard(spec: str) -> None:
    async def body() -> dict[str, Any]:
        tools = ToolRegistry({"lookup": _lookup})
        env = {"BRIDGE_CONTROL_TOKEN": TOKEN}
        async with (
            fake_agent() as agent,
            running_server("--records", spec, agent=agent, tools=tools, env=env) as server,
        ):
            await _scripted_call(server, agent)
            assert server.records is not None and server.records.flush()
            auth = f"Authorization: Bearer {TOKEN}\r\n"
            response = await http(server.port, get(f"/calls/{CALL_SID}/record", extra=auth))
            assert response.status == 200
            assert response.headers["content-type"] == "application/json"
            served: dict[str, Any] = json.loads(response.body)
            histogram = server.metrics.turn_latency
            served["_turns_observed"] = {s: h.count for s, h in histogram.items()}
            served["_turn_seconds"] = {s: h.sum for s, h in histogram.items()}
            return served

    served = run(body())
    observed, seconds = served.pop("_turns_observed"), served.pop("_turn_seconds")
    record = _show(spec)
    assert served == record
    assert record["complete"] and record["end_reason"] == "hangup"
    assert record["from_number"] == NUMBER and record["to_number"] == "+15550002"
    assert [(t["role"], t["text"]) for t in record["turns"]] == [
        ("user", PHRASE),
        ("assistant", "Please hang up and call 911."),
        ("user", "thanks"),
        ("assistant", "Goodbye."),
    ]
    cut, goodbye = record["turns"][1], record["turns"][3]
    assert cut["playback"] == "partly_heard" and 0 < cut["heard_fraction"] < 1
    assert cut["heard_fraction"] == 0.5
    assert goodbye["playback"] == "played" and goodbye["heard_fraction"] == 1.0
    for turn in (cut, goodbye):  # at the ear: first audio, then its first mark echo
        assert 0 <= turn["latency_audio_ms"] <= turn["latency_mark_ms"] < 5000
    # The /metrics histogram at the ear saw the same two turns as the record.
    assert observed == {"first_audio": 2, "first_mark": 2}
    for stage, key in (("first_audio", "latency_audio_ms"), ("first_mark", "latency_mark_ms")):
        recorded = sum(turn[key] for turn in (cut, goodbye)) / 1000
        assert abs(seconds[stage] - recorded) < 0.01
    assert record["dtmf_count"] == 1 and record["barge_ins"] == 1
    kinds = [(e["kind"], e["name"]) for e in record["events"]]
    assert kinds == [("barge_in", "UserStartedSpeaking"), ("tool_call", "lookup")]
    assert record["events"][1]["data"]["result"] == '{"open": "9am"}'


def test_the_record_route_wants_the_bearer_token() -> None:
    async def body() -> None:
        env = {"BRIDGE_CONTROL_TOKEN": TOKEN}
        async with running_server(env=env) as server:
            path = f"/calls/{CALL_SID}/record"
            for extra in (
                "",
                "Authorization: Bearer wrong-token\r\n",
                f"Authorization: {TOKEN}\r\n",
            ):
                response = await http(server.port, get(path, extra=extra))
                assert response.status == 401, extra
                assert json.loads(response.body)["error"]
                assert response.headers["www-authenticate"].startswith("Bearer")
            auth = f"Authorization: Bearer {TOKEN}\r\n"
            response = await http(server.port, get("/calls/CA-unknown/record", extra=auth))
            assert response.status == 404 and "CA-unknown" in json.loads(response.body)["error"]
        async with running_server() as server:  # no token: the route does not exist
            response = await http(
                server.port, get(path, extra=f"Authorization: Bearer {TOKEN}\r\n")
            )
            assert response.status == 404 and response.body == b"not found\n"

    run(body())


# ---------------------------------------------------------------------- privacy of the logs


async def _server_process(*flags: str, records: Path) -> tuple[asyncio.subprocess.Process, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEEPGRAM", "TWILIO"))}
    env.update(DEEPGRAM_API_KEY="test-key-0123456789", PYTHONPATH=str(ROOT))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--config",
        str(CONFIG),
        "--log-level",
        "DEBUG",
        "--records",
        str(records),
        *flags,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=str(records.parent),
    )
    assert process.stderr is not None
    while True:
        line = (await asyncio.wait_for(process.stderr.readline(), 15)).decode()
        assert line, "the server exited before listening"
        if "listening on http://127.0.0.1:" in line:
            return process, int(line.split("127.0.0.1:")[1].split()[0])


def _logged_call(tmp_path: Path, *flags: str) -> str:
    """Everything the server process wrote at DEBUG during one call with private content."""

    async def body() -> str:
        async with fake_agent() as agent:
            process, port = await _server_process(
                "--agent-url", agent.url, *flags, records=tmp_path / "calls.db"
            )
            try:
                ws = await connect(f"ws://127.0.0.1:{port}/media-stream", compression=None)
                await ws.send(twilio_connected())
                await ws.send(twilio_start({"From": NUMBER, "To": "+15550002"}))
                session = await agent.session(timeout=10)
                await until(lambda: session.applied_at is not None, 10)
                await session.send(say("user", PHRASE))
                await session.send({"type": "History", "role": "user", "content": PHRASE})
                await session.send({"type": "AgentThinking", "content": PHRASE})
                await session.send({"type": "Unknown", "echo": PHRASE})
                # Fragmented, so websockets' parser reads it (whole frames skip it) and, at
                # DEBUG, would quote the caller's words in its frame dump.
                await session.ws.send(iter(['{"type": "Unknown", "echo": "', PHRASE, '"}']))
                await ws.send(twilio_dtmf("9"))
                await asyncio.sleep(0.2)
                await ws.send(twilio_stop())
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.wait_closed(), 3)
                await asyncio.wait_for(session.closed.wait(), 3)
            finally:
                process.send_signal(signal.SIGTERM)
                assert process.stderr is not None
                rest = await asyncio.wait_for(process.stderr.read(), 15)
                await process.wait()
            return rest.decode()

    output: str = run(body(), timeout=40)
    assert "call ended callSid=" in output  # the DEBUG log of the whole call is here
    return output


def test_by_default_no_log_line_holds_the_callers_words_or_number(tmp_path: Path) -> None:
    output = _logged_call(tmp_path)
    assert PHRASE not in output and NUMBER not in output
    assert "digit=9" not in output
    record = _show(str(tmp_path / "calls.db"))  # the record, the private sink, keeps them
    assert record["turns"][0]["text"] == PHRASE and record["from_number"] == NUMBER


def test_log_transcripts_opts_in_and_the_redaction_hook_runs_first(tmp_path: Path) -> None:
    output = _logged_call(tmp_path, "--log-transcripts")
    assert PHRASE in output and NUMBER in output and "digit=9" in output
    module = tmp_path / "redactor_for_test.py"
    module.write_text("def redact(kind, text):\n    return f'[{kind} withheld]'\n")
    output = _logged_call(tmp_path, "--log-transcripts", "--redact", "redactor_for_test")
    assert PHRASE not in output and NUMBER not in output
    assert "[transcript withheld]" in output
    record = _show(str(tmp_path / "calls.db"))
    assert record["turns"][0]["text"] == "[transcript withheld]"
    assert record["from_number"] == "[number withheld]"
