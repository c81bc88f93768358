"""Exact outputs of the core that mutmut found unchecked in the call's plumbing (docs/mutation.md):
which ends the fallback takes over, the end a redirect in flight makes its own, what a
fallback leaves the call able to do, marks before ``start`` and without a string name, a
disabled transfer tool, the call length limit before ``start``, and what the pre-roll policy
cuts at ``SettingsApplied``. Public API only (CallBridge inputs and actions, and
``mark_name``), in virtual time."""

from __future__ import annotations

from typing import Any

import pytest

from sansio import (
    BargeIn,
    CallControl,
    CallEnded,
    ClearTwilio,
    CloseAgent,
    CloseTwilio,
    EndReason,
    FallbackCall,
    PeerIgnored,
    RunTool,
    SendAgentAudio,
    TransferCall,
)
from sansio._twilio import Oddity, mark_name
from tests.helpers import (
    Call,
    agent,
    config,
    function_call,
    twilio_connected,
    twilio_mark,
    twilio_media,
    twilio_stop,
)

DESK = "+15551234567"


def ready(ctl: CallControl, **overrides: Any) -> Call:
    call = Call(config(twilio_idle_timeout=1000.0, control=ctl, **overrides))
    call.ready()
    return call


def ends(actions: list[Any]) -> list[tuple[EndReason, str]]:
    return [(a.reason, a.detail) for a in actions if isinstance(a, CallEnded)]


# ---------------------------------------------------------------- what the fallback takes over


def test_an_agent_protocol_error_hands_the_caller_to_the_fallback() -> None:
    """A protocol fault of the agent's, with the caller still streaming, is an agent failure:
    the fallback takes the call over instead of hanging up."""
    call = ready(CallControl(fallback=True), agent_retries=0)
    assert call.at(2.0).agent("not json") == [
        FallbackCall("protocol_error", "the agent sent a message that is not JSON")
    ]
    assert call.core.ended is None


def test_a_twilio_protocol_error_ends_the_call_even_with_a_fallback() -> None:
    """A fault of Twilio's is not the agent's: the caller's stream is broken, so the call ends
    (with Twilio's close code) and no fallback is asked for."""
    call = ready(CallControl(fallback=True), agent_retries=0)
    call.core.twilio_bytes(b"\x00", 3.0)
    actions = call.drain()
    assert not [a for a in actions if isinstance(a, FallbackCall)]
    assert ends(actions) == [(EndReason.PROTOCOL_ERROR, "Twilio sent a binary message")]
    text = "protocol_error: Twilio sent a binary message"
    assert actions[1:] == [CloseTwilio(1003, text), CloseAgent(1000, text)]


def test_an_agent_failure_before_the_stream_starts_ends_without_a_fallback() -> None:
    """The fallback redirects a caller who is on the stream; before Twilio's ``start`` there is
    nobody to redirect, so a shutdown (an agent failure kind) just ends the call."""
    call = Call(config(control=CallControl(fallback=True)))
    call.twilio(twilio_connected())
    call.core.end(EndReason.SHUTDOWN, "server stopping", 1.0)
    actions = call.drain()
    assert not [a for a in actions if isinstance(a, FallbackCall)]
    assert ends(actions) == [(EndReason.SHUTDOWN, "server stopping")]
    assert actions[1:] == [CloseTwilio(1000, "shutdown: server stopping")]


def test_a_caller_barging_in_during_the_fallback_is_only_cleared() -> None:
    """While the fallback redirect is in flight nothing is pending to cancel: the caller's
    speech clears Twilio's audio as always, and the redirect's deadline stands."""
    call = ready(CallControl(fallback=True, handoff_timeout=15.0), agent_retries=0)
    call.core.end(EndReason.SHUTDOWN, "server stopping", 2.0)
    assert call.at(2.0).drain() == [FallbackCall("shutdown", "server stopping")]
    actions = call.at(3.0).agent(agent("UserStartedSpeaking"))
    assert [type(a) for a in actions] == [ClearTwilio, BargeIn]
    assert actions[1] == BargeIn(1)
    ended = call.advance_to(17.0)
    detail = "server stopping; redirected to the fallback; no report of the redirect"
    assert ends(ended) == [(EndReason.SHUTDOWN, detail)]


# ---------------------------------------------------------------- a redirect's end


def test_a_stop_during_a_transfer_ends_the_call_then_and_there() -> None:
    """Twilio's ``stop`` while a transfer is in flight ends the call as the transfer, at the
    stop's time: the legs' close deadline counts from it."""
    call = ready(CallControl(targets={"desk": DESK}))
    call.core.transfer("desk", "asked", 2.0)
    assert call.at(2.0).drain() == [TransferCall("desk", DESK, "asked")]
    actions = call.at(5.0).twilio(twilio_stop())
    assert ends(actions) == [(EndReason.TRANSFER, "transferred to desk")]
    assert call.core.next_deadline() == 5.0 + 1.0  # close_timeout


# ---------------------------------------------------------------- inputs at odd times


def test_a_mark_echo_before_start_is_ignored() -> None:
    """An echo of a mark that was never sent, before the stream even started, is tolerated."""
    call = Call()
    call.twilio(twilio_connected())
    assert call.twilio(twilio_mark("0.1.end")) == [
        PeerIgnored("twilio", "echo of a mark never sent")
    ]
    assert call.core.ended is None


@pytest.mark.parametrize(
    "mark", [{"name": 7}, {"name": None}, {"name": ["0.1.end"]}, {}, "0.1.end", None]
)
def test_a_mark_echo_without_a_string_name_is_an_oddity(mark: object) -> None:
    """``mark_name`` returns a name only when the echo carries a string one; anything else is
    the oddity that the call ignores as an echo of a mark never sent."""
    assert mark_name({"event": "mark", "mark": mark}) == Oddity("echo of a mark never sent")
    assert mark_name({"event": "mark", "mark": {"name": "0.1.end"}}) == "0.1.end"


def test_without_a_transfer_tool_every_client_function_goes_to_the_driver() -> None:
    """``transfer_tool=""`` disables the built-in transfer tool: even a function whose name is
    empty is the driver's to run."""
    call = ready(CallControl(transfer_tool="", targets={"desk": DESK}))
    assert call.agent(function_call("c1", "")) == [RunTool("c1", "", {})]


def test_a_call_length_limit_waits_for_the_stream_to_start() -> None:
    """``max_call_duration`` counts from Twilio's ``start``: before it, only the idle timeout
    is due."""
    call = Call(config(control=CallControl(max_call_duration=120.0)))
    assert call.core.next_deadline() == 15.0  # twilio_idle_timeout
    call.twilio(twilio_connected())
    assert call.advance_to(14.0) == []


# ---------------------------------------------------------------- pre-roll at SettingsApplied


def preroll_call(audio: bytes, **overrides: Any) -> Call:
    """A call with ``audio`` held before SettingsApplied (160-byte chunks, 480 bytes held at
    most, the newest 320 kept), up to Settings at 1.0."""
    cfg = config(chunk_ms=20, preroll_ms=60, preroll_policy="last", preroll_last_ms=40, **overrides)
    call = Call(cfg)
    call.start()
    call.twilio(twilio_media(audio))
    call.core.agent_connected(0.5)
    call.drain()
    call.agent(agent("Welcome", request_id="req-1"))
    return call.at(1.0)


def test_the_last_preroll_policy_cuts_even_one_byte_too_many() -> None:
    """With one byte more than the policy keeps, that oldest byte is dropped and counted; the
    newest bytes go out as whole chunks stamped with the release time."""
    audio = b"\x09" + bytes(range(160)) + bytes(range(160, 256)) + bytes(64)
    call = preroll_call(audio)
    actions = call.agent(agent("SettingsApplied"))
    assert [a for a in actions if isinstance(a, SendAgentAudio)] == [
        SendAgentAudio(audio[1:161], 1.0),
        SendAgentAudio(audio[161:], 1.0),
    ]
    assert call.core.stats().preroll_dropped_bytes == 1


def test_preroll_dropped_counts_both_the_cap_and_the_policy() -> None:
    """Bytes dropped beyond the pre-roll cap and bytes the policy cuts at SettingsApplied add
    up in ``preroll_dropped_bytes``."""
    audio = bytes(i % 251 for i in range(500))  # 20 beyond the cap, then 160 cut by the policy
    call = preroll_call(audio)
    actions = call.agent(agent("SettingsApplied"))
    assert [a for a in actions if isinstance(a, SendAgentAudio)] == [
        SendAgentAudio(audio[180:340], 1.0),
        SendAgentAudio(audio[340:], 1.0),
    ]
    assert call.core.stats().preroll_dropped_bytes == 20 + 160

