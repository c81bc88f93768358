"""The caller's keypad: keys that act at once (``--keypad``), digits gathered into one message
(``--dtmf-collect``), or, by default, each key told to the agent as it is pressed.

A keypad action is decided here, never by the model: the key transfers or hangs up with no
agent turn. Gathered digits reach the agent once, and only their count is reported.
"""

from __future__ import annotations

from typing import Any

from ._actions import Action, Dtmf, EndReason, KeypadEntry
from ._callcontrol import CallControl
from ._counters import Counters
from ._errors import Peer
from ._speech import Speech
from ._transfer import End, Handoff
from ._twilio import Oddity, dtmf_digit

MAX_COLLECTED = 64


class Keypad:
    __slots__ = ("_actions", "_control", "_counters", "_digits", "_end", "_handoff", "_last",
                 "_speech", "_template")  # fmt: skip

    def __init__(
        self,
        control: CallControl,
        template: str,
        actions: list[Action],
        counters: Counters,
        speech: Speech,
        handoff: Handoff,
        end: End,
    ) -> None:
        self._control = control
        self._actions = actions
        self._counters = counters
        self._template = template  # --dtmf-template: a key told as it is pressed
        self._speech = speech
        self._handoff = handoff
        self._end = end
        self._digits: list[str] = []
        self._last = 0.0

    def press(self, message: dict[str, Any], now: float) -> None:
        """A Twilio ``dtmf`` message."""
        digit = dtmf_digit(message)
        if isinstance(digit, Oddity):
            self._counters.ignore(Peer.TWILIO, digit.detail)
            return
        control = self._control
        action = control.keypad.get(digit)
        if action == "hangup":
            self._end(EndReason.HANGUP, "the caller pressed the hangup key", now)
        elif action is not None:
            self._handoff.transfer_now(action.partition(":")[2], "keypad", now)
        elif not control.dtmf_collect:
            self._actions.append(Dtmf(digit))
            self._speech.tell(self._template.replace("{digit}", digit), now)
        elif digit == control.dtmf_terminator:
            self._deliver(now)
        elif len(self._digits) < MAX_COLLECTED:
            self._digits.append(digit)
            self._last = now
        else:
            self._counters.ignore(Peer.TWILIO, "keypad entry beyond the collected bound")

    def due(self) -> float | None:
        """The inter-digit timeout of an entry under way."""
        return self._last + self._control.dtmf_timeout if self._digits else None

    def fire(self, now: float) -> None:
        self._deliver(now)

    def _deliver(self, now: float) -> None:
        digits = self._digits
        if not digits:
            return
        text = self._control.dtmf_collect_template.replace("{digits}", " ".join(digits))
        self._actions.append(KeypadEntry(len(digits)))
        digits.clear()
        self._speech.tell(text, now)
