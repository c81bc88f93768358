"""What the README claims about the server's life: workers, SIGTERM, the grace, tool timeouts.

- ``--workers 2`` serves calls from both processes, and SIGTERM to the parent drains both.
- During ``--shutdown-grace`` a call in progress keeps bridging and may finish by itself, while new
  connections are refused and a webhook answers busy; a call still running when the grace runs out
  is ended with the reason ``shutdown``.
- A tool handler that times out is answered with an error ``FunctionCallResponse``, and the call
  goes on.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
import time
from typing import Any

import h11
from websockets.asyncio.client import connect

from server.tools import ToolRegistry
from tests.server_support import (
    CONFIG,
    ROOT,
    closed_within,
    fake_agent,
    frame,
    post_form,
    ready_call,
    recv_until,
    run,
    running_server,
    twilio_media,
    twilio_start,
    twilio_stop,
    until,
)


def _stream_sid(i: int) -> str:
    return f"MZ{i:032x}"


# ---------------------------------------------------------------------- --shutdown-grace


def test_a_call_in_progress_finishes_during_the_grace_while_new_ones_are_refused() -> None:
    async def body() -> None:
        async with fake_agent() as agent, running_server(agent=agent) as server:
            port = server.port
            ws, session = await ready_call(server, agent)
            # A webhook whose body is still arriving when the shutdown starts.
            raw = post_form("/incoming-call", "CallSid=CA1&From=%2B15550001")
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(raw[:-4])
            await writer.drain()
            await until(
                lambda: any(
                    getattr(c, "h11", None) is not None and c.h11.their_state is h11.SEND_BODY
                    for c in server.connections
                ),
                what="the webhook's head read",
            )

            shutdown = asyncio.create_task(server.shutdown(grace=20.0))
            await until(lambda: server.draining, what="draining")
            # New connections are refused: the listening socket is closed.
            try:
                _, refused = await asyncio.open_connection("127.0.0.1", port)
            except ConnectionRefusedError:
                pass
            else:
                refused.close()
                raise AssertionError("a new connection was accepted while draining")
            # The webhook in flight is answered busy, and its connection closed.
            writer.write(raw[-4:])
            answer = (await asyncio.wait_for(reader.read(), 3)).decode()
            writer.close()
            assert answer.startswith("HTTP/1.1 200") and "<Hangup/>" in answer, answer
            assert "<Stream" not in answer and "connection: close" in answer.lower()
            assert server.metrics.calls_rejected == {"draining": 1}

            # The call in progress still bridges both ways during the grace ...
            await ws.send(twilio_media(frame(1), 2))
            await until(lambda: len(session.audio) == 160, what="caller audio during the grace")
            await session.send(b"\x22" * 480)
            reply, _ = await recv_until(ws, "media")
            assert reply["media"]["payload"]
            # ... and ends by itself, long before the grace runs out.
            await ws.send(twilio_stop())
            assert await closed_within(ws, 3) < 3
            assert ws.close_code == 1000 and "shutdown" not in (ws.close_reason or "")
            await asyncio.wait_for(shutdown, 5)
            assert server.metrics.calls_ended == {"hangup": 1}
            await asyncio.wait_for(session.closed.wait(), 2)

    run(body())


def test_a_call_still_running_when_the_grace_runs_out_is_ended_with_shutdown() -> None:
    grace = 0.6

    async def body() -> None:
        async with fake_agent() as agent, running_server(agent=agent) as server:
            ws, session = await ready_call(server, agent)
            t0 = time.monotonic()
            shutdown = asyncio.create_task(server.shutdown(grace=grace))
            await ws.send(twilio_media(frame(1), 2))
            await until(lambda: len(session.audio) == 160, what="caller audio during the grace")
            took = await closed_within(ws, grace + 3)
            assert time.monotonic() - t0 >= grace, f"ended after {took:.2f} s, before the grace"
            assert ws.close_code == 1000 and "shutdown" in (ws.close_reason or "")
            await asyncio.wait_for(session.closed.wait(), 2)
            assert session.close_code == 1000
            await asyncio.wait_for(shutdown, 3)
            assert server.metrics.calls_ended == {"shutdown": 1} and not server.calls

    run(body())


# ---------------------------------------------------------------------- --workers and SIGTERM


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


_LISTENING = re.compile(r"(\[worker \d+\])?: listening on .* \(pid (\d+);")
_ENDED = re.compile(r"(\[worker \d+\])?: call ended .*streamSid=(\w+) .*reason=(\w+)")
_STOPPED = re.compile(r"(\[worker \d+\])?: stopped \(pid (\d+)\)")


def test_two_workers_serve_calls_and_sigterm_to_the_parent_drains_both() -> None:
    """16 calls over two processes: half hang up during the grace, half are ended by it."""
    port, calls, grace = _free_port(), 16, 3.0

    async def body() -> None:
        async with fake_agent() as agent:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO", "DEEPGRAM"))}
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port),
                "--config", str(CONFIG), "--agent-url", agent.url, "--workers", "2",
                "--shutdown-grace", str(grace),
                env={**env, "DEEPGRAM_API_KEY": "k", "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            lines: list[str] = []

            async def read_stderr() -> None:
                assert proc.stderr is not None
                async for line in proc.stderr:
                    lines.append(line.decode())

            reader = asyncio.create_task(read_stderr())
            try:
                await until(
                    lambda: sum(bool(_LISTENING.search(x)) for x in lines) == 2,
                    20,
                    "both processes listening",
                )
                pids = {m[1] or "parent": int(m[2]) for x in lines if (m := _LISTENING.search(x))}
                assert set(pids) == {"parent", "[worker 1]"} and len(set(pids.values())) == 2
                url = f"ws://127.0.0.1:{port}/media-stream"
                socks = []
                for i in range(calls):
                    ws = await connect(url, compression=None, open_timeout=3, close_timeout=2)
                    await ws.send(twilio_start(stream_sid=_stream_sid(i)))
                    socks.append(ws)
                await until(lambda: len(agent.sessions) == calls, 5, "every agent leg")
                await until(lambda: all(s.applied_at for s in agent.sessions), 5, "applied")
                for i, ws in enumerate(socks):
                    await ws.send(twilio_media(frame(i), 2, stream_sid=_stream_sid(i)))
                await until(lambda: all(len(s.audio) == 160 for s in agent.sessions), 5, "audio")

                proc.send_signal(signal.SIGTERM)
                await until(lambda: sum("signal received" in x for x in lines) == 2, 5, "SIGTERM")
                for i, ws in enumerate(socks[: calls // 2]):  # these finish during the grace
                    await ws.send(twilio_stop(stream_sid=_stream_sid(i)))
                closes = await asyncio.gather(*(closed_within(ws, grace + 5) for ws in socks))
                assert all(took < grace + 5 for took in closes)
                assert await asyncio.wait_for(proc.wait(), 15) == 0
                await asyncio.wait_for(reader, 5)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            text = "".join(lines)
            ended = {m[2]: (m[1] or "parent", m[3]) for x in lines if (m := _ENDED.search(x))}
            assert len(ended) == calls, text
            served_by = {who for who, _ in ended.values()}
            assert served_by == {"parent", "[worker 1]"}, f"calls landed only in {served_by}"
            for i in range(calls):
                _, reason = ended[_stream_sid(i)]
                assert reason == ("hangup" if i < calls // 2 else "shutdown"), (i, reason)
            for ws in socks[calls // 2 :]:
                assert ws.close_code == 1000 and "shutdown" in (ws.close_reason or "")
            stopped = {m[1] or "parent": int(m[2]) for x in lines if (m := _STOPPED.search(x))}
            assert stopped == pids, text
            assert not _alive(pids["[worker 1]"]), "the worker outlived the parent"
            assert "Traceback" not in text
            await until(lambda: agent.open_connections == 0, 3, "every agent leg closed")

    run(body(), timeout=60)


# ---------------------------------------------------------------------- --tool-timeout


def test_a_tool_that_times_out_is_answered_with_an_error_and_the_call_goes_on() -> None:
    cancelled = asyncio.Event()

    async def slow(args: Any) -> str:
        try:
            await asyncio.sleep(60)
        finally:
            cancelled.set()
        return "never"

    async def fast(args: Any) -> str:
        return "fine"

    async def body() -> None:
        tools = ToolRegistry({"slow": slow, "fast": fast}, timeout=0.3)
        async with fake_agent() as agent, running_server(agent=agent, tools=tools) as server:
            ws, session = await ready_call(server, agent)
            await session.send(
                {"type": "FunctionCallRequest", "functions": [
                    {"id": "s1", "name": "slow", "arguments": "{}", "client_side": True}]}
            )  # fmt: skip
            took = await until(
                lambda: "FunctionCallResponse" in session.types(), 3, "an answer to the slow tool"
            )
            assert took >= 0.3, "answered before the timeout"
            [answer] = [t for t in session.texts if t["type"] == "FunctionCallResponse"]
            assert answer["id"] == "s1" and answer["name"] == "slow"
            assert "timed out" in json.loads(answer["content"])["error"]
            assert cancelled.is_set(), "the timed-out handler was left running"
            assert server.metrics.tool_errors == 1
            # The call goes on: audio still flows, and the next tool is answered.
            await ws.send(twilio_media(frame(1), 2))
            await until(lambda: len(session.audio) == 160, what="caller audio after the timeout")
            await session.send(
                {"type": "FunctionCallRequest", "functions": [
                    {"id": "f1", "name": "fast", "arguments": "{}", "client_side": True}]}
            )  # fmt: skip
            await until(lambda: session.types().count("FunctionCallResponse") == 2)
            assert session.texts[-1]["content"] == "fine"
            assert server.calls, "the call ended because of the tool"
            await ws.send(twilio_stop())
            await closed_within(ws, 2)
            assert server.metrics.calls_ended == {"hangup": 1}

    run(body())
