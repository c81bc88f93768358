"""The agent side of a call (a mixin of :class:`~._bridge.CallBridge`): the agent inputs, the
session's lifecycle from ``OpenAgent`` to ``SettingsApplied``, its messages, and failover.

Each session gets this call's Settings; after a failure (see :mod:`._failover`) a new one gets
them with the conversation so far and no greeting, and hears all the caller audio held
meanwhile. The first ``SettingsApplied`` releases what the pre-roll policy keeps.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from . import _agent
from ._actions import Action, AgentReady, CallEnded, CloseAgent, EndReason, OpenAgent
from ._callcontrol import Resume
from ._config import BridgeConfig
from ._control import Control
from ._counters import Counters
from ._downlink import Downlink
from ._errors import LocalProtocolError, Peer, close_reason, decode_object
from ._failover import Failover
from ._history import Conversation
from ._injections import Injections
from ._notices import AgentReconnected
from ._state import AGENT_OPEN, AgentState
from ._timers import Clock
from ._tools import Tools
from ._uplink import Uplink
from ._watch import Watch

# Agent messages that only make sense once the agent is configured; before, they are ignored.
_AFTER_SETTINGS = frozenset({"AgentAudioDone", "FunctionCallRequest", "InjectionRefused"})
Handler = Callable[[dict[str, Any], float], None]


class AgentSide:
    """The agent inputs and session handling; the bridge owns the state these use (no
    ``__slots__``: the bridge's attributes are set on it)."""

    config: BridgeConfig
    _actions: list[Action]
    _agent_handlers: dict[object, Handler]
    _agent_state: AgentState
    _clock: Clock
    _configured: bool
    _control: Control
    _conversation: Conversation
    _counters: Counters
    _downlink: Downlink | None
    _ended: CallEnded | None
    _failover: Failover
    _injections: Injections
    _loads: Callable[[str], Any]
    _request_id: str
    _resume: Resume | None
    _settings: dict[str, Any]
    _tools: Tools
    _uplink: Uplink
    _watch: Watch
    _end: Callable[[EndReason, str, float], None]
    _fail: Callable[[Peer, str, int, float], None]
    _ignore: Callable[..., None]

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
        was = self._agent_state
        if was in (AgentState.IDLE, AgentState.CLOSED):
            return
        if was is AgentState.RECONNECTING:  # the failed leg, closed: the backoff starts
            self._failover.gone(now)
            return
        self._agent_state = AgentState.CLOSED
        if self._ended is None:
            why = f": {reason}" if reason else ""
            if was is AgentState.CONNECTING:
                detail = "could not connect to the agent" + why
                self._agent_failed(EndReason.AGENT_UNREACHABLE, detail, now, leg_open=False)
            else:
                how = "without a close frame" if code is None else f"with code {code}"
                detail = f"the agent closed the connection {how}{why}"
                self._agent_failed(EndReason.AGENT_ERROR, detail, now, leg_open=False)

    def _on_welcome(self, message: dict[str, Any], now: float) -> None:
        self._request_id = _agent.request_id(message)
        if self._agent_state is AgentState.AWAITING_WELCOME:
            self._send_settings(now)

    def _on_settings_applied(self, message: dict[str, Any], now: float) -> None:
        if self._agent_state is not AgentState.CONFIGURING:
            self._ignore(Peer.AGENT, "SettingsApplied that was not awaited")
            return
        self._agent_state = AgentState.READY
        held = self._uplink.held_bytes
        if self._configured:  # a new session after a failure: it hears all that was held
            attempt, context = self._failover.attempts, len(self._conversation)
            self._actions.append(AgentReconnected(attempt, self._request_id, held, context))
            self._uplink.release(now)
            self._control.replay(now)
        else:
            self._configured = True
            self._actions.append(AgentReady(self._request_id, held))
            self._uplink.release(now, self.config.preroll_release_bytes)
        self._injections.turn_done(now)

    def _on_audio_done(self, message: dict[str, Any], now: float) -> None:
        self._open_downlink().audio_done()
        self._injections.turn_done(now)

    def _on_conversation_text(self, message: dict[str, Any], now: float) -> None:
        role, content = _agent.text(message, "role"), _agent.text(message, "content")
        self._conversation.text(role, content)
        self._actions.append(_agent.notice("ConversationText", message))
        self._injections.seen(role, content, now)
        self._watch.transcript(role, content, now)

    def _on_history(self, message: dict[str, Any], now: float) -> None:
        self._conversation.history(message)
        self._actions.append(_agent.notice("History", message))

    def _no_welcome(self, now: float) -> None:
        self._ignore(Peer.AGENT, "no Welcome; Settings sent anyway")
        self._send_settings(now)

    def _open_downlink(self) -> Downlink:
        assert self._downlink is not None  # the agent leg exists only after Twilio's start
        return self._downlink

    def _send_settings(self, now: float) -> None:
        self._agent_state = AgentState.CONFIGURING
        settings = self._settings
        if self._configured:
            settings = self._conversation.reconnect_settings(settings)
        elif self._resume is not None:  # after a failed transfer: the call so far, a new greeting
            settings = self._conversation.reconnect_settings(settings, self._resume.greeting)
        self._uplink.send_text(json.dumps(settings), now)

    # ------------------------------------------------------------------ failover

    def _agent_failed(
        self, reason: EndReason, detail: str, now: float, *, leg_open: bool = True
    ) -> None:
        """The agent leg failed: reconnect if the call may (see :mod:`._failover`), else end."""
        failover = self._failover
        if not self._configured or failover.exhausted or self._tools.hanging_up:
            self._end(reason, detail, now)
            return
        self._tools.withdraw_all()  # the new session knows nothing of these calls
        self._open_downlink().end_reply()
        self._injections.leg_failed()
        self._counters.agent_reconnects += 1
        self._agent_state = AgentState.RECONNECTING
        self._actions.append(failover.begin(reason, detail, now, leg_gone=not leg_open))
        if leg_open:
            self._actions.append(CloseAgent(1000, close_reason(f"reconnecting: {detail}")))

    def _reconnect(self, now: float) -> None:
        """The backoff is over: open a new leg; or the failed one will not close: drop it."""
        failover = self._failover
        if not failover.leg_gone:
            failover.aborted = True
            self._actions.append(CloseAgent(1006, close_reason("close timed out"), abort=True))
            return
        self._agent_state = AgentState.CONNECTING
        self._clock.agent_opened = now
        self._actions.append(OpenAgent())

    def _check_agent_open(self, method: str) -> None:
        if self._agent_state not in AGENT_OPEN:
            raise LocalProtocolError(f"{method}() in agent state {self._agent_state.value}")
