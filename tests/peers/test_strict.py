"""The local agent's strict and surprising modes, and the caller's irregular ones, on loopback.

Each mode is checked against plain ``websockets`` clients and servers written here, and every
message the agent sends is validated against Deepgram's own SDK models
(tests/peers/deepgram_models.py), so the peers are held to Deepgram's schema and not to the
bridge's idea of it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import itertools
import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import pytest
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from peers.agent import (
    REFUSED_TEXT,
    SESSION_CAP_REASON,
    AgentSession,
    Failure,
    LocalAgent,
    agent_from_argv,
)
from peers.audio import load_clip, silence, tone
from peers.caller import (
    TwilioCaller,
    add_irregular_arguments,
    irregular_options,
    signed_url_variant,
)
from tests.peers.deepgram_models import (
    ModelMismatch,
    validate_client_message,
    validate_server_message,
)
from tests.peers.wire import collect, of_type

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
END_CALL = {"name": "end_call", "description": "End the call.", "parameters": {}}
SETTINGS: dict[str, Any] = {
    "type": "Settings",
    "audio": {
        "input": {"encoding": "mulaw", "sample_rate": 8000},
        "output": {"encoding": "mulaw", "sample_rate": 8000, "container": "none"},
    },
    "agent": {
        "listen": {"provider": {"type": "deepgram", "model": "nova-3", "language": "en"}},
        "think": {
            "provider": {"type": "open_ai", "model": "gpt-4o-mini"},
            "prompt": "Be brief.",
            "functions": [END_CALL],
        },
        "speak": {"provider": {"type": "deepgram", "model": "aura-2-thalia-en"}},
        "greeting": "Hello.",
    },
}


def run(coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def settings(agent: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    """SETTINGS with ``agent`` fields replaced (None deletes) and top-level fields added."""
    result = copy.deepcopy(SETTINGS)
    for key, value in (agent or {}).items():
        if value is None:
            del result["agent"][key]
        else:
            result["agent"][key] = value
    result.update(top)
    return result



async def open_session(agent: LocalAgent, body: dict[str, Any] = SETTINGS) -> ClientConnection:
    ws = await connect(agent.url, compression=None)
    await collect(ws, of_type("Welcome"))
    await ws.send(json.dumps(body))
    await collect(ws, of_type("SettingsApplied"))
    return ws


async def send_audio(ws: ClientConnection, audio: bytes) -> None:
    for offset in range(0, len(audio), 160):
        await ws.send(audio[offset : offset + 160])


async def drain(ws: ClientConnection, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Every JSON message until the connection ends, however it ends."""
    messages: list[dict[str, Any]] = []
    with contextlib.suppress(ConnectionClosed):
        async with asyncio.timeout(timeout):
            async for message in ws:
                if isinstance(message, str):
                    messages.append(json.loads(message))
    return messages


def validate_all_sent(session: AgentSession) -> list[str]:
    """Every JSON message the agent sent validates against the SDK; return their types."""
    for message in session.sent_messages:
        validate_server_message(message)
    return session.sent


# ---- the SDK models and the default config ----


@pytest.mark.parametrize("path", ["config.json", "server/default_config.json"])
def test_default_config_validates_against_the_sdk(path: str) -> None:
    settings_ = json.loads((ROOT / path).read_text())
    model = validate_client_message(settings_)
    assert model.mip_opt_out is True
    assert model.agent.language is None  # deprecated: languages belong to the providers
    assert model.agent.listen.provider.language == "en"
    end_call = next(f for f in model.agent.think.functions if f.name == "end_call")
    assert end_call.defer_until_eot is True


def test_default_configs_are_equal() -> None:
    first = json.loads((ROOT / "config.json").read_text())
    assert first == json.loads((ROOT / "server/default_config.json").read_text())


def test_validators_reject_mismatches() -> None:
    with pytest.raises(ModelMismatch):
        validate_server_message({"type": "Bogus"})
    with pytest.raises(ModelMismatch):
        validate_client_message({"type": "Welcome", "request_id": "x"})
    with pytest.raises(pydantic.ValidationError):
        validate_server_message({"type": "FunctionCallRequest", "functions": [{"id": "x"}]})
    with pytest.raises(pydantic.ValidationError):
        validate_client_message(settings({"think": {"provider": {"type": "nope"}}}))


# ---- strict Settings ----


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        (settings({"think": {"provider": {"type": "openai", "model": "x"}}}), "UNPARSABLE",
         "agent.think.provider"),
        (settings({"think": {"prompt": "no provider"}}), "UNPARSABLE", "agent.think.provider"),
        (settings({"speak": {"provider": {"type": "deepgram"}}}), "UNPARSABLE",
         "agent.speak.provider.model"),
        (settings({"greeting": 5}), "UNPARSABLE", "agent.greeting"),
        (settings({"listen": {"provider": {"version": "v3"}}}), "UNPARSABLE",
         "agent.listen.provider"),
        (settings({"listen": {"provider": {"version": "v2"}}}), "UNPARSABLE",
         "agent.listen.provider.model"),
        (settings(mip_opt_out="yes"), "UNPARSABLE", "mip_opt_out"),
        (settings(tags="CA123"), "UNPARSABLE", "tags"),
        (settings({"context": {"messages": [{"role": "user"}]}}), "UNPARSABLE",
         "agent.context.messages[0]"),
        (settings({"speak": {"provider": {"type": "open_ai", "model": "tts-1", "voice": "x"}}}),
         "INVALID_SETTINGS", "endpoint"),
        (settings(agent=None) | {"agent": "not-a-uuid"}, "INVALID_SETTINGS", "agent"),
    ],
)  # fmt: skip
def test_agent_rejects_settings_deepgram_cannot_parse(
    body: dict[str, Any], code: str, field: str
) -> None:
    async def body_() -> tuple[dict[str, Any], AgentSession]:
        async with LocalAgent(settings_delay=0) as agent, connect(agent.url) as ws:
            await collect(ws, of_type("Welcome"))
            await ws.send(json.dumps(body))
            messages, _ = await collect(ws, of_type("Error"))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 2)
        return messages[-1], agent.sessions[0]

    error, session = run(body_())
    assert error["code"].startswith(code) and field in error["description"]
    validate_server_message(error)
    assert session.settings is None


def test_lenient_agent_skips_the_schema() -> None:
    async def body() -> AgentSession:
        async with LocalAgent(settings_delay=0, strict=False) as agent:
            ws = await open_session(agent, settings(tags="CA123"))
            await ws.close()
        return agent.sessions[0]

    assert run(body()).error is None


def test_agent_keeps_the_seeded_history_and_accepts_every_client_message() -> None:
    history = [
        {"type": "History", "role": "user", "content": "My knee hurts."},
        {"type": "History", "role": "assistant", "content": "Since when?"},
        {
            "type": "History",
            "function_calls": [
                {"id": "fc_1", "name": "lookup", "client_side": True, "arguments": "{}",
                 "response": "none"}
            ],
        },
    ]  # fmt: skip
    think = {"provider": {"type": "anthropic", "model": "claude-3-5-haiku-latest"}, "prompt": "P"}
    client_messages: list[dict[str, Any]] = [
        {"type": "KeepAlive"},
        {"type": "UpdatePrompt", "prompt": "Also be kind."},
        {"type": "UpdateSpeak", "speak": {"provider": {"type": "deepgram", "model": "aura-2-zeus-en"}}},  # noqa: E501
        {"type": "UpdateThink", "think": [think]},
        {"type": "UpdateListen", "listen": {"provider": {"type": "deepgram", "model": "nova-3"}}},
        {"type": "ForceEndTurn"},
        {"type": "InjectAgentMessage", "message": "Are you still there?", "behavior": "interrupt"},
    ]  # fmt: skip

    async def body() -> tuple[list[dict[str, Any]], AgentSession]:
        async with LocalAgent(settings_delay=0, pace=50) as agent:
            ws = await open_session(agent, settings({"context": {"messages": history}}))
            await collect(ws, of_type("AgentAudioDone"))
            for message in client_messages:
                validate_client_message(message)
                await ws.send(json.dumps(message))
            received, _ = await collect(ws, of_type("AgentAudioDone"))
            await ws.close()
        return received, agent.sessions[0]

    received, session = run(body())
    kinds = [m["type"] for m in received]
    acks = ["PromptUpdated", "SpeakUpdated", "ThinkUpdated", "ListenUpdated", "Warning"]
    assert kinds[:5] == acks and kinds[-1] == "AgentAudioDone"
    assert session.context_messages == history
    assert session.prompt == "P"  # UpdatePrompt appended to the old prompt; UpdateThink replaced
    assert session.events == ["Settings", *(m["type"] for m in client_messages)]
    assert [r.message for r in session.received] == [
        settings({"context": {"messages": history}}),
        *client_messages,
    ]
    validate_all_sent(session)


def test_update_prompt_appends() -> None:
    async def body() -> AgentSession:
        async with LocalAgent(settings_delay=0) as agent:
            ws = await open_session(agent)
            await ws.send(json.dumps({"type": "UpdatePrompt", "prompt": "Be kind."}))
            await collect(ws, of_type("PromptUpdated"))
            await ws.close()
        return agent.sessions[0]

    assert run(body()).prompt == "Be brief.\nBe kind."


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"type": "UpdatePrompt"}, "prompt"),
        ({"type": "UpdateSpeak", "speak": {"provider": {"type": "polly"}}}, "speak.provider"),
        ({"type": "InjectAgentMessage", "message": "x", "behavior": "shout"}, "behavior"),
        ({"type": "InjectAgentMessage", "is_dynamic": True}, "is_dynamic"),
        ({"type": "UpdateThink_Live", "think_live": {"provider": {}}}, "think_live"),
    ],
)
def test_agent_rejects_client_messages_that_do_not_parse(
    message: dict[str, Any], field: str
) -> None:
    async def body() -> dict[str, Any]:
        async with LocalAgent(settings_delay=0) as agent:
            ws = await open_session(agent)
            await ws.send(json.dumps(message))
            messages, _ = await collect(ws, of_type("Error"))
            await ws.close()
        return messages[-1]

    error = run(body())
    assert error["code"] == "UNPARSABLE_CLIENT_MESSAGE" and field in error["description"]


# ---- surprises ----


SPEECH = tone(440.0, 500)
"""Half a second the VAD always hears as speech, with no pause inside (unlike the clips)."""


def speech_then(pause_ms: int, then: bytes) -> bytes:
    return SPEECH + silence(pause_ms) + then


def test_speculative_end_call_is_cancelled_when_the_caller_resumes() -> None:
    async def body() -> tuple[list[dict[str, Any]], AgentSession]:
        agent_ = LocalAgent(settings_delay=0, pace=50, think_delay=0, speculative=True,
                            hangup_after_utterances=1)  # fmt: skip
        async with agent_ as agent:
            ws = await open_session(agent)
            await collect(ws, of_type("AgentAudioDone"))
            # "bye..." 400 ms pause (past the speculative end, short of the confirmed one)
            # "...actually, one more thing": the dispatched end_call is withdrawn.
            await send_audio(ws, speech_then(400, SPEECH))
            messages, _ = await collect(ws, of_type("FunctionCallCancelled"))
            request = next(m for m in messages if m["type"] == "FunctionCallRequest")
            call_id = request["functions"][0]["id"]
            # A late answer is dropped, as Deepgram drops it; then the turn ends for real.
            content = json.dumps({"ok": True})
            response = {"type": "FunctionCallResponse", "id": call_id, "name": "end_call"}
            await ws.send(json.dumps({**response, "content": content}))
            await send_audio(ws, silence(800))
            later, _ = await collect(ws, of_type("FunctionCallRequest"))
            await ws.close()
        return messages + later, agent.sessions[0]

    messages, session = run(body())
    kinds = [m["type"] for m in messages]
    cancel = kinds.index("FunctionCallCancelled")
    request_at = kinds.index("FunctionCallRequest")
    assert request_at < kinds.index("UserStartedSpeaking", request_at) < cancel
    first = messages[kinds.index("FunctionCallRequest")]["functions"][0]
    assert messages[cancel]["functions"] == [{"id": first["id"], "name": "end_call"}]
    assert session.cancelled == [first["id"]] and session.utterances == 1
    assert [r["id"] for r in session.late_function_call_responses] == [first["id"]]
    assert "Warning" not in kinds
    assert messages[-1]["functions"][0]["id"] != first["id"]  # a fresh request, confirmed
    validate_all_sent(session)


def test_deferred_end_call_waits_for_the_confirmed_turn() -> None:
    functions = [{**END_CALL, "defer_until_eot": True}]
    deferred = {"think": {**SETTINGS["agent"]["think"], "functions": functions}}

    async def body() -> AgentSession:
        agent_ = LocalAgent(settings_delay=0, pace=50, think_delay=0, speculative=True,
                            hangup_after_utterances=1)  # fmt: skip
        async with agent_ as agent:
            ws = await open_session(agent, settings(deferred))
            await collect(ws, of_type("AgentAudioDone"))
            await send_audio(ws, speech_then(400, SPEECH + silence(800)))
            await collect(ws, of_type("FunctionCallRequest"))
            await ws.close()
        return agent.sessions[0]

    session = run(body())
    kinds = session.sent
    assert "FunctionCallCancelled" not in kinds
    assert kinds.index("UserStartedSpeaking", kinds.index("AgentAudioDone")) < kinds.index(
        "FunctionCallRequest"
    )


@pytest.mark.parametrize("refuse", [True, False])
def test_injections_are_refused_while_the_agent_speaks(refuse: bool) -> None:
    async def body() -> tuple[list[dict[str, Any]], AgentSession]:
        async with LocalAgent(settings_delay=0, pace=1, refuse_injections=refuse) as agent:
            ws = await open_session(agent)
            await collect(ws, of_type("AgentStartedSpeaking"))
            injection = {"type": "InjectUserMessage", "content": "The caller pressed 1."}
            await ws.send(json.dumps(injection))
            kind = "InjectionRefused" if refuse else "AgentThinking"
            messages, _ = await collect(ws, of_type(kind))
            await ws.close()
        return messages, agent.sessions[0]

    messages, session = run(body())
    if refuse:
        assert messages[-1] == {"type": "InjectionRefused", "message": REFUSED_TEXT}
        assert session.refused == [
            {"type": "InjectUserMessage", "content": "The caller pressed 1."}
        ]
    else:
        assert session.refused == []
    validate_all_sent(session)


def test_inject_agent_message_default_behaviour_is_refused_mid_turn() -> None:
    async def body() -> list[str]:
        async with LocalAgent(settings_delay=0, pace=1) as agent:
            ws = await open_session(agent)
            await collect(ws, of_type("AgentStartedSpeaking"))
            await ws.send(json.dumps({"type": "InjectAgentMessage", "message": "Hi"}))
            await collect(ws, of_type("InjectionRefused"))
            queued = {"type": "InjectAgentMessage", "message": "Later", "behavior": "queue"}
            await ws.send(json.dumps(queued))
            await collect(ws, of_type("AgentAudioDone"))  # the greeting, not cut off
            messages, _ = await collect(ws, of_type("ConversationText"))
            await ws.close()
        return [messages[-1]["content"]]

    assert run(body()) == ["Later"]


def test_multi_item_and_server_side_function_calls() -> None:
    functions = [
        END_CALL,
        {"name": "book", "description": "Book a visit.", "parameters": {}},
        {"name": "notify", "endpoint": {"url": "https://example.invalid/notify", "method": "POST"}},
    ]
    think = {"think": {**SETTINGS["agent"]["think"], "functions": functions}}

    async def body() -> tuple[list[dict[str, Any]], AgentSession]:
        agent_ = LocalAgent(settings_delay=0, pace=50, think_delay=0, call_functions=True)
        async with agent_ as agent:
            ws = await open_session(agent, settings(think))
            await collect(ws, of_type("AgentAudioDone"))
            await send_audio(ws, SPEECH + silence(800))
            messages, _ = await collect(ws, of_type("FunctionCallRequest"))
            request = messages[-1]["functions"]
            book = next(f for f in request if f["client_side"])
            response = {"type": "FunctionCallResponse", "id": book["id"], "name": "book"}
            await ws.send(json.dumps({**response, "content": "booked"}))
            later, _ = await collect(ws, lambda m: "function_calls" in m)
            await ws.close()
        return messages + later, agent.sessions[0]

    messages, session = run(body())
    request = next(m for m in messages if m["type"] == "FunctionCallRequest")["functions"]
    assert [(f["name"], f["client_side"]) for f in request] == [("book", True), ("notify", False)]
    server_reply = next(m for m in messages if m["type"] == "FunctionCallResponse")
    assert server_reply["id"] == request[1]["id"] and server_reply["name"] == "notify"
    history = messages[-1]["function_calls"]
    assert history[0]["response"] == "booked"
    validate_all_sent(session)


@pytest.mark.parametrize("stale_ms", [0, 300])
def test_audio_already_queued_follows_user_started_speaking(stale_ms: int) -> None:
    async def stale_audio() -> int:
        async with LocalAgent(settings_delay=0, pace=1, stale_audio_ms=stale_ms) as agent:
            ws = await open_session(agent)
            await collect(ws, of_type("AgentStartedSpeaking"))
            await agent.sessions[0].user_started_speaking()
            await collect(ws, of_type("UserStartedSpeaking"))
            after = 0
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    async for message in ws:
                        assert isinstance(message, bytes)
                        after += len(message)
            await ws.close()
        return after

    assert run(stale_audio()) == stale_ms * 8


# ---- failing mid-call ----


@pytest.mark.parametrize(
    ("mode", "error", "code"),
    [
        ("error", "INTERNAL_SERVER_ERROR", 1000),
        ("close_1011", None, 1011),
        ("drop", None, 1006),
        ("duration_cap", None, 1000),
    ],
)
def test_agent_fails_mid_call(mode: str, error: str | None, code: int) -> None:
    async def body() -> tuple[list[dict[str, Any]], ClientConnection, list[AgentSession]]:
        failure = Failure(mode, after=0.2)  # type: ignore[arg-type]
        async with LocalAgent(settings_delay=0, pace=50, failure=failure) as agent:
            ws = await open_session(agent)
            messages = await drain(ws)
            second = await open_session(agent)  # only the first session fails
            await collect(second, of_type("AgentAudioDone"))
            await asyncio.sleep(0.4)
            await second.send(json.dumps({"type": "KeepAlive"}))
            await second.close()
            await asyncio.sleep(0.05)
        return messages, ws, agent.sessions

    messages, ws, sessions = run(body())
    assert ws.close_code == code
    if mode == "drop":
        assert ws.protocol.close_rcvd is None  # no close frame: the connection was cut
    if mode == "duration_cap":
        assert ws.close_reason == SESSION_CAP_REASON
    errors = [m for m in messages if m["type"] == "Error"]
    assert [e["code"] for e in errors] == ([error] if error else [])
    assert sessions[0].failed == mode and sessions[1].failed is None
    assert sessions[1].close_code == 1000 and sessions[1].error is None


def test_session_cap_applies_without_a_failure_mode() -> None:
    async def body() -> ClientConnection:
        async with LocalAgent(settings_delay=0, session_cap=0.3) as agent:
            ws = await open_session(agent)
            await drain(ws)
        return ws

    ws = run(body())
    assert ws.close_code == 1000 and ws.close_reason == SESSION_CAP_REASON


def test_agent_command_line_sets_each_mode() -> None:
    agent = agent_from_argv(
        ["--lenient", "--speculative", "--refuse-injections", "--call-functions",
         "--stale-audio-ms", "120", "--fail", "drop", "--fail-after", "3", "--fail-sessions", "2",
         "--session-cap", "60"]
    )  # fmt: skip
    assert not agent.strict and agent.speculative and agent.refuse_injections
    assert agent.call_functions and agent.stale_audio_ms == 120 and agent.session_cap == 60
    assert agent.failure == Failure("drop", 3.0, 2)
    default = agent_from_argv([])
    assert default.strict and default.failure is None and not default.speculative


def test_agent_records_audio_on_arrival_in_order() -> None:
    async def body() -> AgentSession:
        async with LocalAgent(settings_delay=0) as agent:
            ws = await open_session(agent)
            await ws.send(b"\x01" * 160)
            await ws.send(json.dumps({"type": "KeepAlive"}))
            await ws.send(b"\x02" * 160)
            await asyncio.sleep(0.1)
            await ws.close()
        return agent.sessions[0]

    session = run(body())
    received = [r.message for r in session.received][1:]
    assert received == [b"\x01" * 160, {"type": "KeepAlive"}, b"\x02" * 160]
    times = [r.t for r in session.received]
    assert times == sorted(times)


# ---- the caller's irregular modes ----


async def media_server(frames: list[dict[str, Any]], headers: list[str]) -> tuple[Any, str]:
    """A bare WebSocket server that records Twilio's messages and the signature header."""

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        headers.append(ws.request.headers.get("X-Twilio-Signature", ""))
        with pytest.raises(ConnectionClosed):
            async for message in ws:
                frames.append(json.loads(message))

    server = await serve(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"ws://127.0.0.1:{port}/media"


def test_caller_speaks_from_the_first_frame() -> None:
    hello = load_clip("caller-hello")

    async def body() -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = []
        server, url = await media_server(frames, [])
        async with server, TwilioCaller(url, speed=10, opening=hello) as caller:
            await asyncio.sleep(0.2)
            await caller.hangup()
        return frames

    media = [f for f in run(body()) if f["event"] == "media"]
    first = base64.b64decode(media[0]["media"]["payload"])
    assert first == hello[:160]


def test_caller_jitters_bunches_and_jumps_timestamps() -> None:
    async def body() -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = []
        server, url = await media_server(frames, [])
        caller_ = TwilioCaller(url, speed=5, bunch=4, timestamp_jump_every=10, seed=1)
        async with server, caller_ as caller:
            await asyncio.sleep(0.5)
            await caller.hangup()
        return frames

    media = [f["media"] for f in run(body()) if f["event"] == "media"]
    chunks = [int(m["chunk"]) for m in media]
    stamps = [int(m["timestamp"]) for m in media]
    assert chunks == list(range(1, len(chunks) + 1))  # chunk numbers never skip
    steps = {b - a for a, b in itertools.pairwise(stamps)}
    assert 20 in steps and max(steps) > 20 and min(steps) > 0  # jumps, never backwards


def test_caller_bunches_frames_into_bursts() -> None:
    arrivals: list[float] = []

    async def body() -> None:
        async def handler(ws: ServerConnection) -> None:
            with pytest.raises(ConnectionClosed):
                async for message in ws:
                    if '"media"' in message:
                        arrivals.append(asyncio.get_running_loop().time())

        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            async with TwilioCaller(f"ws://127.0.0.1:{port}/m", bunch=5) as caller:
                await asyncio.sleep(0.6)
                await caller.hangup()

    run(body())
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # Bursts of 5 frames 100 ms apart: most gaps are tiny, a few are long.
    assert sum(gap < 0.005 for gap in gaps) >= len(gaps) // 2
    assert max(gaps) > 0.06


@pytest.mark.parametrize(
    ("variant", "signed"),
    [
        ("exact", "wss://bridge.example/media"),
        ("trailing_slash", "wss://bridge.example/media/"),
        ("port", "wss://bridge.example:443/media"),
    ],
)
def test_caller_signs_the_url_variants_twilio_uses(variant: str, signed: str) -> None:
    assert signed_url_variant("wss://bridge.example/media", variant) == signed  # type: ignore[arg-type]

    async def body() -> list[str]:
        headers: list[str] = []
        server, url = await media_server([], headers)
        caller_ = TwilioCaller(url, auth_token="tok", signed_url="wss://bridge.example/media",
                               sign_variant=variant)  # type: ignore[arg-type]  # fmt: skip
        async with server, caller_ as caller:
            await caller.hangup()
        return headers

    (header,) = run(body())
    assert RequestValidator("tok").validate(signed, {}, header)


def test_caller_command_line_sets_each_mode() -> None:
    parser = argparse.ArgumentParser()
    add_irregular_arguments(parser)
    args = parser.parse_args(
        ["--speak-first", "--bunch", "3", "--jitter-ms", "15", "--timestamp-jump-every", "25",
         "--sign-variant", "port"]
    )  # fmt: skip
    caller = TwilioCaller("ws://127.0.0.1:1/media", **irregular_options(args))
    assert caller.opening and caller.bunch == 3 and caller.jitter_ms == 15
    assert caller.timestamp_jump_every == 25 and caller.sign_variant == "port"
