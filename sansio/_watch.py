"""Rules the core applies to every call whatever the model does: safety phrases in what the
caller says, silence, and the call's length.

Silence is counted from the last sign of life, the caller's ``UserStartedSpeaking`` or agent
audio being sent or heard (mark echoes), and only while nothing of the agent's is playing.
"""

from __future__ import annotations

from collections.abc import Callable

from ._actions import EndReason
from ._callcontrol import CallControl, matching_rule
from ._speech import Speech
from ._transfer import End, Handoff

WARNING_AHEAD = 60.0  # the length warning comes this long before the end


class Watch:
    __slots__ = ("_activity", "_control", "_done", "_drained", "_end", "_handoff", "_ready",
                 "_reprompts", "_ruled", "_speech", "_started", "_warned")  # fmt: skip

    def __init__(
        self,
        control: CallControl,
        speech: Speech,
        handoff: Handoff,
        drained: Callable[[], bool],
        end: End,
    ) -> None:
        self._control = control
        self._speech = speech
        self._handoff = handoff
        self._drained = drained
        self._ready = speech.ready
        self._end = end
        self._started: float | None = None
        self._activity = 0.0
        self._reprompts = 0
        self._warned = False
        self._done = False
        self._ruled = False

    def started(self, now: float) -> None:
        """Twilio's ``start``: the call's length and silence count from here."""
        self._started = self._activity = now

    def user_spoke(self, now: float) -> None:
        self._activity = now
        self._reprompts = 0

    def agent_active(self, now: float) -> None:
        self._activity = now

    def transcript(self, role: str, content: str, now: float) -> None:
        """A ``ConversationText``: a user line with a safety phrase transfers, once per call."""
        if role != "user" or self._ruled or not self._ready():
            return
        rule = matching_rule(self._control.safety_rules, content)
        if rule is None:
            return
        self._ruled = True
        self._say(rule.message, now, interrupt=True)
        handoff = self._handoff
        handoff.after_announcement(
            lambda at: handoff.transfer_now(rule.target, f"safety rule {rule.name}", at),
            rule.target,
            False,
            now,
        )

    # ------------------------------------------------------------------ timers

    def silence_due(self) -> float | None:
        after = self._control.silence_reprompt
        if after is None or self._handoff.busy or not self._drained():
            return None
        return self._activity + after

    def silence(self, now: float) -> None:
        control = self._control
        limit = control.silence_hangup
        if limit is not None and self._reprompts >= limit:
            self._say(control.silence_goodbye, now)
            detail = f"silence: no answer to {limit} reprompt(s)"
            self._handoff.after_announcement(
                lambda at: self._end(EndReason.SILENCE, detail, at), None, True, now
            )
        else:
            self._reprompts += 1
            self._say(control.reprompt_text, now)
        self._activity = now

    def duration_due(self) -> float | None:
        limit = self._control.max_call_duration
        if limit is None or self._started is None or self._done:
            return None
        if not self._warned and limit > WARNING_AHEAD:
            return self._started + limit - WARNING_AHEAD
        return self._started + limit

    def duration(self, now: float) -> None:
        limit = self._control.max_call_duration
        assert limit is not None and self._started is not None
        if not self._warned and limit > WARNING_AHEAD:
            self._warned = True
            self._say(self._control.duration_warning, now)
            return
        self._done = True
        detail = f"max_duration: {limit:g}s reached"
        if not self._ready():
            self._end(EndReason.MAX_DURATION, detail, now)
            return
        self._say(self._control.duration_goodbye, now, interrupt=True)
        self._handoff.after_announcement(
            lambda at: self._end(EndReason.MAX_DURATION, detail, at), None, False, now
        )

    def _say(self, text: str, now: float, *, interrupt: bool = False) -> None:
        self._speech.say(text, now, interrupt=interrupt)
