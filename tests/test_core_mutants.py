"""Exact outputs of the core that mutmut found unchecked (docs/mutation.md): the details and
close reasons a call ends with, the driver's error messages, notices' fields, and the deadlines
that follow an input. Public API only (CallBridge inputs and actions)."""

from __future__ import annotations

import json

import pytest

from sansio import (
    AgentNotice,
    AgentStartedSpeaking,
    BargeIn,
    CallEnded,
    CloseAgent,
    CloseTwilio,
    ConfigError,
    EndReason,
    LatencyReport,
    LocalProtocolError,
    Peer,
    RemoteProtocolError,
    Transcript,
)

from .helpers import (
    Call,
    agent,
    agent_texts,
    config,
    function_call,
    twilio_dtmf,
    twilio_mark,
    twilio_messages,
    twilio_stop,
)


def ended(call: Call) -> CallEnded:
    (end,) = [a for a in call.log if isinstance(a, CallEnded)]
    return end


@pytest.mark.parametrize(
    ("code", "reason", "detail"),
    [
        (None, "", "the agent closed the connection without a close frame"),
        (1011, "", "the agent closed the connection with code 1011"),
        (1000, "bye", "the agent closed the connection with code 1000: bye"),
    ],
)
def test_agent_closing_names_how_in_the_end_detail(
    code: int | None, reason: str, detail: str
) -> None:
    call = Call()
    call.ready()
    call.core.agent_closed(code, call.now, reason)
    call.drain()
    assert (ended(call).reason, ended(call).detail) == (EndReason.AGENT_ERROR, detail)
    assert CloseTwilio(1000, f"agent_error: {detail}") in call.log
    assert not [a for a in call.log if isinstance(a, CloseAgent)]  # that leg is gone already


@pytest.mark.parametrize(
    ("reason", "detail"),
    [
        ("", "could not connect to the agent"),
        ("refused", "could not connect to the agent: refused"),
    ],
)
def test_an_agent_that_cannot_be_reached_is_named_so(reason: str, detail: str) -> None:
    call = Call()
    call.start()
    call.core.agent_closed(None, call.now, reason)
    call.drain()
    assert (ended(call).reason, ended(call).detail) == (EndReason.AGENT_UNREACHABLE, detail)


@pytest.mark.parametrize(
    ("code", "detail"),
    [(None, "without a close frame"), (1000, "with code 1000"), (1001, "with code 1001")],
)
def test_twilio_closing_names_how_in_the_end_detail(code: int | None, detail: str) -> None:
    call = Call()
    call.ready()
    call.core.twilio_closed(code, call.now)
    call.drain()
    assert ended(call).detail == f"Twilio closed the stream {detail}"
    assert CloseAgent(1000, f"hangup: Twilio closed the stream {detail}") in call.log


def test_the_driver_ends_a_call_with_its_own_detail() -> None:
    call = Call()
    call.ready()
    call.at(2.0).core.end(EndReason.SHUTDOWN, "server shutting down", call.now)
    call.drain()
    assert ended(call).detail == "server shutting down"
    assert CloseTwilio(1000, "shutdown: server shutting down") in call.log
    assert call.core.next_deadline() == pytest.approx(2.0 + call.core.config.close_timeout)


@pytest.mark.parametrize(
    ("message", "detail"),
    [
        ({"code": "BAD", "description": "broken"}, "agent error BAD: broken"),
        ({"message": "only a message"}, "agent error UNKNOWN: only a message"),
        ({"code": 7, "description": 8}, "agent error UNKNOWN: "),
    ],
)
def test_an_agent_error_is_named_by_its_code_and_description(
    message: dict[str, object], detail: str
) -> None:
    call = Call()
    call.ready()
    call.agent(agent("Error", **message))
    assert (ended(call).reason, ended(call).detail) == (EndReason.AGENT_ERROR, detail)


def test_a_peer_fault_is_recorded_with_its_message_and_code() -> None:
    call = Call()
    call.ready()
    call.core.twilio_bytes(b"\x00", call.now)
    call.drain()
    error = call.core.error
    assert isinstance(error, RemoteProtocolError)
    assert (error.peer, str(error), error.close_code) == (
        Peer.TWILIO,
        "Twilio sent a binary message",
        1003,
    )
    assert repr(error) == (
        "RemoteProtocolError(twilio, 'Twilio sent a binary message', close_code=1003)"
    )
    assert RemoteProtocolError(Peer.AGENT, "x").close_code == 1008


def test_a_config_error_names_its_field_and_reason() -> None:
    with pytest.raises(ConfigError) as info:
        config(chunk_ms=0)
    assert (info.value.field, info.value.reason) == (
        "chunk_ms",
        "must be a positive integer, got 0",
    )
    assert str(info.value) == "chunk_ms: must be a positive integer, got 0"


def test_driver_misuse_names_the_call_and_the_state() -> None:
    call = Call()
    call.ready()
    with pytest.raises(LocalProtocolError, match=r"^tool_result\(\) for unknown call id 'nope'$"):
        call.core.tool_result("nope", "{}", call.now)
    with pytest.raises(LocalProtocolError, match=r"^agent_connected\(\) in agent state ready$"):
        call.core.agent_connected(call.now)
    call.core.twilio_closed(1000, call.now)
    with pytest.raises(LocalProtocolError, match=r"^twilio_bytes\(\) after twilio_closed\(\)$"):
        call.core.twilio_bytes(b"x", call.now)
    with pytest.raises(LocalProtocolError, match=r"^twilio_text\(\) after twilio_closed\(\)$"):
        call.core.twilio_text("{}", call.now)


def test_what_is_sent_to_the_agent_restarts_the_keepalive_clock() -> None:
    call = Call(config(keepalive_interval=5.0))
    call.ready()
    call.agent(function_call("fc_1", "lookup"))
    call.at(3.0).core.tool_result("fc_1", '{"ok": true}', call.now)
    assert call.core.next_deadline() == pytest.approx(8.0)
    call.at(4.0).twilio(twilio_dtmf("5"))
    assert call.core.next_deadline() == pytest.approx(9.0)


def test_every_barge_in_is_counted() -> None:
    call = Call()
    call.ready()
    out = call.agent(agent("UserStartedSpeaking")) + call.agent(agent("UserStartedSpeaking"))
    assert [a for a in out if isinstance(a, BargeIn)] == [BargeIn(1), BargeIn(2)]
    assert call.core.stats().barge_ins == 2


def test_agent_notices_carry_their_fields() -> None:
    call = Call()
    call.ready()
    out = call.agent(
        agent("AgentStartedSpeaking", total_latency=1.5, tts_latency=0.25, ttt_latency=2)
    )
    assert out == [AgentStartedSpeaking(1.5, 0.25, 2.0)]
    out = call.agent(agent("LatencyReport", total=1, tts=0.5, label="x", flag=True))
    assert out == [LatencyReport({"total": 1.0, "tts": 0.5})]
    out = call.agent(agent("ConversationText", role="user", content=5))
    assert out == [Transcript("user", "")]


def test_function_calls_the_bridge_does_not_run_are_reported_or_refused() -> None:
    call = Call()
    call.ready()
    server_side = {"id": "fc_s", "name": "web", "arguments": "{}", "client_side": False}
    out = call.agent(agent("FunctionCallRequest", functions=[server_side]))
    assert out == [AgentNotice("FunctionCallRequest", server_side)]
    call.agent(function_call("fc_b", "lookup", arguments="[1]"))
    (response,) = agent_texts(call.log)[-1:]
    assert response == {
        "type": "FunctionCallResponse",
        "id": "fc_b",
        "name": "lookup",
        "content": json.dumps({"error": "arguments must be a JSON object"}),
    }


def test_end_call_answers_the_agent_and_is_reported() -> None:
    call = Call()
    call.ready()
    out = call.agent(function_call("fc_e", "end_call"))
    notices = [a for a in out if isinstance(a, AgentNotice)]
    assert [n.type for n in notices] == ["FunctionCallRequest"]
    assert notices[0].message["name"] == "end_call"
    assert agent_texts(out)[-1]["content"] == json.dumps(
        {"ok": True, "result": "The call ends after your goodbye."}
    )


def test_a_reply_echoed_while_another_plays_keeps_the_hangup_grace() -> None:
    """The end mark of one reply, with another still playing, neither ends the call nor moves
    the hang-up past the grace; the last echo ends it at once, and the close timer follows."""
    call = Call(config(hangup_grace=3.0, hangup_timeout=30.0, mark_interval_ms=0))
    call.ready()
    call.at(1.0).agent(function_call("fc_e", "end_call"))
    call.agent_audio(b"\x01" * 160)
    call.agent(agent("AgentAudioDone"))
    call.agent_audio(b"\x02" * 160)
    out = call.agent(agent("AgentAudioDone"))
    marks = [m["mark"]["name"] for m in twilio_messages(call.log) if m["event"] == "mark"]
    assert len(marks) == 2 and out
    call.at(2.0).twilio(twilio_mark(marks[0]))
    assert call.core.ended is None
    assert call.core.next_deadline() == pytest.approx(4.0)
    call.at(2.5).twilio(twilio_mark(marks[1]))
    assert ended(call).detail == "end_call: goodbye played"
    assert call.core.next_deadline() == pytest.approx(2.5 + call.core.config.close_timeout)


def test_a_mark_echo_with_a_name_that_is_not_a_string_is_ignored() -> None:
    call = Call()
    call.ready()
    echo = json.loads(twilio_mark("x"))
    echo["mark"]["name"] = ["not", "hashable"]
    call.twilio(json.dumps(echo))
    assert call.core.ended is None and call.core.stats().ignored_messages == 1
    call.twilio(twilio_stop())
    assert ended(call).reason is EndReason.HANGUP
