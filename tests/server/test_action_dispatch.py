"""The asyncio driver runs an action by the nearest registered class in its MRO, so a new
subclass of an action is executed as that action rather than ending the call."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from sansio import Action, EndReason, SendTwilioMedia, SendTwilioText
from server.call import CallContext, CallDriver
from server.cli import build_parser
from server.metrics import Metrics
from server.options import make_options
from server.tools import ToolRegistry


@dataclass(frozen=True, slots=True)
class SendTwilioGreeting(SendTwilioMedia):
    """A subclass no driver has heard of."""


@dataclass(frozen=True, slots=True)
class Teleport(Action):
    """A command no driver can carry out."""


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:  # pragma: no cover - the call does not end here
        raise AssertionError("closed")


def make_driver() -> tuple[CallDriver, FakeTransport]:
    loop = asyncio.get_running_loop()
    options = make_options(build_parser().parse_args(["--agent-url", "local"]), environ={})
    context = CallContext(
        loop, options, Metrics(), ToolRegistry(), "ws://127.0.0.1:9/agent", None, None
    )
    transport: Any = FakeTransport()
    return CallDriver(context, transport, b"", "127.0.0.1:1", lambda _: None), transport


async def _subclass_runs_as_its_base() -> None:
    driver, transport = make_driver()
    driver.core._actions.append(SendTwilioGreeting('{"event":"media"}'))
    driver._pump()
    assert b'{"event":"media"}' in b"".join(transport.written)
    assert driver.core.ended is None
    # The resolution is cached: the subclass now has the base class's handler.
    assert driver._dispatch[SendTwilioGreeting] == driver._dispatch[SendTwilioText]


def test_a_subclass_of_an_action_runs_as_that_action() -> None:
    asyncio.run(_subclass_runs_as_its_base())


async def _unknown_command_ends_the_call() -> None:
    driver, _ = make_driver()
    driver.core._actions.append(Teleport())
    driver._pump()
    ended = driver.core.ended
    assert ended is not None and ended.reason is EndReason.PROTOCOL_ERROR
    assert ended.detail == "driver bug: unknown action"


def test_an_unknown_command_still_ends_the_call() -> None:
    asyncio.run(_unknown_command_ends_the_call())
