"""The Twilio side of a call (a mixin of :class:`~._bridge.CallBridge`): the media stream's
inputs, its ``start`` (which opens the agent session) and the echoes of the marks.

``media`` is the hot path (50 messages a second per call): it is parsed inline, the other
events go through the bridge's handler table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from . import _agent, _twilio
from ._actions import Action, CallEnded, CallStarted, EndReason, OpenAgent
from ._agent_side import Handler
from ._callcontrol import Resume
from ._config import BridgeConfig
from ._counters import Counters
from ._downlink import Downlink
from ._errors import LocalProtocolError, Peer, decode_object
from ._history import Conversation
from ._playback import AgentPlayback
from ._state import AgentState, TwilioState
from ._timers import Clock
from ._tools import Tools
from ._transfer import Handoff
from ._twilio import Oddity
from ._uplink import Uplink
from ._watch import Watch


class TwilioSide:
    """The Twilio inputs; the bridge owns the state these use (no ``__slots__``: the
    bridge's attributes are set on it)."""

    config: BridgeConfig
    stream_sid: str | None
    call_sid: str | None
    custom_parameters: Mapping[str, str]
    _actions: list[Action]
    _agent_state: AgentState
    _clock: Clock
    _conversation: Conversation
    _counters: Counters
    _downlink: Downlink | None
    _ended: CallEnded | None
    _handoff: Handoff
    _loads: Callable[[str], Any]
    _playback: AgentPlayback
    _resume: Resume | None
    _settings: dict[str, Any]
    _tools: Tools
    _twilio_handlers: dict[object, Handler]
    _twilio_state: TwilioState
    _uplink: Uplink
    _watch: Watch
    _end: Callable[[EndReason, str, float], None]
    _fail: Callable[[Peer, str, int, float], None]
    _ignore: Callable[..., None]

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
        choose = self.config.choose_settings
        chosen = choose(start.parameters) if choose is not None else None
        base = self.config.settings if chosen is None else chosen
        self._settings = _agent.call_settings(base, start.parameters)
        if self._resume is not None:
            self._conversation.seed(self._resume.history)
        self._actions.append(
            CallStarted(
                start.stream_sid,
                start.call_sid,
                start.account_sid,
                start.parameters,
                resumed=self._resume is not None,
            )
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

    def _tolerate(self, oddity: Oddity) -> None:
        self._ignore(Peer.TWILIO, oddity.detail, undecodable=oddity.undecodable)

    def _hang_up(self, detail: str, now: float) -> None:
        self._end(EndReason.HANGUP, detail, now)
