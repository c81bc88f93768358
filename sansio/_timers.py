"""Every deadline of a call, each written once as a row of a table (aioquic's timer idea).

A :class:`Timer` is armed in some phases of the call (the agent leg's states, or the end); in
them ``due()`` says when it fires, or None when it has nothing to wait for, and ``fire(now)``
does what is due. :meth:`Timers.next_deadline` is the earliest ``due()`` of the armed rows and
:meth:`Timers.fire_due` runs each row that is due, in table order. Adding a timer is adding a
row.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Timer:
    """One deadline: armed in ``phases``, due at ``due()`` (None: idle), handled by ``fire``."""

    name: str
    phases: Collection[Hashable]
    due: Callable[[], float | None]
    fire: Callable[[float], None]


class Timers:
    """The table of a call's timers, indexed by phase so a deadline costs a few calls."""

    __slots__ = ("_armed", "_rows")

    def __init__(self, rows: Iterable[Timer]) -> None:
        self._rows = tuple(rows)
        self._armed: dict[Hashable, tuple[Timer, ...]] = {}
        for row in self._rows:
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
        for row in self._rows:
            if phase() in row.phases:
                at = row.due()
                if at is not None and now >= at:
                    row.fire(now)
