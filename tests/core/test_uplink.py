"""The caller-to-agent sub-machine alone: pre-roll, chunking, deadlines, held DTMF, keepalive."""

from __future__ import annotations

from sansio import Action, AgentState, SendAgentAudio, SendAgentText
from sansio._counters import Counters
from sansio._uplink import Uplink
from tests.helpers import (
    Call,
    agent,
    agent_audio_of,
    agent_texts,
    config,
    twilio_media,
)


def make(**overrides: object) -> tuple[Uplink, list[Action], Counters]:
    actions: list[Action] = []
    counters = Counters(actions)
    return Uplink(config(**overrides), actions, counters, 0.0), actions, counters


def test_preroll_keeps_the_newest_bytes_and_counts_the_dropped() -> None:
    up, actions, counters = make(chunk_ms=20, preroll_ms=40)  # 160-byte chunks, 320 held
    for i in range(3):
        up.push(bytes([i]) * 160, i * 0.02, ready=False)
    assert actions == [] and up.held_bytes == 320
    assert counters.preroll_dropped_bytes == 160
    up.release(0.1)
    # Every held chunk is dated from when holding began, the worst case of its delay.
    assert actions == [SendAgentAudio(b"\x01" * 160, 0.0), SendAgentAudio(b"\x02" * 160, 0.0)]
    assert counters.agent_audio_bytes_sent == 320


def test_once_ready_a_frame_of_one_chunk_goes_at_once() -> None:
    up, actions, _ = make(chunk_ms=20)
    up.push(b"\x07" * 160, 1.0, ready=True)
    assert actions == [SendAgentAudio(b"\x07" * 160, 1.0)]
    assert up.chunk_due() is None and up.keepalive_due() == 1.0 + 8.0


def test_a_partial_chunk_waits_for_its_deadline_then_flushes() -> None:
    up, actions, _ = make(chunk_ms=40)  # 320-byte chunks
    up.push(b"\x01" * 160, 1.0, ready=True)
    assert actions == [] and up.chunk_due() == 1.0 + 0.04
    up.push(b"\x02" * 240, 1.02, ready=True)  # 400 bytes: one chunk out, 80 held
    assert actions == [SendAgentAudio(b"\x01" * 160 + b"\x02" * 160, 1.0)]
    assert up.held_bytes == 80 and up.chunk_due() == 1.02 + 0.04
    up.flush()
    assert actions[-1] == SendAgentAudio(b"\x02" * 80, 1.02) and up.chunk_due() is None


def test_keepalive_counts_from_the_last_text_or_audio_sent() -> None:
    up, actions, counters = make(keepalive_interval=8.0)
    up.connected(2.0)
    assert up.keepalive_due() == 10.0
    up.keepalive(10.0)
    assert actions == [SendAgentText('{"type":"KeepAlive"}')] and counters.keepalives == 1
    assert up.keepalive_due() == 18.0


def test_the_bridge_holds_caller_audio_while_settings_are_pending() -> None:
    call = Call(config(chunk_ms=20, preroll_policy="keep"))
    call.start()
    call.core.agent_connected(call.now)
    out = call.agent(agent("Welcome", request_id="r"))  # Settings sent: CONFIGURING
    assert call.core.agent_state is AgentState.CONFIGURING and agent_texts(out)
    assert agent_audio_of(call.twilio(twilio_media(b"\x01" * 160))) == b""
    assert agent_audio_of(call.twilio(twilio_media(b"\x02" * 160))) == b""
    out = call.agent(agent("SettingsApplied"))
    assert agent_audio_of(out) == b"\x01" * 160 + b"\x02" * 160
