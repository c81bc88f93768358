"""Whole calls over loopback: a websockets client plays Twilio, a websockets server the agent."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from peers.frames import client_frame, server_frame, upgrade_request
from sansio import fill_placeholders
from server.app import Server
from server.tools import ToolRegistry
from tests.server_support import (
    API_KEY,
    SETTINGS,
    STREAM_SID,
    caller,
    closed_within,
    fake_agent,
    frame,
    options,
    ready_call,
    recv_json,
    recv_until,
    run,
    running_server,
    twilio_connected,
    twilio_mark,
    twilio_media,
    twilio_start,
    twilio_stop,
    until,
)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_full_call(loop: str) -> None:
    async def body() -> None:
        async with fake_agent(apply_delay=0.15) as agent, running_server(agent=agent) as server:
            ws = await caller(server)
            await ws.send(twilio_connected())
            await ws.send(twilio_start({"From": "+15550001", "To": "+15550002"}))
            sent = bytearray()
            for i in range(40):  # some before SettingsApplied, some after
                await ws.send(twilio_media(frame(i), i + 2))
                sent += frame(i)
                await asyncio.sleep(0.005)
            session = await agent.session()
            await until(lambda: len(session.audio) >= len(sent), what="all caller audio")

            # Settings first, exactly config.json with placeholders filled; the key presented.
            assert session.headers.get("Authorization") == f"Token {API_KEY}"
            assert session.order[0] == "Settings"
            assert session.texts[0] == fill_placeholders(SETTINGS, {"From": "+15550001"})
            # every inbound byte, in order, none before SettingsApplied
            assert bytes(session.audio) == bytes(sent)
            assert session.audio_before_settings_applied == 0

            # agent audio reaches the caller in order as exact media messages
            replies = [bytes([n]) * 480 for n in range(1, 6)]
            for chunk in replies:
                await session.send(chunk)
            received = b""
            while len(received) < 5 * 480:
                message = await recv_json(ws)
                if message["event"] == "mark":
                    continue
                assert message["event"] == "media"
                assert set(message) == {"event", "streamSid", "media"}
                assert set(message["media"]) == {"payload"}
                assert message["streamSid"] == STREAM_SID
                received += base64.b64decode(message["media"]["payload"])
            assert received == b"".join(replies)

            # AgentAudioDone is followed by a mark; its echo is accepted
            await session.send({"type": "AgentAudioDone"})
            marked, _ = await recv_until(ws, "mark")
            assert set(marked) == {"event", "streamSid", "mark"}
            await ws.send(twilio_mark(marked["mark"]["name"]))

            # barge-in: UserStartedSpeaking becomes clear within 50 ms
            await session.send(b"\x07" * 800)
            t0 = time.monotonic()
            await session.send({"type": "UserStartedSpeaking"})
            cleared, _ = await recv_until(ws, "clear")
            assert time.monotonic() - t0 < 0.05
            assert cleared == {"event": "clear", "streamSid": STREAM_SID}

            # the transcript is logged; stop closes the agent leg within 1 s
            await session.send({"type": "ConversationText", "role": "user", "content": "hi"})
            await asyncio.sleep(0.02)
            t0 = time.monotonic()
            await ws.send(twilio_stop())
            await asyncio.wait_for(session.closed.wait(), 1.0)
            assert time.monotonic() - t0 < 1.0
            await closed_within(ws, 1.5)
            await until(lambda: not server.calls, what="call removed")
            assert agent.open_connections == 0
            m = server.metrics
            assert m.calls_started == 1 and m.calls_ended == {"hangup": 1}
            assert m.caller_audio_bytes == len(sent)
            assert m.agent_audio_bytes == 5 * 480 + 800
            assert m.barge_ins == 1
            assert m.added_latency.count > 0  # pre-roll held until SettingsApplied counts too

    run(body(), loop=loop)


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    apply_delay=st.sampled_from([0.0, 0.01, 0.05, 0.12]),
    early=st.integers(0, 5),
    frames=st.integers(1, 25),
    gap_ms=st.integers(0, 8),
)
@example(apply_delay=0.12, early=2, frames=25, gap_ms=8)  # the caller talks through the delay
def test_no_audio_reaches_the_agent_before_settings_applied(
    apply_delay: float, early: int, frames: int, gap_ms: int
) -> None:
    """A real socket agent on loopback, whatever its apply delay and however the caller paces
    its frames around ``start``: not one audio byte arrives before the agent sent
    ``SettingsApplied``, and every byte sent after ``start`` arrives, in order."""

    async def body() -> None:
        async with (
            fake_agent(apply_delay=apply_delay) as agent,
            running_server(agent=agent) as server,
        ):
            ws = await caller(server)
            for i in range(early):  # media before start is dropped, never forwarded
                await ws.send(twilio_media(frame(100 + i), i + 2))
            await ws.send(twilio_start())
            sent = bytearray()
            for i in range(frames):
                await ws.send(twilio_media(frame(i), early + i + 2))
                sent += frame(i)
                await asyncio.sleep(gap_ms / 1000)
            session = await agent.session()
            await until(lambda: len(session.audio) >= len(sent), what="all caller audio")
            assert session.applied_at is not None
            assert session.audio_before_settings_applied == 0, "audio reached the agent too early"
            assert bytes(session.audio) == bytes(sent)
            await ws.send(twilio_stop())
            await closed_within(ws, 2)

    run(body(), timeout=15)


def test_added_latency_p99_is_small() -> None:
    """Measured from outside: caller send -> agent receive, per 20 ms frame, in real time."""

    async def body() -> None:
        async with fake_agent() as agent, running_server(agent=agent) as server:
            ws, session = await ready_call(server, agent)
            arrivals: list[float] = []
            original = session.audio

            class Recorder(bytearray):
                def __iadd__(self, other: Any) -> Recorder:  # type: ignore[override]
                    arrivals.append(time.monotonic())
                    super().__iadd__(other)
                    return self

            session.audio = Recorder(original)
            sent_at: list[float] = []
            t_next = time.monotonic()
            for i in range(100):  # 2 s of real-time audio
                sent_at.append(time.monotonic())
                await ws.send(twilio_media(frame(i), i + 2))
                t_next += 0.02
                await asyncio.sleep(max(0.0, t_next - time.monotonic()))
            await until(lambda: len(arrivals) >= 100)
            delays = sorted(a - s for a, s in zip(arrivals, sent_at, strict=True))
            assert delays[98] <= 0.06, delays[-5:]
            assert server.metrics.added_latency.quantile(0.99) <= 0.06
            await ws.send(twilio_stop())
            await closed_within(ws, 2)

    run(body())


def test_transcript_and_call_lines_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")

    async def body() -> None:
        flags = ("--log-transcripts",)  # transcripts are logged only on request (issue 13)
        async with fake_agent() as agent, running_server(*flags, agent=agent) as server:
            ws, session = await ready_call(server, agent)
            await session.send({"type": "ConversationText", "role": "assistant", "content": "Hi!"})
            await asyncio.sleep(0.05)
            await ws.send(twilio_stop())
            await closed_within(ws, 1.5)
            await until(lambda: not server.calls)

    run(body())
    text = caplog.text
    assert "call started callSid=CA" in text and "streamSid=MZ" in text
    assert "call ended" in text and "reason=hangup" in text and "duration=" in text
    assert "caller_bytes=" in text and "agent_bytes=" in text
    assert "transcript" in text and "assistant: Hi!" in text
    assert API_KEY not in text


@pytest.mark.parametrize("how", ["close", "error"])
def test_agent_ending_closes_caller(how: str) -> None:
    async def body() -> None:
        async with fake_agent() as agent, running_server(agent=agent) as server:
            ws, session = await ready_call(server, agent)
            if how == "close":
                await session.ws.close(1011, "boom")
            else:
                await session.send({"type": "Error", "code": "X", "description": "bad"})
            assert await closed_within(ws, 1.5) < 1.5
            await until(lambda: not server.calls)
            assert server.metrics.calls_ended == {"agent_error": 1}
            assert server.metrics.agent_errors == 1
            await asyncio.wait_for(session.closed.wait(), 2)

    run(body())


def test_agent_unreachable_ends_call_cleanly() -> None:
    async def body() -> None:
        with socket.socket() as s:  # a port with nobody listening
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"ws://127.0.0.1:{port}/v1/agent/converse"
        async with running_server("--agent-url", url) as server:
            ws = await caller(server)
            await ws.send(twilio_connected())
            await ws.send(twilio_start())
            await ws.send(twilio_media(frame(1), 2))
            assert await closed_within(ws, 3) < 3
            assert ws.close_code == 1000
            await until(lambda: not server.calls)
            assert server.metrics.calls_ended == {"agent_unreachable": 1}

    run(body())


def test_agent_that_never_applies_settings_times_out() -> None:
    async def body() -> None:
        async with (
            fake_agent(apply=False) as agent,
            running_server("--settings-timeout", "0.3", agent=agent) as server,
        ):
            ws = await caller(server)
            await ws.send(twilio_start())
            assert await closed_within(ws, 2) < 2
            await until(lambda: not server.calls)
            assert server.metrics.calls_ended == {"timeout": 1}
            assert agent.open_connections == 0

    run(body())


def test_caller_vanishing_closes_agent() -> None:
    async def body() -> None:
        async with fake_agent() as agent, running_server(agent=agent) as server:
            ws, session = await ready_call(server, agent)
            ws.transport.abort()  # no close frame, no stop
            await asyncio.wait_for(session.closed.wait(), 1.0)
            await until(lambda: not server.calls)
            assert server.metrics.calls_ended == {"hangup": 1}

    run(body())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_bad_input_leaves_concurrent_call_untouched(loop: str) -> None:
    """Junk on one call (non-JSON, binary, broken media, a 10 MB frame) ends or is ignored
    there, while a concurrent call keeps bridging audio both ways."""

    async def body() -> None:
        async with fake_agent() as agent, running_server(agent=agent) as server:
            good = await caller(server)
            await good.send(twilio_start())
            good_session = await agent.session(0)
            await until(lambda: good_session.applied_at is not None)
            sent = bytearray()
            seq = 2

            async def exchange() -> None:
                nonlocal seq
                await good.send(twilio_media(frame(seq), seq))
                sent.extend(frame(seq))
                seq += 1
                await good_session.send(b"\x05" * 160)
                message = await recv_json(good)
                while message["event"] != "media":
                    message = await recv_json(good)

            # 1. not JSON -> 1007
            bad = await caller(server)
            await bad.send(twilio_start(stream_sid="MZbad1"))
            await bad.send("this is not json")
            assert await closed_within(bad, 2) < 2 and bad.close_code == 1007
            await exchange()

            # 2. binary -> 1003
            bad = await caller(server)
            await bad.send(b"\x00\x01binary")
            assert await closed_within(bad, 2) < 2 and bad.close_code == 1003
            await exchange()

            # 3. broken media is ignored; the call goes on
            bad = await caller(server)
            await bad.send(twilio_start(stream_sid="MZbad3"))
            await bad.send(json.dumps({"event": "media", "media": {"payload": "%%%not base64"}}))
            await bad.send(json.dumps({"event": "media", "media": "nope"}))
            await bad.send(json.dumps({"event": "media"}))
            await bad.send(json.dumps({"event": "bogus"}))
            await exchange()
            assert bad.state.name == "OPEN"
            await bad.send(twilio_stop(stream_sid="MZbad3"))
            await closed_within(bad, 2)

            # 4. a 10 MB frame -> 1009, refused early
            bad = await caller(server, max_size=None)
            await bad.send(twilio_start(stream_sid="MZbad4"))
            t0 = time.monotonic()
            big = "x" * (10 * 1024 * 1024)
            send_task = asyncio.ensure_future(bad.send(big))
            assert await closed_within(bad, 5) < 5
            send_task.cancel()
            assert bad.close_code == 1009
            assert time.monotonic() - t0 < 5
            await exchange()

            # the good call kept every byte, in order
            await until(lambda: len(good_session.audio) >= len(sent))
            assert bytes(good_session.audio) == bytes(sent)
            await good.send(twilio_stop())
            await closed_within(good, 2)
            await until(lambda: not server.calls, what="all calls removed")
            assert agent.open_connections == 0
            assert server.metrics.calls_ended.get("protocol_error") == 2  # 1. and 4.
            assert server.metrics.calls_rejected == {"no_start": 1}  # 2. never started
            assert server.metrics.calls_started == sum(server.metrics.calls_ended.values())
            assert server.metrics.undecodable_media == 3  # the three broken media in 3.
            assert server.metrics.ignored_messages >= 1  # the unknown event in 3.

    run(body(), timeout=40, loop=loop)


def _masked_text_frame(text: str) -> bytes:
    return client_frame(text.encode(), mask=b"\x01\x02\x03\x04")


def test_bytes_behind_the_upgrade_request_are_not_lost() -> None:
    async def body() -> None:
        async with fake_agent() as agent, running_server(agent=agent) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            request = upgrade_request("/media-stream")
            # the upgrade request and two frames in one TCP write
            frames = _masked_text_frame(twilio_connected()) + _masked_text_frame(twilio_start())
            writer.write(request + frames)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            assert head.startswith(b"HTTP/1.1 101 ")
            assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
            session = await agent.session()  # the start behind the request opened the agent
            await until(lambda: bool(session.order))
            assert session.order[0] == "Settings"
            writer.close()
            await until(lambda: not server.calls)

    run(body())


def test_ping_is_answered_with_its_payload() -> None:
    """A ping gets a pong with the same payload (RFC 6455 5.5.3), at once, on the raw wire."""

    async def body() -> None:
        async with fake_agent() as agent, running_server(agent=agent) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(upgrade_request("/media-stream") + client_frame(b"hello", 0x9))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            assert head.startswith(b"HTTP/1.1 101 ")
            pong = server_frame(b"hello", 0xA)
            assert await asyncio.wait_for(reader.readexactly(len(pong)), 1) == pong
            writer.close()
            await until(lambda: not server.calls)

    run(body())


def test_fragmented_message_is_reassembled() -> None:
    async def body() -> None:
        async with fake_agent() as agent, running_server(agent=agent) as server:
            ws = await caller(server)
            text = twilio_start()
            await ws.send([text[:10], text[10:50], text[50:]])  # three fragments
            session = await agent.session()
            await until(lambda: bool(session.order))
            assert session.order[0] == "Settings"
            await ws.close()
            await until(lambda: not server.calls)

    run(body())


async def _lookup(args: Any) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"open": True, "day": args.get("day")}


def _raises(args: Any) -> str:
    raise RuntimeError("secret internals")


def test_client_side_tools() -> None:
    async def body() -> None:
        tools = ToolRegistry({"lookup": _lookup, "broken": _raises})
        async with fake_agent() as agent, running_server(agent=agent, tools=tools) as server:
            ws, session = await ready_call(server, agent)
            await session.send(
                {
                    "type": "FunctionCallRequest",
                    "functions": [
                        {
                            "id": "f1",
                            "name": "lookup",
                            "arguments": '{"day": "monday"}',
                            "client_side": True,
                        },
                        {"id": "f2", "name": "missing", "arguments": "{}", "client_side": True},
                        {"id": "f3", "name": "broken", "arguments": "{}", "client_side": True},
                    ],
                }
            )
            await until(lambda: session.types().count("FunctionCallResponse") == 3)
            answers = {t["id"]: t for t in session.texts if t["type"] == "FunctionCallResponse"}
            assert json.loads(answers["f1"]["content"]) == {"open": True, "day": "monday"}
            assert answers["f1"]["name"] == "lookup"
            assert "unknown tool" in json.loads(answers["f2"]["content"])["error"]
            assert "failed" in json.loads(answers["f3"]["content"])["error"]
            assert server.metrics.tool_calls == 3 and server.metrics.tool_errors == 2
            await ws.send(twilio_stop())
            await closed_within(ws, 2)

    run(body())


def test_end_call_tool_hangs_up_once_the_goodbye_has_played() -> None:
    """The goodbye the agent sent before ``end_call`` is still playing: the bridge hangs up when
    the caller echoes its mark (played), not at the request and not at the grace deadline."""

    async def body() -> None:
        async with fake_agent() as agent, running_server(agent=agent) as server:
            ws, session = await ready_call(server, agent)
            goodbye = b"\x11" * 1600  # 200 ms: one reply, no progress marks
            await session.send(goodbye)
            await session.send({"type": "AgentAudioDone"})
            await session.send(
                {
                    "type": "FunctionCallRequest",
                    "functions": [
                        {"id": "e1", "name": "end_call", "arguments": "{}", "client_side": True}
                    ],
                }
            )
            marked, before = await recv_until(ws, "mark")
            heard = b"".join(
                base64.b64decode(m["media"]["payload"]) for m in before if m["event"] == "media"
            )
            assert heard == goodbye
            await until(lambda: "FunctionCallResponse" in session.types(), what="the answer")
            await asyncio.sleep(0.5)  # the caller is still playing the goodbye
            assert ws.state.name == "OPEN", "hung up before the goodbye's mark came back"
            assert not server.metrics.calls_ended
            await ws.send(twilio_mark(marked["mark"]["name"]))
            assert await closed_within(ws, 2) < 1.0, "the echo of the last mark hangs up"
            assert ws.close_code == 1000 and "goodbye played" in (ws.close_reason or "")
            await until(lambda: not server.calls)
            assert server.metrics.calls_ended == {"tool": 1}

    run(body())


def test_many_sequential_calls_leave_nothing_behind() -> None:
    async def body() -> None:
        async with fake_agent() as agent, running_server(agent=agent) as server:
            for n in range(20):
                ws = await caller(server)
                await ws.send(twilio_start())
                session = await agent.session(n)
                await until(lambda s=session: s.applied_at is not None)  # type: ignore[misc]
                await ws.send(twilio_media(frame(n), 2))
                await ws.send(twilio_stop())
                await closed_within(ws, 2)
                await asyncio.wait_for(session.closed.wait(), 2)
            await until(lambda: not server.calls and len(server.connections) == 0)
            assert agent.open_connections == 0
            assert server.metrics.calls_ended == {"hangup": 20}

    run(body())


def test_shutdown_ends_calls_with_reason() -> None:
    async def body() -> None:
        async with fake_agent() as agent:
            async with running_server(agent=agent, grace=0.2) as server:
                ws, session = await ready_call(server, agent)
            # leaving the block ran shutdown(grace=0.2): both legs closed with a reason
            assert await closed_within(ws, 2) < 2
            assert ws.close_code == 1000 and "shutdown" in (ws.close_reason or "")
            await asyncio.wait_for(session.closed.wait(), 2)
            assert not server.calls
            assert server.metrics.calls_ended == {"shutdown": 1}

    run(body())


CAP = 65536  # --max-write-buffer in the tests below
#: The bound: the cap, plus what one pump may add past it (one agent message, as media JSON).
CAP_BOUND = 3 * CAP


class PeakBuffers:
    """Samples, from outside the driver, the bytes each call holds unsent on either leg."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.caller = 0
        self.agent = 0

    async def __aenter__(self) -> PeakBuffers:
        self._task = asyncio.ensure_future(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()

    async def _sample(self) -> None:
        while True:
            for call in list(self.server.calls):
                self.caller = max(self.caller, call.twilio.transport.get_write_buffer_size())
                if call.agent is not None:
                    self.agent = max(self.agent, call.agent.buffered)
            await asyncio.sleep(0)


def _unsent_at_end(caplog: pytest.LogCaptureFixture, who: str) -> int:
    found = [
        re.search(rf"{who} not reading: (\d+) bytes unsent", r.getMessage()) for r in caplog.records
    ]
    sizes = [int(m.group(1)) for m in found if m is not None]
    assert sizes, f"no '{who} not reading' line"
    return sizes[0]


def test_caller_not_reading_ends_its_call_within_the_write_cap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The write cap is a bound: the call ends when the caller's unsent bytes pass
    --max-write-buffer, so what the server holds for it never grows far beyond the flag."""
    caplog.set_level("INFO", logger="server")

    async def body() -> None:
        async with (
            fake_agent() as agent,
            running_server("--max-write-buffer", str(CAP), agent=agent) as server,
            PeakBuffers(server) as peak,
        ):
            # The caller is kept open but never read: TCP backs up.
            _ws, session = await ready_call(server, agent, max_queue=1)
            chunk = b"\x33" * 32000
            for _ in range(600):  # ~26 MB of media JSON: more than loopback buffers hold
                if server.metrics.calls_ended:
                    break
                await session.send(chunk)
                await asyncio.sleep(0)
            await until(lambda: bool(server.metrics.calls_ended), timeout=10)
            assert server.metrics.calls_ended == {"timeout": 1}
            await asyncio.wait_for(session.closed.wait(), 5)
            await until(lambda: not server.calls, timeout=5)
            assert CAP < peak.caller <= CAP_BOUND, f"held {peak.caller} B for the caller"
        assert CAP < _unsent_at_end(caplog, "caller") <= CAP_BOUND

    run(body(), timeout=40)


def test_agent_not_reading_ends_its_call_within_the_write_cap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same bound on the agent leg: queued plus unsent bytes stay near --max-write-buffer."""
    caplog.set_level("INFO", logger="server")

    async def body() -> None:
        async with (
            fake_agent() as agent,
            running_server(
                "--max-write-buffer", str(CAP), "--chunk-ms", "1000", agent=agent
            ) as server,
            PeakBuffers(server) as peak,
        ):
            ws, session = await ready_call(server, agent)
            session.ws.transport.pause_reading()  # the agent stops reading
            seq = 2
            for _ in range(3000):  # up to 24 MB of audio
                if server.metrics.calls_ended:
                    break
                await ws.send(twilio_media(b"\x44" * 8000, seq))
                seq += 1
                await asyncio.sleep(0)
            await until(lambda: bool(server.metrics.calls_ended), timeout=10)
            assert server.metrics.calls_ended == {"agent_error": 1}
            await closed_within(ws, 5)
            session.ws.transport.resume_reading()
            await until(lambda: not server.calls, timeout=5)
            assert CAP < peak.agent <= CAP_BOUND, f"held {peak.agent} B for the agent"
        assert CAP < _unsent_at_end(caplog, "agent") <= CAP_BOUND

    run(body(), timeout=40)


def test_agent_url_local_bridges_to_the_bundled_agent_without_a_key() -> None:
    """`--agent local` (short for `--agent-url local`): a Twilio connectivity check, no key."""
    from peers.caller import TwilioCaller

    async def body() -> None:
        server = Server(options("--agent", "local", env={"DEEPGRAM_API_KEY": ""}))
        await server.start()
        try:
            url = f"ws://127.0.0.1:{server.port}/media-stream"
            async with TwilioCaller(url, speed=4.0) as call:
                assert await call.wait_agent_speaking(5), "the local agent's greeting"
                await call.hangup()
            assert call.figures().violations == ()
        finally:
            await server.shutdown(0.0)

    run(body())
