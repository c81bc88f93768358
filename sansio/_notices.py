"""Notices of the agent protocol beyond the basics: acknowledgements, refusals, server-side
results, cancellations, and the agent leg's failover. Facts for logs and embedders; nothing to
execute."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._actions import EndReason, Notice


@dataclass(frozen=True, slots=True)
class AgentUpdated(Notice):
    """An ``*Updated`` acknowledgement: ``what`` is prompt, speak, think, listen or think_live."""

    what: str


@dataclass(frozen=True, slots=True)
class InjectionRefused(Notice):
    """``InjectionRefused``: the injection went back to the queue, to retry after the agent's
    turn (``queued``), or nothing of ours was waiting for an answer."""

    message: str
    queued: bool


@dataclass(frozen=True, slots=True)
class InjectionDropped(Notice):
    """An injection beyond ``BridgeConfig.injection_limit`` waiting: dropped, and counted."""

    type: str
    content: str


@dataclass(frozen=True, slots=True)
class ServerFunctionResult(Notice):
    """``FunctionCallResponse`` from the agent: the result of a function it ran itself."""

    call_id: str
    name: str
    content: str


@dataclass(frozen=True, slots=True)
class FunctionCallsCancelled(Notice):
    """``FunctionCallCancelled``; ``hangup_withdrawn`` when it withdrew a pending ``end_call``."""

    call_ids: tuple[str, ...]
    hangup_withdrawn: bool


@dataclass(frozen=True, slots=True)
class FrustrationDetected(Notice):
    count: int
    escalated: bool


@dataclass(frozen=True, slots=True)
class ThinkProviderMessage(Notice):
    """``__customFromThinkProvider``: passed through from a custom think endpoint."""

    content: Any


@dataclass(frozen=True, slots=True)
class AgentReconnecting(Notice):
    """The agent leg failed mid-call; the core opens a new one (``attempt`` of the call's
    ``BridgeConfig.agent_retries``) after a backoff, holding caller audio meanwhile."""

    attempt: int
    reason: EndReason
    detail: str


@dataclass(frozen=True, slots=True)
class AgentReconnected(Notice):
    """The new agent session applied its Settings, with the conversation so far."""

    attempt: int
    request_id: str
    preroll_bytes: int
    context_messages: int
