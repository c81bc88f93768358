"""``InjectUserMessage`` and ``InjectAgentMessage``: sent one at a time, retried after a refusal.

Deepgram refuses an injection (``InjectionRefused``) while a turn is in progress, and the refusal
does not say which message it refuses. So at most one refusable injection is in flight: it is
settled by the ``ConversationText`` that repeats it, or by the agent's next ``AgentAudioDone``
(a refusal comes at once, so by then it was taken). A refused one goes back to the head of the
queue and is sent again after the agent's turn (``AgentAudioDone``), so keypresses keep their
order. ``InjectAgentMessage`` with ``queue`` or ``interrupt`` is never refused and goes at once.
Waiting injections are bounded; one beyond the bound is dropped, counted and reported.
"""

from __future__ import annotations

import json
from collections import deque
from typing import NamedTuple

from ._actions import Action
from ._counters import Counters
from ._errors import Peer
from ._notices import InjectionDropped, InjectionRefused
from ._uplink import Uplink


class Injection(NamedTuple):
    role: str  # the ConversationText role that repeats it
    content: str
    text: str  # the JSON message
    refusable: bool


def user_message(content: str) -> Injection:
    text = json.dumps({"type": "InjectUserMessage", "content": content})
    return Injection("user", content, text, True)


def agent_message(message: str | None, behavior: str | None) -> Injection:
    """``message`` None: the dynamic form (Think Live writes the line)."""
    body: dict[str, object] = {"type": "InjectAgentMessage"}
    body.update({"message": message} if message is not None else {"is_dynamic": True})
    if behavior is not None:
        body["behavior"] = behavior
    refusable = behavior in (None, "default")
    return Injection("assistant", message or "", json.dumps(body), refusable)


class Injections:
    """The injections waiting for the agent, and the one it has not answered yet."""

    __slots__ = ("_actions", "_counters", "_held", "_inflight", "_limit", "_queue", "_uplink")

    def __init__(
        self, limit: int, uplink: Uplink, counters: Counters, actions: list[Action]
    ) -> None:
        self._limit = limit
        self._uplink = uplink
        self._counters = counters
        self._actions = actions
        self._queue: deque[Injection] = deque()
        self._inflight: Injection | None = None
        self._held = False  # a refusal came: nothing goes before the agent's turn ends

    def submit(self, injection: Injection, now: float, ready: bool) -> None:
        """Send now if the agent may take it, else queue it (in order, bounded)."""
        free = self._inflight is None and not self._held and not self._queue
        if ready and (free or not injection.refusable):
            self._send(injection, now)
        elif len(self._queue) < self._limit:
            self._queue.append(injection)
        else:
            self._counters.injections_dropped += 1
            kind = "InjectUserMessage" if injection.role == "user" else "InjectAgentMessage"
            self._actions.append(InjectionDropped(kind, injection.content))

    def refused(self, message: str) -> None:
        """``InjectionRefused``: the injection in flight waits for the end of the agent's turn."""
        refused = self._inflight
        if refused is None:
            self._counters.ignore(Peer.AGENT, "InjectionRefused with no injection in flight")
        else:
            self._inflight = None
            self._held = True
            self._queue.appendleft(refused)
        self._actions.append(InjectionRefused(message, refused is not None))

    def seen(self, role: str, content: str, now: float) -> None:
        """``ConversationText``: the injection in flight was taken if this repeats it."""
        inflight = self._inflight
        if inflight is not None and inflight.role == role and inflight.content == content:
            self._inflight = None
            self.pump(now)

    def turn_done(self, now: float) -> None:
        """``AgentAudioDone`` or a new session's ``SettingsApplied``: send what waits."""
        self._inflight = None
        self._held = False
        self.pump(now)

    def leg_failed(self) -> None:
        """The agent leg failed: nothing goes to it any more. The injection it had not repeated
        goes first to the next session, whose ``SettingsApplied`` sends what waits."""
        inflight = self._inflight
        if inflight is not None:
            self._inflight = None
            self._queue.appendleft(inflight)
        self._held = False

    def pump(self, now: float) -> None:
        queue = self._queue
        while queue and self._inflight is None and not self._held:
            self._send(queue.popleft(), now)

    def _send(self, injection: Injection, now: float) -> None:
        if injection.refusable:
            self._inflight = injection
        self._uplink.send_text(injection.text, now)
