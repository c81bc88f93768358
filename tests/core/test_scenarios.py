"""Scenario tests of the core in virtual time: every input, timer and ending."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest

from sansio import (
    AgentNotice,
    AgentReady,
    AgentStartedSpeaking,
    AgentState,
    AgentThinking,
    AgentWarning,
    BargeIn,
    CallEnded,
    CallStarted,
    CancelTool,
    ClearTwilio,
    CloseAgent,
    CloseTwilio,
    ConfigError,
    Dtmf,
    EndReason,
    FunctionCallsCancelled,
    History,
    InjectionDropped,
    InjectionRefused,
    LatencyReport,
    LocalProtocolError,
    OpenAgent,
    Peer,
    PeerIgnored,
    Playback,
    ReplyPlayback,
    RunTool,
    SendAgentAudio,
    SendAgentText,
    SendTwilioMark,
    SendTwilioMedia,
    Transcript,
    TwilioState,
    fill_placeholders,
)
from sansio._bridge import MAX_PENDING_MARKS
from tests.core.playbook import (
    AgentAudio,
    AgentConnected,
    AgentText,
    Playbook,
    TwilioClosed,
    TwilioText,
    ended_with,
)
from tests.helpers import (
    CALL_SID,
    SETTINGS,
    STREAM_SID,
    Call,
    agent,
    agent_audio_of,
    agent_texts,
    config,
    function_call,
    twilio_connected,
    twilio_dtmf,
    twilio_mark,
    twilio_media,
    twilio_messages,
    twilio_start,
    twilio_stop,
)


def ended(actions: list) -> CallEnded:
    [end] = [a for a in actions if isinstance(a, CallEnded)]
    return end


def of(kind: type, actions: list) -> list:
    return [a for a in actions if isinstance(a, kind)]


# ---------------------------------------------------------------- start-up and Settings


def test_settings_is_the_first_agent_message_and_placeholders_are_filled() -> None:
    call = Call()
    out = call.start(parameters={"From": "+15551234567", "To": "+15557654321"})
    [started] = of(CallStarted, out)
    assert started.stream_sid == STREAM_SID and started.custom_parameters["From"] == "+15551234567"
    assert out[-1] == OpenAgent() and call.core.agent_state is AgentState.CONNECTING
    call.core.agent_connected(call.at(0.1).now)
    assert call.drain() == []  # nothing is sent before Welcome
    out = call.agent(agent("Welcome", request_id="r1"))
    [settings] = agent_texts(out)
    assert settings["type"] == "Settings"
    assert "+15551234567" in settings["agent"]["think"]["prompt"]
    assert "{From}" not in settings["agent"]["think"]["prompt"]
    expected = dict(SETTINGS)
    expected["agent"] = settings["agent"]
    assert settings == expected  # everything else is config.json verbatim
    out = call.agent(agent("SettingsApplied"))
    assert AgentReady("r1", 0) in out and call.core.agent_state is AgentState.READY


def test_settings_are_sent_without_welcome_after_the_welcome_timeout() -> None:
    call = Call(config(welcome_timeout=0.5))
    call.start()
    call.core.agent_connected(call.now)
    assert call.core.next_deadline() == pytest.approx(0.5)
    out = call.advance_to(0.5)
    assert agent_texts(out)[0]["type"] == "Settings"
    assert PeerIgnored("agent", "no Welcome; Settings sent anyway") in out
    assert call.agent(agent("Welcome")) == []  # a late Welcome does not resend Settings


def test_caller_audio_is_held_until_settings_applied_then_flushed_in_order() -> None:
    call = Call(config(chunk_ms=20, preroll_policy="keep"))
    call.start()
    frames = [bytes([i]) * 160 for i in range(5)]
    for i, frame in enumerate(frames):
        assert call.at(i * 0.02).twilio(twilio_media(frame)) == []
    call.core.agent_connected(call.now)
    call.drain()
    call.agent(agent("Welcome"))
    out = call.agent(agent("SettingsApplied"))
    assert AgentReady("", 800) in out
    sent = of(SendAgentAudio, out)
    assert [a.audio for a in sent] == frames
    assert all(a.since == 0.0 for a in sent)


def test_preroll_drops_the_oldest_audio_first_and_counts_it() -> None:
    call = Call(config(preroll_ms=40, preroll_policy="keep"))  # 320 bytes
    call.start()
    audio = bytes(range(200)) * 3
    for i in range(3):
        call.twilio(twilio_media(audio[i * 200 : (i + 1) * 200]))
    call.core.agent_connected(call.now)
    call.agent(agent("Welcome"))
    out = call.agent(agent("SettingsApplied")) + call.twilio(twilio_stop())
    assert agent_audio_of(out) == audio[-320:]
    assert ended(out).stats.preroll_dropped_bytes == 600 - 320


# ---------------------------------------------------------------- the caller audio path


def test_whole_frames_go_straight_through_at_20ms() -> None:
    call = Call(config(chunk_ms=20))
    call.ready()
    frame = b"\x7f" * 160
    out = call.at(1.0).twilio(twilio_media(frame))
    assert out == [SendAgentAudio(frame, 1.0)]


def test_chunks_are_filled_and_a_partial_chunk_is_flushed_by_its_deadline() -> None:
    call = Call(config(chunk_ms=60))  # 480 bytes
    call.ready()
    assert call.at(1.0).twilio(twilio_media(b"a" * 160)) == []
    assert call.core.next_deadline() == pytest.approx(1.06)
    assert call.at(1.02).twilio(twilio_media(b"b" * 160)) == []
    out = call.at(1.04).twilio(twilio_media(b"c" * 400))
    assert out == [SendAgentAudio(b"a" * 160 + b"b" * 160 + b"c" * 160, 1.0)]
    # the 240-byte remainder came with the newest frame: its clock starts at 1.04
    assert call.core.next_deadline() == pytest.approx(1.10)
    out = call.advance_to(1.2)
    assert out[0] == SendAgentAudio(b"c" * 240, 1.04)
    assert call.now == pytest.approx(1.2)


def test_a_frame_larger_than_a_chunk_is_split() -> None:
    call = Call(config(chunk_ms=20))
    call.ready()
    out = call.at(2.0).twilio(twilio_media(bytes(range(256)) + bytes(144)))
    assert [len(a.audio) for a in of(SendAgentAudio, out)] == [160, 160]
    assert agent_audio_of(out) == bytes(range(256)) + bytes(64)


def test_media_oddities_are_counted_and_dropped_not_fatal() -> None:
    call = Call()
    call.twilio(twilio_connected())
    out = call.twilio(twilio_media(b"x" * 160))
    assert PeerIgnored("twilio", "media before start") in out
    call.twilio(twilio_start())
    bad = json.loads(twilio_media(b"y" * 160))
    bad["media"]["payload"] = "not base64!!"
    out = call.twilio(json.dumps(bad))
    assert PeerIgnored("twilio", "media payload that is not base64") in out
    bad["media"]["payload"] = 42
    call.twilio(json.dumps(bad))
    call.twilio(json.dumps({"event": "media", "media": "nope"}))
    call.twilio(twilio_media(b"z" * 160, track="outbound"))
    call.twilio(json.dumps({"event": "media", "media": {"payload": ""}}))
    call.twilio(json.dumps({"event": "surprise"}))
    call.twilio(twilio_start())  # a second start is ignored
    assert call.core.ended is None
    out = call.twilio(twilio_stop())
    stats = ended(out).stats
    assert stats.undecodable_media == 3
    assert stats.caller_audio_bytes == 0
    assert stats.ignored_messages == 7


# ---------------------------------------------------------------- the agent audio path


def test_agent_audio_becomes_exact_media_then_progress_and_end_marks() -> None:
    call = Call(config(mark_interval_ms=100))  # a progress mark every 800 bytes
    call.ready()
    out = call.agent_audio(b"\x01" * 500) + call.agent_audio(b"\x02" * 500)
    messages = twilio_messages(out)
    assert messages[0] == {
        "event": "media",
        "streamSid": STREAM_SID,
        "media": {"payload": "AQEB" * 166 + "AQE="},
    }
    assert [m["event"] for m in messages] == ["media", "media", "mark"]
    assert messages[2] == {"event": "mark", "streamSid": STREAM_SID, "mark": {"name": "0.1.1000"}}
    out = call.agent(agent("AgentAudioDone"))
    assert twilio_messages(out) == [
        {"event": "mark", "streamSid": STREAM_SID, "mark": {"name": "0.1.end"}}
    ]
    assert call.twilio(twilio_mark("0.1.1000")) == []
    assert call.core.last_reply is None
    out = call.twilio(twilio_mark("0.1.end"))
    assert out == [ReplyPlayback(1, Playback.PLAYED, 1000, 1000)]
    out = call.twilio(twilio_mark("0.1.end"))  # echoed twice: unknown now
    assert out == [PeerIgnored("twilio", "echo of a mark never sent")]


def test_barge_in_clears_at_once_and_reports_what_was_heard() -> None:
    call = Call(config(mark_interval_ms=100))
    call.ready()
    call.agent_audio(b"\x01" * 1600)  # reply 1 with a progress mark at 1600
    call.agent(agent("AgentAudioDone"))
    call.agent_audio(b"\x02" * 400)  # reply 2 starts streaming
    call.twilio(twilio_mark("0.1.1600"))  # the caller heard reply 1 in full...
    out = call.agent(agent("UserStartedSpeaking"))  # ...but not its end mark yet
    assert isinstance(out[0], ClearTwilio)
    assert twilio_messages(out) == [{"event": "clear", "streamSid": STREAM_SID}]
    assert out[1:] == [
        ReplyPlayback(1, Playback.CLEARED, 1600, 1600),
        ReplyPlayback(2, Playback.CLEARED, 400, 0),
        BargeIn(1),
    ]
    # Twilio echoes the pending marks on clear: they were cleared, not played.
    assert call.twilio(twilio_mark("0.1.end")) == []
    # The next reply is counted in the new generation.
    out = call.agent_audio(b"\x03" * 10) + call.agent(agent("AgentAudioDone"))
    assert twilio_messages(out)[-1]["mark"]["name"] == "1.3.end"
    assert call.twilio(twilio_mark("1.3.end")) == [ReplyPlayback(3, Playback.PLAYED, 10, 10)]


def test_barge_in_clears_even_when_nothing_is_believed_to_be_playing() -> None:
    call = Call()
    call.ready()
    out = call.agent(agent("UserStartedSpeaking"))
    assert out == [
        ClearTwilio(json.dumps({"event": "clear", "streamSid": STREAM_SID}, separators=(",", ":"))),
        BargeIn(1),
    ]


def test_agent_audio_done_without_audio_still_marks() -> None:
    call = Call()
    call.ready()
    out = call.agent(agent("AgentAudioDone"))
    assert of(SendTwilioMark, out)
    assert call.twilio(twilio_mark("0.1.end")) == [ReplyPlayback(1, Playback.PLAYED, 0, 0)]


def test_progress_marks_stop_at_the_bound() -> None:
    call = Call(config(mark_interval_ms=1))
    call.ready()
    call.core._marks.update({f"x{i}": (0, None, 0, False) for i in range(MAX_PENDING_MARKS)})  # type: ignore[misc]
    out = call.agent_audio(b"\x01" * 80)
    assert of(SendTwilioMark, out) == []
    out = call.agent(agent("AgentAudioDone"))  # the reply's last mark is never skipped
    assert len(of(SendTwilioMark, out)) == 1


# ---------------------------------------------------------------- agent notices and errors


def test_agent_messages_become_notices() -> None:
    call = Call()
    call.ready()
    out = call.agent(agent("ConversationText", role="user", content="I have a cough"))
    assert out == [Transcript("user", "I have a cough")]
    assert call.agent(agent("AgentThinking", content="hmm")) == [AgentThinking("hmm")]
    out = call.agent(
        agent("AgentStartedSpeaking", total_latency=1, tts_latency=0.2, ttt_latency="x")
    )
    assert out == [AgentStartedSpeaking(1.0, 0.2, None)]
    out = call.agent(agent("LatencyReport", stt_latency=0.1, tts_latency=0.3, note="x"))
    assert out == [LatencyReport({"stt_latency": 0.1, "tts_latency": 0.3})]
    assert call.agent(agent("History", role="user", content="hi")) == [
        History({"type": "History", "role": "user", "content": "hi"})
    ]
    assert call.agent(agent("Warning", code="W", description="d")) == [AgentWarning("W", "d")]
    assert call.agent(agent("InjectionRefused", message="busy")) == [
        PeerIgnored("agent", "InjectionRefused with no injection in flight"),
        InjectionRefused("busy", queued=False),
    ]
    assert call.agent(json.dumps({"no": "type"})) == [AgentNotice("None", {"no": "type"})]
    assert call.agent(agent("Welcome")) == []  # a duplicate Welcome changes nothing
    out = call.agent(agent("SettingsApplied"))
    assert out == [PeerIgnored("agent", "SettingsApplied that was not awaited")]
    assert call.core.ended is None


def test_agent_error_ends_the_call_and_closes_both_legs() -> None:
    call = Call(config(agent_retries=0))
    call.ready()
    detail = "agent error THINK_FAILED: Failed to think"
    assert (
        Playbook(call)
        << AgentText(agent("Error", description="Failed to think", code="THINK_FAILED"))
        >> ended_with(EndReason.AGENT_ERROR, detail)
        >> CloseTwilio(1000, f"agent_error: {detail}")
        >> CloseAgent(1000, f"agent_error: {detail}")
        # Anything after the end is ignored; peers may still deliver in-flight messages.
        << AgentText(agent("UserStartedSpeaking"))
        << AgentAudio(b"\x01")
        << TwilioText(twilio_media(b"\x01" * 160))
    )


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("{nope", "the agent sent a message that is not JSON"),
        ("[1, 2]", "the agent sent JSON that is not an object"),
    ],
)
def test_agent_garbage_is_a_protocol_error(text: str, detail: str) -> None:
    call = Call()
    call.ready()
    out = call.agent(text)
    assert ended(out).reason is EndReason.PROTOCOL_ERROR
    assert call.core.error is not None and call.core.error.peer is Peer.AGENT
    assert CloseAgent(1007, f"protocol_error: {detail}") in out
    assert CloseTwilio(1000, f"protocol_error: {detail}") in out


def test_agent_audio_before_settings_applied_is_a_protocol_error() -> None:
    call = Call()
    call.start()
    detail = "the agent sent audio before SettingsApplied"
    assert (
        Playbook(call)
        << AgentConnected()
        << AgentText(agent("AgentAudioDone"))
        >> PeerIgnored("agent", "AgentAudioDone before SettingsApplied")
        << AgentAudio(b"\x01\x02")
        >> ended_with(EndReason.PROTOCOL_ERROR, detail)
        >> CloseTwilio(1000, f"protocol_error: {detail}")
        >> CloseAgent(1008, f"protocol_error: {detail}")
    )


def test_agent_closing_mid_call_ends_it_as_an_agent_error() -> None:
    call = Call(config(agent_retries=0))
    call.ready()
    call.core.agent_closed(1011, call.now, "internal")
    out = call.drain()
    assert ended(out).detail == "the agent closed the connection with code 1011: internal"
    assert out[-1] == CloseTwilio(
        1000, "agent_error: the agent closed the connection with code 1011: internal"
    )
    assert not call.core.finished
    call.core.twilio_closed(1000, call.now)
    assert call.core.finished and call.core.next_deadline() is None


def test_an_unreachable_agent_ends_the_call_cleanly() -> None:
    call = Call()
    call.start()
    call.core.agent_closed(None, call.now, "HTTP 401")
    out = call.drain()
    assert ended(out).reason is EndReason.AGENT_UNREACHABLE
    assert ended(out).detail == "could not connect to the agent: HTTP 401"
    assert not of(CloseAgent, out)


# ---------------------------------------------------------------- hanging up


def test_stop_flushes_the_partial_chunk_then_closes_the_agent() -> None:
    call = Call(config(chunk_ms=100))
    call.ready()
    assert (
        Playbook(call)
        << TwilioText(twilio_media(b"\x05" * 160))
        << TwilioText(twilio_stop())
        >> SendAgentAudio(b"\x05" * 160, call.now)
        >> ended_with(EndReason.HANGUP)
        >> CloseTwilio(1000, "hangup: the caller hung up (stop)")
        >> CloseAgent(1000, "hangup: the caller hung up (stop)")
    )


def test_twilio_closing_without_stop_is_a_hangup() -> None:
    call = Call(config(chunk_ms=100))
    call.ready()
    call.twilio(twilio_media(b"\x05" * 100))
    call.core.twilio_closed(None, call.now)
    out = call.drain()
    assert out[0] == SendAgentAudio(b"\x05" * 100, call.now)
    assert ended(out).detail == "Twilio closed the stream without a close frame"
    assert of(CloseTwilio, out) == [] and of(CloseAgent, out)
    call.core.twilio_closed(1000, call.now)  # reported twice: harmless
    call.core.agent_closed(1000, call.now)
    assert call.core.finished


def test_stop_before_start_never_opens_the_agent() -> None:
    call = Call()
    assert (
        Playbook(call)
        << TwilioText(twilio_connected())
        << TwilioText(twilio_stop())
        >> ended_with(EndReason.HANGUP)
        >> CloseTwilio(1000, "hangup: the caller hung up (stop)")
    )
    assert not of(OpenAgent, call.log) and call.core.agent_state is AgentState.CLOSED
    assert Playbook(call) << TwilioClosed(1000)
    assert call.core.finished


def test_the_close_handshake_is_bounded_by_the_close_timeout() -> None:
    call = Call(config(close_timeout=2.0))
    call.ready()
    call.at(5.0).twilio(twilio_stop())
    assert call.core.next_deadline() == pytest.approx(7.0)
    call.core.handle_timeout(6.0)
    assert call.drain() == []
    out = call.advance_to(7.0)
    assert out == [
        CloseTwilio(1006, "close handshake timed out", abort=True),
        CloseAgent(1006, "close handshake timed out", abort=True),
    ]
    assert call.core.finished and call.core.next_deadline() is None
    call.core.handle_timeout(8.0)
    assert call.drain() == []
    call.core.agent_closed(1000, 8.0)  # late reports after an abort are harmless
    assert call.core.finished


def test_a_long_close_reason_is_cut_to_fit_a_close_frame() -> None:
    call = Call(config(agent_retries=0))
    call.ready()
    out = call.agent(agent("Error", description="é" * 200, code="X"))
    [close] = of(CloseTwilio, out)
    assert len(close.reason.encode()) <= 120 and close.reason.startswith(
        "agent_error: agent error X: é"
    )


def test_the_driver_can_end_a_call() -> None:
    call = Call()
    call.ready()
    call.core.end(EndReason.SHUTDOWN, "server shutting down", call.now)
    out = call.drain()
    assert ended(out).reason is EndReason.SHUTDOWN
    call.core.end(EndReason.TIMEOUT, "again", call.now)
    assert call.drain() == []  # a call ends exactly once


# ---------------------------------------------------------------- Twilio protocol errors


@pytest.mark.parametrize(
    ("text", "code", "detail"),
    [
        ("not json", 1007, "Twilio sent a message that is not JSON"),
        ('"a string"', 1007, "Twilio sent JSON that is not an object"),
        ('{"event": "start"}', 1008, "start without a start object"),
        ('{"event": "start", "start": {}}', 1008, "start without a streamSid"),
    ],
)
def test_twilio_garbage_is_a_protocol_error(text: str, code: int, detail: str) -> None:
    call = Call()
    out = call.twilio(text)
    assert ended(out).reason is EndReason.PROTOCOL_ERROR and ended(out).detail == detail
    assert out[-1] == CloseTwilio(code, f"protocol_error: {detail}")


def test_binary_from_twilio_is_a_protocol_error() -> None:
    call = Call()
    call.start()
    call.core.twilio_bytes(b"\x00\x01", call.now)
    out = call.drain()
    assert CloseTwilio(1003, "protocol_error: Twilio sent a binary message") in out
    assert CloseAgent(1000, "protocol_error: Twilio sent a binary message") in out
    call.core.twilio_bytes(b"more", call.now)
    assert call.drain() == []


def test_a_media_format_other_than_mulaw_8k_mono_ends_the_call() -> None:
    call = Call()
    call.twilio(twilio_connected())
    fmt = {"encoding": "audio/x-l16", "sampleRate": 16000, "channels": 1}
    out = call.twilio(twilio_start(media_format=fmt))
    end = ended(out)
    assert end.reason is EndReason.PROTOCOL_ERROR and "unsupported media format" in end.detail
    assert not of(OpenAgent, out) and out[-1].code == 1003


def test_admit_hook_sees_the_start_and_may_refuse_the_call_before_any_agent_leg() -> None:
    seen: list[tuple[str, dict[str, str]]] = []

    def admit(call_sid: str, parameters: Mapping[str, str]) -> str | None:
        seen.append((call_sid, dict(parameters)))
        return None if parameters.get("token") == "good" else "bad token"

    refused = Call(config(admit=admit))
    out = refused.twilio(twilio_start({"token": "forged"}))
    end = ended(out)
    assert end.reason is EndReason.PROTOCOL_ERROR and end.detail == "call refused: bad token"
    assert not of(OpenAgent, out) and not of(CallStarted, out)
    assert out[-1] == CloseTwilio(1008, "protocol_error: call refused: bad token")
    assert refused.twilio(twilio_media(b"\x00" * 160, 2)) == []  # ended: nothing more

    admitted = Call(config(admit=admit))
    out = admitted.twilio(twilio_start({"token": "good"}))
    assert of(OpenAgent, out) and admitted.core.ended is None
    assert seen == [(CALL_SID, {"token": "forged"}), (CALL_SID, {"token": "good"})]


def test_start_without_media_format_or_parameters_is_accepted() -> None:
    call = Call()
    start = json.loads(twilio_start())
    del start["start"]["mediaFormat"]
    start["start"]["customParameters"] = "junk"
    out = call.twilio(json.dumps(start))
    assert of(CallStarted, out)[0].custom_parameters == {}


# ---------------------------------------------------------------- timers


def test_agent_connect_timeout() -> None:
    call = Call(config(agent_connect_timeout=3.0))
    call.start()
    out = call.advance_to(10.0)
    assert ended(out).detail == "agent_connect: no connection after 3.0s"
    assert call.now == pytest.approx(10.0)
    assert CloseAgent(1000, "timeout: agent_connect: no connection after 3.0s") in out


def test_settings_applied_timeout() -> None:
    call = Call(config(settings_timeout=4.0))
    call.start()
    call.core.agent_connected(1.0)
    call.at(1.0).agent(agent("Welcome"))
    out = call.advance_to(6.0)
    assert ended(out).detail == "settings_applied: none after 4.0s"


def test_twilio_idle_timeout_counts_from_the_last_message() -> None:
    call = Call(config(twilio_idle_timeout=5.0))
    call.ready()
    call.at(3.0).twilio(twilio_media(b"\x01" * 160))
    out = call.advance_to(7.9)
    assert not of(CallEnded, out)
    out = call.advance_to(8.0)
    assert ended(out).detail == "twilio_idle: no message for 5.0s"


def test_keepalive_is_sent_only_while_no_audio_flows() -> None:
    call = Call(config(keepalive_interval=8.0, twilio_idle_timeout=100.0))
    call.ready()
    for i in range(1, 200):  # 4 s of audio: no KeepAlive
        call.at(i * 0.02).twilio(twilio_media(b"\x01" * 160))
    assert call.core.next_deadline() == pytest.approx(199 * 0.02 + 8.0)
    out = call.advance_to(30.0)
    keepalives = [t for t in agent_texts(out) if t == {"type": "KeepAlive"}]
    assert len(keepalives) == 3  # at 11.98, 19.98, 27.98
    assert call.core.stats().keepalives == 3


def test_handle_timeout_before_any_deadline_does_nothing() -> None:
    call = Call()
    call.ready()
    call.core.handle_timeout(0.001)
    assert call.drain() == []


# ---------------------------------------------------------------- DTMF


def test_dtmf_becomes_inject_user_message_and_is_held_until_ready() -> None:
    call = Call(config(dtmf_template="Key {digit} pressed"))
    call.start()
    out = call.twilio(twilio_dtmf("1"))
    assert out == [Dtmf("1")]
    call.core.agent_connected(call.now)
    call.agent(agent("Welcome"))
    out = call.agent(agent("SettingsApplied"))
    assert agent_texts(out) == [{"type": "InjectUserMessage", "content": "Key 1 pressed"}]
    assert agent_texts(call.twilio(twilio_dtmf("#"))) == []  # "1" is not settled yet
    out = call.agent(agent("ConversationText", role="user", content="Key 1 pressed"))
    assert agent_texts(out) == [{"type": "InjectUserMessage", "content": "Key # pressed"}]
    out = call.twilio(twilio_dtmf("12"))
    assert out == [PeerIgnored("twilio", "dtmf without a valid digit")]


def test_dtmf_held_before_ready_is_bounded_and_the_drops_counted() -> None:
    call = Call(config(injection_limit=3))
    call.start()
    for digit in "12345":
        call.twilio(twilio_dtmf(digit))
    assert (
        call.log.count(
            InjectionDropped(
                "InjectUserMessage", "The caller pressed the 4 key on the phone keypad."
            )
        )
        == 1
    )
    call.core.agent_connected(call.now)
    call.agent(agent("Welcome"))
    texts = agent_texts(call.agent(agent("SettingsApplied")))
    assert [t["content"].split()[4] for t in texts] == ["1"]  # one in flight at a time
    for digit in "23":
        texts = agent_texts(call.agent(agent("AgentAudioDone")))
        assert [t["content"].split()[4] for t in texts] == [digit]
    assert call.core.stats().injections_dropped == 2


# ---------------------------------------------------------------- tools


def test_client_side_tool_round_trip() -> None:
    call = Call()
    call.ready()
    out = call.agent(function_call("fc_1", "lookup", '{"q": "x"}'))
    assert out == [RunTool("fc_1", "lookup", {"q": "x"})]
    call.core.tool_result("fc_1", '{"answer": 42}', call.now)
    assert agent_texts(call.drain()) == [
        {
            "type": "FunctionCallResponse",
            "id": "fc_1",
            "name": "lookup",
            "content": '{"answer": 42}',
        }
    ]
    with pytest.raises(LocalProtocolError):
        call.core.tool_result("fc_1", "again", call.now)


def test_tool_arguments_are_checked() -> None:
    call = Call()
    call.ready()
    assert call.agent(function_call("a", "t", {"already": "parsed"})) == [
        RunTool("a", "t", {"already": "parsed"})
    ]
    assert call.agent(function_call("b", "t", "")) == [RunTool("b", "t", {})]
    for call_id, raw in (("c", "[1]"), ("d", "{bad"), ("e", 7)):
        out = call.agent(function_call(call_id, "t", raw))
        [response] = agent_texts(out)
        assert response["id"] == call_id and "error" in json.loads(response["content"])


def test_cancelled_tool_calls_are_withdrawn_and_late_results_dropped() -> None:
    call = Call()
    call.ready()
    call.agent(function_call("fc_1", "slow"))
    out = call.agent(
        agent("FunctionCallCancelled", functions=[{"id": "fc_1", "name": "slow"}, {"id": "zz"}, 3])
    )
    assert out == [CancelTool("fc_1"), FunctionCallsCancelled(("fc_1", "zz"), False)]
    call.core.tool_result("fc_1", "late", call.now)
    assert call.drain() == []
    assert call.agent(agent("FunctionCallCancelled")) == []


def test_function_calls_before_settings_applied_are_ignored() -> None:
    call = Call()
    call.start()
    call.core.agent_connected(call.now)
    out = call.agent(function_call("fc_0", "lookup"))
    assert out == [PeerIgnored("agent", "FunctionCallRequest before SettingsApplied")]


def test_server_side_and_malformed_function_calls_are_only_reported() -> None:
    call = Call()
    call.ready()
    out = call.agent(function_call("s1", "weather", client_side=False))
    assert [type(a) for a in out] == [AgentNotice]
    out = call.agent(agent("FunctionCallRequest", functions=[{"name": "x"}, "junk"]))
    assert out == [PeerIgnored("agent", "function call without an id and a name")]
    out = call.agent(agent("FunctionCallRequest", functions="nope"))
    assert out == [PeerIgnored("agent", "FunctionCallRequest without functions")]


def test_ending_withdraws_pending_tools_before_reporting() -> None:
    call = Call()
    call.ready()
    call.agent(function_call("fc_9", "slow"))
    out = call.twilio(twilio_stop())
    assert out[0] == CancelTool("fc_9") and isinstance(out[1], CallEnded)
    call.core.tool_result("fc_9", "late", call.now)
    assert call.drain() == []


def test_end_call_waits_for_the_goodbye_to_be_played() -> None:
    call = Call(config(hangup_grace=3.0, keepalive_interval=100.0, twilio_idle_timeout=100.0))
    call.ready()
    out = call.at(1.0).agent(function_call("fc_e", "end_call", '{"reason": "bye"}'))
    [response] = agent_texts(out)
    assert response["id"] == "fc_e" and response["name"] == "end_call"
    call.at(1.5).agent_audio(b"\x01" * 1600)  # the goodbye, faster than real time
    call.agent(agent("AgentAudioDone"))
    out = call.advance_to(4.0)  # the grace passed, but the goodbye is still playing
    assert not of(CallEnded, out)
    assert call.core.next_deadline() == pytest.approx(31.0)
    out = call.at(4.5).twilio(twilio_mark("0.1.end"))
    assert out[0] == ReplyPlayback(1, Playback.PLAYED, 1600, 1600)
    end = ended(out)
    assert end.reason is EndReason.TOOL and end.detail == "end_call: goodbye played"
    assert out[-2:] == [
        CloseTwilio(1000, "tool: end_call: goodbye played"),
        CloseAgent(1000, "tool: end_call: goodbye played"),
    ]


def test_end_call_with_nothing_to_play_hangs_up_after_the_grace() -> None:
    call = Call(config(hangup_grace=2.0))
    call.ready()
    call.at(1.0).agent(function_call("fc_e", "end_call"))
    call.agent(function_call("fc_f", "end_call"))  # a repeat does not move the deadline
    assert call.core.next_deadline() == pytest.approx(3.0)
    out = call.advance_to(3.0)
    assert ended(out).reason is EndReason.TOOL


def test_end_call_gives_up_waiting_at_the_hangup_timeout() -> None:
    call = Call(config(hangup_grace=1.0, hangup_timeout=10.0, twilio_idle_timeout=60.0))
    call.ready()
    call.agent(function_call("fc_e", "end_call"))
    call.agent_audio(b"\x01" * 800)  # never acknowledged
    out = call.advance_to(20.0)
    assert ended(out).detail == "end_call: goodbye still playing at hangup_timeout"
    assert call.core.ended is not None and call.core.ended.stats.replies == 1


# ---------------------------------------------------------------- misuse by the driver


def test_driver_misuse_raises_local_protocol_errors() -> None:
    call = Call()
    with pytest.raises(LocalProtocolError):
        call.core.agent_connected(0.0)
    with pytest.raises(LocalProtocolError):
        call.core.agent_text("{}", 0.0)
    with pytest.raises(LocalProtocolError):
        call.core.agent_audio(b"x", 0.0)
    call.core.twilio_closed(1000, 0.0)
    assert call.core.twilio_state is TwilioState.CLOSED
    with pytest.raises(LocalProtocolError):
        call.core.twilio_text("{}", 0.0)
    with pytest.raises(LocalProtocolError):
        call.core.twilio_bytes(b"", 0.0)
    with pytest.raises(LocalProtocolError):
        call.core.tool_result("nobody", "x", 0.0)


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda s: s.__setitem__("type", "SettingsConfiguration"), "settings.type"),
        (lambda s: s.pop("audio"), "settings.audio"),
        (lambda s: s["audio"].pop("input"), "settings.audio.input"),
        (
            lambda s: s["audio"]["input"].__setitem__("encoding", "linear16"),
            "settings.audio.input.encoding",
        ),
        (
            lambda s: s["audio"]["output"].__setitem__("sample_rate", 24000),
            "settings.audio.output.sample_rate",
        ),
        (
            lambda s: s["audio"]["output"].__setitem__("container", "wav"),
            "settings.audio.output.container",
        ),
        (lambda s: s.__setitem__("agent", ""), "settings.agent"),
        (lambda s: s["agent"].__setitem__("listen", "nova-3"), "settings.agent.listen"),
        (lambda s: s["agent"]["speak"].pop("provider"), "settings.agent.speak.provider"),
        (lambda s: s["agent"].__setitem__("speak", []), "settings.agent.speak"),
        (
            lambda s: s["agent"].__setitem__("speak", [s["agent"]["speak"], {"provider": {}}]),
            "settings.agent.speak[1].provider",
        ),
        (
            lambda s: s["agent"]["think"].__setitem__("model", "gpt-4o"),
            "settings.agent.think.model",
        ),
        (
            lambda s: s["agent"]["think"].__setitem__("instructions", "be nice"),
            "settings.agent.think.instructions",
        ),
        (lambda s: s["agent"]["think"].__setitem__("prompt", 42), "settings.agent.think.prompt"),
        (
            lambda s: s["agent"]["think"].__setitem__("functions", {"a": 1}),
            "settings.agent.think.functions",
        ),
        (
            lambda s: s["agent"]["think"].__setitem__("functions", ["end_call"]),
            "settings.agent.think.functions[0]",
        ),
        (lambda s: s["agent"].__setitem__("greeting", ["hi"]), "settings.agent.greeting"),
        (lambda s: s.__setitem__("tags", {1, 2}), "settings"),
    ],
)
def test_settings_validation_names_the_field(mutate, field: str) -> None:
    settings = json.loads(json.dumps(SETTINGS))
    mutate(settings)
    with pytest.raises(ConfigError) as info:
        config(settings=settings)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("chunk_ms", 0),
        ("preroll_ms", 1.5),
        ("mark_interval_ms", -1),
        ("keepalive_interval", 0),
        ("close_timeout", True),
        ("twilio_idle_timeout", "5"),
        ("dtmf_template", "no placeholder"),
    ],
)
def test_bridge_options_are_validated(option: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        config(**{option: value})
    assert info.value.field == option


def test_settings_accept_the_v1_variants() -> None:
    """A stored agent id, fallback lists for think and speak, client-side functions, and a
    section left out (Deepgram's default)."""
    settings = json.loads(json.dumps(SETTINGS))
    agent = settings["agent"]
    del agent["listen"]
    agent["think"]["functions"] = [{"name": "lookup", "description": "d", "parameters": {}}]
    agent["think"] = [agent["think"], {**agent["think"], "provider": {"type": "anthropic"}}]
    agent["speak"] = [agent["speak"], {"provider": {"type": "eleven_labs"}, "endpoint": {}}]
    for variant in ({**SETTINGS, "agent": "agent-id-1234"}, settings):
        call = Call(config(settings=variant))
        call.ready()
        # Accepted, and sent to the agent as written, placeholders filled.
        assert agent_texts(call.log)[0] == fill_placeholders(variant, {"From": "+15550001"})
    # The checks do look inside the lists: one bad fallback is named by its index.
    agent["think"][1]["provider"] = {}
    with pytest.raises(ConfigError) as info:
        config(settings=settings)
    assert info.value.field == "settings.agent.think[1].provider"


def test_settings_must_be_an_object() -> None:
    with pytest.raises(ConfigError, match="settings: must be a JSON object"):
        config(settings=["Settings"])


def test_fill_placeholders_leaves_unknown_names_and_literal_braces() -> None:
    value = {"a": ["{From} {To} {not json}", 3, None], "b": "plain"}
    assert fill_placeholders(value, {"From": "+1"}) == {
        "a": ["+1 {To} {not json}", 3, None],
        "b": "plain",
    }


def test_agent_text_agent_messages_keep_state_for_inspection() -> None:
    call = Call()
    call.ready()
    assert call.core.stream_sid == STREAM_SID and call.core.call_sid.startswith("CA")
    assert call.log[-1] == AgentReady("req-1", 0)  # the last thing SettingsApplied gave
    assert call.core.agent_state is AgentState.READY
    assert of(SendAgentText, call.log) and not of(SendTwilioMedia, call.log)
