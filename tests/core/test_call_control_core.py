"""Call control in the core, in virtual time: the length limit, the fallback's bound, and the
startup checks of the settings (the server-level acceptance is tests/test_call_control.py)."""

from __future__ import annotations

import json

import pytest

from sansio import (
    CallControl,
    CallEnded,
    CloseTwilio,
    ConfigError,
    EndReason,
    FallbackCall,
    LocalProtocolError,
    SafetyRule,
    SendAgentText,
    TransferCall,
)
from tests.helpers import Call, agent, config, twilio_dtmf, twilio_mark, twilio_stop


def injected(actions: list[object]) -> list[str]:
    return [
        json.loads(a.text).get("message", "")
        for a in actions
        if isinstance(a, SendAgentText) and "InjectAgentMessage" in a.text
    ]


def test_max_duration_warns_a_minute_before_then_ends_after_the_goodbye() -> None:
    call = Call(config(twilio_idle_timeout=1000.0, control=CallControl(max_call_duration=120.0)))
    call.ready()
    assert injected(call.advance_to(59.0)) == []
    assert injected(call.advance_to(60.0)) == [CallControl().duration_warning]
    out = call.advance_to(120.0)
    assert injected(out) == [CallControl().duration_goodbye]
    assert not any(isinstance(a, CallEnded) for a in out)  # the goodbye plays first
    call.agent_audio(b"\xff" * 800)
    (end,) = call.agent(agent("AgentAudioDone"))
    call.twilio(twilio_mark(json.loads(end.text)["mark"]["name"]))
    (ended,) = [a for a in call.log if isinstance(a, CallEnded)]
    assert ended.reason is EndReason.MAX_DURATION


def test_the_fallback_keeps_the_stream_until_twilio_stops_it_and_is_bounded() -> None:
    control = CallControl(fallback=True, handoff_timeout=2.0)
    call = Call(config(twilio_idle_timeout=1000.0, agent_retries=0, control=control))
    call.ready()
    call.core.agent_closed(1011, call.now)
    out = call.drain()
    assert out == [FallbackCall("agent_error", "the agent closed the connection with code 1011")]
    assert call.core.ended is None  # the caller is still on the stream, waiting for the update
    out = call.twilio(twilio_stop())  # Twilio ends the stream once the update took effect
    assert isinstance(out[0], CallEnded) and out[0].reason is EndReason.AGENT_ERROR
    assert "redirected to the fallback" in out[0].detail

    silent = Call(config(twilio_idle_timeout=1000.0, agent_retries=0, control=control))
    silent.ready()
    silent.core.agent_closed(None, silent.now)
    silent.drain()
    out = silent.advance_to(silent.now + 2.0)  # no report, no stop: ended anyway
    assert any(isinstance(a, CallEnded) for a in out) and any(
        isinstance(a, CloseTwilio) for a in out
    )


def test_a_keypad_hangup_ends_the_call_and_a_keypad_transfer_needs_no_agent() -> None:
    targets = {"front_desk": "sip:desk@example.com"}
    control = CallControl(targets=targets, keypad={"9": "hangup", "0": "transfer:front_desk"})
    call = Call(config(control=control))
    call.start()  # the agent is not even connected
    assert call.twilio(twilio_dtmf("0")) == [
        TransferCall("front_desk", "sip:desk@example.com", "keypad")
    ]
    hung = Call(config(control=control))
    hung.ready()
    out = hung.twilio(twilio_dtmf("9"))
    assert isinstance(out[0], CallEnded) and out[0].reason is EndReason.HANGUP


@pytest.mark.parametrize(
    "changes",
    [
        {"targets": {"desk": "5551234"}},  # not E.164
        {"targets": {"front desk": "+15551234567"}},
        {"keypad": {"0": "transfer:nowhere"}},
        {"keypad": {"x": "hangup"}},
        {"safety_rules": (SafetyRule("r", ("pain",), "m", "nowhere"),)},
        {"silence_hangup": 2},  # without silence_reprompt
    ],
)
def test_call_control_settings_are_checked_once(changes: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        CallControl(**changes)  # type: ignore[arg-type]


def test_a_driver_transfer_names_a_target_and_is_refused_outside_a_call() -> None:
    control = CallControl(targets={"front_desk": "+15550001111"})
    call = Call(config(control=control))
    with pytest.raises(LocalProtocolError):
        call.core.transfer("front_desk", "control API", call.now)  # no start yet
    call.ready()
    with pytest.raises(LocalProtocolError):
        call.core.transfer("+15559999999", "control API", call.now)  # a number is no target
    assert [a for a in call.drain() if isinstance(a, TransferCall)] == []
    call.core.transfer("front_desk", "control API", call.now)
    assert [a for a in call.drain() if isinstance(a, TransferCall)] == [
        TransferCall("front_desk", "+15550001111", "control API")
    ]
    with pytest.raises(LocalProtocolError, match="already under way"):
        call.core.transfer("front_desk", "control API", call.now)  # one redirect at a time
    assert [a for a in call.drain() if isinstance(a, TransferCall)] == []
    call.core.redirected(True, "", call.now)
    with pytest.raises(LocalProtocolError):
        call.core.transfer("front_desk", "control API", call.now)  # the call has ended
