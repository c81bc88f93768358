"""Exact outputs of the control inputs (docs/mutation.md, mutmut's survivors in _control):
the name each refusal gives, each argument check's message, the JSON each input sends, and
that a sent message restarts the keepalive from the time it was given."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from sansio import (
    AgentNotice,
    CallBridge,
    CallControl,
    CallStarted,
    ConfigError,
    EndReason,
    LocalProtocolError,
    Resume,
    TransferCall,
)
from tests.helpers import (
    CALL_SID,
    SETTINGS,
    Call,
    agent,
    agent_texts,
    config,
    function_call,
    twilio_connected,
    twilio_start,
)

SPEAK = {"provider": {"type": "deepgram", "model": "aura-2-thalia-en"}}
THINK = {"provider": {"type": "open_ai", "model": "gpt-4o-mini"}, "prompt": "Be brief."}
LISTEN = {"provider": {"type": "deepgram", "model": "nova-3"}}
LIVE = {"provider": {"type": "google", "model": "gemini-live"}}

Input = Callable[[CallBridge, float], None]

# (the method's name in its refusals, a valid use, the message it sends when the agent is ready)
INPUTS: list[tuple[str, Input, dict[str, Any] | None]] = [
    (
        "inject_user_message",
        lambda c, t: c.inject_user_message("hi", t),
        {"type": "InjectUserMessage", "content": "hi"},
    ),
    (
        "inject_agent_message",
        lambda c, t: c.inject_agent_message("yo", t, behavior="queue"),
        {"type": "InjectAgentMessage", "message": "yo", "behavior": "queue"},
    ),
    ("inject_dynamic_agent_message", lambda c, t: c.inject_dynamic_agent_message(t), None),
    (
        "update_prompt",
        lambda c, t: c.update_prompt("p", t),
        {"type": "UpdatePrompt", "prompt": "p"},
    ),
    (
        "update_speak",
        lambda c, t: c.update_speak(SPEAK, t),
        {"type": "UpdateSpeak", "speak": SPEAK},
    ),
    (
        "update_think",
        lambda c, t: c.update_think(THINK, t),
        {"type": "UpdateThink", "think": THINK},
    ),
    (
        "update_listen",
        lambda c, t: c.update_listen(LISTEN, t),
        {"type": "UpdateListen", "listen": LISTEN},
    ),
    (
        "update_think_live",
        lambda c, t: c.update_think_live(LIVE, t),
        {"type": "UpdateThink_Live", "think_live": LIVE},
    ),
    ("force_end_turn", lambda c, t: c.force_end_turn(t), {"type": "ForceEndTurn"}),
    (
        "send_to_think_provider",
        lambda c, t: c.send_to_think_provider([1, "two"], t),
        {"type": "__customToThinkProvider", "content": [1, "two"]},
    ),
]
IDS = [name for name, _, _ in INPUTS]


@pytest.mark.parametrize(("name", "use", "sent"), INPUTS, ids=IDS)
def test_each_input_names_itself_when_refused(name: str, use: Input, sent: object) -> None:
    call = Call()
    call.start()
    with pytest.raises(LocalProtocolError, match=rf"^{name}\(\) before SettingsApplied$"):
        use(call.core, call.now)
    call = Call()
    call.ready()
    call.core.end(EndReason.SHUTDOWN, "bye", call.now)
    with pytest.raises(LocalProtocolError, match=rf"^{name}\(\) after the call ended$"):
        use(call.core, call.now)


@pytest.mark.parametrize(("name", "use", "sent"), INPUTS, ids=IDS)
def test_each_input_sends_its_message_and_restarts_the_keepalive_then(
    name: str, use: Input, sent: dict[str, Any] | None
) -> None:
    call = Call()
    call.ready()
    call.drain()
    later = call.now + 3.0
    call.at(later)
    use(call.core, later)
    texts = agent_texts(call.drain())
    if sent is None:  # the dynamic injection: its message has no text, only is_dynamic
        assert [t["type"] for t in texts] == ["InjectAgentMessage"] and "message" not in texts[0]
    else:
        assert texts == [sent]
    interval = call.core.config.keepalive_interval
    deadline = call.core.next_deadline()
    assert deadline is not None and deadline <= later + interval
    quiet = call.advance_to(later + interval - 0.01)
    assert "KeepAlive" not in [t["type"] for t in agent_texts(quiet)]
    assert "KeepAlive" in [t["type"] for t in agent_texts(call.advance_to(later + interval))]


@pytest.mark.parametrize(
    ("use", "message"),
    [
        (lambda c, t: c.inject_user_message(5, t), r"^content must be a string, got int$"),
        (lambda c, t: c.inject_agent_message(5, t), r"^message must be a string, got int$"),
        (lambda c, t: c.update_prompt(None, t), r"^prompt must be a string, got NoneType$"),
        (
            lambda c, t: c.inject_agent_message("x", t, behavior="loud"),
            r"^behavior must be one of default, queue, interrupt$",
        ),
        (lambda c, t: c.update_speak(object(), t), r"^speak is not JSON: "),
        (lambda c, t: c.update_listen([LISTEN], t), r"^listen must be a JSON object$"),
        (
            lambda c, t: c.update_speak({"provider": "x"}, t),
            r'^speak\.provider: must be an object with a "type" \(v1\)$',
        ),
        (lambda c, t: c.update_think_live(object(), t), r"^think_live is not JSON: "),
        (lambda c, t: c.update_think_live([1], t), r"^think_live must be a JSON object$"),
        (
            lambda c, t: c.update_think_live({"provider": "x"}, t),
            r"^think_live must be an object with a provider object$",
        ),
        (lambda c, t: c.send_to_think_provider(object(), t), r"^content is not JSON: "),
    ],
)
def test_each_bad_argument_is_refused_with_its_name(use: Input, message: str) -> None:
    call = Call()
    call.ready()
    call.drain()
    with pytest.raises(LocalProtocolError, match=message):
        use(call.core, call.now)
    assert agent_texts(call.drain()) == []


def test_a_list_of_speak_settings_is_kept_whole() -> None:
    call = Call()
    call.ready()
    call.drain()
    call.core.update_speak([SPEAK, SPEAK], call.now)
    (sent,) = agent_texts(call.drain())
    assert json.dumps(sent) == json.dumps({"type": "UpdateSpeak", "speak": [SPEAK, SPEAK]})


# ------------------------------------------------------------ start hooks, driver transfer

HISTORY = ({"type": "History", "role": "user", "content": "I need a refill."},)


def _settings_sent(call: Call) -> dict[str, Any]:
    call.core.agent_connected(call.now)
    sent = call.drain() + call.agent(agent("Welcome", request_id="req-1"))
    (settings,) = [t for t in agent_texts(sent) if t["type"] == "Settings"]
    return settings


def test_the_resume_hook_is_asked_with_the_start_and_seeds_the_history() -> None:
    asked: list[tuple[str, dict[str, str]]] = []

    def resume(call_sid: str, parameters: Mapping[str, str]) -> Resume | None:
        asked.append((call_sid, dict(parameters)))
        return Resume(HISTORY, "Sorry, the front desk did not answer.")

    call = Call(config(control=CallControl(resume=resume)))
    call.twilio(twilio_connected())
    actions = call.twilio(twilio_start({"From": "+15550001", "bridgeResume": "x"}))
    assert asked == [(CALL_SID, {"From": "+15550001", "bridgeResume": "x"})]
    (started,) = [a for a in actions if isinstance(a, CallStarted)]
    assert started.resumed is True
    assert _settings_sent(call)["agent"]["context"]["messages"] == list(HISTORY)


def test_a_stream_the_resume_hook_does_not_know_starts_afresh() -> None:
    call = Call(config(control=CallControl(resume=lambda sid, parameters: None)))
    actions = call.start()
    (started,) = [a for a in actions if isinstance(a, CallStarted)]
    assert started.resumed is False
    assert "context" not in _settings_sent(call)["agent"]


def test_choose_settings_is_asked_with_the_parameters_and_its_settings_are_sent() -> None:
    asked: list[dict[str, str]] = []
    chosen = json.loads(json.dumps(SETTINGS))
    chosen["agent"]["think"]["prompt"] = "You are the billing line."

    def choose(parameters: Mapping[str, str]) -> Mapping[str, Any] | None:
        asked.append(dict(parameters))
        return chosen if parameters.get("To") == "+15550199" else None

    call = Call(config(choose_settings=choose))
    call.twilio(twilio_connected())
    call.twilio(twilio_start({"To": "+15550199"}))
    assert asked == [{"To": "+15550199"}]
    assert _settings_sent(call)["agent"]["think"]["prompt"] == "You are the billing line."
    other = Call(config(choose_settings=choose))
    other.twilio(twilio_connected())
    other.twilio(twilio_start({"To": "+15550100"}))
    default = SETTINGS["agent"]["think"]["prompt"]
    assert _settings_sent(other)["agent"]["think"]["prompt"] == default


def test_a_driver_transfer_is_refused_exactly_and_times_its_handoff_from_now() -> None:
    cfg = config(control=CallControl(targets={"front_desk": "+15550123"}, fallback=True))
    call = Call(cfg)
    with pytest.raises(LocalProtocolError, match=r"^transfer\(\) outside a started call$"):
        call.core.transfer("front_desk", "asked", call.now)
    call.ready()
    call.drain()
    long = "x" * 70
    with pytest.raises(LocalProtocolError, match=rf"^unknown transfer target '{'x' * 64}'$"):
        call.core.transfer(long, "asked", call.now)
    with pytest.raises(LocalProtocolError, match=r"^unknown transfer target 'None'$"):
        call.core.transfer(None, "asked", call.now)  # type: ignore[arg-type]
    call.at(5.0)
    call.core.transfer("front_desk", "asked", 5.0)
    assert TransferCall("front_desk", "+15550123", "asked") in call.drain()
    deadline = call.core.next_deadline()
    assert deadline is not None and deadline <= 5.0 + cfg.control.handoff_timeout
    with pytest.raises(LocalProtocolError, match=r"^a transfer or goodbye is already under way$"):
        call.core.transfer("front_desk", "again", 5.0)


def test_a_resumed_call_greets_with_the_resume_greeting_even_without_a_configured_one() -> None:
    settings = json.loads(json.dumps(SETTINGS))
    settings["agent"].pop("greeting", None)
    resume = Resume(HISTORY, "Sorry, the front desk did not answer.")
    call = Call(config(settings=settings, control=CallControl(resume=lambda s, p: resume)))
    call.start()
    assert _settings_sent(call)["agent"]["greeting"] == "Sorry, the front desk did not answer."


def test_a_built_in_tool_request_is_reported_as_a_notice() -> None:
    call = Call(config(control=CallControl(targets={"front_desk": "+15550123"})))
    call.ready()
    call.drain()
    text = function_call("fc-1", "transfer_call", json.dumps({"target": "front_desk"}))
    notices = [a for a in call.agent(text) if isinstance(a, AgentNotice)]
    (function,) = json.loads(text)["functions"]  # the notice carries the one function's entry
    assert notices == [AgentNotice("FunctionCallRequest", function)]


def test_an_unknown_preroll_policy_is_named_exactly() -> None:
    with pytest.raises(ConfigError) as raised:
        config(preroll_policy="keep-all")
    assert str(raised.value) == "preroll_policy: must be one of keep, drop, last"
    assert raised.value.field == "preroll_policy"
