"""The control API: ``GET /calls``, ``GET /calls/{CallSid}`` and ``POST /calls/{CallSid}/``
``say|prompt|transfer|hangup`` behind ``BRIDGE_CONTROL_TOKEN`` (checked by the HTTP layer).

A call lives in one process. :meth:`ControlApi.handle` acts on a call of this process at once;
for any other it asks the :class:`~server.control_relay.Relay` (the other workers, or the
instances sharing PostgreSQL), which runs :meth:`ControlApi.local` where the call lives.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from sansio import LocalProtocolError
from server.call_handle import CallHandle

log = logging.getLogger("server.control")

MAX_TEXT = 1500  # characters of a say or prompt text (a PostgreSQL NOTIFY carries < 8000 bytes)
_SID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_ACTIONS = ("say", "prompt", "transfer", "hangup")
Answer = tuple[int, dict[str, Any]]


class Relay(Protocol):
    """Where the calls of other processes are reached."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def live(self, handle: CallHandle, up: bool) -> None:
        """A call of this process started (``up``) or finished."""
        ...

    async def forward(self, op: str, sid: str, payload: dict[str, Any]) -> Answer | None:
        """The answer of the process that has call ``sid``, or None if none has it."""
        ...

    async def others(self) -> list[dict[str, Any]]:
        """The live calls of the other processes (``describe()`` of each)."""
        ...


class ControlApi:
    def __init__(self, calls: Callable[[], Iterable[CallHandle]]) -> None:
        self._calls = calls
        self.relay: Relay | None = None

    def find(self, sid: str) -> CallHandle | None:
        return next((h for h in self._calls() if h.call_sid == sid and h.stream_sid), None)

    def listing(self) -> list[dict[str, Any]]:
        return [h.describe() for h in self._calls() if h.call_sid and h.stream_sid]

    async def handle(self, method: bytes, path: str, body: bytes) -> Answer:
        """One request (its token already checked): status and JSON body."""
        parts = path.removeprefix("/calls").strip("/").split("/") if path != "/calls" else []
        if not parts:
            if method != b"GET":
                return 405, {"error": "GET /calls lists the live calls"}
            others = await self.relay.others() if self.relay is not None else []
            return 200, {"calls": self.listing() + others}
        sid, op = parts[0], "/".join(parts[1:]) or "get"
        if not _SID.match(sid) or op not in ("get", *_ACTIONS):
            return 404, {"error": "not found"}
        if (method == b"GET") != (op == "get"):
            return 405, {"error": f"{'GET' if op == 'get' else 'POST'} is the method of this route"}
        payload: dict[str, Any] = {}
        if op != "get" and body.strip():
            try:
                payload = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                return 400, {"error": f"the body is not JSON: {exc}"}
            if not isinstance(payload, dict):
                return 400, {"error": "the body must be a JSON object"}
        problem = _check(op, payload)
        if problem is not None:
            return 400, {"error": problem}
        return await self.act(op, sid, payload)

    async def act(self, op: str, sid: str, payload: dict[str, Any]) -> Answer:
        """``op`` (checked) on call ``sid`` of this process or, through the relay, another's;
        ``voicemail`` is the bridge's own (server/outbound.py), not a route."""
        answer = self.local(op, sid, payload)
        where = "here"
        if answer is None and self.relay is not None:
            answer, where = await self.relay.forward(op, sid, payload), "relayed"
        if answer is None:
            return 404, {"error": f"no live call {sid}"}
        log.info("control %s callSid=%s answered %s: %d", op, sid, where, answer[0])
        return answer

    def serve_peer(self, op: str, sid: str, payload: object) -> Answer:
        """A relayed request (another worker or instance): answered from this process only."""
        if op == "list":
            return 200, {"calls": self.listing()}
        if not isinstance(payload, dict) or op not in ("get", "voicemail", *_ACTIONS):
            return 400, {"error": "bad relayed request"}
        problem = _check(op, payload)
        if problem is not None:
            return 400, {"error": problem}
        return self.local(op, sid, payload) or (404, {"error": f"no live call {sid}"})

    def local(self, op: str, sid: str, payload: dict[str, Any]) -> Answer | None:
        """Act on call ``sid`` if this process has it (``payload`` checked); else None."""
        handle = self.find(sid)
        if handle is None:
            return None
        try:
            if op == "say":
                handle.say(payload["text"], interrupt=payload.get("interrupt", False))
            elif op == "prompt":
                handle.update_prompt(payload["text"])
            elif op == "transfer":
                handle.transfer(payload["target"])
            elif op == "hangup":
                handle.hang_up()
            elif op == "voicemail":
                handle.leave_message(payload["text"])
        except LocalProtocolError as exc:
            return 409, {"error": str(exc)}
        return 200, handle.describe() if op == "get" else {"call_sid": sid, "done": op}


def _check(op: str, payload: dict[str, Any]) -> str | None:
    """What is wrong with the body of ``op``, or None."""
    if op in ("say", "prompt", "voicemail"):
        text = payload.get("text")
        if not isinstance(text, str) or not text.strip():
            return 'a non-empty "text" string is required'
        if len(text) > MAX_TEXT:
            return f'"text" is longer than {MAX_TEXT} characters'
        if not isinstance(payload.get("interrupt", False), bool):
            return '"interrupt" must be true or false'
    elif op == "transfer" and not isinstance(payload.get("target"), str):
        return 'a "target" name (a --transfer-target) is required'
    return None
