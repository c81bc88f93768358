"""Tests of the local peers (peers): the Deepgram stand-in and the Twilio caller.

Each peer is exercised against plain ``websockets`` stand-ins written here, and both together
through a deliberately tiny bridge, so the peers are checked against the documented protocols
and not against the project's own bridge. Everything runs on 127.0.0.1 with ephemeral ports.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import itertools
import json
import time
import uuid
import wave
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

from peers.agent import GOODBYE_TEXT, REPLY_TEXT, TRANSFER_TEXT, AgentSession, LocalAgent
from peers.audio import (
    DECODE_TABLE,
    SILENCE_FRAME,
    Vad,
    encode_sample,
    load_clip,
    mulaw_to_pcm,
    pcm_to_mulaw,
    rms,
    silence,
    tone,
    write_wav,
)
from peers.caller import TwilioCaller, standard_call, twilio_signature
from tests.peers.wire import collect, of_type

T = TypeVar("T")

GREETING = "Hello, you've reached the practice. How can I help?"
SETTINGS: dict[str, Any] = {
    "type": "Settings",
    "audio": {
        "input": {"encoding": "mulaw", "sample_rate": 8000},
        "output": {"encoding": "mulaw", "sample_rate": 8000, "container": "none"},
    },
    "agent": {
        "listen": {"provider": {"type": "deepgram", "model": "nova-3"}},
        "think": {
            "provider": {"type": "open_ai", "model": "gpt-4o-mini"},
            "prompt": "Be brief.",
            "functions": [{"name": "end_call", "description": "End the call.", "parameters": {}}],
        },
        "speak": {"provider": {"type": "deepgram", "model": "aura-2-thalia-en"}},
        "greeting": GREETING,
    },
}
CALLER_CLIPS = ["caller-hello", "caller-interrupt", "caller-symptoms", "caller-goodbye"]


def run(coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
    """Run one async test body with a hard deadline (no pytest-asyncio needed)."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def settings(**changes: Any) -> dict[str, Any]:
    """SETTINGS with dotted-path changes; a value of None deletes the field."""
    result = copy.deepcopy(SETTINGS)
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = result
        for key in parents:
            node = node[key]
        if value is None:
            del node[leaf]
        else:
            node[leaf] = value
    return result


async def recv_json(ws: ClientConnection, timeout: float = 3.0) -> dict[str, Any]:
    """The next JSON message, skipping binary audio."""
    while True:
        message = await asyncio.wait_for(ws.recv(), timeout)
        if isinstance(message, str):
            result: dict[str, Any] = json.loads(message)
            return result



async def open_session(agent: LocalAgent, body: dict[str, Any] | None = None) -> ClientConnection:
    """Connect, check Welcome, send Settings and wait for SettingsApplied."""
    ws = await connect(agent.url, compression=None)
    welcome = await recv_json(ws)
    assert welcome["type"] == "Welcome"
    uuid.UUID(welcome["request_id"])
    await ws.send(json.dumps(body or SETTINGS))
    assert (await recv_json(ws))["type"] == "SettingsApplied"
    return ws


async def send_audio(ws: ClientConnection, audio: bytes) -> None:
    for offset in range(0, len(audio), 160):
        await ws.send(audio[offset : offset + 160])


# ---------------------------------------------------------------- audio


def test_mulaw_codec_round_trips_and_silence() -> None:
    assert DECODE_TABLE[0xFF] == 0 and DECODE_TABLE[0x7F] == 0
    assert DECODE_TABLE[0x00] == -32124 and DECODE_TABLE[0x80] == 32124
    # every code but 0x7F (negative zero) survives decode + encode
    assert [code for code in range(256) if encode_sample(DECODE_TABLE[code]) != code] == [0x7F]
    assert encode_sample(40000) == encode_sample(32767) == 0x80
    clip = load_clip("caller-hello")
    assert pcm_to_mulaw(mulaw_to_pcm(clip)) == clip.replace(b"\x7f", b"\xff")
    assert silence(20) == SILENCE_FRAME == b"\xff" * 160
    assert rms(silence(100)) == 0.0 and rms(b"") == 0.0
    assert rms(tone(440, 200, amplitude=0.5)) > 8000
    with pytest.raises(ValueError):
        pcm_to_mulaw(b"\x00")
    with pytest.raises(FileNotFoundError):
        load_clip("no-such-clip")


@pytest.mark.parametrize("name", CALLER_CLIPS)
def test_vad_finds_one_utterance_per_caller_clip(name: str) -> None:
    clip = load_clip(name)
    vad = Vad()
    events = vad.feed(silence(500)) + vad.feed(clip[:77]) + vad.feed(clip[77:] + silence(1000))
    assert [event.kind for event in events] == ["start", "end"]
    start, end = events[0].offset, events[1].offset
    assert 4000 <= start < 4000 + 800  # speech begins within 100 ms of the clip
    assert 0.85 * len(clip) < end - start <= len(clip)


def test_vad_ignores_digital_silence() -> None:
    vad = Vad()
    assert vad.feed(silence(3000)) == [] and not vad.speaking


def test_write_wav(tmp_path: Path) -> None:
    path = tmp_path / "clip.wav"
    clip = load_clip("caller-goodbye")
    write_wav(path, clip)
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 8000)
        assert wav.readframes(wav.getnframes()) == mulaw_to_pcm(clip)


# ---------------------------------------------------------------- LocalAgent


def test_agent_welcome_settings_and_greeting() -> None:
    async def body() -> AgentSession:
        async with LocalAgent(pace=50, settings_delay=0) as agent:
            assert agent.url == f"ws://127.0.0.1:{agent.port}/v1/agent/converse"
            ws = await open_session(agent)
            messages, audio = await collect(ws, of_type("AgentAudioDone"))
            assert [m["type"] for m in messages] == [
                "ConversationText",
                "AgentStartedSpeaking",
                "AgentAudioDone",
            ]
            assert messages[0] == {
                "type": "ConversationText",
                "role": "assistant",
                "content": GREETING,
            }
            assert set(messages[1]) == {"type", "total_latency", "tts_latency", "ttt_latency"}
            assert audio == load_clip("agent-greeting")
            await ws.send(json.dumps({"type": "KeepAlive"}))
            await ws.close()
        return agent.sessions[0]

    session = run(body())
    assert session.settings == SETTINGS
    assert session.events == ["Settings", "KeepAlive"]
    assert session.audio_before_settings_applied == 0
    assert session.headers["Host"].startswith("127.0.0.1:")
    assert session.close_code == 1000 and session.error is None


def test_agent_sends_audio_in_paced_chunks() -> None:
    sizes: list[int] = []
    times: list[float] = []

    def on_sent(session: AgentSession, data: bytes, t: float) -> None:
        sizes.append(len(data))
        times.append(t)

    async def body() -> None:
        async with LocalAgent(pace=10, settings_delay=0, on_sent=on_sent) as agent:
            ws = await open_session(agent)
            await collect(ws, of_type("AgentAudioDone"))
            await ws.close()

    run(body())
    greeting = len(load_clip("agent-greeting"))
    assert sizes[:-1] == [800] * (len(sizes) - 1) and sum(sizes) == greeting
    # 100 ms chunks at 10x real time: one every 10 ms, never faster
    assert times[-1] - times[0] >= 0.95 * (len(sizes) - 1) * 0.01


@pytest.mark.parametrize(
    ("messages", "code", "detail"),
    [
        ([b"\xff" * 160], "NON_SETTINGS_MESSAGE_BEFORE_SETTINGS", "binary"),
        ([{"type": "KeepAlive"}], "NON_SETTINGS_MESSAGE_BEFORE_SETTINGS", "KeepAlive"),
        (["{not json"], "UNPARSABLE_CLIENT_MESSAGE", "JSON"),
        ([{"no": "type"}], "UNPARSABLE_CLIENT_MESSAGE", "type"),
        ([SETTINGS, {"type": "Bogus"}], "UNPARSABLE_CLIENT_MESSAGE", "Bogus"),
        ([SETTINGS, SETTINGS], "SETTINGS_ALREADY_APPLIED", "already"),
        ([settings(audio=None)], "INVALID_SETTINGS", "audio"),
        ([settings(audio__input__sample_rate=None)], "INVALID_SETTINGS", "audio.input.sample_rate"),
        ([settings(audio__input__encoding="linear16")], "INVALID_SETTINGS", "audio.input.encoding"),
        ([settings(audio__output__sample_rate=24000)], "INVALID_SETTINGS", "audio.output.sample"),
        ([settings(audio__output__container="wav")], "INVALID_SETTINGS", "container"),
        ([settings(agent=None)], "INVALID_SETTINGS", "agent"),
        (
            [SETTINGS, {"type": "FunctionCallResponse", "id": "fc_1", "name": "end_call"}],
            "UNPARSABLE_CLIENT_MESSAGE",
            "content",
        ),
    ],
)
def test_agent_rejects_protocol_errors(
    messages: list[dict[str, Any] | str | bytes], code: str, detail: str
) -> None:
    async def body() -> tuple[list[dict[str, Any]], AgentSession]:
        async with LocalAgent(settings_delay=0, pace=50) as agent, connect(agent.url) as ws:
            await recv_json(ws)
            for message in messages:
                await ws.send(json.dumps(message) if isinstance(message, dict) else message)
            received, _ = await collect(ws, of_type("Error"))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 2)
            assert ws.close_code == 1000 and ws.close_reason == code
        return received, agent.sessions[0]

    received, session = run(body())
    error = received[-1]
    assert error["code"] == code and detail in error["description"]
    assert set(error) == {"type", "code", "description"}
    assert session.error == code


def test_agent_requires_api_key() -> None:
    async def body() -> AgentSession:
        async with LocalAgent(api_key="sekrit", settings_delay=0) as agent:
            for headers in ({}, {"Authorization": "Token wrong"}, {"Authorization": "sekrit"}):
                with pytest.raises(InvalidStatus) as failure:
                    await connect(agent.url, additional_headers=headers)
                assert failure.value.response.status_code == 401
            async with connect(agent.url, additional_headers={"Authorization": "Token sekrit"}):
                pass
        return agent.sessions[0]

    session = run(body())
    assert session.headers["Authorization"] == "Token sekrit"


def test_agent_counts_audio_sent_before_settings_applied() -> None:
    async def body() -> AgentSession:
        async with LocalAgent(settings_delay=0.3) as agent, connect(agent.url) as ws:
            await recv_json(ws)
            await ws.send(json.dumps(SETTINGS))
            await send_audio(ws, silence(100))
            assert (await recv_json(ws))["type"] == "SettingsApplied"
            await send_audio(ws, silence(100))
            await ws.send(json.dumps({"type": "KeepAlive"}))
            await asyncio.sleep(0.05)
        return agent.sessions[0]

    session = run(body())
    assert session.audio_before_settings_applied == 800
    assert session.audio_bytes == 1600 and session.error is None


def test_agent_barge_in_then_replies_to_the_caller() -> None:
    async def body() -> tuple[list[dict[str, Any]], bytes, AgentSession]:
        async with LocalAgent(pace=4, settings_delay=0, think_delay=0.01, reply="tone") as agent:
            ws = await open_session(agent)
            first = await asyncio.wait_for(ws.recv(), 2)  # greeting text
            assert json.loads(first)["type"] == "ConversationText"
            await send_audio(ws, load_clip("caller-hello") + silence(800))
            last = lambda m: m["type"] == "History" and m["role"] == "assistant"  # noqa: E731
            messages, audio = await collect(ws, last)
            await ws.close()
        return messages, audio, agent.sessions[0]

    messages, audio, session = run(body())
    kinds = [m["type"] for m in messages]
    # The greeting is abandoned (no AgentAudioDone for it) as soon as the caller speaks.
    barge_in = kinds.index("UserStartedSpeaking")
    assert "AgentAudioDone" not in kinds[:barge_in]
    assert kinds[barge_in:] == [
        "UserStartedSpeaking",
        "ConversationText",
        "History",
        "AgentThinking",
        "ConversationText",
        "AgentStartedSpeaking",
        "AgentAudioDone",
        "LatencyReport",
        "History",
    ]
    user_text = messages[barge_in + 1]
    assert user_text["role"] == "user" and user_text["content"] == "(caller spoke for 4.6 s)"
    assert messages[barge_in + 4] == {
        "type": "ConversationText",
        "role": "assistant",
        "content": REPLY_TEXT,
    }
    assert audio.endswith(LocalAgent().tone_audio)
    assert len(audio) < len(load_clip("agent-greeting")) + len(LocalAgent().tone_audio)
    assert session.utterances == 1


def test_agent_echo_reply_plays_back_the_utterance() -> None:
    async def body() -> bytes:
        async with LocalAgent(pace=50, settings_delay=0, think_delay=0, reply="echo") as agent:
            ws = await open_session(agent, settings(agent__greeting=None))
            clip = load_clip("caller-symptoms")
            await send_audio(ws, clip + silence(800))
            _, audio = await collect(ws, of_type("AgentAudioDone"))
            await ws.close()
        return audio

    echoed = run(body())
    assert rms(echoed) > 1000 and echoed in load_clip("caller-symptoms")


def test_agent_function_call_on_hangup_cue() -> None:
    async def body() -> tuple[list[dict[str, Any]], list[dict[str, Any]], bytes, AgentSession]:
        async with LocalAgent(pace=50, settings_delay=0, think_delay=0) as agent:
            ws = await open_session(agent, settings(agent__greeting=None))
            await ws.send(json.dumps({"type": "InjectUserMessage", "content": "pressed #"}))
            before, _ = await collect(ws, of_type("FunctionCallRequest"))
            request = before[-1]["functions"][0]
            wrong = {
                "type": "FunctionCallResponse",
                "id": "fc_x",
                "name": "end_call",
                "content": "ok",
            }
            await ws.send(json.dumps(wrong))
            warning = await recv_json(ws)
            assert warning["type"] == "Warning" and "fc_x" in warning["description"]
            response = {**wrong, "id": request["id"]}
            await ws.send(json.dumps(response))
            after, audio = await collect(ws, of_type("AgentAudioDone"))
            await ws.close()
        return before, after, audio, agent.sessions[0]

    before, after, audio, session = run(body())
    assert [m["type"] for m in before] == [
        "ConversationText",
        "History",
        "AgentThinking",
        "FunctionCallRequest",
    ]
    assert before[0] == {"type": "ConversationText", "role": "user", "content": "pressed #"}
    (function,) = before[-1]["functions"]
    assert function["id"].startswith("fc_") and function["name"] == "end_call"
    assert function["client_side"] is True
    assert json.loads(function["arguments"]) == {"reason": "caller said goodbye"}
    assert after[0] == {"type": "ConversationText", "role": "assistant", "content": GOODBYE_TEXT}
    assert 8000 <= len(audio) <= 16000  # a 1-2 s goodbye
    assert [r["id"] for r in session.function_call_responses] == ["fc_x", function["id"]]


def test_agent_says_goodbye_without_end_call_after_n_utterances() -> None:
    async def body() -> list[dict[str, Any]]:
        async with LocalAgent(
            pace=50, settings_delay=0, think_delay=0, hangup_after_utterances=1
        ) as agent:
            ws = await open_session(agent, settings(agent__greeting=None, agent__think=None))
            await send_audio(ws, load_clip("caller-goodbye") + silence(800))
            messages, _ = await collect(ws, of_type("AgentAudioDone"))
            await ws.close()
        return messages

    messages = run(body())
    assert "FunctionCallRequest" not in [m["type"] for m in messages]
    assert {"type": "ConversationText", "role": "assistant", "content": GOODBYE_TEXT} in messages


TRANSFER_FUNCTION = {
    "name": "transfer_call",
    "description": "Transfer the caller to a person.",
    "parameters": {
        "type": "object",
        "properties": {"target": {"type": "string"}, "reason": {"type": "string"}},
        "required": ["target"],
    },
}


def test_agent_calls_transfer_call_on_turn_n_then_announces_the_result() -> None:
    async def body() -> tuple[list[dict[str, Any]], list[dict[str, Any]], bytes, AgentSession]:
        agent = LocalAgent(
            pace=50, settings_delay=0, think_delay=0, transfer_after_utterances=2,
            transfer_target="front_desk",
        )  # fmt: skip
        functions = [TRANSFER_FUNCTION, *SETTINGS["agent"]["think"]["functions"]]
        body = settings(agent__greeting=None, agent__think__functions=functions)
        async with agent:
            ws = await open_session(agent, body)
            await send_audio(ws, load_clip("caller-hello") + silence(800))
            first, _ = await collect(ws, of_type("AgentAudioDone"))  # turn 1: a plain reply
            await send_audio(ws, load_clip("caller-symptoms") + silence(800))
            before, _ = await collect(ws, of_type("FunctionCallRequest"))
            with pytest.raises(TimeoutError):  # nothing is said until the result is in
                await collect(ws, lambda m: True, timeout=0.3)
            (call,) = before[-1]["functions"]
            result = json.dumps({"ok": True, "result": "Tell the caller."})
            response = {"type": "FunctionCallResponse", "id": call["id"], "name": call["name"]}
            await ws.send(json.dumps({**response, "content": result}))
            after, audio = await collect(ws, of_type("AgentAudioDone"))
            await ws.close()
        assert "FunctionCallRequest" not in [m["type"] for m in first]
        return before, after, audio, agent.sessions[0]

    before, after, audio, session = run(body())
    (function,) = before[-1]["functions"]
    assert function["name"] == "transfer_call" and function["client_side"] is True
    arguments = json.loads(function["arguments"])
    assert arguments["target"] == "front_desk" and arguments["reason"]
    history = after[0]
    assert history["type"] == "History" and history["function_calls"][0]["id"] == function["id"]
    assert {"type": "ConversationText", "role": "assistant", "content": TRANSFER_TEXT} in after
    types = [m["type"] for m in after]
    assert types.index("ConversationText") < types.index("AgentAudioDone")
    assert len(audio) >= 4000  # the announcement is spoken, not only written
    assert [r["id"] for r in session.function_call_responses] == [function["id"]]


def test_agent_without_transfer_call_declared_just_replies() -> None:
    async def body() -> list[dict[str, Any]]:
        agent = LocalAgent(pace=50, settings_delay=0, think_delay=0, transfer_after_utterances=1)
        async with agent:
            ws = await open_session(agent, settings(agent__greeting=None))
            await send_audio(ws, load_clip("caller-hello") + silence(800))
            messages, _ = await collect(ws, of_type("AgentAudioDone"))
            await ws.close()
        return messages

    messages = run(body())
    assert "FunctionCallRequest" not in [m["type"] for m in messages]
    assert {"type": "ConversationText", "role": "assistant", "content": REPLY_TEXT} in messages


def test_agent_idle_timeout() -> None:
    async def body() -> dict[str, Any]:
        async with LocalAgent(idle_timeout=0.3, settings_delay=0) as agent:
            ws = await open_session(agent, settings(agent__greeting=None))
            start = time.perf_counter()
            error = await recv_json(ws)
            assert time.perf_counter() - start >= 0.25
            with pytest.raises(ConnectionClosed):
                await ws.recv()
        return error

    error = run(body())
    assert error["type"] == "Error" and error["code"] == "CLIENT_MESSAGE_TIMEOUT"


def test_agent_continuous_mode_and_bench_hooks() -> None:
    sent: list[tuple[int, float]] = []
    received: list[bytes] = []

    async def body() -> None:
        agent = LocalAgent(
            continuous=True,
            settings_delay=0,
            on_sent=lambda session, data, t: sent.append((len(data), t)),
            on_audio=lambda session, data, t: received.append(data),
        )
        async with agent:
            ws = await open_session(agent)
            sizes = [len(await asyncio.wait_for(ws.recv(), 1)) for _ in range(5)]
            assert sizes == [480] * 5  # 60 ms chunks, and no greeting text in bench mode
            await send_audio(ws, b"\x01" * 160 + b"\x02" * 160)
            session = agent.sessions[0]
            await session.user_started_speaking()
            await session.send_json({"type": "Custom", "n": 1})
            await session.send_bytes(b"\x00" * 10)
            messages, _ = await collect(ws, of_type("Custom"))
            assert [m["type"] for m in messages] == ["UserStartedSpeaking", "Custom"]
            assert len(await asyncio.wait_for(ws.recv(), 1)) in (10, 480)
            await ws.close()

    run(body())
    assert received == [b"\x01" * 160, b"\x02" * 160]
    assert 10 in [size for size, _ in sent]  # the test's own send_bytes went through the hook
    chunk_times = [t for size, t in sent if size == 480]
    gaps = [later - earlier for earlier, later in itertools.pairwise(chunk_times)]
    # One 60 ms chunk per 60 ms, on an absolute schedule: a chunk delayed by a busy machine is
    # followed by a quick catch-up, but the sender never runs ahead of real time.
    assert len(gaps) >= 4 and 0.04 < sum(gaps) / len(gaps) < 0.09
    start = chunk_times[0]
    assert all(t - start >= (i - 1) * 0.06 for i, t in enumerate(chunk_times))


def test_agent_stop_closes_open_sessions() -> None:
    async def body() -> AgentSession:
        agent = LocalAgent(continuous=True, settings_delay=0)
        await agent.start()
        ws = await open_session(agent)
        await agent.stop()
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 2)
        return agent.sessions[0]

    session = run(body())
    assert session.closed.is_set() and session.close_code == 1001


# ---------------------------------------------------------------- TwilioCaller


async def bridge_stub(
    behaviour: Callable[[ServerConnection, str], Coroutine[Any, Any, None]],
    received: list[Any],
    headers: list[Any],
) -> Server:
    """A fake bridge: records what the caller sends and runs ``behaviour`` after ``start``."""

    async def handle(ws: ServerConnection) -> None:
        assert ws.request is not None
        headers.append(ws.request.headers)
        behaviour_task: asyncio.Task[None] | None = None
        try:
            async for message in ws:
                received.append(json.loads(message))
                if received[-1]["event"] == "start":
                    behaviour_task = asyncio.create_task(behaviour(ws, received[-1]["streamSid"]))
        except ConnectionClosed:
            pass
        finally:
            if behaviour_task is not None:
                behaviour_task.cancel()
                await asyncio.gather(behaviour_task, return_exceptions=True)

    return await serve(handle, "127.0.0.1", 0, compression=None)


def url_of(server: Server) -> str:
    return f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/media"


def media(stream_sid: str, audio: bytes) -> str:
    payload = base64.b64encode(audio).decode()
    return json.dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}})


def mark(stream_sid: str, name: str) -> str:
    return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def test_caller_sends_what_twilio_sends() -> None:
    received: list[dict[str, Any]] = []
    headers: list[Any] = []
    token, public_url = "12345abcdef", "wss://bridge.example.com/media-stream"

    async def idle(ws: ServerConnection, stream_sid: str) -> None:
        await asyncio.sleep(10)

    async def body() -> TwilioCaller:
        server = await bridge_stub(idle, received, headers)
        async with server:
            caller = TwilioCaller(
                url_of(server),
                auth_token=token,
                signed_url=public_url,
                custom_parameters={"From": "+15551234567"},
                speed=5,
            )
            async with caller:
                utterance = await caller.play(load_clip("caller-hello")[:800], "hi")
                assert utterance.started is not None and utterance.finished is not None
                await caller.dtmf("#")
                await caller.silence(0.1)
                await caller.hangup()
                assert caller.closed
        return caller

    caller = run(body())
    signature = headers[0]["x-twilio-signature"]
    assert signature == twilio_signature(token, public_url)
    assert RequestValidator(token).validate(public_url, {}, signature)
    assert not RequestValidator("other").validate(public_url, {}, signature)

    assert received[0] == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    start = received[1]
    assert start["event"] == "start" and start["sequenceNumber"] == "1"
    assert start["streamSid"] == start["start"]["streamSid"] == caller.stream_sid
    assert start["start"] == {
        "accountSid": caller.account_sid,
        "streamSid": caller.stream_sid,
        "callSid": caller.call_sid,
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"From": "+15551234567"},
    }
    for sid, prefix in ((caller.stream_sid, "MZ"), (caller.call_sid, "CA")):
        assert sid.startswith(prefix) and len(sid) == 34 and int(sid[2:], 16) >= 0
    numbered = received[1:]
    assert [m["sequenceNumber"] for m in numbered] == [str(n) for n in range(1, len(numbered) + 1)]
    frames = [m for m in numbered if m["event"] == "media"]
    assert [m["media"]["chunk"] for m in frames] == [str(n) for n in range(1, len(frames) + 1)]
    assert [m["media"]["timestamp"] for m in frames] == [
        str(20 * n) for n in range(1, len(frames) + 1)
    ]
    for frame in frames:
        assert set(frame) == {"event", "sequenceNumber", "media", "streamSid"}
        assert set(frame["media"]) == {"track", "chunk", "timestamp", "payload"}
        assert frame["media"]["track"] == "inbound" and frame["streamSid"] == caller.stream_sid
        assert len(base64.b64decode(frame["media"]["payload"])) == 160
    spoken = b"".join(base64.b64decode(m["media"]["payload"]) for m in frames)
    assert load_clip("caller-hello")[:800] in spoken
    dtmf = next(m for m in numbered if m["event"] == "dtmf")
    assert dtmf == {
        "event": "dtmf",
        "streamSid": caller.stream_sid,
        "sequenceNumber": dtmf["sequenceNumber"],
        "dtmf": {"track": "inbound_track", "digit": "#"},
    }
    assert received[-1] == {
        "event": "stop",
        "sequenceNumber": str(len(numbered)),
        "stop": {"accountSid": caller.account_sid, "callSid": caller.call_sid},
        "streamSid": caller.stream_sid,
    }
    figures = caller.figures()
    assert figures.violations == () and figures.closed_by == "caller"
    assert figures.close_code == 1000 and figures.bytes_sent == 160 * len(frames)


def test_caller_plays_audio_and_echoes_marks(tmp_path: Path) -> None:
    received: list[dict[str, Any]] = []
    speed = 4
    clip = load_clip("agent-reply")

    async def bridge(ws: ServerConnection, stream_sid: str) -> None:
        await ws.send(mark(stream_sid, "early"))  # nothing buffered: echoed at once
        await ws.send(media(stream_sid, clip[:3200]))  # 0.4 s
        await ws.send(mark(stream_sid, "a"))
        await asyncio.sleep(0.6 / speed)
        await ws.send(media(stream_sid, clip[3200:19200]))  # 2 s
        await ws.send(mark(stream_sid, "b"))
        await ws.send(media(stream_sid, clip[19200:20800]))
        await ws.send(mark(stream_sid, "c"))
        await asyncio.sleep(0.5 / speed)
        await ws.send(json.dumps({"event": "clear", "streamSid": stream_sid}))

    async def body() -> TwilioCaller:
        server = await bridge_stub(bridge, received, [])
        async with server, TwilioCaller(url_of(server), speed=speed) as caller:
            await caller.silence(2.0)
        return caller

    caller = run(body())
    echoes = [m for m in received if m["event"] == "mark"]
    # "b" and "c" were still buffered at the clear, so they come back at once with it
    assert [m["mark"]["name"] for m in echoes] == ["early", "a", "b", "c"]
    assert caller.marks_echoed == ["early", "a", "b", "c"]
    for echo in echoes:
        assert set(echo) == {"event", "sequenceNumber", "streamSid", "mark"}
        assert set(echo["mark"]) == {"name"} and echo["streamSid"] == caller.stream_sid
    figures = caller.figures()
    assert figures.marks_received == figures.marks_echoed == 4
    assert figures.bytes_received == 20800 and figures.violations == ()
    assert len(caller.clear_times) == len(figures.clear_times) == 1
    assert figures.time_to_first_audio is not None and figures.time_to_first_audio < 0.5
    # The recording holds 0.4 s of clip, then about 0.5 s of the 2 s part, then silence.
    heard = bytes(caller.recording)
    assert clip[:3200] in heard
    assert clip[3200 : 3200 + 2400] in heard and clip[3200 + 6400 : 3200 + 8000] not in heard
    assert rms(heard[-1600:]) == 0
    path = tmp_path / "heard.wav"
    caller.record_wav(path)
    with wave.open(str(path)) as wav:
        assert wav.getframerate() == 8000 and wav.getnframes() == len(heard)


def test_caller_echoes_a_mark_when_its_audio_has_played() -> None:
    times: dict[str, float] = {}
    payloads: list[tuple[int, float]] = []
    speed = 5

    async def bridge(ws: ServerConnection, stream_sid: str) -> None:
        times["sending"] = time.perf_counter()  # playback cannot start before this
        await ws.send(media(stream_sid, load_clip("agent-reply")[:8000]))  # 1 s
        times["sent"] = time.perf_counter()  # nor after this, give or take scheduling
        await ws.send(mark(stream_sid, "one-second"))

    async def body() -> None:
        server = await bridge_stub(bridge, [], [])
        on_media = lambda payload, t: payloads.append((len(payload), t))  # noqa: E731
        async with server, TwilioCaller(url_of(server), speed=speed, on_media=on_media) as caller:
            while not caller.marks_echoed:
                await asyncio.sleep(0.002)
            times["echo"] = time.perf_counter()

    run(body())
    assert times["echo"] - times["sending"] >= 0.9 / speed, "echoed before the audio played"
    assert times["echo"] - times["sent"] <= 1.5 / speed, "echoed long after the audio played"
    assert payloads[0][0] == 8000 and payloads[0][1] < times["echo"]


def test_caller_flags_what_twilio_would_reject() -> None:
    received: list[dict[str, Any]] = []

    async def early_clear(ws: ServerConnection) -> None:
        await ws.send(mark("MZ0", "too-early"))  # the bridge cannot know the streamSid yet

    async def bridge(ws: ServerConnection, sid: str) -> None:
        good = base64.b64encode(b"\x00" * 160).decode()
        messages: list[str | bytes] = [
            b"\x00\x01",
            "not json",
            "[1, 2]",
            media(sid, b"\x00" * 160).replace('"}}', '", "track": "x"}}'),
            json.dumps({"event": "media", "streamSid": sid, "media": {"payload": "!!!!"}}),
            json.dumps({"event": "media", "streamSid": sid, "media": {"payload": "abc"}}),
            json.dumps({"event": "media", "streamSid": sid, "media": {"payload": 5}}),
            json.dumps({"event": "media", "streamSid": sid, "media": "AAAA"}),
            json.dumps({"event": "mark", "streamSid": sid}),
            json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": 7}}),
            json.dumps({"event": "clear", "streamSid": "MZ" + "0" * 32}),
            json.dumps({"event": "clear", "streamSid": sid, "extra": 1}),
            json.dumps({"event": "stop", "streamSid": sid}),
            json.dumps({"event": "media", "stream_sid": sid, "media": {"payload": good}}),
            media(sid, b"\x00" * 160),
        ]
        for message in messages:
            await ws.send(message)

    async def body() -> TwilioCaller:
        async def handle(ws: ServerConnection) -> None:
            await early_clear(ws)
            start = None
            async for message in ws:
                received.append(json.loads(message))
                if received[-1]["event"] == "start" and start is None:
                    start = received[-1]
                    await bridge(ws, start["streamSid"])

        server = await serve(handle, "127.0.0.1", 0)
        async with server, TwilioCaller(url_of(server), speed=10, start_delay=0.1) as caller:
            await caller.silence(0.3)
        return caller

    caller = run(body())
    violations = caller.violations
    expected = [
        "'mark' sent before Twilio's start message",
        "mark: streamSid does not match",
        "binary frame",
        "not JSON",
        "not a JSON object",
        "media.media: missing fields [], unexpected fields ['track']",
        "not valid base64",
        "not a whole number of bytes",
        "media.payload must be a base64 string",
        "media.media must be an object",
        "mark message: missing fields ['mark']",
        "mark.name must be a string",
        "clear: streamSid does not match",
        "clear message: missing fields [], unexpected fields ['extra']",
        "unsupported event 'stop'",
        "media message: missing fields ['streamSid'], unexpected fields ['stream_sid']",
    ]
    assert len(violations) == len(expected)
    for violation, fragment in zip(violations, expected, strict=True):
        assert fragment in violation
    assert caller.bytes_received == 160  # only the valid media message was played


def test_caller_survives_a_bridge_that_hangs_up_at_once() -> None:
    async def reject(ws: ServerConnection) -> None:
        await ws.close(1008, "bad signature")

    async def body() -> TwilioCaller:
        server = await serve(reject, "127.0.0.1", 0)
        async with server, TwilioCaller(url_of(server), auth_token="wrong") as caller:
            assert await caller.wait_closed(2)
            await caller.play(load_clip("caller-hello"), "ignored")
            await caller.dtmf("1")
        return caller

    figures = run(body()).figures()
    assert (figures.closed_by, figures.close_code, figures.close_reason) == (
        "bridge",
        1008,
        "bad signature",
    )
    assert figures.violations == ()


# ---------------------------------------------------------------- both peers through a bridge


async def tiny_bridge(agent_url: str) -> Server:
    """The smallest bridge that does barge-in and end_call properly; stands in for a real one."""

    async def handle(twilio: ServerConnection) -> None:
        await twilio.recv()  # connected
        stream_sid = json.loads(await twilio.recv())["streamSid"]
        async with connect(agent_url, compression=None) as agent:
            await agent.recv()  # Welcome
            await agent.send(json.dumps(SETTINGS))
            applied = asyncio.Event()

            async def from_agent() -> None:
                ending = False
                async for message in agent:
                    if isinstance(message, bytes):
                        await twilio.send(media(stream_sid, message))
                        continue
                    event = json.loads(message)
                    if event["type"] == "SettingsApplied":
                        applied.set()
                    elif event["type"] == "UserStartedSpeaking":
                        await twilio.send(json.dumps({"event": "clear", "streamSid": stream_sid}))
                    elif event["type"] == "FunctionCallRequest":
                        (call,) = event["functions"]
                        reply = {"type": "FunctionCallResponse", "content": "ending"}
                        await agent.send(
                            json.dumps({**reply, "id": call["id"], "name": "end_call"})
                        )
                        ending = True
                    elif event["type"] == "AgentAudioDone" and ending:
                        await twilio.send(mark(stream_sid, "goodbye-played"))

            relay = asyncio.create_task(from_agent())
            try:
                async for text in twilio:
                    message = json.loads(text)
                    if message["event"] == "media" and applied.is_set():
                        await agent.send(base64.b64decode(message["media"]["payload"]))
                    elif message["event"] == "stop" or message.get("mark", {}).get("name"):
                        break
            finally:
                relay.cancel()
                await asyncio.gather(relay, return_exceptions=True)

    return await serve(handle, "127.0.0.1", 0, compression=None)


def test_standard_call_through_a_bridge(tmp_path: Path) -> None:
    speed = 10

    async def body() -> tuple[TwilioCaller, AgentSession]:
        agent = LocalAgent(
            pace=2 * speed, settings_delay=0.02, think_delay=0.02, hangup_after_utterances=4
        )
        async with agent:
            bridge = await tiny_bridge(agent.url)
            async with bridge, TwilioCaller(url_of(bridge), speed=speed) as caller:
                await standard_call(caller)
        return caller, agent.sessions[0]

    caller, session = run(body(), timeout=20)
    figures = caller.figures()
    assert figures.violations == ()
    assert [u.label for u in caller.utterances] == ["hello", "symptoms", "interrupt", "goodbye"]
    latencies = dict(figures.barge_in_latencies)
    assert "interrupt" in latencies and latencies["interrupt"] < 0.5
    assert figures.time_to_first_audio is not None
    assert figures.closed_by == "bridge" and figures.close_code == 1000
    assert session.utterances == 4 and len(session.function_call_responses) == 1
    assert session.audio_before_settings_applied == 0
    caller.record_wav(tmp_path / "call.wav")
    assert rms(bytes(caller.recording)) > 500
