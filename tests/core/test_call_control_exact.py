"""Call control's exact outputs in the core, which mutmut found unchecked (docs/mutation.md):
the settings' error messages, the transfer tool's answers, what a transfer, a barge-in, a
redirect report, the silence and length limits, the safety rules and the keypad send, and when.
Public API only (CallBridge inputs and actions), in virtual time."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sansio import (
    CallControl,
    CallEnded,
    ConfigError,
    Dtmf,
    EndReason,
    FallbackCall,
    KeypadEntry,
    PeerIgnored,
    SafetyRule,
    TransferCall,
    TransferCancelled,
)
from tests.helpers import (
    Call,
    agent,
    agent_texts,
    config,
    function_call,
    twilio_dtmf,
    twilio_mark,
    twilio_stop,
)

DESK = "sip:desk@example.com"
NURSE = "+15559870000"
TARGETS = {"front_desk": DESK, "nurse": NURSE}


def control(**changes: Any) -> CallControl:
    return CallControl(**{"targets": TARGETS, **changes})


def ready(ctl: CallControl, **overrides: Any) -> Call:
    call = Call(config(twilio_idle_timeout=1000.0, control=ctl, **overrides))
    call.ready()
    return call


def sent(actions: list[object]) -> list[dict[str, Any]]:
    return agent_texts(actions)  # type: ignore[arg-type]


def ended_at(call: Call, at: float) -> CallEnded:
    """The call's end, which came at ``at``: the legs' close deadline counts from it."""
    ended = call.core.ended
    assert ended is not None
    assert call.core.next_deadline() == at + 1.0  # close_timeout
    return ended


def answer(actions: list[object]) -> dict[str, Any]:
    (response,) = [m for m in sent(actions) if m["type"] == "FunctionCallResponse"]
    content: dict[str, Any] = json.loads(response["content"])
    return content


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"targets": {"front desk": DESK}},
         "targets: target name 'front desk' must be a word (A-Z, 0-9, _, -)"),
        ({"targets": {"desk": "5551234"}},
         "targets: desk: '5551234' is neither an E.164 number nor a sip: URI"),
        ({"keypad": {"x": "hangup"}}, "keypad: 'x' is not a keypad key (0-9, * or #)"),
        ({"keypad": {"12": "hangup"}}, "keypad: '12' is not a keypad key (0-9, * or #)"),
        ({"keypad": {"0": "transfer:nowhere"}},
         "keypad: 0=transfer:nowhere: use hangup or transfer:NAME of a --transfer-target"),
        ({"keypad": {"0": "dial:nurse"}},
         "keypad: 0=dial:nurse: use hangup or transfer:NAME of a --transfer-target"),
        ({"keypad": {"#": "hangup"}, "dtmf_collect": True},
         "keypad: the --dtmf-terminator key cannot also be a keypad action"),
        ({"safety_rules": (SafetyRule("r", ("pain",), "m", "nowhere"),)},
         "safety_rules: r: unknown target 'nowhere'"),
        ({"safety_rules": (SafetyRule("r", (), "m", "nurse"),)},
         "safety_rules: r: phrases must be non-empty"),
        ({"safety_rules": (SafetyRule("r", ("pain", " ?! "), "m", "nurse"),)},
         "safety_rules: r: phrases must be non-empty"),
        ({"safety_rules": (SafetyRule("r", ("pain",), "  ", "nurse"),)},
         "safety_rules: r: a message is required"),
        ({"announce_grace": 0}, "announce_grace: must be a positive number of seconds, got 0"),
        ({"announce_timeout": -1.0},
         "announce_timeout: must be a positive number of seconds, got -1.0"),
        ({"handoff_timeout": True},
         "handoff_timeout: must be a positive number of seconds, got True"),
        ({"dtmf_timeout": "3"}, "dtmf_timeout: must be a positive number of seconds, got '3'"),
        ({"silence_reprompt": 0.0},
         "silence_reprompt: must be a positive number of seconds, got 0.0"),
        ({"max_call_duration": -5},
         "max_call_duration: must be a positive number of seconds, got -5"),
        ({"silence_reprompt": 5.0, "silence_hangup": 0},
         "silence_hangup: must be a positive number of reprompts"),
        ({"silence_reprompt": 5.0, "silence_hangup": 1.0},
         "silence_hangup: must be a positive number of reprompts"),
        ({"silence_hangup": 2}, "silence_hangup: needs --silence-reprompt"),
        ({"dtmf_terminator": "x"}, "dtmf_terminator: must be one keypad key"),
        ({"dtmf_terminator": "##"}, "dtmf_terminator: must be one keypad key"),
        ({"dtmf_collect_template": "digits: {digit}"},
         "dtmf_collect_template: must contain the placeholder {digits}"),
    ],
)  # fmt: skip
def test_each_setting_is_refused_with_its_field_and_reason(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        control(**changes)
    assert str(refused.value) == message
    assert refused.value.field == message.split(":")[0]


def test_valid_settings_at_their_bounds_are_accepted() -> None:
    accepted = control(
        targets={"a": "+1234567", "b-2_x": "sips:x@y", "c" * 64: "+123456789012345"},
        keypad={"#": "transfer:a", "0": "hangup"},
        safety_rules=(SafetyRule("r", ("pain",), "m", "a"),),
        silence_reprompt=0.5,
        silence_hangup=1,
        max_call_duration=1,
        dtmf_collect=True,
        dtmf_terminator="*",
        announce_grace=0.001,
    )
    assert accepted.keypad["#"] == "transfer:a"
    for targets in ({"a" * 65: DESK}, {"_a": DESK}, {"a": "+0234567"}, {"a": "+123456"},
                    {"a": "+1234567890123456"}, {"a": "sip:desk"}, {"a": "sip:a b@c"}):  # fmt: skip
        with pytest.raises(ConfigError):
            control(targets=targets)


# ---------------------------------------------------------------- the transfer tool


def ask(call: Call, arguments: object, call_id: str = "fc-1") -> list[object]:
    return list(call.agent(function_call(call_id, "transfer_call", json.dumps(arguments))))


def test_the_transfer_tool_answers_ok_and_transfers_only_after_the_announcement() -> None:
    call = ready(control(), keepalive_interval=100.0)
    out = ask(call, {"target": "front_desk", "reason": "billing"})
    (response,) = [m for m in sent(out) if m["type"] == "FunctionCallResponse"]
    assert (response["id"], response["name"]) == ("fc-1", "transfer_call")
    assert json.loads(response["content"]) == {
        "ok": True,
        "result": "Tell the caller in one short sentence that you are connecting them to"
        " front_desk. The transfer starts when you have finished speaking.",
    }
    assert not any(isinstance(a, TransferCall) for a in out)
    call.agent_audio(b"\xff" * 800)
    (done,) = call.agent(agent("AgentAudioDone"))
    assert not any(isinstance(a, TransferCall) for a in call.log)  # sent, not yet heard
    out = call.twilio(twilio_mark(json.loads(done.text)["mark"]["name"]))  # type: ignore[attr-defined]
    assert [a for a in out if isinstance(a, TransferCall)] == [
        TransferCall("front_desk", DESK, "billing")
    ]
    assert call.core.next_deadline() == call.now + 15.0  # handoff_timeout from the echo
    # the redirect succeeded: the call ends as a transfer
    call.at(call.now + 2.0).core.redirected(True, "", call.now)
    ended = ended_at(call, call.now)
    assert (ended.reason, ended.detail) == (EndReason.TRANSFER, "transferred to front_desk")


@pytest.mark.parametrize(
    ("arguments", "shown"),
    [
        ({"target": "nowhere"}, "'nowhere'"),
        ({"target": NURSE}, repr(NURSE)),  # a number is not a name
        ({"target": 7}, "'7'"),
        ({"target": ["nurse"]}, "\"['nurse']\""),
        ({}, "'None'"),
        ({"target": "x" * 50}, repr("x" * 40)),
    ],
)
def test_an_unknown_target_is_answered_with_the_configured_names(
    arguments: object, shown: str
) -> None:
    call = ready(control())
    out = ask(call, arguments)
    assert answer(out) == {
        "error": f"unknown transfer target {shown}; the targets are: front_desk, nurse"
    }
    call.advance_to(100.0)
    assert not any(isinstance(a, TransferCall | CallEnded) for a in call.log)


def test_with_no_targets_the_answer_says_none_are_configured() -> None:
    call = ready(CallControl())
    assert answer(ask(call, {"target": "nurse"})) == {
        "error": "unknown transfer target 'nurse'; the targets are: (none configured)"
    }


def test_a_second_transfer_while_one_waits_is_refused_and_a_bad_reason_is_blank() -> None:
    call = ready(control())
    ask(call, {"target": "nurse", "reason": 42})
    assert answer(ask(call, {"target": "front_desk"}, "fc-2")) == {
        "error": "a transfer or goodbye is already under way"
    }
    out = call.advance_to(3.0)  # announce_grace: no announcement started, so nothing plays
    assert [a for a in out if isinstance(a, TransferCall)] == [TransferCall("nurse", NURSE, "")]


def test_with_no_transfer_tool_a_transfer_call_is_an_ordinary_unknown_function() -> None:
    call = ready(control(transfer_tool=None))
    out = ask(call, {"target": "nurse"})
    assert not any(m["type"] == "FunctionCallResponse" and "ok" in m["content"]
                   for m in sent(out))  # fmt: skip
    call.advance_to(50.0)
    assert not any(isinstance(a, TransferCall) for a in call.log)


def test_the_transfer_waits_for_an_announcement_in_progress_until_the_timeout() -> None:
    call = ready(control(announce_grace=1.0, announce_timeout=5.0))
    ask(call, {"target": "nurse"})
    call.agent_audio(b"\xff" * 800)  # the announcement plays: its mark is not echoed
    assert not any(isinstance(a, TransferCall) for a in call.advance_to(4.99))
    out = call.advance_to(5.0)
    assert [a for a in out if isinstance(a, TransferCall)] == [TransferCall("nurse", NURSE, "")]


def test_a_barge_in_cancels_the_transfer_and_notes_it_in_the_prompt() -> None:
    call = ready(control())
    ask(call, {"target": "nurse"})
    out = call.agent(agent("UserStartedSpeaking"))
    assert TransferCancelled("nurse", "the caller spoke") in out
    (note,) = [m for m in sent(out) if m["type"] == "UpdatePrompt"]
    assert note["prompt"] == (
        "System note: the transfer to nurse was cancelled because the caller started speaking"
        " before it began. Listen to the caller, and call transfer_call again if they still"
        " want it."
    )
    call.advance_to(100.0)
    assert not any(isinstance(a, TransferCall) for a in call.log)


def test_a_failed_transfer_keeps_the_caller_with_the_agent_and_says_so() -> None:
    call = ready(control())
    ask(call, {"target": "nurse"})
    call.advance_to(3.0)
    call.at(4.0).core.redirected(False, "HTTP 404", call.now)
    out = call.drain()
    assert call.core.next_deadline() == 4.0 + 8.0  # the agent keepalive counts from the line
    assert TransferCancelled("nurse", "update failed: HTTP 404") in out
    assert {"type": "InjectAgentMessage", "message": CallControl().transfer_failed} in sent(out)
    assert call.core.ended is None
    call.core.redirected(True, "", call.now)  # a late report of nothing in flight: ignored
    assert call.drain() == []
    assert answer(ask(call, {"target": "front_desk"}, "fc-2"))["ok"] is True


def test_an_unreported_redirect_ends_the_call_after_the_handoff_timeout() -> None:
    call = ready(control(handoff_timeout=4.0))
    ask(call, {"target": "nurse"})
    call.advance_to(3.0)  # the transfer is placed at announce_grace
    assert not any(isinstance(a, CallEnded) for a in call.advance_to(6.99))
    (ended,) = [a for a in call.advance_to(7.0) if isinstance(a, CallEnded)]
    assert (ended.reason, ended.detail) == (
        EndReason.TRANSFER,
        "transferred to nurse; no report of the redirect",
    )


def test_a_stop_during_the_redirect_ends_the_call_as_the_transfer() -> None:
    call = ready(control())
    ask(call, {"target": "nurse"})
    call.advance_to(3.0)
    (ended,) = [a for a in call.twilio(twilio_stop()) if isinstance(a, CallEnded)]
    assert (ended.reason, ended.detail) == (EndReason.TRANSFER, "transferred to nurse")


def test_a_failed_fallback_ends_the_call_with_why() -> None:
    call = ready(CallControl(fallback=True), agent_retries=0)
    call.core.agent_closed(1011, call.now)
    assert call.drain() == [
        FallbackCall("agent_error", "the agent closed the connection with code 1011")
    ]
    call.at(1.5).core.redirected(False, "no credentials", call.now)
    ended = ended_at(call, 1.5)
    assert (ended.reason, ended.detail) == (
        EndReason.AGENT_ERROR,
        "the agent closed the connection with code 1011; redirected to the fallback,"
        " which failed: no credentials",
    )


def test_a_done_fallback_ends_the_call_with_its_reason() -> None:
    call = ready(CallControl(fallback=True), agent_retries=0)
    call.core.agent_closed(1011, call.now)
    call.drain()
    call.core.redirected(True, "", call.now)
    (ended,) = [a for a in call.drain() if isinstance(a, CallEnded)]
    assert (ended.reason, ended.detail) == (
        EndReason.AGENT_ERROR,
        "the agent closed the connection with code 1011; redirected to the fallback",
    )
    call.core.redirected(True, "", call.now)
    assert call.drain() == []


# ---------------------------------------------------------------- keypad


def press(call: Call, digit: str) -> list[object]:
    return list(call.twilio(twilio_dtmf(digit)))


def test_a_keypad_transfer_goes_at_once_and_replaces_a_waiting_announcement() -> None:
    call = ready(control(keypad={"0": "transfer:front_desk"}))
    ask(call, {"target": "nurse"})
    assert press(call, "0") == [TransferCall("front_desk", DESK, "keypad")]
    call.advance_to(3.5)  # the nurse transfer was dropped: nothing more is placed
    assert [a for a in call.log if isinstance(a, TransferCall)] == [
        TransferCall("front_desk", DESK, "keypad")
    ]
    assert press(call, "0") == []  # a redirect is in flight: no second one
    (ended,) = [a for a in call.advance_to(18.5) if isinstance(a, CallEnded)]
    assert ended.detail == "transferred to front_desk; no report of the redirect"


def test_a_keypad_hangup_says_why() -> None:
    call = ready(control(keypad={"9": "hangup"}))
    press(call.at(2.5), "9")
    ended = ended_at(call, 2.5)
    assert (ended.reason, ended.detail) == (EndReason.HANGUP, "the caller pressed the hangup key")


def test_a_key_is_told_to_the_agent_as_it_is_pressed_by_default() -> None:
    call = ready(control(), dtmf_template="The caller pressed {digit}.")
    out = press(call, "5")
    assert Dtmf("5") in out
    assert sent(out) == [{"type": "InjectUserMessage", "content": "The caller pressed 5."}]


def test_collected_digits_go_as_one_message_at_the_terminator() -> None:
    call = ready(control(dtmf_collect=True))
    for digit in "1234":
        assert press(call, digit) == []
    out = press(call, "#")
    assert KeypadEntry(4) in out
    assert sent(out) == [
        {"type": "InjectUserMessage", "content": "The caller entered 1 2 3 4 on the keypad."}
    ]
    assert press(call, "#") == []  # nothing gathered: nothing sent
    assert not any(isinstance(a, KeypadEntry) for a in call.advance_to(100.0))


def test_collected_digits_go_after_the_inter_digit_timeout() -> None:
    call = ready(control(dtmf_collect=True, dtmf_timeout=2.0,
                         dtmf_collect_template="Digits: {digits}!"))  # fmt: skip
    press(call.at(1.0), "4")
    press(call.at(2.0), "2")  # the timeout counts from the last key
    assert call.advance_to(3.99) == []
    out = call.advance_to(4.0)
    assert KeypadEntry(2) in out
    assert sent(out) == [{"type": "InjectUserMessage", "content": "Digits: 4 2!"}]


def test_collected_digits_are_bounded() -> None:
    call = ready(control(dtmf_collect=True))
    for _ in range(64):
        press(call, "7")
    out = press(call, "8")
    assert [a.detail for a in out if isinstance(a, PeerIgnored)] == [
        "keypad entry beyond the collected bound"
    ]
    out = press(call, "#")
    assert KeypadEntry(64) in out
    assert sent(out)[0]["content"] == "The caller entered " + " ".join("7" * 64) + " on the keypad."


def test_a_bad_dtmf_message_is_ignored_and_counted() -> None:
    call = ready(control(keypad={"9": "hangup"}))
    out = call.twilio(json.dumps({"event": "dtmf", "dtmf": {"digit": "x"}}))
    assert [type(a) for a in out] == [PeerIgnored]
    assert call.core.ended is None


# ---------------------------------------------------------------- silence, length, safety


def injections(actions: list[object]) -> list[dict[str, Any]]:
    return [m for m in sent(actions) if m["type"] == "InjectAgentMessage"]


def test_silence_reprompts_then_says_goodbye_and_ends_after_it_plays() -> None:
    call = ready(control(silence_reprompt=5.0, silence_hangup=2, reprompt_text="Hello?"))
    assert injections(call.advance_to(4.99)) == []
    assert injections(call.advance_to(5.0)) == [{"type": "InjectAgentMessage", "message": "Hello?"}]
    call.agent(agent("ConversationText", role="assistant", content="Hello?"))
    assert injections(call.advance_to(9.99)) == []
    assert len(injections(call.advance_to(10.0))) == 1  # the second reprompt
    call.agent(agent("ConversationText", role="assistant", content="Hello?"))
    out = call.advance_to(15.0)
    assert injections(out) == [
        {"type": "InjectAgentMessage", "message": CallControl().silence_goodbye}
    ]
    assert not any(isinstance(a, CallEnded) for a in out)
    (ended,) = [a for a in call.advance_to(18.0) if isinstance(a, CallEnded)]  # announce_grace
    assert (ended.reason, ended.detail) == (
        EndReason.SILENCE,
        "silence: no answer to 2 reprompt(s)",
    )


def test_the_caller_speaking_restarts_the_silence_count_and_the_reprompts() -> None:
    call = ready(control(silence_reprompt=5.0, silence_hangup=1))
    call.advance_to(5.0)  # reprompt 1 of 1
    call.agent(agent("ConversationText", role="assistant", content=CallControl().reprompt_text))
    call.at(8.0).agent(agent("UserStartedSpeaking"))
    assert injections(call.advance_to(12.99)) == []
    out = call.advance_to(13.0)  # a reprompt again, not the goodbye
    assert injections(out) == [{"type": "InjectAgentMessage", "message": "Are you still there?"}]


def test_no_silence_is_counted_while_the_agent_plays_and_it_counts_from_the_last_mark() -> None:
    call = ready(control(silence_reprompt=5.0))
    call.agent_audio(b"\xff" * 800)
    (done,) = call.agent(agent("AgentAudioDone"))
    assert injections(call.advance_to(20.0)) == []  # the reply is still playing at Twilio
    call.twilio(twilio_mark(json.loads(done.text)["mark"]["name"]))  # type: ignore[attr-defined]
    assert injections(call.advance_to(24.99)) == []
    assert len(injections(call.advance_to(25.0))) == 1


def test_no_silence_is_counted_while_a_transfer_waits() -> None:
    call = ready(control(silence_reprompt=1.0, announce_grace=50.0, announce_timeout=60.0))
    ask(call, {"target": "nurse"})
    assert injections(call.advance_to(49.0)) == []


def test_the_length_limit_ends_a_call_whose_agent_is_not_ready_at_once() -> None:
    call = Call(config(twilio_idle_timeout=1000.0, control=control(max_call_duration=1.5)))
    call.start()  # the agent is still connecting
    assert not any(isinstance(a, CallEnded) for a in call.advance_to(1.49))
    (ended,) = [a for a in call.advance_to(1.5) if isinstance(a, CallEnded)]
    assert (ended.reason, ended.detail) == (EndReason.MAX_DURATION, "max_duration: 1.5s reached")


def test_a_short_length_limit_has_no_warning_and_interrupts_with_the_goodbye() -> None:
    call = ready(control(max_call_duration=60.0))
    assert injections(call.advance_to(59.99)) == []
    out = call.advance_to(60.0)
    assert injections(out) == [
        {"type": "InjectAgentMessage", "message": CallControl().duration_goodbye,
         "behavior": "interrupt"}
    ]  # fmt: skip
    call.agent(agent("UserStartedSpeaking"))  # the goodbye is not cancelled by a barge-in
    (ended,) = [a for a in call.advance_to(63.0) if isinstance(a, CallEnded)]
    assert (ended.reason, ended.detail) == (EndReason.MAX_DURATION, "max_duration: 60s reached")


def test_the_length_warning_comes_once_a_minute_before_the_end() -> None:
    call = ready(control(max_call_duration=61.5))
    assert injections(call.advance_to(1.49)) == []
    assert injections(call.advance_to(1.5)) == [
        {"type": "InjectAgentMessage", "message": CallControl().duration_warning}
    ]
    call.agent(agent("AgentAudioDone"))
    assert injections(call.advance_to(61.49)) == []
    assert len(injections(call.advance_to(61.5))) == 1


RULE = SafetyRule("emergency", ("chest pain", "can't breathe"), "Connecting you now.", "nurse")


def test_a_safety_phrase_interrupts_with_the_message_then_transfers_once() -> None:
    call = ready(control(safety_rules=(RULE,)))
    line = "I have CHEST   pain!"
    out = call.agent(agent("ConversationText", role="user", content=line))
    assert injections(out) == [
        {"type": "InjectAgentMessage", "message": "Connecting you now.", "behavior": "interrupt"}
    ]
    call.agent(agent("UserStartedSpeaking"))  # a safety transfer is not cancellable
    out = call.advance_to(3.0)
    assert [a for a in out if isinstance(a, TransferCall)] == [
        TransferCall("nurse", NURSE, "safety rule emergency")
    ]
    call.core.redirected(False, "busy", call.now)
    call.drain()
    out = call.agent(agent("ConversationText", role="user", content="I can\u2019t breathe"))
    assert injections(out) == []  # once per call


@pytest.mark.parametrize(
    ("role", "line"),
    [
        ("assistant", "chest pain"),
        ("user", "my chest painting"),  # whole words only
        ("user", "chest, and pain"),
    ],
)
def test_a_safety_phrase_counts_only_in_a_user_line_as_whole_words(role: str, line: str) -> None:
    call = ready(control(safety_rules=(RULE,)))
    out = call.agent(agent("ConversationText", role=role, content=line))
    assert injections(out) == []
    call.advance_to(10.0)
    assert not any(isinstance(a, TransferCall) for a in call.log)


def test_a_safety_phrase_before_the_agent_is_ready_does_nothing() -> None:
    call = Call(config(twilio_idle_timeout=1000.0, control=control(safety_rules=(RULE,))))
    call.start()
    call.core.agent_connected(call.now)
    call.drain()
    out = call.agent(agent("ConversationText", role="user", content="chest pain"))
    assert injections(out) == []
    call.advance_to(1.0)
    assert not any(isinstance(a, TransferCall) for a in call.log)
    call.agent(agent("Welcome", request_id="r"))
    call.agent(agent("SettingsApplied"))
    out = call.agent(agent("ConversationText", role="user", content="chest pain"))
    assert len(injections(out)) == 1  # the first one did not use up the rule


def test_a_failed_keypad_transfer_leaves_the_transfer_tool_usable() -> None:
    call = ready(control(keypad={"0": "transfer:front_desk"}))
    press(call, "0")
    call.core.redirected(False, "HTTP 500", call.now)
    call.drain()
    assert answer(ask(call, {"target": "nurse"}))["ok"] is True
    out = call.advance_to(3.0)
    assert [a for a in out if isinstance(a, TransferCall)] == [TransferCall("nurse", NURSE, "")]


def test_a_barge_in_cancels_the_silence_goodbye_and_the_call_goes_on() -> None:
    call = ready(control(silence_reprompt=5.0, silence_hangup=1))
    call.advance_to(5.0)
    call.agent(agent("ConversationText", role="assistant", content=CallControl().reprompt_text))
    call.advance_to(10.0)  # the goodbye is asked for
    out = call.at(11.0).agent(agent("UserStartedSpeaking"))
    assert not any(isinstance(a, TransferCancelled) for a in out)  # no transfer to cancel
    call.advance_to(15.0)
    assert call.core.ended is None


def test_a_curly_apostrophe_matches_a_straight_one_in_a_safety_phrase() -> None:
    call = ready(control(safety_rules=(RULE,)))
    out = call.agent(agent("ConversationText", role="user", content="I can\u2019t BREATHE"))
    assert injections(out) == [
        {"type": "InjectAgentMessage", "message": "Connecting you now.", "behavior": "interrupt"}
    ]
