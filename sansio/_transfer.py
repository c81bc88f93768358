"""Handing the caller on: a transfer that waits for its announcement to be heard, and the
redirect (transfer or fallback) that the driver carries out with Twilio's REST API.

A transfer is placed once the announcement's last mark is echoed (what the caller heard, not
``AgentAudioDone``), bounded by ``announce_grace`` (for the announcement to start) and
``announce_timeout``; a barge-in before that cancels it, and the agent gets a system note.
Once a redirect is asked for, the call's end is the redirect's: Twilio stops the stream when
the update takes effect, and that ``stop`` ends the call as ``transfer`` (or as the failure
that led to the fallback).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import NamedTuple

from ._actions import Action, EndReason, FallbackCall, TransferCall, TransferCancelled
from ._agent import FunctionCall, function_call_response
from ._callcontrol import CallControl
from ._speech import Speech
from ._uplink import Uplink

End = Callable[[EndReason, str, float], None]


class _Pending(NamedTuple):
    """Something to do once the announcement before it has played."""

    then: Callable[[float], None]
    target: str | None  # a transfer's target, None for a goodbye
    cancellable: bool
    requested: float


class _Redirect(NamedTuple):
    """A redirect asked of the driver: how the call ends once it is done."""

    reason: EndReason
    detail: str
    since: float
    target: str | None  # a transfer's target, None for the fallback


class Handoff:
    """The call's pending transfer or goodbye, and the redirect in flight."""

    __slots__ = (
        "_actions",
        "_at",
        "_control",
        "_drained",
        "_end_now",
        "_pending",
        "_redirect",
        "_speech",
        "_uplink",
    )

    def __init__(
        self,
        control: CallControl,
        actions: list[Action],
        uplink: Uplink,
        drained: Callable[[], bool],
        speech: Speech,
        end_now: End,
    ) -> None:
        self._control = control
        self._actions = actions
        self._uplink = uplink
        self._drained = drained  # nothing of the agent's is playing at Twilio
        self._speech = speech
        self._end_now = end_now  # end the call, past any takeover
        self._pending: _Pending | None = None
        self._at: float | None = None
        self._redirect: _Redirect | None = None

    @property
    def busy(self) -> bool:
        """A transfer or goodbye is waiting, or a redirect is in flight."""
        return self._pending is not None or self._redirect is not None

    # ------------------------------------------------------------------ requests

    def function_call(self, call: FunctionCall, now: float) -> None:
        """``transfer_call {"target": NAME, "reason": ...}``: only a configured name is dialled."""
        arguments = call.arguments or {}
        target, reason = arguments.get("target"), arguments.get("reason")
        reason = reason if type(reason) is str else ""
        number = self._number(target)
        names = ", ".join(sorted(self._control.targets)) or "(none configured)"
        answer: dict[str, object]
        if self.busy:
            answer = {"error": "a transfer or goodbye is already under way"}
        elif number is None or type(target) is not str:
            shown = str(target)[:40]
            answer = {"error": f"unknown transfer target {shown!r}; the targets are: {names}"}
        else:
            answer = {
                "ok": True,
                "result": f"Tell the caller in one short sentence that you are connecting them"
                f" to {target}. The transfer starts when you have finished speaking.",
            }
            self.after_announcement(
                lambda at: self._transfer(target, number, reason, at), target, True, now
            )
        text = function_call_response(call.call_id, call.name, json.dumps(answer))
        self._uplink.send_text(text, now)

    def after_announcement(
        self, then: Callable[[float], None], target: str | None, cancellable: bool, now: float
    ) -> None:
        """Run ``then`` once the announcement asked for at ``now`` has played (bounded); it
        replaces what was waiting (a safety rule overrides a goodbye), not a redirect."""
        if self._redirect is not None:
            return
        self._pending = _Pending(then, target, cancellable, now)
        self._at = now + self._control.announce_grace

    def transfer_now(self, target: str, reason: str, now: float) -> None:
        """A deterministic rule (a keypad key): no announcement, no agent turn."""
        number = self._number(target)
        if self._redirect is None and number is not None:
            self._pending = self._at = None
            self._transfer(target, number, reason, now)

    def _number(self, target: object) -> str | None:
        """The number of a configured target name; anything else (a number too) is unknown."""
        return self._control.targets.get(target) if type(target) is str else None

    def _transfer(self, target: str, number: str, reason: str, now: float) -> None:
        self._redirect = _Redirect(EndReason.TRANSFER, f"transferred to {target}", now, target)
        self._actions.append(TransferCall(target, number, reason))

    # ------------------------------------------------------------------ events

    def reply_played(self, now: float) -> None:
        """A reply's last mark was echoed: the announcement, maybe."""
        if self._pending is not None and self._drained():
            self._run_pending(now)

    def barge_in(self, now: float) -> None:
        pending = self._pending
        if pending is None or not pending.cancellable:
            return
        self._pending = self._at = None
        if pending.target is not None:
            self._actions.append(TransferCancelled(pending.target, "the caller spoke"))
            note = (
                f"System note: the transfer to {pending.target} was cancelled because the caller"
                " started speaking before it began. Listen to the caller, and call transfer_call"
                " again if they still want it."
            )
            self._speech.note(note, now)

    def due(self) -> float | None:
        if self._redirect is not None:
            return self._redirect.since + self._control.handoff_timeout
        return self._at

    def fire(self, now: float) -> None:
        redirect = self._redirect
        if redirect is not None:
            self._redirect = None
            self._end_now(redirect.reason, f"{redirect.detail}; no report of the redirect", now)
        elif self._pending is not None:
            final = self._pending.requested + self._control.announce_timeout
            if self._drained() or now >= final:
                self._run_pending(now)
            else:
                self._at = final

    def takes_over(self, reason: EndReason, detail: str, agent_failed: bool, now: float) -> bool:
        """The call is ending for ``reason``: True if the end is the redirect's instead.

        An agent failure (``agent_failed``, with the caller still on the stream) starts the
        fallback when there is one; a redirect in flight makes this end its own.
        """
        redirect = self._redirect
        if redirect is not None:
            self._redirect = None
            self._end_now(redirect.reason, redirect.detail, now)
            return True
        if agent_failed and self._control.fallback:
            self._pending = self._at = None
            self._redirect = _Redirect(reason, f"{detail}; redirected to the fallback", now, None)
            self._actions.append(FallbackCall(reason.value, detail))
            return True
        return False

    def redirected(self, ok: bool, detail: str, now: float) -> None:
        """The driver's report on :class:`TransferCall` or :class:`FallbackCall`."""
        redirect = self._redirect
        if redirect is None:
            return  # the call ended meanwhile
        self._redirect = None
        if ok:
            self._end_now(redirect.reason, redirect.detail, now)
        elif redirect.target is None:
            self._end_now(redirect.reason, f"{redirect.detail}, which failed: {detail}", now)
        else:  # the transfer could not be placed: the caller is still here, with the agent
            self._actions.append(TransferCancelled(redirect.target, f"update failed: {detail}"))
            self._speech.say(self._control.transfer_failed, now)

    def _run_pending(self, now: float) -> None:
        pending = self._pending
        assert pending is not None
        self._pending = self._at = None
        pending.then(now)
