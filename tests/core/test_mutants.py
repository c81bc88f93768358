"""Exact outputs of the core that mutmut found unchecked (docs/mutation.md): the details and
close reasons a call ends with, the driver's error messages, notices' fields, and the deadlines
that follow an input. Public API only (CallBridge inputs and actions)."""

from __future__ import annotations

import json

import pytest

from sansio import (
    Action,
    AgentNotice,
    AgentReady,
    AgentReconnecting,
    AgentStartedSpeaking,
    BargeIn,
    CallEnded,
    CallStarted,
    CloseAgent,
    CloseTwilio,
    ConfigError,
    EndReason,
    FunctionCallsCancelled,
    InjectionDropped,
    InjectionRefused,
    LatencyReport,
    LocalProtocolError,
    OpenAgent,
    Peer,
    PeerIgnored,
    RemoteProtocolError,
    RunTool,
    Transcript,
)
from tests.helpers import (
    ACCOUNT_SID,
    CALL_SID,
    SETTINGS,
    STREAM_SID,
    Call,
    agent,
    agent_audio_of,
    agent_texts,
    config,
    function_call,
    twilio_dtmf,
    twilio_mark,
    twilio_media,
    twilio_messages,
    twilio_start,
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
    call = Call(config(agent_retries=0))  # no failover: the failure ends the call
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
    call = Call(config(agent_retries=0))  # no failover: the failure ends the call
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


def test_call_started_carries_the_start_fields_and_strings_only() -> None:
    call = Call()
    out = call.start(parameters={"From": "+1", "n": 5})  # type: ignore[dict-item]
    assert out[0] == CallStarted(STREAM_SID, CALL_SID, ACCOUNT_SID, {"From": "+1", "n": "5"})
    assert call.core.custom_parameters == {"From": "+1", "n": "5"}
    bare = Call()
    assert (bare.core.stream_sid, bare.core.call_sid, bare.core.error) == (None, None, None)
    assert bare.core.custom_parameters == {}
    start = json.loads(twilio_start())
    start["start"].update(accountSid=1, callSid=2, streamSid="")  # the top-level sid is used
    bare.twilio(json.dumps(start))
    assert bare.log[0] == CallStarted(STREAM_SID, "", "", {"From": "+15550001"})
    start["start"]["streamSid"], start["streamSid"] = "MZinner", "MZouter"
    other = Call()
    other.twilio(json.dumps(start))
    assert other.core.stream_sid == "MZinner"


@pytest.mark.parametrize(
    ("change", "detail", "code"),
    [
        ({"start": None}, "start without a start object", 1008),
        ({"streamSid": None, "start.streamSid": None}, "start without a streamSid", 1008),
        ({"start.streamSid": 5, "streamSid": None}, "start without a streamSid", 1008),
        (
            {"start.mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 16000}},
            'unsupported media format {"encoding": "audio/x-mulaw", "sampleRate": 16000}; '
            "need mu-law/8000/1",
            1003,
        ),
        (
            {"start.mediaFormat": {"encoding": "audio/x-l16", "sampleRate": 8000, "channels": 1}},
            'unsupported media format {"encoding": "audio/x-l16", "sampleRate": 8000, '
            '"channels": ; need mu-law/8000/1',
            1003,
        ),
    ],
)
def test_a_bad_start_fails_the_call_with_its_reason(
    change: dict[str, object], detail: str, code: int
) -> None:
    message = json.loads(twilio_start())
    for key, value in change.items():
        *path, last = key.split(".")
        target = message[path[0]] if path else message
        target[last] = value
    call = Call()
    call.at(1.0).twilio(json.dumps(message))
    assert ended(call).detail == detail
    assert call.log[-1] == CloseTwilio(code, f"protocol_error: {detail}"[:120])
    assert call.core.next_deadline() == pytest.approx(1.0 + call.core.config.close_timeout)


def test_a_refused_call_ends_with_the_refusal() -> None:
    call = Call(config(admit=lambda sid, params: "no token"))
    call.at(1.0).start()
    assert ended(call).detail == "call refused: no token"
    assert call.core.next_deadline() == pytest.approx(1.0 + call.core.config.close_timeout)


def test_json_that_is_not_an_object_fails_the_call_in_time() -> None:
    call = Call()
    call.ready()
    call.at(2.0).twilio("[1]")
    assert ended(call).detail == "Twilio sent JSON that is not an object"
    assert call.core.next_deadline() == pytest.approx(2.0 + call.core.config.close_timeout)


def test_each_ignored_oddity_is_named() -> None:
    call = Call()
    call.ready()
    media = json.loads(twilio_media(b"x"))
    out = call.twilio(json.dumps({**media, "media": "x"}))
    out += call.twilio(twilio_media(b"x", track="outbound-track-with-a-long-name"))
    out += call.twilio(json.dumps({"event": "e" * 50}))
    out += call.twilio(twilio_start())
    bad = json.loads(twilio_media(b"abc"))
    bad["media"]["payload"] = "YWJj$$"  # base64 with junk: refused, not decoded leniently
    out += call.twilio(json.dumps(bad))
    assert [a.detail for a in out if isinstance(a, PeerIgnored)] == [
        "media without a media object",
        "media on track 'outbound-track-with-'",
        f"unknown event {'e' * 40!r}",
        "a second start",
        "media payload that is not base64",
    ]
    assert call.core.stats().undecodable_media == 2
    assert agent_audio_of(out) == b""


def test_only_64_kinds_of_oddity_are_reported_but_all_are_counted() -> None:
    call = Call()
    call.ready()
    out: list[Action] = []
    for i in range(70):
        out += call.twilio(json.dumps({"event": f"e{i}"}))
    assert len([a for a in out if isinstance(a, PeerIgnored)]) == 64
    assert call.core.stats().ignored_messages == 70


def test_agent_audio_before_settings_applied_fails_the_agent_leg() -> None:
    call = Call()
    call.start()
    call.core.agent_connected(call.now)
    call.core.agent_audio(b"\x01", call.now)
    call.drain()
    detail = "the agent sent audio before SettingsApplied"
    assert call.log[-1] == CloseAgent(1008, f"protocol_error: {detail}")
    assert call.core.error is not None and call.core.error.peer is Peer.AGENT
    call.core.agent_closed(1008, call.now)
    with pytest.raises(LocalProtocolError, match=r"^agent_audio\(\) in agent state closed$"):
        call.core.agent_audio(b"\x01", call.now)
    with pytest.raises(LocalProtocolError, match=r"^agent_text\(\) in agent state closed$"):
        call.core.agent_text("{}", call.now)


def test_agent_audio_is_counted_and_marked_at_each_interval() -> None:
    call = Call(config(mark_interval_ms=100))  # a progress mark every 800 bytes
    call.ready()
    out = call.agent_audio(b"\x01" * 799) + call.agent_audio(b"\x01")
    out += call.agent_audio(b"\x01" * 800)
    names = [m["mark"]["name"] for m in twilio_messages(out) if m["event"] == "mark"]
    assert names == ["0.1.800", "0.1.1600"]
    assert call.core.stats().agent_audio_bytes_received == 1600


def test_settings_applied_after_the_welcome_timeout_reports_no_request_id() -> None:
    call = Call(config(welcome_timeout=0.5))
    call.start()
    call.core.agent_connected(call.now)
    call.advance_to(0.5)
    assert call.agent(agent("SettingsApplied"))[0] == AgentReady("", 0)


@pytest.mark.parametrize(("length", "kept"), [(110, 110), (111, 110), (200, 110)])
def test_close_reasons_are_cut_to_fit_a_close_frame(length: int, kept: int) -> None:
    call = Call()
    call.ready()
    call.core.end(EndReason.SHUTDOWN, "d" * length, call.now)
    call.drain()
    prefix = "shutdown: "  # 10 bytes: 110 + 10 is the 120-byte limit
    assert call.log[-2] == CloseTwilio(1000, prefix + "d" * kept)


def test_a_close_reason_is_never_cut_inside_a_character() -> None:
    call = Call()
    call.ready()
    call.core.end(EndReason.SHUTDOWN, "d" * 109 + "é", call.now)  # 121 bytes in all
    call.drain()
    assert call.log[-2] == CloseTwilio(1000, "shutdown: " + "d" * 109)


def test_timers_fire_at_their_deadline_not_before() -> None:
    call = Call(config(agent_connect_timeout=4.0))
    call.start()
    assert call.core.next_deadline() == pytest.approx(4.0)
    call.core.handle_timeout(3.9)
    assert call.core.ended is None
    call.core.agent_connected(3.9)
    assert call.core.next_deadline() == pytest.approx(3.9 + call.core.config.welcome_timeout)
    call.core.handle_timeout(4.0)
    assert call.drain() == [] and call.core.ended is None


@pytest.mark.parametrize(
    ("agent_section", "field", "reason"),
    [
        ({"think": []}, "settings.agent.think", "must not be an empty list"),
        ({"listen": [{"provider": {"type": "deepgram"}}]}, "settings.agent.listen",
         "must be an object"),
        ({"speak": [5]}, "settings.agent.speak[0]", "must be an object"),
        ({"speak": {"provider": {}}}, "settings.agent.speak.provider",
         'must be an object with a "type" (v1)'),
        ({"think": {"provider": {"type": "x"}, "model": "m"}}, "settings.agent.think.model",
         "is the pre-v1 schema: use settings.agent.think.provider.model"),
        ({"think": {"provider": {"type": "x"}, "instructions": "i"}},
         "settings.agent.think.instructions",
         "is the pre-v1 schema: use settings.agent.think.prompt"),
        ({"think": {"provider": {"type": "x"}, "prompt": 1}}, "settings.agent.think.prompt",
         "must be a string"),
        ({"think": {"provider": {"type": "x"}, "functions": {}}},
         "settings.agent.think.functions", "must be a list of function objects"),
        ({"think": {"provider": {"type": "x"}, "functions": [{}]}},
         "settings.agent.think.functions[0]", 'must be an object with a "name"'),
        ({"greeting": 5}, "settings.agent.greeting", "must be a string"),
    ],
)  # fmt: skip
def test_each_bad_agent_section_is_named_with_its_reason(
    agent_section: dict[str, object], field: str, reason: str
) -> None:
    settings = {**SETTINGS, "agent": {**SETTINGS["agent"], **agent_section}}
    with pytest.raises(ConfigError) as info:
        config(settings=settings)
    assert (info.value.field, info.value.reason) == (field, reason)


def test_a_think_section_without_functions_is_accepted() -> None:
    think = {"provider": {"type": "open_ai", "model": "m"}, "prompt": "p"}
    settings = {**SETTINGS, "agent": {**SETTINGS["agent"], "think": think}}
    assert config(settings=settings).settings["agent"]["think"] == think


@pytest.mark.parametrize(
    ("option", "value", "reason"),
    [
        ("chunk_ms", 1, None),
        ("mark_interval_ms", -1, "must be a non-negative integer, got -1"),
        ("close_timeout", 0, "must be a positive number of seconds, got 0"),
        ("dtmf_template", "none", "must contain the placeholder {digit}"),
    ],
)
def test_each_bad_option_is_named_with_its_reason(
    option: str, value: object, reason: str | None
) -> None:
    if reason is None:  # the smallest valid value
        assert getattr(config(**{option: value}), option) == value
        return
    with pytest.raises(ConfigError) as info:
        config(**{option: value})
    assert (info.value.field, info.value.reason) == (option, reason)


def test_an_output_without_a_container_is_accepted() -> None:
    settings = json.loads(json.dumps(SETTINGS))
    settings["audio"]["output"].pop("container", None)
    assert "container" not in config(settings=settings).settings["audio"]["output"]


@pytest.mark.parametrize(
    ("path", "value", "field", "reason"),
    [
        (("type",), "Setting", "settings.type", 'must be "Settings" (Voice Agent API v1)'),
        (("audio",), None, "settings.audio", "is required and must be an object"),
        (("audio", "input"), 5, "settings.audio.input", "is required and must be an object"),
        (("audio", "output", "encoding"), "linear16", "settings.audio.output.encoding",
         'must be "mulaw" (what Twilio carries)'),
        (("audio", "input", "sample_rate"), 16000, "settings.audio.input.sample_rate",
         "must be 8000 (what Twilio carries)"),
        (("audio", "output", "container"), "wav", "settings.audio.output.container",
         'must be "none" (no file headers)'),
        (("agent",), "", "settings.agent", "is required: an object, or a stored agent id"),
        (("extra",), {1, 2}, "settings",
         "is not JSON-serialisable: Object of type set is not JSON serializable"),
    ],
)  # fmt: skip
def test_each_bad_settings_field_is_named_with_its_reason(
    path: tuple[str, ...], value: object, field: str, reason: str
) -> None:
    settings = json.loads(json.dumps(SETTINGS))
    target = settings
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ConfigError) as info:
        config(settings=settings)
    assert (info.value.field, info.value.reason) == (field, reason)


def test_agent_closing_without_a_reason_adds_none() -> None:
    call = Call(config(agent_retries=0))  # no failover: the failure ends the call
    call.ready()
    call.core.agent_closed(1000, call.now)
    call.drain()
    assert ended(call).detail == "the agent closed the connection with code 1000"


@pytest.mark.parametrize("field", ["event", "type"])
def test_a_discriminator_that_is_not_a_string_is_ignored(field: str) -> None:
    call = Call()
    call.ready()
    if field == "event":
        out = call.twilio(json.dumps({"event": ["media"]}))
        assert out == [PeerIgnored("twilio", "unknown event \"['media']\"")]
    else:
        out = call.agent(json.dumps({"type": {"a": 1}}))
        assert out == [AgentNotice("{'a': 1}", {"type": {"a": 1}})]
    assert call.core.ended is None


def test_a_mark_echo_with_an_unhashable_name_is_ignored_while_marks_wait() -> None:
    call = Call()
    call.ready()
    call.agent_audio(b"\x01" * 160)
    call.agent(agent("AgentAudioDone"))  # one mark is pending
    echo = json.loads(twilio_mark("x"))
    echo["mark"]["name"] = {"not": "hashable"}
    assert call.twilio(json.dumps(echo)) == [PeerIgnored("twilio", "echo of a mark never sent")]


def test_the_next_progress_mark_is_one_interval_later() -> None:
    call = Call(config(mark_interval_ms=100))  # every 800 bytes
    call.ready()
    out = call.agent_audio(b"\x01" * 800) + call.agent_audio(b"\x01" * 100)
    names = [m["mark"]["name"] for m in twilio_messages(out) if m["event"] == "mark"]
    assert names == ["0.1.800"]


def test_a_keepalive_does_not_flush_a_partial_chunk_early() -> None:
    call = Call(config(chunk_ms=400, keepalive_interval=0.1))
    call.ready()
    call.twilio(twilio_media(b"\x01" * 160))
    out = call.advance_to(0.3)  # keepalives at 0.1, 0.2, 0.3; the chunk is due at 0.4
    assert agent_audio_of(out) == b""
    assert agent_audio_of(call.advance_to(0.4)) == b"\x01" * 160


def test_a_chunk_filled_exactly_by_two_frames_goes_at_once() -> None:
    call = Call(config(chunk_ms=20))
    call.ready()
    call.twilio(twilio_media(b"\x01" * 80))
    assert agent_audio_of(call.twilio(twilio_media(b"\x02" * 80))) == b"\x01" * 80 + b"\x02" * 80


def test_deadlines_stay_numbers_after_each_kind_of_send() -> None:
    """Each of these sends restarts the keepalive or close clock at the input's ``now``."""
    keepalive = 8.0
    late = Call(config(welcome_timeout=0.5, keepalive_interval=keepalive))
    late.start()
    late.core.agent_connected(0.0)
    late.advance_to(0.5)  # Settings sent without Welcome
    late.agent(agent("SettingsApplied"))
    assert late.core.next_deadline() == pytest.approx(0.5 + keepalive)

    held = Call(config(keepalive_interval=keepalive))
    held.start()
    held.twilio(twilio_dtmf("1"))
    held.core.agent_connected(0.0)
    held.agent(agent("Welcome"))
    held.at(1.0).agent(agent("SettingsApplied"))  # the held digit is sent now
    assert agent_texts(held.log)[-1]["type"] == "InjectUserMessage"
    assert held.core.next_deadline() == pytest.approx(1.0 + keepalive)

    bad = Call(config(keepalive_interval=keepalive))
    bad.ready()
    bad.at(2.0).agent(function_call("fc_1", "lookup", arguments="[1]"))
    assert bad.core.next_deadline() == pytest.approx(2.0 + keepalive)

    error = Call()
    error.ready()
    error.at(3.0).agent(agent("Error", code="X", description="y"))
    assert error.core.next_deadline() == pytest.approx(3.0 + error.core.config.close_timeout)


def test_every_function_in_a_request_is_handled_after_one_is_skipped() -> None:
    call = Call()
    call.ready()
    functions = [
        {"id": 1, "name": "bad id"},
        {"id": "fc_s", "name": "web", "client_side": False},
        {"id": "fc_c", "name": "lookup", "arguments": "{}", "client_side": True},
    ]
    out = call.agent(agent("FunctionCallRequest", functions=functions))
    assert [a for a in out if isinstance(a, RunTool)] == [RunTool("fc_c", "lookup", {})]


def test_hang_up_after_reply_waits_the_grace_from_when_it_was_asked() -> None:
    call = Call(config(hangup_grace=3.0, hangup_timeout=30.0))
    call.ready()
    call.at(2.0).core.hang_up_after_reply(call.now)
    assert call.core.next_deadline() == pytest.approx(5.0)


def _reconnected(call: Call, at: float) -> dict[str, object]:
    """Open a new leg after a failure, send its Settings at ``at``, return them (no
    SettingsApplied yet)."""
    assert OpenAgent() in call.advance_to(at)
    call.core.agent_connected(call.now)
    (settings,) = agent_texts(call.agent(agent("Welcome", request_id="req-2")))
    return settings


def test_each_failover_is_announced_with_its_detail_and_counted() -> None:
    """``AgentReconnecting`` names the failure as the end would; every failover counts."""
    call = Call(config(agent_retries=3, agent_retry_backoff=0.5))
    call.ready()
    out = call.agent(agent("Error", code="X", description="y"))
    assert [a for a in out if isinstance(a, AgentReconnecting)] == [
        AgentReconnecting(1, EndReason.AGENT_ERROR, "agent error X: y")
    ]
    call.core.agent_closed(1000, call.now)
    _reconnected(call, call.now + 3)
    call.agent(agent("SettingsApplied"))
    call.core.agent_closed(1011, call.now, "gone")
    out = call.drain()
    assert [a for a in out if isinstance(a, AgentReconnecting)] == [
        AgentReconnecting(
            2, EndReason.AGENT_ERROR, "the agent closed the connection with code 1011: gone"
        )
    ]
    assert call.core.stats().agent_reconnects == 2


def test_a_cancel_withdraws_only_the_end_call_that_asked_and_only_once() -> None:
    """A ``FunctionCallCancelled`` withdraws the hangup only when it names the ``end_call``
    that asked for it: not before any did (a driver's hangup stays), not a second time."""
    call = Call(config(hangup_grace=3.0, hangup_timeout=30.0))
    call.ready()
    call.at(1.0).core.hang_up_after_reply(call.now)  # no end_call asked for this one
    cancel = agent("FunctionCallCancelled", functions=[{"id": "XXXX"}])  # any id at all
    assert call.agent(cancel) == [FunctionCallsCancelled(("XXXX",), False)]
    assert call.core.next_deadline() == pytest.approx(4.0)  # the driver's hangup stands

    other = Call()
    other.ready()
    other.agent(function_call("fc_e", "end_call"))
    withdraw = agent("FunctionCallCancelled", functions=[{"id": "fc_e"}])
    assert other.agent(withdraw) == [FunctionCallsCancelled(("fc_e",), True)]
    assert other.agent(cancel) == [FunctionCallsCancelled(("XXXX",), False)]
    assert other.agent(withdraw) == [FunctionCallsCancelled(("fc_e",), False)]


def test_a_malformed_function_entry_does_not_hide_the_ones_after_it() -> None:
    """An entry that is not an object is skipped; the calls after it still run."""
    call = Call()
    call.ready()
    functions = [5, {"id": "fc_c", "name": "lookup", "arguments": "{}", "client_side": True}]
    out = call.agent(agent("FunctionCallRequest", functions=functions))
    assert [a for a in out if isinstance(a, RunTool)] == [RunTool("fc_c", "lookup", {})]
    assert call.core.stats().ignored_messages == 1


def test_the_arguments_of_a_server_side_function_are_not_parsed() -> None:
    """Only a client-side call's arguments go through ``json_loads``: the agent runs the
    others, and the bridge passes them on untouched."""
    parsed: list[str] = []

    def loads(text: str) -> object:
        parsed.append(text)
        return json.loads(text)

    call = Call(config(json_loads=loads))
    call.ready()
    parsed.clear()
    server_side = {"id": "fc_s", "name": "web", "arguments": '{"q": 1}', "client_side": False}
    message = agent("FunctionCallRequest", functions=[server_side])
    assert call.agent(message) == [AgentNotice("FunctionCallRequest", server_side)]
    assert parsed == [message]


def test_an_agent_message_with_the_default_behavior_waits_its_turn() -> None:
    """``behavior="default"`` is refusable like no behavior: it waits behind the injection in
    flight and goes once that one is repeated back."""
    call = Call()
    call.ready()
    call.core.inject_user_message("one", call.now)
    call.core.inject_agent_message("Hello.", call.now, behavior="default")
    assert agent_texts(call.drain()) == [{"type": "InjectUserMessage", "content": "one"}]
    out = call.agent(agent("ConversationText", role="user", content="one"))
    assert agent_texts(out) == [
        {"type": "InjectAgentMessage", "message": "Hello.", "behavior": "default"}
    ]
    call.core.inject_user_message("two", call.now)  # "Hello." is in flight: this one waits
    assert agent_texts(call.drain()) == []


def test_a_dropped_injection_is_named_by_its_type_and_content() -> None:
    """Beyond ``injection_limit`` waiting, each injection is dropped and reported as what it
    was: a dynamic agent message has no content."""
    call = Call(config(injection_limit=1))
    call.ready()
    call.core.inject_user_message("in flight", call.now)
    call.core.inject_user_message("waiting", call.now)
    call.core.inject_dynamic_agent_message(call.now)
    call.core.inject_agent_message("Hello.", call.now)
    call.core.inject_user_message("more", call.now)
    assert [a for a in call.drain() if isinstance(a, InjectionDropped)] == [
        InjectionDropped("InjectAgentMessage", ""),
        InjectionDropped("InjectAgentMessage", "Hello."),
        InjectionDropped("InjectUserMessage", "more"),
    ]
    assert call.core.stats().injections_dropped == 3


def test_after_a_refusal_nothing_is_in_flight_until_the_turn_ends() -> None:
    """A refused injection is no longer in flight: a transcript does not settle it, a second
    refusal finds nothing to requeue, and the agent's turn end sends it again."""
    call = Call()
    call.ready()
    call.core.inject_user_message("one", call.now)
    call.drain()
    assert call.agent(agent("InjectionRefused", message="busy")) == [
        InjectionRefused("busy", True)
    ]
    out = call.agent(agent("ConversationText", role="user", content="one"))
    assert out == [Transcript("user", "one")]
    assert call.agent(agent("InjectionRefused", message="busy")) == [
        PeerIgnored("agent", "InjectionRefused with no injection in flight"),
        InjectionRefused("busy", False),
    ]
    out = call.agent(agent("AgentAudioDone"))
    assert agent_texts(out) == [{"type": "InjectUserMessage", "content": "one"}]


def test_an_injection_sent_on_an_agent_message_restarts_the_keepalive() -> None:
    """A queued injection that a transcript or the end of a turn lets go is a send like any
    other: the keepalive counts from it."""
    call = Call(config(keepalive_interval=5.0))
    call.ready()
    call.core.inject_user_message("one", call.now)
    call.core.inject_user_message("two", call.now)
    call.drain()
    out = call.at(1.0).agent(agent("ConversationText", role="user", content="one"))
    assert agent_texts(out) == [{"type": "InjectUserMessage", "content": "two"}]
    assert call.core.next_deadline() == pytest.approx(6.0)
    call.at(2.0).agent(agent("InjectionRefused", message="busy"))
    out = call.at(3.0).agent(agent("AgentAudioDone"))
    assert agent_texts(out) == [{"type": "InjectUserMessage", "content": "two"}]
    assert call.core.next_deadline() == pytest.approx(8.0)


def test_a_new_session_counts_its_clocks_from_its_settings_applied() -> None:
    """After a reconnect's ``SettingsApplied`` the held audio's partial chunk and the replayed
    updates count from that moment: the chunk deadline and the keepalive follow from it."""
    call = Call(config(agent_retries=2, agent_retry_backoff=0.5, keepalive_interval=5.0))
    call.ready()
    call.core.agent_closed(1011, call.now)
    call.twilio(twilio_media(b"\x01" * 240))  # held: one chunk and a half
    _reconnected(call, 3.0)
    out = call.at(4.0).agent(agent("SettingsApplied"))
    assert agent_audio_of(out) == b"\x01" * 160
    assert call.core.next_deadline() == pytest.approx(4.02)  # the rest, one chunk_ms later

    updated = Call(config(agent_retries=2, agent_retry_backoff=0.5, keepalive_interval=5.0))
    updated.ready()
    updated.core.update_prompt("Be brief.", updated.now)
    updated.core.agent_closed(1011, updated.now)
    _reconnected(updated, 3.0)
    out = updated.at(4.0).agent(agent("SettingsApplied"))
    assert agent_texts(out) == [{"type": "UpdatePrompt", "prompt": "Be brief."}]
    assert updated.core.next_deadline() == pytest.approx(9.0)


def test_a_reconnect_keeps_well_formed_function_calls_without_their_type() -> None:
    """Function calls from ``History`` go into a reconnect's context without a ``type`` key;
    a ``History`` with a call that has no response, or is not an object, is not kept."""
    call = Call(config(agent_retries=1, agent_retry_backoff=0.5))
    call.ready()
    entry = {"id": "fc_1", "name": "lookup", "client_side": True, "arguments": "{}"}
    call.agent(agent("History", function_calls=[entry]))  # no response: not kept
    call.agent(agent("History", function_calls=["fc_0"]))  # not an object: not kept
    call.agent(agent("History", function_calls=[{**entry, "type": "x", "response": "ok"}]))
    call.core.agent_closed(1011, call.now)
    settings = _reconnected(call, 3.0)
    assert settings["agent"]["context"]["messages"] == [  # type: ignore[index]
        {"type": "History", "function_calls": [{**entry, "response": "ok"}]}
    ]


def test_a_reconnect_moves_agent_level_messages_into_the_context() -> None:
    """History given as ``agent.messages`` (no context) seeds a reconnect's context, and is
    not sent twice."""
    seeded = [{"type": "History", "role": "user", "content": "seed"}]
    settings = {**SETTINGS, "agent": {**SETTINGS["agent"], "messages": seeded}}
    call = Call(config(settings=settings, agent_retries=1, agent_retry_backoff=0.5))
    call.ready()
    call.agent(agent("ConversationText", role="user", content="now"))
    call.core.agent_closed(1011, call.now)
    sent = _reconnected(call, 3.0)["agent"]
    assert isinstance(sent, dict) and "messages" not in sent
    assert sent["context"]["messages"] == [
        *seeded,
        {"type": "History", "role": "user", "content": "now"},
    ]


def test_injections_waiting_when_the_leg_fails_go_to_the_next_session() -> None:
    """Nothing goes to a failed leg: the injection it never repeated and those queued behind
    it wait, in order, for the new session's ``SettingsApplied``, with one sent meanwhile."""
    call = Call(config(agent_retries=2, agent_retry_backoff=0.5))
    call.ready()
    call.core.inject_user_message("one", call.now)
    call.core.inject_user_message("two", call.now)
    call.drain()
    call.core.agent_closed(1011, call.now)
    assert agent_texts(call.drain()) == []
    call.core.inject_user_message("three", call.now)
    assert agent_texts(call.drain()) == []
    settings = _reconnected(call, 3.0)
    assert settings["type"] == "Settings"
    out = call.at(4.0).agent(agent("SettingsApplied"))
    assert agent_texts(out) == [{"type": "InjectUserMessage", "content": "one"}]
    out = call.agent(agent("ConversationText", role="user", content="one"))
    assert agent_texts(out) == [{"type": "InjectUserMessage", "content": "two"}]
    out = call.agent(agent("ConversationText", role="user", content="two"))
    assert agent_texts(out) == [{"type": "InjectUserMessage", "content": "three"}]
