"""The conversation so far, in the v1 history format, for the ``Settings`` of a reconnect.

Turns come from ``ConversationText`` (Deepgram sends it whatever ``flags.history`` says);
function calls from ``History`` messages, whose conversation entries repeat ``ConversationText``
and are skipped. A reconnect's ``Settings`` put the history the config seeded, then what the call
has seen, newest last, in ``agent.context.messages``, and drop the greeting: the caller has heard
it once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

_CALL_FIELDS = (("id", str), ("name", str), ("client_side", bool), ("arguments", str))


class Conversation:
    """A bounded log of the call's turns and function calls (the newest ``limit`` entries)."""

    __slots__ = ("_entries",)

    def __init__(self, limit: int) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=limit)

    def __len__(self) -> int:
        return len(self._entries)

    def text(self, role: str, content: str) -> None:
        """A ``ConversationText`` line (roles other than user and assistant are not history)."""
        if role in ("user", "assistant") and content:
            self._entries.append({"type": "History", "role": role, "content": content})

    def history(self, message: Mapping[str, Any]) -> None:
        """A ``History`` message: its function calls are kept, when well formed."""
        calls = message.get("function_calls")
        if type(calls) is list and calls and all(_is_call(call) for call in calls):
            kept = [{key: call[key] for key in call if key != "type"} for call in calls]
            self._entries.append({"type": "History", "function_calls": kept})

    def seed(self, entries: Iterable[Mapping[str, Any]]) -> None:
        """History from before this stream: a call resumed after a failed transfer."""
        self._entries.extend(dict(entry) for entry in entries)

    def reconnect_settings(
        self, settings: Mapping[str, Any], greeting: str | None = None
    ) -> dict[str, Any]:
        """``settings`` for a new session of the same call (a stored agent id is left alone),
        greeting with ``greeting`` if given (a resumed call's), else not at all."""
        result = dict(settings)
        agent = settings.get("agent")
        if not isinstance(agent, Mapping):
            return result
        agent = dict(agent)
        agent.pop("greeting", None)
        if greeting is not None:
            agent["greeting"] = greeting
        context = agent.get("context")
        context = dict(context) if isinstance(context, Mapping) else {}
        seeded = context.get("messages", agent.pop("messages", None))
        seeded = list(seeded) if isinstance(seeded, list) else []
        context["messages"] = seeded + list(self._entries)
        agent["context"] = context
        result["agent"] = agent
        return result


def _is_call(call: object) -> bool:
    if type(call) is not dict or type(call.get("response")) is not str:
        return False
    return all(type(call.get(key)) is kind for key, kind in _CALL_FIELDS)
