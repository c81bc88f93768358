"""Every deadline of a call, each written once as a row of one table (aioquic's timer idea).

A :class:`Timer` is armed in some phases of the call (the agent leg's states, or
:data:`~._state.ENDED`); in them ``due()`` says when it fires, or None when it has nothing to
wait for, and ``fire(now)`` does what is due. :meth:`Timers.next_deadline` is the earliest
``due()`` of the armed rows; :meth:`Timers.fire_due` runs each row that is due, in table
order. Adding a timer is adding a row to :func:`call_timers`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Iterable
from dataclasses import dataclass

from ._actions import EndReason
from ._config import BridgeConfig
from ._failover import Failover
from ._keypad import Keypad
from ._state import ENDED, AgentState
from ._tools import Tools
from ._transfer import Handoff
from ._uplink import Uplink
from ._watch import Watch


@dataclass(frozen=True, slots=True)
class Timer:
    """One deadline: armed in ``phases``, due at ``due()`` (None: idle), handled by ``fire``."""

    name: str
    phases: Collection[Hashable]
    due: Callable[[], float | None]
    fire: Callable[[float], None]


class Timers:
    """A table of timers, indexed by phase so that a deadline costs a few calls."""

    __slots__ = ("_armed", "rows")

    def __init__(self, rows: Iterable[Timer]) -> None:
        self.rows = tuple(rows)
        self._armed: dict[Hashable, tuple[Timer, ...]] = {}
        for row in self.rows:
            for phase in row.phases:
                self._armed[phase] = (*self._armed.get(phase, ()), row)

    def next_deadline(self, phase: Hashable) -> float | None:
        """The earliest deadline of the timers armed in ``phase``."""
        deadline: float | None = None
        for row in self._armed.get(phase, ()):
            at = row.due()
            if at is not None and (deadline is None or at < deadline):
                deadline = at
        return deadline

    def fire_due(self, now: float, phase: Callable[[], Hashable]) -> None:
        """Fire, in table order, each timer armed in the current phase and due at ``now``.

        The phase is asked again before each row, so a timer that ends the call or moves the
        agent leg on disarms the rows that no longer apply.
        """
        for row in self.rows:
            if phase() in row.phases:
                at = row.due()
                if at is not None and now >= at:
                    row.fire(now)


class Clock:
    """When the events that the call's own deadlines count from happened."""

    __slots__ = ("agent_connected", "agent_opened", "ended", "twilio_rx")

    def __init__(self, now: float) -> None:
        self.twilio_rx = now  # Twilio's latest message
        self.agent_opened = now  # OpenAgent
        self.agent_connected = now
        self.ended = now


@dataclass(frozen=True, slots=True)
class Hooks:
    """What timers do to the call itself; the bridge provides them."""

    finished: Callable[[], bool]
    abort_open_legs: Callable[[float], None]
    end: Callable[[EndReason, str, float], None]
    no_welcome: Callable[[float], None]
    agent_failed: Callable[[EndReason, str, float], None]  # reconnects when it may, else ends
    reconnect: Callable[[float], None]


def call_timers(
    config: BridgeConfig,
    clock: Clock,
    uplink: Uplink,
    tools: Tools,
    failover: Failover,
    hooks: Hooks,
    control: tuple[Handoff, Watch, Keypad],
) -> Timers:
    """The timers of one call. The call's end disarms all but ``close``."""
    c, S = config, AgentState
    handoff, watch, keypad = control

    def timeout(detail: str) -> Callable[[float], None]:
        return lambda now: hooks.end(EndReason.TIMEOUT, detail, now)

    def agent_timeout(detail: str) -> Callable[[float], None]:
        return lambda now: hooks.agent_failed(EndReason.TIMEOUT, detail, now)

    return Timers(
        (
            Timer(
                "close",
                {ENDED},
                lambda: None if hooks.finished() else clock.ended + c.close_timeout,
                hooks.abort_open_legs,
            ),
            Timer(
                "agent_connect",
                {S.CONNECTING},
                lambda: clock.agent_opened + c.agent_connect_timeout,
                agent_timeout(f"agent_connect: no connection after {c.agent_connect_timeout}s"),
            ),
            Timer(
                "settings_applied",
                {S.AWAITING_WELCOME, S.CONFIGURING},
                lambda: clock.agent_connected + c.settings_timeout,
                agent_timeout(f"settings_applied: none after {c.settings_timeout}s"),
            ),
            Timer(
                "welcome",  # Settings go anyway: Welcome is a courtesy
                {S.AWAITING_WELCOME},
                lambda: clock.agent_connected + c.welcome_timeout,
                hooks.no_welcome,
            ),
            Timer(
                "twilio_idle",
                set(S),
                lambda: clock.twilio_rx + c.twilio_idle_timeout,
                timeout(f"twilio_idle: no message for {c.twilio_idle_timeout}s"),
            ),
            Timer("chunk", {S.READY}, uplink.chunk_due, lambda now: uplink.flush()),
            Timer("keepalive", {S.READY}, uplink.keepalive_due, uplink.keepalive),
            Timer("hangup", {S.READY}, tools.hangup_due, tools.hangup_deadline),
            Timer("handoff", set(S), handoff.due, handoff.fire),
            Timer("silence", {S.READY}, watch.silence_due, watch.silence),
            Timer("max_duration", set(S), watch.duration_due, watch.duration),
            Timer("dtmf_collect", set(S), keypad.due, keypad.fire),
            Timer("reconnect", {S.RECONNECTING}, failover.due, hooks.reconnect),
        )
    )
