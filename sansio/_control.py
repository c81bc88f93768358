"""Mid-call control of the agent: every client message of the v1 spec that a driver (its tools,
a control API) may send once the agent is configured.

Each public method checks its arguments and raises :class:`LocalProtocolError` for misuse: a
value of the wrong shape, a call before the first ``SettingsApplied`` or after the call's end.
While the agent reconnects, injections wait in their queue and updates are kept; a new session
gets the updates again after its ``SettingsApplied`` (an ``UpdateThink`` replaces the prompts
before it, consecutive prompts are sent as one), so a failover keeps what the call changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Literal

from ._agent import client_message
from ._config import _check_agent
from ._errors import ConfigError, LocalProtocolError
from ._injections import Injection, Injections, agent_message, user_message
from ._tools import Tools
from ._uplink import Uplink

Phase = Literal["before", "ready", "reconnecting", "ended"]
BEHAVIORS = ("default", "queue", "interrupt")
# The Update* messages: message type -> its field, and the section of Settings.agent it changes.
_UPDATES = {
    "UpdatePrompt": "prompt",
    "UpdateSpeak": "speak",
    "UpdateThink": "think",
    "UpdateListen": "listen",
    "UpdateThink_Live": "think_live",
}


class Control:
    """Sends or keeps the driver's control messages, by the phase of the agent leg."""

    __slots__ = ("_injections", "_kept", "_phase", "_uplink")

    def __init__(self, uplink: Uplink, injections: Injections, phase: Callable[[], Phase]) -> None:
        self._uplink = uplink
        self._injections = injections
        self._phase = phase
        self._kept: list[tuple[str, Any]] = []  # updates to send a new session, in order

    def inject(self, method: str, injection: Injection, now: float) -> None:
        self._injections.submit(injection, now, self._gate(method))

    def update(self, kind: str, value: Any, now: float) -> None:
        ready = self._gate(_method(kind))
        kept = self._kept
        prompt = next((i for i, entry in enumerate(kept) if entry[0] == kind), None)
        if kind == "UpdatePrompt" and prompt is not None:
            kept[prompt] = (kind, f"{kept[prompt][1]}\n{value}")  # what appending twice gives
        else:
            drop = {kind, "UpdatePrompt"} if kind == "UpdateThink" else {kind}
            kept[:] = [entry for entry in kept if entry[0] not in drop]
            kept.append((kind, value))
        if ready:
            self._uplink.send_text(client_message(kind, **{_UPDATES[kind]: value}), now)

    def send_now(self, method: str, text: str, now: float) -> None:
        """A message that only means something to the current session."""
        if not self._gate(method):
            raise LocalProtocolError(f"{method}() while the agent reconnects")
        self._uplink.send_text(text, now)

    def replay(self, now: float) -> None:
        """A new session is configured: it gets the call's updates again."""
        for kind, value in self._kept:
            self._uplink.send_text(client_message(kind, **{_UPDATES[kind]: value}), now)

    def _gate(self, method: str) -> bool:
        """True when the agent takes messages now, False while it reconnects; else raise."""
        phase = self._phase()
        if phase == "before":
            raise LocalProtocolError(f"{method}() before SettingsApplied")
        if phase == "ended":
            raise LocalProtocolError(f"{method}() after the call ended")
        return phase == "ready"


class ControlInputs:
    """The control methods of :class:`~._bridge.CallBridge` (a mixin: it sets ``_control``)."""

    __slots__ = ()
    _control: Control
    _tools: Tools

    def hang_up_after_reply(self, now: float) -> None:
        """Hang up as after ``end_call``: once the agent's next reply has played, within
        ``hangup_grace`` if it says nothing, and never past ``hangup_timeout`` (a voicemail)."""
        self._tools.hang_up_after_reply(now)

    def inject_user_message(self, content: str, now: float) -> None:
        """``InjectUserMessage``: ``content`` as if the caller said it (retried if refused)."""
        self._control.inject("inject_user_message", user_message(_text("content", content)), now)

    def inject_agent_message(
        self, message: str, now: float, *, behavior: str | None = None
    ) -> None:
        """``InjectAgentMessage``: the agent says ``message``. ``behavior`` (spec): ``default``
        (refused mid-turn, then retried after it), ``queue`` or ``interrupt``."""
        injection = agent_message(_text("message", message), _behavior(behavior))
        self._control.inject("inject_agent_message", injection, now)

    def inject_dynamic_agent_message(self, now: float, *, behavior: str | None = None) -> None:
        """``InjectAgentMessage`` with ``is_dynamic``: Think Live writes the line (EA)."""
        injection = agent_message(None, _behavior(behavior))
        self._control.inject("inject_dynamic_agent_message", injection, now)

    def update_prompt(self, prompt: str, now: float) -> None:
        """``UpdatePrompt``: appended to the think prompt (``PromptUpdated`` acknowledges)."""
        self._control.update("UpdatePrompt", _text("prompt", prompt), now)

    def update_speak(self, speak: Mapping[str, Any] | list[Any], now: float) -> None:
        """``UpdateSpeak``: new speak settings, or a list of them (fallbacks)."""
        self._control.update("UpdateSpeak", _section("speak", speak), now)

    def update_think(self, think: Mapping[str, Any] | list[Any], now: float) -> None:
        """``UpdateThink``: replaces the whole think settings (prompt and functions too)."""
        self._control.update("UpdateThink", _section("think", think), now)

    def update_listen(self, listen: Mapping[str, Any], now: float) -> None:
        """``UpdateListen``: ``{"provider": ...}``, the same provider with a new model or
        language (the spec wants its type and version unchanged)."""
        self._control.update("UpdateListen", _section("listen", listen), now)

    def update_think_live(self, think_live: Mapping[str, Any], now: float) -> None:
        """``UpdateThink_Live`` (EA): ``{"provider": ...}``."""
        value = _json("think_live", think_live)
        if not isinstance(value.get("provider"), dict):
            raise LocalProtocolError("think_live must be an object with a provider object")
        self._control.update("UpdateThink_Live", value, now)

    def force_end_turn(self, now: float) -> None:
        """``ForceEndTurn``: end the caller's turn now (Flux only; a ``Warning`` otherwise)."""
        self._control.send_now("force_end_turn", client_message("ForceEndTurn"), now)

    def send_to_think_provider(self, content: Any, now: float) -> None:
        """``__customToThinkProvider``: ``content`` (any JSON) for a custom think endpoint."""
        text = client_message("__customToThinkProvider", content=_json("content", content, any))
        self._control.send_now("send_to_think_provider", text, now)


def _method(kind: str) -> str:
    return "update_" + _UPDATES[kind]


def _text(name: str, value: object) -> str:
    if type(value) is not str:
        raise LocalProtocolError(f"{name} must be a string, got {type(value).__name__}")
    return value


def _behavior(behavior: object) -> str | None:
    if behavior is not None and behavior not in BEHAVIORS:
        raise LocalProtocolError(f"behavior must be one of {', '.join(BEHAVIORS)}")
    return behavior


def _json(name: str, value: Any, kind: Any = dict) -> Any:
    """``value`` as plain JSON (a copy: later changes by the caller do not leak in)."""
    try:
        copy = json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise LocalProtocolError(f"{name} is not JSON: {exc}") from None
    if kind is not any and not isinstance(copy, kind):
        raise LocalProtocolError(f"{name} must be a JSON object")
    return copy


def _section(section: str, value: Any) -> Any:
    """A speak, think or listen section, checked as Settings would be."""
    copy = _json(section, value, dict if section == "listen" else (dict, list))
    try:
        _check_agent({section: copy})
    except ConfigError as exc:
        raise LocalProtocolError(str(exc).removeprefix("settings.agent.")) from None
    return copy
