"""The call state machine: one Twilio media stream bridged to one Deepgram agent session.

Inputs are whole WebSocket messages and connection events, each with ``now`` (seconds on
any monotonic clock). Outputs are drained with :meth:`CallBridge.actions`; the driver then
re-reads :meth:`CallBridge.next_deadline` and calls :meth:`CallBridge.handle_timeout` when it
passes. Nothing here reads a clock or touches a socket.

This module keeps the legs' states, the dispatch and the end and fail paths; the rest is
composed in (see the package's modules), as aioquic and h11 do.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

from . import _agent, _twilio
from ._actions import (
    Action,
    AgentReady,
    CallEnded,
    CallStarted,
    CallStats,
    CloseAgent,
    CloseTwilio,
    EndReason,
    OpenAgent,
    ReplyPlayback,
    Transcript,
)
from ._callcontrol import Resume
from ._config import BridgeConfig
from ._counters import Counters
from ._downlink import Downlink
from ._errors import LocalProtocolError, Peer, RemoteProtocolError, close_reason, decode_object
from ._keypad import Keypad
from ._playback import MAX_PENDING_MARKS, AgentPlayback
from ._state import AGENT_OPEN, ENDED, AgentState, TwilioState
from ._timers import Clock, Hooks, call_timers
from ._tools import Tools
from ._transfer import Handoff
from ._twilio import Oddity
from ._uplink import MAX_HELD_DTMF, Uplink
from ._watch import Watch

__all__ = ["MAX_HELD_DTMF", "MAX_PENDING_MARKS", "AgentState", "CallBridge", "TwilioState"]

# Agent messages that only make sense once the agent is configured; before, they are ignored.
_AFTER_SETTINGS = frozenset({"AgentAudioDone", "FunctionCallRequest"})
_Handler = Callable[[dict[str, Any], float], None]
# Ends that the fallback takes over (the caller is still there, the agent is not).
_AGENT_FAILURES = frozenset(
    {EndReason.AGENT_ERROR, EndReason.AGENT_UNREACHABLE, EndReason.TIMEOUT, EndReason.SHUTDOWN}
)


class CallBridge:
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
        control = config.control

        def drained() -> bool:
            return playback.drained

        def ready() -> bool:
            return self._agent_state is AgentState.READY

        self._handoff = handoff = Handoff(control, self._actions, up, drained, ready, self._close)
        self._watch = watch = Watch(control, up, handoff, drained, ready, self._end)
        self._keypad = keypad = Keypad(
            control, self._actions, counters, up, handoff, ready, self._end
        )
        builtins = {control.transfer_tool: handoff.function_call} if control.transfer_tool else {}
        self._tools = tools = Tools(
            config, self._actions, counters, up, drained, self._end, builtins
        )
        self._resume: Resume | None = None
        self._settings_text = ""
        self._request_id = ""
        self._clock = clock = Clock(now)
        hooks = Hooks(lambda: self.finished, self._abort_open_legs, self._end, self._no_welcome)
        self._timers = call_timers(config, clock, up, tools, hooks, (handoff, watch, keypad))
        self._twilio_handlers: dict[object, _Handler] = {
            "connected": lambda message, now: None,  # it carries nothing the call needs
            "start": self._on_start,
            "mark": self._on_mark,
            "dtmf": lambda message, now: keypad.press(message, now),
            "stop": lambda message, now: self._hang_up("the caller hung up (stop)", now),
        }
        self._agent_handlers: dict[object, _Handler] = {
            "Welcome": self._on_welcome,
            "SettingsApplied": self._on_settings_applied,
            "UserStartedSpeaking": self._on_user_started_speaking,
            "ConversationText": self._on_conversation_text,
            "AgentAudioDone": lambda message, now: self._open_downlink().audio_done(),
            "Error": lambda message, now: self._end(
                EndReason.AGENT_ERROR, _agent.error_detail(message), now
            ),
            "FunctionCallRequest": tools.request,
            "FunctionCallCancelled": lambda message, now: tools.cancel(message),
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

    # ------------------------------------------------------------------ Twilio inputs

    def twilio_text(self, text: str, now: float) -> None:
        """One text message from Twilio's WebSocket."""
        if self._twilio_state is TwilioState.CLOSED:
            raise LocalProtocolError("twilio_text() after twilio_closed()")
        self._clock.twilio_rx = now
        if self._ended is not None:
            return
        message = decode_object(self._loads, text)
        if type(message) is not dict:
            self._fail(Peer.TWILIO, f"Twilio sent {message}", 1007, now)
            return
        event = message.get("event")
        if event == "media":  # the hot path: 50 per second
            if self._twilio_state is TwilioState.STREAMING:
                audio = _twilio.media_audio(message)
                if isinstance(audio, Oddity):
                    self._tolerate(audio)
                elif audio:
                    self._counters.caller_audio_bytes += len(audio)
                    self._uplink.push(audio, now, self._agent_state is AgentState.READY)
            else:
                self._ignore(Peer.TWILIO, "media before start")
            return
        handler = self._twilio_handlers.get(event) if type(event) is str else None
        if handler is None:
            self._ignore(Peer.TWILIO, f"unknown event {str(event)[:40]!r}")
        else:
            handler(message, now)

    def twilio_bytes(self, data: bytes, now: float) -> None:
        """One binary message from Twilio's WebSocket, which Twilio never sends."""
        if self._twilio_state is TwilioState.CLOSED:
            raise LocalProtocolError("twilio_bytes() after twilio_closed()")
        self._clock.twilio_rx = now
        if self._ended is None:
            self._fail(Peer.TWILIO, "Twilio sent a binary message", 1003, now)

    def twilio_closed(self, code: int | None, now: float) -> None:
        """Twilio's WebSocket is gone (closed by either side, or dropped)."""
        if self._twilio_state is TwilioState.CLOSED:
            return
        self._twilio_state = TwilioState.CLOSED
        if self._ended is None:
            how = "without a close frame" if code is None else f"with code {code}"
            self._hang_up(f"Twilio closed the stream {how}", now)

    # ------------------------------------------------------------------ agent inputs

    def agent_connected(self, now: float) -> None:
        """The agent WebSocket asked for by :class:`OpenAgent` is open."""
        if self._agent_state is not AgentState.CONNECTING:
            raise LocalProtocolError(f"agent_connected() in agent state {self._agent_state.value}")
        self._agent_state = AgentState.AWAITING_WELCOME
        self._clock.agent_connected = now
        self._uplink.connected(now)

    def agent_text(self, text: str, now: float) -> None:
        """One text message from the agent."""
        self._check_agent_open("agent_text")
        if self._ended is not None:
            return
        message = decode_object(self._loads, text)
        if type(message) is not dict:
            self._fail(Peer.AGENT, f"the agent sent {message}", 1007, now)
            return
        kind = message.get("type")
        handler = self._agent_handlers.get(kind) if type(kind) is str else None
        if handler is None:
            self._actions.append(_agent.notice(kind, message))
        elif kind in _AFTER_SETTINGS and self._agent_state is not AgentState.READY:
            self._ignore(Peer.AGENT, f"{kind} before SettingsApplied")
        else:
            handler(message, now)

    def agent_audio(self, audio: bytes, now: float) -> None:
        """One binary message (agent speech, mu-law) from the agent."""
        self._check_agent_open("agent_audio")
        if self._ended is not None or not audio:
            return
        if self._agent_state is not AgentState.READY:
            self._fail(Peer.AGENT, "the agent sent audio before SettingsApplied", 1008, now)
            return
        downlink = self._downlink
        assert downlink is not None  # READY implies Twilio's start was seen
        downlink.audio(audio)
        self._watch.agent_active(now)

    def agent_closed(self, code: int | None, now: float, reason: str = "") -> None:
        """The agent leg is gone, or could not be opened (``reason`` says why)."""
        if self._agent_state in (AgentState.IDLE, AgentState.CLOSED):
            return
        was = self._agent_state
        self._agent_state = AgentState.CLOSED
        if self._ended is None:
            why = f": {reason}" if reason else ""
            if was is AgentState.CONNECTING:
                self._end(EndReason.AGENT_UNREACHABLE, "could not connect to the agent" + why, now)
            else:
                how = "without a close frame" if code is None else f"with code {code}"
                self._end(EndReason.AGENT_ERROR, f"the agent closed the connection {how}{why}", now)

    def tool_result(self, call_id: str, content: str, now: float) -> None:
        """The driver's answer to :class:`RunTool`; sent as ``FunctionCallResponse``."""
        self._tools.result(call_id, content, now)

    def end(self, reason: EndReason, detail: str, now: float) -> None:
        """End the call for a reason only the driver can see (shutdown, a stalled socket)."""
        if self._ended is None:
            self._end(reason, detail, now)

    def redirected(self, ok: bool, detail: str, now: float) -> None:
        """The driver's report on :class:`TransferCall` or :class:`FallbackCall`: the call
        update succeeded (``ok``), or why not. A failed transfer leaves the call with the
        agent; a done redirect ends the call (Twilio stops the stream as well)."""
        if self._ended is None:
            self._handoff.redirected(ok, detail, now)

    # ------------------------------------------------------------------ events

    def _on_start(self, message: dict[str, Any], now: float) -> None:
        if self._twilio_state is not TwilioState.AWAITING_START:
            self._ignore(Peer.TWILIO, "a second start")
            return
        start = _twilio.parse_start(message)
        if isinstance(start, _twilio.Fault):
            self._fail(Peer.TWILIO, start.detail, start.close_code, now)
            return
        self.call_sid = start.call_sid
        admit = self.config.admit
        refusal = admit(start.call_sid, start.parameters) if admit is not None else None
        if refusal is not None:
            self._fail(Peer.TWILIO, f"call refused: {refusal}", 1008, now)
            return
        resume = self.config.control.resume
        self._resume = resume(start.call_sid, start.parameters) if resume is not None else None
        self._watch.started(now)
        self.stream_sid = start.stream_sid
        self.custom_parameters = start.parameters
        self._twilio_state = TwilioState.STREAMING
        self._downlink = Downlink(start.stream_sid, self._playback, self._actions)
        self._settings_text = _agent.settings_text(
            self.config.settings, start.parameters, self._resume
        )
        self._actions.append(
            CallStarted(start.stream_sid, start.call_sid, start.account_sid, start.parameters)
        )
        self._agent_state = AgentState.CONNECTING
        self._clock.agent_opened = now
        self._actions.append(OpenAgent())

    def _on_mark(self, message: dict[str, Any], now: float) -> None:
        name = _twilio.mark_name(message)
        echo = self._downlink.echoed(name) if self._downlink and type(name) is str else None
        if echo is None:
            self._ignore(Peer.TWILIO, "echo of a mark never sent")
            return
        self._watch.agent_active(now)
        if echo.last:
            self._tools.reply_played(now)
            self._handoff.reply_played(now)

    def _on_user_started_speaking(self, message: dict[str, Any], now: float) -> None:
        self._open_downlink().barge_in()
        self._watch.user_spoke(now)
        self._handoff.barge_in(now)

    def _on_conversation_text(self, message: dict[str, Any], now: float) -> None:
        notice = _agent.notice("ConversationText", message)
        self._actions.append(notice)
        assert isinstance(notice, Transcript)
        self._watch.transcript(notice.role, notice.content, now)

    def _on_welcome(self, message: dict[str, Any], now: float) -> None:
        self._request_id = _agent.request_id(message)
        if self._agent_state is AgentState.AWAITING_WELCOME:
            self._send_settings(now)

    def _on_settings_applied(self, message: dict[str, Any], now: float) -> None:
        if self._agent_state is not AgentState.CONFIGURING:
            self._ignore(Peer.AGENT, "SettingsApplied that was not awaited")
            return
        self._agent_state = AgentState.READY
        self._actions.append(AgentReady(self._request_id, self._uplink.held_bytes))
        self._uplink.release(now)

    # ------------------------------------------------------------------ timers

    def _phase(self) -> Hashable:
        return ENDED if self._ended is not None else self._agent_state

    def _no_welcome(self, now: float) -> None:
        self._ignore(Peer.AGENT, "no Welcome; Settings sent anyway")
        self._send_settings(now)

    # ------------------------------------------------------------------ plumbing

    def _open_downlink(self) -> Downlink:
        assert self._downlink is not None  # the agent leg exists only after Twilio's start
        return self._downlink

    def _send_settings(self, now: float) -> None:
        self._agent_state = AgentState.CONFIGURING
        self._uplink.send_text(self._settings_text, now)

    def _check_agent_open(self, method: str) -> None:
        if self._agent_state not in AGENT_OPEN:
            raise LocalProtocolError(f"{method}() in agent state {self._agent_state.value}")

    def _tolerate(self, oddity: Oddity) -> None:
        self._ignore(Peer.TWILIO, oddity.detail, undecodable=oddity.undecodable)

    def _hang_up(self, detail: str, now: float) -> None:
        """The caller is gone: send the audio still held, then end."""
        if self._agent_state is AgentState.READY:
            self._uplink.flush()
        self._end(EndReason.HANGUP, detail, now)

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
        """End the call exactly once: withdraw tools, report, then close both legs."""
        if self._ended is not None:
            return
        self._tools.withdraw_all()
        self._ended = CallEnded(reason, detail, self.stats())
        self._clock.ended = now
        self._actions.append(self._ended)
        text = close_reason(f"{reason.value}: {detail}")
        error = self._error
        if self._twilio_state is not TwilioState.CLOSED:
            code = error.close_code if error and error.peer is Peer.TWILIO else 1000
            self._actions.append(CloseTwilio(code, text))
        if self._agent_state is AgentState.IDLE:
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
