"""Agent failover in the core: a mid-call failure of the agent leg opens a new one, with the
conversation so far in the new Settings, caller audio held meanwhile, bounded retries."""

from __future__ import annotations

from typing import Any

import pytest

from sansio import (
    AgentReconnected,
    AgentReconnecting,
    AgentState,
    CallEnded,
    CancelTool,
    CloseAgent,
    EndReason,
    OpenAgent,
    SendAgentAudio,
    SendTwilioMark,
)
from tests.helpers import (
    Call,
    agent,
    agent_audio_of,
    agent_texts,
    config,
    function_call,
    twilio_media,
    twilio_stop,
)
from tests.peers.deepgram_models import validate_client_message

CALL_HISTORY = {
    "type": "History",
    "function_calls": [
        {
            "id": "fc_1",
            "name": "lookup",
            "client_side": True,
            "arguments": "{}",
            "response": "ok",
        }
    ],
}


def talked(**overrides: Any) -> Call:
    """A ready call with two turns and a function call in its history."""
    call = Call(config(**{"agent_retries": 2, "agent_retry_backoff": 0.5, **overrides}))
    call.ready()
    call.agent(agent("ConversationText", role="assistant", content="Hello, how can I help?"))
    call.agent(agent("History", role="assistant", content="Hello, how can I help?"))
    call.agent(agent("ConversationText", role="user", content="I need an appointment."))
    call.agent(agent("History", **{k: v for k, v in CALL_HISTORY.items() if k != "type"}))
    return call


def reconnect(call: Call, request_id: str = "req-2") -> list[Any]:
    """From a failed and closed leg to the new session's SettingsApplied."""
    out = call.advance_to(call.now + 3)  # past any backoff here, within the idle timeout
    assert OpenAgent() in out
    call.core.agent_connected(call.now)
    out = call.agent(agent("Welcome", request_id=request_id))
    [settings] = agent_texts(out)
    validate_client_message(settings)
    return [settings, *call.agent(agent("SettingsApplied"))]


@pytest.mark.parametrize("how", ["error", "close_1011", "drop", "close_1000"])
def test_a_mid_call_failure_reconnects_with_the_conversation(how: str) -> None:
    call = talked()
    if how == "error":
        out = call.agent(agent("Error", code="INTERNAL_SERVER_ERROR", description="oops"))
        assert CloseAgent(1000, "reconnecting: agent error INTERNAL_SERVER_ERROR: oops") in out
        assert OpenAgent() not in call.advance_to(call.now + 2)  # the failed leg is not gone yet
        call.core.agent_closed(1000, call.now)
    else:
        code = {"close_1011": 1011, "drop": None, "close_1000": 1000}[how]
        call.core.agent_closed(code, call.now)
    call.drain()
    [notice] = [a for a in call.log if isinstance(a, AgentReconnecting)]
    assert notice.attempt == 1 and notice.reason is EndReason.AGENT_ERROR
    assert call.core.agent_state is AgentState.RECONNECTING and call.core.ended is None
    settings, *out = reconnect(call)
    messages = settings["agent"]["context"]["messages"]
    assert messages == [
        {"type": "History", "role": "assistant", "content": "Hello, how can I help?"},
        {"type": "History", "role": "user", "content": "I need an appointment."},
        CALL_HISTORY,
    ]
    assert "greeting" not in settings["agent"]  # heard once is enough
    assert AgentReconnected(1, "req-2", 0, 3) in out
    assert call.core.stats().agent_reconnects == 1


def test_the_backoff_doubles_and_is_a_timer() -> None:
    call = talked()
    call.core.agent_closed(1011, call.now)
    call.drain()
    assert call.core.next_deadline() == pytest.approx(call.now + 0.5)
    reconnect(call)
    call.core.agent_closed(1011, call.now)
    call.drain()
    assert call.core.next_deadline() == pytest.approx(call.now + 1.0)


def test_caller_audio_is_held_during_the_gap_and_arrives_in_order() -> None:
    call = talked()
    call.agent_audio(b"\x05" * 160)  # a reply is playing when the leg drops
    call.core.agent_closed(None, call.now)
    out = call.drain()
    assert len([a for a in out if isinstance(a, SendTwilioMark)]) == 1  # the reply is ended
    gap = b"".join(bytes([i]) * 160 for i in range(1, 6))
    for i in range(5):
        assert agent_audio_of(call.twilio(twilio_media(gap[i * 160 : (i + 1) * 160]))) == b""
    _, *out = reconnect(call)
    assert agent_audio_of(out) == gap  # all of it, whatever the pre-roll policy of the start
    after = call.twilio(twilio_media(b"\x09" * 160))
    assert [a.audio for a in after if isinstance(a, SendAgentAudio)] == [b"\x09" * 160]


def test_nothing_reaches_the_agent_before_the_new_settings_applied() -> None:
    call = talked()
    call.core.agent_closed(1011, call.now)
    call.advance_to(call.now + 1)
    call.core.agent_connected(call.now)
    call.twilio(twilio_media(b"\x01" * 160))
    call.core.inject_user_message("held", call.now)
    out = call.agent(agent("Welcome")) + call.twilio(twilio_media(b"\x02" * 160))
    assert [m["type"] for m in agent_texts(out)] == ["Settings"]
    assert agent_audio_of(out) == b""


def test_after_the_last_retry_the_call_ends_with_its_reason() -> None:
    call = talked(agent_retries=1)
    call.core.agent_closed(1011, call.now)
    reconnect(call)
    call.agent(agent("Error", code="INTERNAL_SERVER_ERROR", description="again"))
    [end] = [a for a in call.log if isinstance(a, CallEnded)]
    assert end.reason is EndReason.AGENT_ERROR and "again" in end.detail


def test_a_failed_reconnect_attempt_counts_as_a_retry() -> None:
    call = talked(agent_retries=2)
    call.core.agent_closed(1011, call.now)
    call.advance_to(call.now + 1)
    call.core.agent_closed(None, call.now, "connection refused")  # the new leg cannot connect
    assert [a.attempt for a in call.drain() if isinstance(a, AgentReconnecting)] == [2]
    call.advance_to(call.now + 2)
    call.core.agent_closed(None, call.now, "connection refused")
    [end] = [a for a in call.drain() if isinstance(a, CallEnded)]
    assert end.reason is EndReason.AGENT_UNREACHABLE


def test_a_connect_timeout_while_reconnecting_retries() -> None:
    call = talked()
    call.core.agent_closed(1011, call.now)
    out = call.advance_to(call.now + 1) + call.advance_to(call.now + 11)
    assert any(isinstance(a, CloseAgent) for a in out)  # the attempt is given up
    call.core.agent_closed(None, call.now, "connection attempt abandoned")
    assert OpenAgent() in call.advance_to(call.now + 2)


def test_a_failed_leg_that_never_closes_is_dropped() -> None:
    call = talked()
    call.agent(agent("Error", code="X", description="y"))
    out = call.advance_to(call.now + 2)
    assert CloseAgent(1006, "close timed out", abort=True) in out and OpenAgent() not in out
    assert call.core.next_deadline() is not None  # the idle timer still runs
    call.core.agent_closed(None, call.now)
    assert OpenAgent() in call.advance_to(call.now + 1)


def test_a_failure_before_the_first_settings_applied_keeps_agent_unreachable() -> None:
    call = Call(config(agent_retries=3))
    call.start()
    call.core.agent_closed(None, call.now, "connection refused")
    [end] = [a for a in call.drain() if isinstance(a, CallEnded)]
    assert end.reason is EndReason.AGENT_UNREACHABLE


def test_pending_tools_are_withdrawn_and_updates_replayed() -> None:
    call = talked()
    call.agent(function_call("fc_7", "slow"))
    call.core.update_prompt("First.", call.now)
    call.core.update_prompt("Second.", call.now)
    call.core.agent_closed(1011, call.now)
    assert CancelTool("fc_7") in call.drain()
    call.core.update_speak({"provider": {"type": "deepgram", "model": "aura-2-x-en"}}, call.now)
    _, *out = reconnect(call)
    texts = agent_texts(out)
    for message in texts:
        validate_client_message(message)
    assert texts == [
        {"type": "UpdatePrompt", "prompt": "First.\nSecond."},
        {
            "type": "UpdateSpeak",
            "speak": {"provider": {"type": "deepgram", "model": "aura-2-x-en"}},
        },
    ]


def test_an_update_think_replaces_the_prompts_kept_before_it() -> None:
    call = talked()
    call.core.update_prompt("Old.", call.now)
    think = {"provider": {"type": "open_ai", "model": "gpt-4o"}, "prompt": "New."}
    call.core.update_think(think, call.now)
    call.core.update_prompt("Added.", call.now)
    call.core.agent_closed(1011, call.now)
    _, *out = reconnect(call)
    assert [m["type"] for m in agent_texts(out)] == ["UpdateThink", "UpdatePrompt"]


def test_momentary_messages_are_refused_while_reconnecting() -> None:
    from sansio import LocalProtocolError

    call = talked()
    call.core.agent_closed(1011, call.now)
    with pytest.raises(LocalProtocolError, match="reconnects"):
        call.core.force_end_turn(call.now)


def test_the_caller_hanging_up_during_the_gap_ends_the_call_cleanly() -> None:
    call = talked()
    call.core.agent_closed(1011, call.now)
    out = call.twilio(twilio_stop())
    [end] = [a for a in out if isinstance(a, CallEnded)]
    assert end.reason is EndReason.HANGUP and not any(isinstance(a, CloseAgent) for a in out)
    call.core.twilio_closed(1000, call.now)
    assert call.core.finished


def test_an_end_call_in_progress_is_not_reconnected() -> None:
    call = talked()
    call.agent(function_call("fc_end", "end_call"))
    call.core.agent_closed(1011, call.now)
    [end] = [a for a in call.drain() if isinstance(a, CallEnded)]
    assert end.reason is EndReason.AGENT_ERROR


def test_a_stored_agent_id_reconnects_unchanged() -> None:
    from tests.helpers import SETTINGS

    settings = {**SETTINGS, "agent": "0f6b6c6e-1111-2222-3333-444455556666"}
    call = Call(config(settings=settings))
    call.ready()
    call.core.agent_closed(1011, call.now)
    settings_sent, *_ = reconnect(call)
    assert settings_sent["agent"] == settings["agent"]


def test_seeded_context_comes_first_and_the_history_is_bounded() -> None:
    from tests.helpers import SETTINGS

    seeded = [{"type": "History", "role": "user", "content": "seed"}]
    settings = {**SETTINGS, "agent": {**SETTINGS["agent"], "context": {"messages": seeded}}}
    call = Call(config(settings=settings, history_limit=2))
    call.ready()
    for i in range(4):
        call.agent(agent("ConversationText", role="user", content=f"turn {i}"))
    call.agent(agent("ConversationText", role="system", content="not history"))
    call.agent(agent("History", function_calls=[{"id": 3}]))  # malformed: not kept
    call.core.agent_closed(1011, call.now)
    settings_sent, *_ = reconnect(call)
    contents = [m["content"] for m in settings_sent["agent"]["context"]["messages"]]
    assert contents == ["seed", "turn 2", "turn 3"]
