"""The call state machine: one Twilio media stream bridged to one Deepgram agent session.

Inputs are whole WebSocket messages and connection events, each with ``now`` (seconds on
any monotonic clock). Outputs are drained with :meth:`CallBridge.actions`; the driver then
re-reads :meth:`CallBridge.next_deadline` and calls :meth:`CallBridge.handle_timeout` when it
passes. Nothing here reads a clock or touches a socket.

This module keeps the legs' states, the dispatch, and the end and fail paths; the Twilio side
is :mod:`._twilio_side`, the agent side :mod:`._agent_side`, the control inputs
:mod:`._control`, and the rest is composed in (see the package's modules), as aioquic and h11
do.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

from . import _agent
from ._actions import (
    Action,
    CallEnded,
    CallStats,
    CloseAgent,
    CloseTwilio,
    EndReason,
    ReplyPlayback,
)
from ._agent_side import AgentSide, Handler
from ._callcontrol import Resume
from ._config import BridgeConfig
from ._control import Control, ControlInputs, Phase
from ._counters import Counters
from ._downlink import Downlink
from ._errors import LocalProtocolError, Peer, RemoteProtocolError, close_reason
from ._failover import Failover
from ._history import Conversation
from ._injections import Injections
from ._keypad import Keypad
from ._playback import MAX_PENDING_MARKS, AgentPlayback
from ._speech import Speech
from ._state import AGENT_OPEN, ENDED, AgentState, TwilioState
from ._timers import Clock, Hooks, call_timers
from ._tools import Tools
from ._transfer import Handoff
from ._twilio_side import TwilioSide
from ._uplink import Uplink
from ._watch import Watch

__all__ = ["MAX_PENDING_MARKS", "AgentState", "CallBridge", "TwilioState"]

# Ends that the fallback takes over (the caller is still there, the agent is not).
_AGENT_FAILURES = frozenset(
    {EndReason.AGENT_ERROR, EndReason.AGENT_UNREACHABLE, EndReason.TIMEOUT, EndReason.SHUTDOWN}
)


class CallBridge(TwilioSide, AgentSide, ControlInputs):
    """Bridges one call. Create it when Twilio's WebSocket is accepted."""

    def __init__(self, config: BridgeConfig, *, now: float) -> None:
        self.config = config
        self._loads: Callable[[str], Any] = config.json_loads
        self._twilio_state = TwilioState.AWAITING_START
        self._agent_state = AgentState.IDLE
        self._error: RemoteProtocolError | None = None
        self._ended: CallEnded | None = None
        self.stream_sid: str | None = None
        self.call_sid: str | None = None
        self.custom_parameters: Mapping[str, str] = {}

        self._actions: list[Action] = []  # shared with the sub-machines: drained by copying
        self._counters = counters = Counters(self._actions)
        self._ignore = counters.ignore
        self._uplink = up = Uplink(config, self._actions, counters, now)
        self._playback = playback = AgentPlayback(config.mark_interval_ms * 8, counters)
        self._marks = playback.marks  # the marks awaiting their echo, for tests to fill
        self._downlink: Downlink | None = None  # from Twilio's start
        self._settings: dict[str, Any] = {}  # this call's, from Twilio's start
        self._resume: Resume | None = None  # from Twilio's start, for a resumed call
        self._request_id = ""
        self._conversation = Conversation(config.history_limit)
        self._injections = inj = Injections(config.injection_limit, up, counters, self._actions)
        self._control = Control(up, inj, self._control_phase)
        self._failover = failover = Failover(config)
        self._configured = False  # a first SettingsApplied came: failures reconnect from now
        self._clock = clock = Clock(now)
        control = config.control

        def drained() -> bool:
            return playback.drained

        def ready() -> bool:
            return self._agent_state is AgentState.READY

        speech = Speech(inj, self._control, ready)
        self._handoff = handoff = Handoff(control, self._actions, up, drained, speech, self._close)
        self._watch = watch = Watch(control, speech, handoff, drained, self._end)
        self._keypad = keypad = Keypad(
            control, config.dtmf_template, self._actions, counters, speech, handoff, self._end
        )
        builtins = {control.transfer_tool: handoff.function_call} if control.transfer_tool else {}
        self._tools = tools = Tools(
            config, self._actions, counters, up, drained, self._end, builtins
        )
        hooks = Hooks(
            lambda: self.finished,
            self._abort_open_legs,
            self._end,
            self._no_welcome,
            self._agent_failed,
            self._reconnect,
        )
        control_timers = (handoff, watch, keypad)
        self._timers = call_timers(config, clock, up, tools, failover, hooks, control_timers)
        self._twilio_handlers: dict[object, Handler] = {
            "connected": lambda message, now: None,  # it carries nothing the call needs
            "start": self._on_start,
            "mark": self._on_mark,
            "dtmf": lambda message, now: keypad.press(message, now),
            "stop": lambda message, now: self._hang_up("the caller hung up (stop)", now),
        }
        self._agent_handlers: dict[object, Handler] = {
            "Welcome": self._on_welcome,
            "SettingsApplied": self._on_settings_applied,
            "UserStartedSpeaking": self._on_user_started_speaking,
            "AgentAudioDone": self._on_audio_done,
            "Error": lambda message, now: self._agent_failed(
                EndReason.AGENT_ERROR, _agent.error_detail(message), now
            ),
            "FunctionCallRequest": tools.request,
            "FunctionCallCancelled": lambda message, now: tools.cancel(message),
            "ConversationText": self._on_conversation_text,
            "History": self._on_history,
            "InjectionRefused": lambda message, now: inj.refused(_agent.text(message, "message")),
        }

    # ------------------------------------------------------------------ outputs and state

    def actions(self) -> list[Action]:
        """Return and forget every action queued since the last call, in order."""
        actions = self._actions.copy()
        self._actions.clear()
        return actions

    @property
    def twilio_state(self) -> TwilioState:
        return self._twilio_state

    @property
    def agent_state(self) -> AgentState:
        return self._agent_state

    @property
    def ended(self) -> CallEnded | None:
        """How the call ended, once it has (its legs may still be closing)."""
        return self._ended

    @property
    def error(self) -> RemoteProtocolError | None:
        """The peer fault that ended the call, if one did."""
        return self._error

    @property
    def last_reply(self) -> ReplyPlayback | None:
        return self._playback.last

    @property
    def finished(self) -> bool:
        """Both legs are closed: the driver may drop this object."""
        return self._twilio_state is TwilioState.CLOSED and self._agent_state in (
            AgentState.IDLE,
            AgentState.CLOSED,
        )

    @property
    def accepts_twilio_input(self) -> bool:
        """``twilio_text``/``twilio_bytes`` may be called (they raise once Twilio is closed)."""
        return self._twilio_state is not TwilioState.CLOSED

    @property
    def accepts_agent_input(self) -> bool:
        """``agent_text``/``agent_audio`` may be called: the agent leg is open."""
        return self._agent_state in AGENT_OPEN

    @property
    def awaits_agent_connection(self) -> bool:
        """``agent_connected`` may be called: :class:`OpenAgent` was asked and not answered."""
        return self._agent_state is AgentState.CONNECTING

    def stats(self) -> CallStats:
        return self._counters.snapshot()

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timeout` must next be called, or None if no timer is needed."""
        return self._timers.next_deadline(self._phase())

    def handle_timeout(self, now: float) -> None:
        """Run every timer that is due at ``now``."""
        self._timers.fire_due(now, self._phase)

    # ------------------------------------------------------------------ driver inputs

    def tool_result(self, call_id: str, content: str, now: float) -> None:
        """The driver's answer to :class:`RunTool`; sent as ``FunctionCallResponse``."""
        self._tools.result(call_id, content, now)

    def end(self, reason: EndReason, detail: str, now: float) -> None:
        """End the call for a reason only the driver can see (shutdown, a stalled socket)."""
        if self._ended is None:
            self._end(reason, detail, now)

    def transfer(self, target: str, reason: str, now: float) -> None:
        """Transfer the call now to the configured target named ``target`` (a driver's tool
        or control API): no announcement; numbers are never taken, only target names."""
        if self._ended is not None or self.stream_sid is None:
            raise LocalProtocolError("transfer() outside a started call")
        if type(target) is not str or target not in self.config.control.targets:
            raise LocalProtocolError(f"unknown transfer target {str(target)[:64]!r}")
        if self._handoff.busy:
            raise LocalProtocolError("a transfer or goodbye is already under way")
        self._handoff.transfer_now(target, reason, now)

    def redirected(self, ok: bool, detail: str, now: float) -> None:
        """The driver's report on :class:`TransferCall` or :class:`FallbackCall`: the call
        update succeeded (``ok``), or why not. A failed transfer leaves the call with the
        agent; a done redirect ends the call (Twilio stops the stream as well)."""
        if self._ended is None:
            self._handoff.redirected(ok, detail, now)

    # ------------------------------------------------------------------ events

    def _on_user_started_speaking(self, message: dict[str, Any], now: float) -> None:
        self._open_downlink().barge_in()
        self._watch.user_spoke(now)
        self._handoff.barge_in(now)

    # ------------------------------------------------------------------ timers

    def _phase(self) -> Hashable:
        return ENDED if self._ended is not None else self._agent_state

    def _control_phase(self) -> Phase:
        if self._ended is not None:
            return "ended"
        if not self._configured:
            return "before"
        return "ready" if self._agent_state is AgentState.READY else "reconnecting"

    # ------------------------------------------------------------------ plumbing

    def _fail(self, peer: Peer, message: str, close_code: int, now: float) -> None:
        self._error = RemoteProtocolError(peer, message, close_code)
        self._end(EndReason.PROTOCOL_ERROR, message, now)

    def _end(self, reason: EndReason, detail: str, now: float) -> None:
        """End the call, unless a redirect takes the end over (a transfer in flight, or the
        fallback of an agent failure while the caller is still on the stream)."""
        error = self._error
        agent_failed = self._twilio_state is TwilioState.STREAMING and (
            reason in _AGENT_FAILURES
            or (
                reason is EndReason.PROTOCOL_ERROR
                and error is not None
                and error.peer is Peer.AGENT
            )
        )
        if not self._handoff.takes_over(reason, detail, agent_failed, now):
            self._close(reason, detail, now)

    def _close(self, reason: EndReason, detail: str, now: float) -> None:
        """End the call exactly once: send the audio still held (however the call ends, the
        caller's last words are the agent's), withdraw tools, report, then close both legs."""
        if self._ended is not None:
            return
        if self._agent_state is AgentState.READY:
            self._uplink.flush()
        self._tools.withdraw_all()
        self._ended = CallEnded(reason, detail, self.stats())
        self._clock.ended = now
        self._actions.append(self._ended)
        text = close_reason(f"{reason.value}: {detail}")
        error = self._error
        if self._twilio_state is not TwilioState.CLOSED:
            code = error.close_code if error and error.peer is Peer.TWILIO else 1000
            self._actions.append(CloseTwilio(code, text))
        state = self._agent_state
        if state is AgentState.IDLE or (
            state is AgentState.RECONNECTING and self._failover.leg_gone
        ):
            self._agent_state = AgentState.CLOSED
        elif self._agent_state is not AgentState.CLOSED:
            code = error.close_code if error and error.peer is Peer.AGENT else 1000
            self._actions.append(CloseAgent(code, text))

    def _abort_open_legs(self, now: float) -> None:
        text = close_reason("close handshake timed out")
        if self._twilio_state is not TwilioState.CLOSED:
            self._twilio_state = TwilioState.CLOSED
            self._actions.append(CloseTwilio(1006, text, abort=True))
        if self._agent_state is not AgentState.CLOSED:
            self._agent_state = AgentState.CLOSED
            self._actions.append(CloseAgent(1006, text, abort=True))
