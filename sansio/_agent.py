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
from ._config import fill_placeholders
from ._notices import AgentUpdated, FrustrationDetected, ServerFunctionResult, ThinkProviderMessage

KEEPALIVE = '{"type":"KeepAlive"}'


def call_settings(settings: Mapping[str, Any], parameters: Mapping[str, str]) -> dict[str, Any]:
    """The ``Settings`` message of one call, its placeholders filled from Twilio's start."""
    filled: dict[str, Any] = fill_placeholders(settings, parameters)
    return filled


def client_message(kind: str, **fields: Any) -> str:
    """A client message of the v1 spec (``fields`` already checked by the caller)."""
    return json.dumps({"type": kind, **fields})


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
    return text(message, "request_id")


def error_detail(message: dict[str, Any]) -> str:
    code = text(message, "code") or "UNKNOWN"
    description = text(message, "description") or text(message, "message")
    return f"agent error {code}: {description}"


def notice(kind: object, message: dict[str, Any]) -> Notice:
    """The notice an informational agent message becomes; unknown types pass through whole."""
    parse = _NOTICES.get(kind) if type(kind) is str else None
    return parse(message) if parse is not None else AgentNotice(str(kind), message)


_NOTICES: dict[object, Callable[[dict[str, Any]], Notice]] = {
    "ConversationText": lambda m: Transcript(text(m, "role"), text(m, "content")),
    "AgentThinking": lambda m: AgentThinking(text(m, "content")),
    "AgentStartedSpeaking": lambda m: AgentStartedSpeaking(
        _number(m, "total_latency"), _number(m, "tts_latency"), _number(m, "ttt_latency")
    ),
    "LatencyReport": lambda m: LatencyReport(
        {k: float(v) for k, v in m.items() if type(v) is int or type(v) is float}
    ),
    "History": History,
    "Warning": lambda m: AgentWarning(text(m, "code"), text(m, "description")),
    "FunctionCallResponse": lambda m: ServerFunctionResult(
        text(m, "id"), text(m, "name"), text(m, "content")
    ),
    "PromptUpdated": lambda m: AgentUpdated("prompt"),
    "SpeakUpdated": lambda m: AgentUpdated("speak"),
    "ThinkUpdated": lambda m: AgentUpdated("think"),
    "ListenUpdated": lambda m: AgentUpdated("listen"),
    "ThinkLiveUpdated": lambda m: AgentUpdated("think_live"),
    "FrustrationDetected": lambda m: FrustrationDetected(
        int(_number(m, "count") or 0), m.get("escalated") is True
    ),
    "__customFromThinkProvider": lambda m: ThinkProviderMessage(m.get("content")),
}


def text(message: Mapping[str, Any], key: str) -> str:
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
