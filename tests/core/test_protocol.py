"""The whole v1 agent protocol in the core: mid-call control inputs, typed notices for the server's
messages, cancelled end_call, refused injections, the pre-roll policy. Every message the core sends
the agent here is validated against deepgram-sdk v7's models (tests/deepgram_models.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sansio import (
    Action,
    AgentReady,
    AgentUpdated,
    CallEnded,
    EndReason,
    FrustrationDetected,
    FunctionCallsCancelled,
    InjectionRefused,
    LocalProtocolError,
    ServerFunctionResult,
    ThinkProviderMessage,
)
from tests.helpers import (
    Call,
    agent,
    agent_audio_of,
    agent_texts,
    config,
    function_call,
    twilio_dtmf,
    twilio_mark,
    twilio_media,
)
from tests.peers.deepgram_models import validate_client_message

SPEAK = {"provider": {"type": "deepgram", "model": "aura-2-andromeda-en"}}
THINK = {"provider": {"type": "open_ai", "model": "gpt-4o"}, "prompt": "Be terse."}
LISTEN = {"provider": {"type": "deepgram", "model": "nova-3", "language": "es"}}


def sent(actions: list[Action]) -> list[dict[str, Any]]:
    """The JSON messages sent to the agent, each checked against the SDK's models."""
    texts = agent_texts(actions)
    for message in texts:
        validate_client_message(message)
    return texts


def ready(**overrides: Any) -> Call:
    call = Call(config(**overrides))
    call.ready()
    return call


# ---------------------------------------------------------------- control inputs


def test_every_client_message_is_an_input_and_validates_against_the_sdk() -> None:
    call = ready()
    core, now = call.core, call.now
    core.update_prompt("Mention the opening hours.", now)
    core.update_speak(SPEAK, now)
    core.update_speak([SPEAK, SPEAK], now)
    core.update_think(THINK, now)
    core.update_listen(LISTEN, now)
    core.update_think_live({"provider": {"type": "deepgram", "model": "x"}}, now)
    core.force_end_turn(now)
    core.send_to_think_provider({"any": ["json"]}, now)
    core.inject_agent_message("One moment, please.", now, behavior="queue")
    core.inject_agent_message("Sorry to interrupt.", now, behavior="interrupt")
    core.inject_dynamic_agent_message(now, behavior="interrupt")
    core.inject_user_message("I pressed nothing.", now)
    kinds = [m["type"] for m in sent(call.drain())]
    assert kinds == [
        "UpdatePrompt",
        "UpdateSpeak",
        "UpdateSpeak",
        "UpdateThink",
        "UpdateListen",
        "UpdateThink_Live",
        "ForceEndTurn",
        "__customToThinkProvider",
        "InjectAgentMessage",
        "InjectAgentMessage",
        "InjectAgentMessage",
        "InjectUserMessage",
    ]


def test_control_inputs_are_refused_before_settings_applied_and_after_the_end() -> None:
    call = Call()
    call.start()
    with pytest.raises(LocalProtocolError, match="before SettingsApplied"):
        call.core.inject_agent_message("hi", call.now)
    with pytest.raises(LocalProtocolError, match="before SettingsApplied"):
        call.core.update_prompt("p", call.now)
    call = ready()
    call.core.end(EndReason.SHUTDOWN, "bye", call.now)
    with pytest.raises(LocalProtocolError, match="after the call ended"):
        call.core.inject_user_message("hi", call.now)
    with pytest.raises(LocalProtocolError, match="after the call ended"):
        call.core.force_end_turn(call.now)


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("inject_user_message", (3,)),
        ("inject_agent_message", (None,)),
        ("update_prompt", (b"bytes",)),
        ("update_speak", ({"provider": "deepgram"},)),
        ("update_speak", ([],)),
        ("update_think", ({"provider": {"type": "open_ai"}, "model": "pre-v1"},)),
        ("update_listen", ([LISTEN],)),
        ("update_think_live", ({"provider": 3},)),
        ("send_to_think_provider", ({1, 2},)),
    ],
)
def test_control_inputs_check_their_values(method: str, args: tuple[Any, ...]) -> None:
    call = ready()
    with pytest.raises(LocalProtocolError):
        getattr(call.core, method)(*args, call.now)
    assert agent_texts(call.drain()) == []


def test_an_unknown_behavior_is_refused() -> None:
    call = ready()
    with pytest.raises(LocalProtocolError, match="behavior"):
        call.core.inject_agent_message("hi", call.now, behavior="shout")


def test_updates_are_copies_of_what_the_driver_passed() -> None:
    call = ready()
    speak: dict[str, Any] = {"provider": {"type": "deepgram", "model": "aura-2-thalia-en"}}
    call.core.update_speak(speak, call.now)
    speak["provider"]["model"] = "changed later"
    assert sent(call.drain())[0]["speak"]["provider"]["model"] == "aura-2-thalia-en"


# ---------------------------------------------------------------- server messages as notices


def test_every_server_message_becomes_a_typed_notice() -> None:
    call = ready()
    for kind, what in [
        ("PromptUpdated", "prompt"),
        ("SpeakUpdated", "speak"),
        ("ThinkUpdated", "think"),
        ("ListenUpdated", "listen"),
        ("ThinkLiveUpdated", "think_live"),
    ]:
        assert call.agent(agent(kind)) == [AgentUpdated(what)]
    out = call.agent(agent("FunctionCallResponse", id="fc_9", name="lookup", content="{}"))
    assert out == [ServerFunctionResult("fc_9", "lookup", "{}")]
    out = call.agent(agent("FrustrationDetected", count=2, escalated=True))
    assert out == [FrustrationDetected(2, True)]
    out = call.agent(agent("__customFromThinkProvider", content={"x": 1}))
    assert out == [ThinkProviderMessage({"x": 1})]
    assert call.agent(agent("SomethingNew", x=1))[0].type == "SomethingNew"  # type: ignore[attr-defined]
    assert call.core.ended is None


def test_the_request_id_of_welcome_is_in_agent_ready() -> None:
    assert AgentReady("req-1", 0) in Call().ready()


# ---------------------------------------------------------------- FunctionCallCancelled


def goodbye(call: Call) -> None:
    """The agent's goodbye reply, sent and heard to its last mark."""
    call.agent_audio(b"\x01" * 800)
    marks = [json.loads(a.text)["mark"]["name"] for a in call.agent(agent("AgentAudioDone"))]
    for name in marks:
        call.twilio(twilio_mark(name))


def test_a_cancelled_end_call_does_not_hang_up() -> None:
    call = ready()
    call.agent(function_call("fc_end", "end_call"))
    out = call.agent(
        agent("FunctionCallCancelled", functions=[{"id": "fc_end", "name": "end_call"}])
    )
    assert FunctionCallsCancelled(("fc_end",), hangup_withdrawn=True) in out
    goodbye(call)  # the caller went on talking; the agent answers
    call.advance_to(call.now + 60)
    assert not any(isinstance(a, CallEnded) and a.reason is EndReason.TOOL for a in call.log)


def test_a_confirmed_end_call_still_hangs_up_after_its_goodbye() -> None:
    call = ready()
    call.agent(function_call("fc_end", "end_call"))
    call.agent(agent("FunctionCallCancelled", functions=[{"id": "other", "name": "x"}]))
    goodbye(call)
    call.advance_to(call.now + 3.5)
    [end] = [a for a in call.log if isinstance(a, CallEnded)]
    assert end.reason is EndReason.TOOL and end.detail == "end_call: goodbye played"


# ---------------------------------------------------------------- refused injections


def test_a_refused_keypress_is_sent_again_after_agent_audio_done_in_order() -> None:
    call = ready(dtmf_template="key {digit}")
    call.agent_audio(b"\x01" * 160)  # the greeting is playing
    assert sent(call.twilio(twilio_dtmf("1"))) == [
        {"type": "InjectUserMessage", "content": "key 1"}
    ]
    assert sent(call.twilio(twilio_dtmf("2"))) == []  # behind "1", which is not settled
    out = call.agent(agent("InjectionRefused", message="Agent is speaking"))
    assert out == [InjectionRefused("Agent is speaking", queued=True)]
    assert sent(call.twilio(twilio_dtmf("3"))) == []
    out = call.agent(agent("AgentAudioDone"))
    assert sent(out) == [{"type": "InjectUserMessage", "content": "key 1"}]
    out = call.agent(agent("ConversationText", role="user", content="key 1"))
    assert sent(out) == [{"type": "InjectUserMessage", "content": "key 2"}]
    call.agent(agent("InjectionRefused", message="User is speaking"))
    assert [m["content"] for m in sent(call.agent(agent("AgentAudioDone")))] == ["key 2"]
    assert [m["content"] for m in sent(call.agent(agent("AgentAudioDone")))] == ["key 3"]
    assert call.core.stats().injections_dropped == 0


def test_refused_agent_messages_wait_too_but_queue_and_interrupt_go_at_once() -> None:
    call = ready()
    call.core.inject_agent_message("Still there?", call.now)
    call.drain()
    call.agent(agent("InjectionRefused", message="busy"))
    call.core.inject_agent_message("Right away.", call.now, behavior="interrupt")
    assert [m.get("behavior") for m in sent(call.drain())] == ["interrupt"]
    out = call.agent(agent("AgentAudioDone"))
    assert [m["message"] for m in sent(out)] == ["Still there?"]


def test_injections_beyond_the_bound_are_dropped_and_counted() -> None:
    call = ready(injection_limit=2)
    for text in "abcd":
        call.core.inject_user_message(text, call.now)
    assert call.core.stats().injections_dropped == 1  # "a" went, "b" and "c" wait
    assert [m["content"] for m in sent(call.drain())] == ["a"]


# ---------------------------------------------------------------- pre-roll policy


def early_caller(policy: str, **overrides: Any) -> tuple[list[Action], Call]:
    call = Call(config(preroll_policy=policy, **overrides))
    call.start()
    for i in range(10):  # 200 ms of "Hello?" before the agent is configured
        call.at(i * 0.02).twilio(twilio_media(bytes([i]) * 160))
    call.core.agent_connected(call.now)
    call.agent(agent("Welcome"))
    return call.agent(agent("SettingsApplied")), call


def test_preroll_policy_keep_sends_all_held_audio() -> None:
    out, _ = early_caller("keep")
    assert agent_audio_of(out) == b"".join(bytes([i]) * 160 for i in range(10))


def test_preroll_policy_drop_protects_the_greeting_and_counts_the_drop() -> None:
    out, call = early_caller("drop")
    assert agent_audio_of(out) == b""
    assert call.core.stats().preroll_dropped_bytes == 1600
    # Audio after SettingsApplied flows at once.
    assert agent_audio_of(call.twilio(twilio_media(b"\x09" * 160))) == b"\x09" * 160


def test_preroll_policy_last_keeps_the_newest_audio() -> None:
    out, call = early_caller("last", preroll_last_ms=40)
    assert agent_audio_of(out) == bytes([8]) * 160 + bytes([9]) * 160
    assert call.core.stats().preroll_dropped_bytes == 1280


def test_the_default_preroll_policy_is_drop() -> None:
    out, _ = early_caller(config().preroll_policy)
    assert config().preroll_policy == "drop" and agent_audio_of(out) == b""
