"""Exact outputs of the control inputs (docs/mutation.md, mutmut's survivors in _control):
the name each refusal gives, each argument check's message, the JSON each input sends, and
that a sent message restarts the keepalive from the time it was given."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from sansio import CallBridge, EndReason, LocalProtocolError
from tests.helpers import Call, agent_texts

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
