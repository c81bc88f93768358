"""A mitmproxy-style playbook for the core: every input and every action, in their exact order.

    assert (
        Playbook(Call())
        << TwilioText(twilio_connected())
        << TwilioText(twilio_start())
        >> CallStarted
        >> OpenAgent()
    )

``<<`` feeds an input to the core; each ``>>`` after it names the next action that input
produced: an action (compared with ``==``), an action class (any instance of it) or a predicate.
An input whose actions are not all named, or a name with no action left, fails the playbook
with the whole transcript, so a test pins the order of actions and not just their presence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sansio import Action, CallEnded, EndReason
from tests.helpers import Call


@dataclass(frozen=True, slots=True)
class TwilioText:
    text: str

    def feed(self, call: Call) -> list[Action]:
        return call.twilio(self.text)


@dataclass(frozen=True, slots=True)
class AgentText:
    text: str

    def feed(self, call: Call) -> list[Action]:
        return call.agent(self.text)


@dataclass(frozen=True, slots=True)
class AgentAudio:
    audio: bytes

    def feed(self, call: Call) -> list[Action]:
        return call.agent_audio(self.audio)


@dataclass(frozen=True, slots=True)
class AgentConnected:
    def feed(self, call: Call) -> list[Action]:
        call.core.agent_connected(call.now)
        return call.drain()


@dataclass(frozen=True, slots=True)
class TwilioClosed:
    code: int | None = 1000

    def feed(self, call: Call) -> list[Action]:
        call.core.twilio_closed(self.code, call.now)
        return call.drain()


@dataclass(frozen=True, slots=True)
class AdvanceTo:
    """Time passes to ``now``; every deadline on the way fires, as a driver's timer would."""

    now: float

    def feed(self, call: Call) -> list[Action]:
        return call.advance_to(self.now)


Input = TwilioText | AgentText | AgentAudio | AgentConnected | TwilioClosed | AdvanceTo
Expected = Action | type | Callable[[Action], bool]


def _matches(expected: Expected, actual: Action) -> bool:
    if isinstance(expected, type):
        return isinstance(actual, expected)
    if isinstance(expected, Action):
        return expected == actual
    return bool(expected(actual))


class Playbook:
    """Inputs (``<<``) and the actions each must produce (``>>``), checked on ``bool()``."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.steps: list[tuple[str, Any]] = []

    def __lshift__(self, event: Input) -> Playbook:
        self.steps.append(("<<", event))
        return self

    def __rshift__(self, expected: Expected) -> Playbook:
        self.steps.append((">>", expected))
        return self

    def __bool__(self) -> bool:
        transcript: list[str] = []
        pending: list[Action] = []

        def fail(why: str) -> AssertionError:
            return AssertionError("\n".join([why, "transcript:", *transcript]))

        for direction, step in self.steps:
            if direction == "<<":
                if pending:
                    raise fail(f"unexpected action {pending[0]!r} before {step!r}")
                transcript.append(f"<< {step!r}")
                pending = list(step.feed(self.call))
                continue
            if not pending:
                raise fail(f"expected {step!r}, but no action is left")
            actual = pending.pop(0)
            transcript.append(f">> {actual!r}")
            if not _matches(step, actual):
                raise fail(f"expected {step!r}, got {actual!r}")
        if pending:
            raise fail(f"unexpected action {pending[0]!r} at the end")
        return True


def ended_with(reason: EndReason, detail: str | None = None) -> Callable[[Action], bool]:
    """Matches the ``CallEnded`` of ``reason`` (and ``detail``, if given)."""

    def match(action: Action) -> bool:
        return (
            isinstance(action, CallEnded)
            and action.reason is reason
            and (detail is None or action.detail == detail)
        )

    match.__qualname__ = f"ended_with({reason}, {detail!r})"
    return match
