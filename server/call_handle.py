"""The call a tool handler or the control API acts on: who is calling, and the four things a
clinic's systems do to a live call. Every action goes through the call's core (as an input,
then a pump), so it is ordered with the call's own traffic and checked like it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from sansio import CallBridge, EndReason


class Driver(Protocol):
    """What a handle needs of the call's driver (server.call.CallDriver)."""

    loop: asyncio.AbstractEventLoop
    core: CallBridge
    call_sid: str
    stream_sid: str
    started_at: float

    def pump(self) -> None: ...


class CallHandle:
    """One live call. The methods raise ``sansio.LocalProtocolError`` when the call cannot take
    the action (before the agent is configured, after the end, an unknown target)."""

    __slots__ = ("_driver",)

    def __init__(self, driver: Driver) -> None:
        self._driver = driver

    @property
    def call_sid(self) -> str:
        return self._driver.call_sid

    @property
    def stream_sid(self) -> str:
        return self._driver.stream_sid

    @property
    def parameters(self) -> Mapping[str, str]:
        """The ``<Parameter>`` values of Twilio's ``start`` (From, To, CallSid and custom)."""
        return self._driver.core.custom_parameters

    @property
    def from_(self) -> str:
        return self.parameters.get("From", "")

    @property
    def to(self) -> str:
        return self.parameters.get("To", "")

    def say(self, text: str, interrupt: bool = False) -> None:
        """The agent says ``text`` (``InjectAgentMessage``); ``interrupt`` cuts its turn."""
        behavior = "interrupt" if interrupt else None
        self._act(lambda now: self._driver.core.inject_agent_message(text, now, behavior=behavior))

    def update_prompt(self, text: str) -> None:
        """``UpdatePrompt``: ``text`` is appended to the agent's prompt."""
        self._act(lambda now: self._driver.core.update_prompt(text, now))

    def transfer(self, target: str) -> None:
        """Transfer to a ``--transfer-target`` by its name."""
        self._act(lambda now: self._driver.core.transfer(target, "requested by the driver", now))

    def leave_message(self, text: str) -> None:
        """A voicemail: the agent says ``text`` at once, then the call hangs up once it has
        played (bounded by ``--hangup-grace`` and ``--hangup-timeout``, as ``end_call``)."""
        def step(now: float) -> None:
            self._driver.core.inject_agent_message(text, now, behavior="interrupt")
            self._driver.core.hang_up_after_reply(now)

        self._act(step)

    def hang_up(self) -> None:
        self._act(lambda now: self._driver.core.end(EndReason.HANGUP, "hung up on request", now))

    def describe(self) -> dict[str, Any]:
        """The call as ``GET /calls`` shows it: what stays true for the whole call, so a copy
        (the PostgreSQL live-calls table) never goes stale."""
        driver = self._driver
        age = driver.loop.time() - driver.started_at
        return {
            "call_sid": self.call_sid,
            "stream_sid": self.stream_sid,
            "from": self.from_,
            "to": self.to,
            "parameters": dict(self.parameters),
            "started_at": round(time.time() - age, 3),
        }

    def _act(self, step: Callable[[float], None]) -> None:
        step(self._driver.loop.time())
        self._driver.pump()
