"""Deepgram's Voice Agent API (v1) on the wire: parsing its messages, encoding ours.

Parsers take a decoded JSON object and return plain values (None where the message is
malformed); deciding what to do with them is the bridge's job.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ._actions import (
    AgentNotice,
    AgentStartedSpeaking,
    AgentThinking,
    AgentWarning,
    History,
    LatencyReport,
    Notice,
    Transcript,
)
from ._callcontrol import Resume
from ._config import fill_placeholders

KEEPALIVE = '{"type":"KeepAlive"}'


def settings_text(
    settings: Mapping[str, Any], parameters: Mapping[str, str], resume: Resume | None = None
) -> str:
    """The ``Settings`` message of one call, its placeholders filled from Twilio's start."""
    filled = fill_placeholders(settings, parameters)
    return json.dumps(filled if resume is None else seed_history(filled, resume))


def seed_history(settings: dict[str, Any], resume: Resume) -> dict[str, Any]:
    """``settings`` for a call resumed after a failed transfer: the conversation so far in
    ``agent.context.messages`` (after any the config seeds) and the resume line as greeting.

    MERGE NOTE (call control): the protocol branch seeds reconnects the same way
    (``_history.Conversation.reconnect_settings``); unify the two at merge.
    """
    agent = settings.get("agent")
    if not isinstance(agent, dict):
        return settings  # a stored agent id: nothing to seed
    context = agent.get("context")
    context = dict(context) if isinstance(context, Mapping) else {}
    seeded = context.get("messages")
    context["messages"] = [*(seeded if isinstance(seeded, list) else []), *resume.history]
    return {**settings, "agent": {**agent, "context": context, "greeting": resume.greeting}}


def inject_user_message(content: str) -> str:
    return json.dumps({"type": "InjectUserMessage", "content": content})


def inject_agent_message(content: str, *, interrupt: bool = False) -> str:
    """``InjectAgentMessage`` (v1 field ``message``); ``interrupt`` replaces current speech.

    MERGE NOTE (call control): the protocol branch sends injections through its queue with
    ``InjectionRefused`` retries (``_injections.agent_message``); route these through it.
    """
    body: dict[str, str] = {"type": "InjectAgentMessage", "message": content}
    if interrupt:
        body["behavior"] = "interrupt"
    return json.dumps(body)


def update_prompt(note: str) -> str:
    """``UpdatePrompt``: v1 appends ``note`` to the prompt, a system note the caller never hears."""
    return json.dumps({"type": "UpdatePrompt", "prompt": note})


def function_call_response(call_id: str, name: str, content: str) -> str:
    return json.dumps(
        {"type": "FunctionCallResponse", "id": call_id, "name": name, "content": content}
    )


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """One entry of a ``FunctionCallRequest``; ``arguments`` is None when they are unusable."""

    call_id: str
    name: str
    client_side: bool
    arguments: Mapping[str, Any] | None
    message: dict[str, Any]


def function_calls(
    message: dict[str, Any], loads: Callable[[str], Any]
) -> list[FunctionCall | None] | None:
    """The calls a ``FunctionCallRequest`` asks for (None: no list; None entries: malformed)."""
    functions = message.get("functions")
    if type(functions) is not list:
        return None
    calls: list[FunctionCall | None] = []
    for function in functions:
        if type(function) is not dict:
            calls.append(None)
            continue
        call_id = function.get("id")
        name = function.get("name")
        if type(call_id) is not str or type(name) is not str:
            calls.append(None)
            continue
        client_side = function.get("client_side") is True
        arguments = _parse_arguments(function.get("arguments"), loads) if client_side else None
        calls.append(FunctionCall(call_id, name, client_side, arguments, function))
    return calls


def cancelled_ids(message: dict[str, Any]) -> list[str]:
    """The call ids a ``FunctionCallCancelled`` withdraws."""
    functions = message.get("functions")
    ids = []
    for function in functions if type(functions) is list else ():
        call_id = function.get("id") if type(function) is dict else None
        if type(call_id) is str:
            ids.append(call_id)
    return ids


def request_id(message: dict[str, Any]) -> str:
    return _text(message, "request_id")


def error_detail(message: dict[str, Any]) -> str:
    code = _text(message, "code") or "UNKNOWN"
    description = _text(message, "description") or _text(message, "message")
    return f"agent error {code}: {description}"


def notice(kind: object, message: dict[str, Any]) -> Notice:
    """The notice an informational agent message becomes; unknown types pass through whole."""
    parse = _NOTICES.get(kind) if type(kind) is str else None
    return parse(message) if parse is not None else AgentNotice(str(kind), message)


_NOTICES: dict[object, Callable[[dict[str, Any]], Notice]] = {
    "ConversationText": lambda m: Transcript(_text(m, "role"), _text(m, "content")),
    "AgentThinking": lambda m: AgentThinking(_text(m, "content")),
    "AgentStartedSpeaking": lambda m: AgentStartedSpeaking(
        _number(m, "total_latency"), _number(m, "tts_latency"), _number(m, "ttt_latency")
    ),
    "LatencyReport": lambda m: LatencyReport(
        {k: float(v) for k, v in m.items() if type(v) is int or type(v) is float}
    ),
    "History": History,
    "Warning": lambda m: AgentWarning(_text(m, "code"), _text(m, "description")),
}


def _text(message: Mapping[str, Any], key: str) -> str:
    value = message.get(key)
    return value if type(value) is str else ""


def _number(message: Mapping[str, Any], key: str) -> float | None:
    value = message.get(key)
    return float(value) if type(value) is int or type(value) is float else None


def _parse_arguments(raw: object, loads: Callable[[str], Any]) -> Mapping[str, Any] | None:
    """Deepgram sends arguments as a JSON string; accept an object too, reject the rest."""
    if raw is None or raw == "":
        return {}
    if type(raw) is dict:
        return raw
    if type(raw) is not str:
        return None
    try:
        value = loads(raw)
    except (ValueError, TypeError, RecursionError):
        return None
    return value if type(value) is dict else None
