"""The timer table alone, and the driver's read-only view of the core."""

from __future__ import annotations

import pytest

from sansio import AgentState, CallBridge, LocalProtocolError, TwilioState
from sansio._timers import Timer, Timers
from tests.helpers import Call, agent, config, function_call, twilio_mark


def test_next_deadline_is_the_earliest_armed_row_of_the_phase() -> None:
    fired: list[str] = []
    timers = Timers(
        (
            Timer("a", {"p"}, lambda: 5.0, lambda now: fired.append("a")),
            Timer("b", {"p", "q"}, lambda: 3.0, lambda now: fired.append("b")),
            Timer("idle", {"p"}, lambda: None, lambda now: fired.append("idle")),
        )
    )
    assert timers.next_deadline("p") == 3.0
    assert timers.next_deadline("q") == 3.0
    assert timers.next_deadline("r") is None
    timers.fire_due(4.0, lambda: "p")
    assert fired == ["b"]
    timers.fire_due(5.0, lambda: "p")
    assert fired == ["b", "a", "b"]


def test_a_row_that_changes_the_phase_disarms_the_rows_after_it() -> None:
    phase = ["p"]
    fired: list[str] = []

    def end(now: float) -> None:
        fired.append("end")
        phase[0] = "ended"

    timers = Timers(
        (
            Timer("end", {"p"}, lambda: 1.0, end),
            Timer("later", {"p"}, lambda: 1.0, lambda now: fired.append("later")),
        )
    )
    timers.fire_due(2.0, lambda: phase[0])
    assert fired == ["end"]


def test_each_deadline_of_a_call_is_one_row() -> None:
    core = CallBridge(config(), now=0.0)
    names = [row.name for row in core._timers.rows]
    assert names == [
        "close",
        "agent_connect",
        "settings_applied",
        "welcome",
        "twilio_idle",
        "chunk",
        "keepalive",
        "hangup",
        "handoff",
        "silence",
        "max_duration",
        "dtmf_collect",
        "reconnect",
    ]


def test_predicates_follow_the_legs() -> None:
    call = Call()
    core = call.core
    assert core.accepts_twilio_input and not core.accepts_agent_input
    assert not core.awaits_agent_connection
    call.start()
    assert core.awaits_agent_connection and not core.accepts_agent_input
    core.agent_connected(call.now)
    assert core.accepts_agent_input and not core.awaits_agent_connection
    call.agent(agent("Welcome"))
    call.agent(agent("SettingsApplied"))
    assert core.agent_state is AgentState.READY and core.accepts_agent_input
    core.twilio_closed(1000, call.now)
    assert not core.accepts_twilio_input and core.twilio_state is TwilioState.CLOSED
    with pytest.raises(LocalProtocolError):
        core.twilio_text("{}", call.now)
    core.agent_closed(1000, call.now)
    assert not core.accepts_agent_input and core.finished


def test_states_are_read_only() -> None:
    core = CallBridge(config(), now=0.0)
    for name in ("twilio_state", "agent_state", "ended", "error", "last_reply"):
        with pytest.raises(AttributeError):
            setattr(core, name, None)


def test_end_call_waits_for_the_reply_still_being_sent() -> None:
    call = Call()
    call.ready()
    call.agent_audio(b"\x01" * 160)
    call.agent(agent("AgentAudioDone"))  # reply 1 is complete; its last mark is 0.1.end
    call.agent(function_call("c1", "end_call"))
    call.agent_audio(b"\x02" * 160)  # reply 2, the goodbye, is still being sent
    call.twilio(twilio_mark("0.1.end"))
    assert call.core.ended is None
    call.agent(agent("AgentAudioDone"))
    call.twilio(twilio_mark("0.2.end"))
    ended = call.core.ended
    assert ended is not None and ended.detail == "end_call: goodbye played"
