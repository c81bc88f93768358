"""Client-side function calls, and the ``end_call`` tool that hangs up after a goodbye."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from ._actions import Action, AgentNotice, CancelTool, EndReason, RunTool
from ._agent import FunctionCall, cancelled_ids, function_call_response, function_calls
from ._config import BridgeConfig
from ._counters import Counters
from ._errors import LocalProtocolError, Peer
from ._notices import FunctionCallsCancelled
from ._uplink import Uplink

_BAD_ARGUMENTS = json.dumps({"error": "arguments must be a JSON object"})
_GOODBYE = json.dumps({"ok": True, "result": "The call ends after your goodbye."})


class Tools:
    """Tool calls in flight, those withdrawn, and the hangup an ``end_call`` asked for."""

    __slots__ = (
        "_actions",
        "_builtins",
        "_counters",
        "_drained",
        "_end",
        "_end_call",
        "_grace",
        "_hangup_at",
        "_hangup_id",
        "_hangup_requested",
        "_loads",
        "_pending",
        "_timeout",
        "_uplink",
        "_withdrawn",
    )

    def __init__(
        self,
        config: BridgeConfig,
        actions: list[Action],
        counters: Counters,
        uplink: Uplink,
        drained: Callable[[], bool],
        end: Callable[[EndReason, str, float], None],
        builtins: Mapping[str, Callable[[FunctionCall, float], None]],
    ) -> None:
        self._builtins = builtins  # client-side functions the core answers itself
        self._end_call = config.end_call_tool
        self._grace = config.hangup_grace
        self._timeout = config.hangup_timeout
        self._loads = config.json_loads
        self._actions = actions
        self._counters = counters
        self._uplink = uplink
        self._drained = drained  # nothing of the agent's is still playing
        self._end = end  # end the call
        self._pending: dict[str, str] = {}  # call id -> tool name
        self._withdrawn: set[str] = set()
        self._hangup_requested: float | None = None
        self._hangup_at: float | None = None
        self._hangup_id = ""  # the end_call that asked for the hangup

    def request(self, message: dict[str, Any], now: float) -> None:
        """A ``FunctionCallRequest`` (the agent is ready: an answer must not precede Settings)."""
        calls = function_calls(message, self._loads)
        if calls is None:
            self._counters.ignore(Peer.AGENT, "FunctionCallRequest without functions")
            return
        for call in calls:
            if call is None:
                self._counters.ignore(Peer.AGENT, "function call without an id and a name")
            else:
                self._request(call, now)

    @property
    def hanging_up(self) -> bool:
        return self._hangup_at is not None

    def cancel(self, message: dict[str, Any]) -> None:
        """A ``FunctionCallCancelled``: withdraw the calls still running and a speculative
        ``end_call`` (Deepgram dispatched it before the caller's turn was over); others are
        ignored."""
        ids = cancelled_ids(message)
        withdrawn = bool(self._hangup_id) and self._hangup_id in ids
        if withdrawn:
            self._hangup_id = ""
            self._hangup_requested = self._hangup_at = None
        for call_id in ids:
            if self._pending.pop(call_id, None) is not None:
                self._withdrawn.add(call_id)
                self._actions.append(CancelTool(call_id))
        if ids:
            self._actions.append(FunctionCallsCancelled(tuple(ids), withdrawn))

    def _request(self, call: FunctionCall, now: float) -> None:
        if not call.client_side:
            self._actions.append(AgentNotice("FunctionCallRequest", call.message))
        elif call.arguments is None:
            self._answer(call, _BAD_ARGUMENTS, now)
        elif call.name == self._end_call:
            self._actions.append(AgentNotice("FunctionCallRequest", call.message))
            self._answer(call, _GOODBYE, now)
            if self._hangup_requested is None:
                self._hangup_id = call.call_id
                self.hang_up_after_reply(now)
        elif call.name in self._builtins:
            self._actions.append(AgentNotice("FunctionCallRequest", call.message))
            self._builtins[call.name](call, now)
        else:
            self._pending[call.call_id] = call.name
            self._actions.append(RunTool(call.call_id, call.name, call.arguments))

    def hang_up_after_reply(self, now: float) -> None:
        if self._hangup_requested is None:
            self._hangup_requested = now
            self._hangup_at = now + self._grace

    def withdraw_all(self) -> None:
        """The call ends: nobody wants the results still running."""
        for call_id in self._pending:
            self._withdrawn.add(call_id)
            self._actions.append(CancelTool(call_id))
        self._pending.clear()

    def result(self, call_id: str, content: str, now: float) -> None:
        name = self._pending.pop(call_id, None)
        if name is None:
            if call_id in self._withdrawn:
                return  # cancelled by the agent or by the end of the call: nobody wants it
            raise LocalProtocolError(f"tool_result() for unknown call id {call_id!r}")
        self._uplink.send_text(function_call_response(call_id, name, content), now)

    def hangup_due(self) -> float | None:
        return self._hangup_at

    def reply_played(self, now: float) -> None:
        """A reply has played to its end: the goodbye, maybe."""
        if self._hangup_at is not None:
            self._hang_up_if_drained(now, deadline=False)

    def hangup_deadline(self, now: float) -> None:
        self._hang_up_if_drained(now, deadline=True)

    def _hang_up_if_drained(self, now: float, *, deadline: bool) -> None:
        """Finish an ``end_call`` once the goodbye has played, or when waiting is pointless.

        Called on each reply's last mark echo and when the hangup deadline passes. The first
        deadline (``hangup_grace``) gives the agent time to start its goodbye; if audio is
        still playing then, wait for its mark, but never past ``hangup_timeout``.
        """
        assert self._hangup_requested is not None
        if self._drained():
            self._end(EndReason.TOOL, "end_call: goodbye played", now)
        elif deadline:
            final = self._hangup_requested + self._timeout
            if now >= final:
                detail = "end_call: goodbye still playing at hangup_timeout"
                self._end(EndReason.TOOL, detail, now)
            else:
                self._hangup_at = final

    def _answer(self, call: FunctionCall, content: str, now: float) -> None:
        self._uplink.send_text(function_call_response(call.call_id, call.name, content), now)
