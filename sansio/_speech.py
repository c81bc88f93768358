"""What call control says to the agent, through the protocol's queues: agent lines and caller
keys as injections (one in flight, retried after ``InjectionRefused``), system notes as
``UpdatePrompt`` (kept for a new session after a failover)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from ._control import Control
from ._injections import Injections, agent_message, user_message


class Speech(NamedTuple):
    injections: Injections
    control: Control
    ready: Callable[[], bool]  # the agent is configured and connected

    def say(self, text: str, now: float, *, interrupt: bool = False) -> None:
        """The agent says ``text`` (only to a configured agent: a line is never stored up)."""
        if self.ready():
            behavior = "interrupt" if interrupt else None
            self.injections.submit(agent_message(text, behavior), now, True)

    def tell(self, text: str, now: float) -> None:
        """``text`` as the caller's words; it waits in the queue until the agent is ready."""
        self.injections.submit(user_message(text), now, self.ready())

    def note(self, text: str, now: float) -> None:
        """A system note appended to the prompt, which the caller never hears."""
        if self.ready():
            self.control.update("UpdatePrompt", text, now)
