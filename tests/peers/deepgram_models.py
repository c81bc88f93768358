"""Validate Voice Agent v1 messages against Deepgram's own models (``deepgram-sdk`` v7).

Tests use it to check, with a source the project did not write, that a message is one the real
service would parse: :func:`validate_client_message` for what a client sends the agent,
:func:`validate_server_message` for what the agent sends a client. Each picks the SDK model by
``type`` and raises :class:`ModelMismatch` (or pydantic's ``ValidationError``) on a mismatch.
The SDK models accept unknown fields, as the service does.
"""

from __future__ import annotations

from typing import Any

import pydantic
from deepgram.agent.v1 import types as dg


class ModelMismatch(ValueError):
    """The message has no ``type`` the SDK models for that direction."""


_HISTORY: Any = dg.AgentV1History
"""A union (conversation text, or function calls), validated through a TypeAdapter."""

CLIENT_MODELS: dict[str, Any] = {
    "Settings": dg.AgentV1Settings,
    "UpdatePrompt": dg.AgentV1UpdatePrompt,
    "UpdateSpeak": dg.AgentV1UpdateSpeak,
    "UpdateThink": dg.AgentV1UpdateThink,
    "UpdateListen": dg.AgentV1UpdateListen,
    "UpdateThink_Live": dg.AgentV1UpdateThinkLive,
    "InjectUserMessage": dg.AgentV1InjectUserMessage,
    "InjectAgentMessage": dg.AgentV1InjectAgentMessage,
    "FunctionCallResponse": dg.AgentV1SendFunctionCallResponse,
    "KeepAlive": dg.AgentV1KeepAlive,
    "ForceEndTurn": dg.AgentV1ForceEndTurn,
    "__customToThinkProvider": dg.AgentV1CustomToThinkProvider,
}
SERVER_MODELS: dict[str, Any] = {
    "Welcome": dg.AgentV1Welcome,
    "SettingsApplied": dg.AgentV1SettingsApplied,
    "ConversationText": dg.AgentV1ConversationText,
    "UserStartedSpeaking": dg.AgentV1UserStartedSpeaking,
    "AgentThinking": dg.AgentV1AgentThinking,
    "FunctionCallRequest": dg.AgentV1FunctionCallRequest,
    "FunctionCallCancelled": dg.AgentV1FunctionCallCancelled,
    "FunctionCallResponse": dg.AgentV1ReceiveFunctionCallResponse,
    "AgentStartedSpeaking": dg.AgentV1AgentStartedSpeaking,
    "AgentAudioDone": dg.AgentV1AgentAudioDone,
    "LatencyReport": dg.AgentV1LatencyReport,
    "PromptUpdated": dg.AgentV1PromptUpdated,
    "SpeakUpdated": dg.AgentV1SpeakUpdated,
    "ThinkUpdated": dg.AgentV1ThinkUpdated,
    "ListenUpdated": dg.AgentV1ListenUpdated,
    "ThinkLiveUpdated": dg.AgentV1ThinkLiveUpdated,
    "InjectionRefused": dg.AgentV1InjectionRefused,
    "History": _HISTORY,
    "Error": dg.AgentV1Error,
    "Warning": dg.AgentV1Warning,
    "FrustrationDetected": dg.AgentV1FrustrationDetected,
    "__customFromThinkProvider": dg.AgentV1CustomFromThinkProvider,
}


def _validate(message: dict[str, Any], models: dict[str, Any], direction: str) -> Any:
    kind = message.get("type")
    model = models.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ModelMismatch(f"{direction} message type {kind!r} is not in deepgram-sdk v7")
    if message.get("is_dynamic") is True and kind == "InjectAgentMessage":
        model = dg.AgentV1InjectDynamicAgentMessage
    return pydantic.TypeAdapter(model).validate_python(message)


def validate_client_message(message: dict[str, Any]) -> Any:
    """The SDK model of a client -> agent message; raises if it does not validate."""
    return _validate(message, CLIENT_MODELS, "client")


def validate_server_message(message: dict[str, Any]) -> Any:
    """The SDK model of an agent -> client message; raises if it does not validate."""
    return _validate(message, SERVER_MODELS, "server")
