"""The call state machine: one Twilio media stream bridged to one Deepgram agent session.

Inputs are whole WebSocket messages and connection events, each with ``now`` (seconds on
any monotonic clock). Outputs are drained with :meth:`CallBridge.actions`; the driver then
re-reads :meth:`CallBridge.next_deadline` and calls :meth:`CallBridge.handle_timeout` when it
passes. Nothing here reads a clock or touches a socket.
"""

from __future__ import annotations

import binascii
import json
from binascii import a2b_base64
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any

from ._actions import (
    Action,
    AgentNotice,
    AgentReady,
    AgentStartedSpeaking,
    AgentThinking,
    AgentWarning,
    BargeIn,
    CallEnded,
    CallStarted,
    CallStats,
    CancelTool,
    ClearTwilio,
    CloseAgent,
    CloseTwilio,
    Dtmf,
    EndReason,
    History,
    LatencyReport,
    OpenAgent,
    PeerIgnored,
    Playback,
    ReplyPlayback,
    RunTool,
    SendAgentAudio,
    SendAgentText,
    SendTwilioMark,
    SendTwilioMedia,
    Transcript,
)
from ._codec import KEEPALIVE, TwilioEncoder, function_call_response, inject_user_message
from ._config import BridgeConfig, fill_placeholders
from ._errors import LocalProtocolError, Peer, RemoteProtocolError

# Bounds on what a peer can make the core hold, besides the configured pre-roll.
MAX_HELD_DTMF = 32
MAX_PENDING_MARKS = 4096
MAX_CLOSE_REASON_BYTES = 120  # a WebSocket close reason must fit in 123 bytes
_DTMF_DIGITS = frozenset("0123456789*#ABCDabcd")


class TwilioState(Enum):
    AWAITING_START = "awaiting_start"
    STREAMING = "streaming"
    CLOSED = "closed"


class AgentState(Enum):
    IDLE = "idle"  # not asked for yet: it is opened on Twilio's ``start``
    CONNECTING = "connecting"
    AWAITING_WELCOME = "awaiting_welcome"
    CONFIGURING = "configuring"  # Settings sent, SettingsApplied not yet received
    READY = "ready"
    CLOSED = "closed"


_AGENT_OPEN = frozenset({AgentState.AWAITING_WELCOME, AgentState.CONFIGURING, AgentState.READY})


class _Reply:
    """Playback bookkeeping of one agent reply (audio between two ``AgentAudioDone``)."""

    __slots__ = ("heard", "id", "next_mark", "sent")

    def __init__(self, reply_id: int, next_mark: int) -> None:
        self.id = reply_id
        self.sent = 0
        self.heard = 0
        self.next_mark = next_mark


# A pending mark: (generation, reply, byte offset it acknowledges, is the reply's last mark)
_Mark = tuple[int, _Reply, int, bool]


class CallBridge:
    """Bridges one call. Create it when Twilio's WebSocket is accepted."""

    def __init__(self, config: BridgeConfig, *, now: float) -> None:
        self.config = config
        self._loads: Callable[[str], Any] = config.json_loads
        self._chunk = config.chunk_bytes
        self._chunk_s = config.chunk_ms / 1000
        self._preroll_cap = config.preroll_bytes
        self._mark_every = config.mark_interval_ms * 8

        self.twilio_state = TwilioState.AWAITING_START
        self.agent_state = AgentState.IDLE
        self.error: RemoteProtocolError | None = None
        self.ended: CallEnded | None = None
        self.stream_sid: str | None = None
        self.call_sid: str | None = None
        self.custom_parameters: Mapping[str, str] = {}
        self.last_reply: ReplyPlayback | None = None

        self._actions: list[Action] = []
        self._encoder: TwilioEncoder | None = None
        self._settings_text = ""
        self._request_id = ""

        self._twilio_rx = now
        self._agent_tx = now
        self._agent_opened_at = now
        self._agent_connected_at = now
        self._ended_at = now

        self._pending = bytearray()
        self._pending_since = now
        self._held_dtmf: list[str] = []

        self._generation = 0
        self._reply_count = 0
        self._open_reply: _Reply | None = None
        self._playing: dict[int, _Reply] = {}
        self._marks: dict[str, _Mark] = {}

        self._tool_calls: dict[str, str] = {}
        self._withdrawn_tools: set[str] = set()
        self._hangup_requested: float | None = None
        self._hangup_at: float | None = None
        self._noticed: set[str] = set()

        self._caller_bytes = 0
        self._agent_sent = 0
        self._agent_received = 0
        self._dropped = 0
        self._undecodable = 0
        self._ignored = 0
        self._barge_ins = 0
        self._keepalives = 0

        self._twilio_handlers: dict[str, Callable[[dict[str, Any], float], None]] = {
            "connected": self._on_connected,
            "start": self._on_start,
            "mark": self._on_mark,
            "dtmf": self._on_dtmf,
            "stop": self._on_stop,
        }
        self._agent_handlers: dict[str, Callable[[dict[str, Any], float], None]] = {
            "Welcome": self._on_welcome,
            "SettingsApplied": self._on_settings_applied,
            "UserStartedSpeaking": self._on_user_started_speaking,
            "AgentAudioDone": self._on_agent_audio_done,
            "ConversationText": self._on_conversation_text,
            "AgentThinking": self._on_agent_thinking,
            "AgentStartedSpeaking": self._on_agent_started_speaking,
            "LatencyReport": self._on_latency_report,
            "History": self._on_history,
            "Warning": self._on_warning,
            "Error": self._on_error,
            "FunctionCallRequest": self._on_function_call_request,
            "FunctionCallCancelled": self._on_function_call_cancelled,
        }

    # ------------------------------------------------------------------ outputs

    def actions(self) -> list[Action]:
        """Return and forget every action queued since the last call, in order."""
        actions, self._actions = self._actions, []
        return actions

    @property
    def finished(self) -> bool:
        """Both legs are closed: the driver may drop this object."""
        return self.twilio_state is TwilioState.CLOSED and self.agent_state in (
            AgentState.IDLE,
            AgentState.CLOSED,
        )

    def stats(self) -> CallStats:
        return CallStats(
            caller_audio_bytes=self._caller_bytes,
            agent_audio_bytes_sent=self._agent_sent,
            agent_audio_bytes_received=self._agent_received,
            preroll_dropped_bytes=self._dropped,
            undecodable_media=self._undecodable,
            ignored_messages=self._ignored,
            barge_ins=self._barge_ins,
            replies=self._reply_count,
            keepalives=self._keepalives,
        )

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timeout` must next be called, or None if no timer is needed."""
        if self.finished:
            return None
        config = self.config
        if self.ended is not None:
            return self._ended_at + config.close_timeout
        deadline = self._twilio_rx + config.twilio_idle_timeout
        state = self.agent_state
        if state is AgentState.READY:
            at = self._agent_tx + config.keepalive_interval
            if at < deadline:
                deadline = at
            if self._pending:
                at = self._pending_since + self._chunk_s
                if at < deadline:
                    deadline = at
            if self._hangup_at is not None and self._hangup_at < deadline:
                deadline = self._hangup_at
        elif state is AgentState.CONNECTING:
            at = self._agent_opened_at + config.agent_connect_timeout
            if at < deadline:
                deadline = at
        elif state is AgentState.AWAITING_WELCOME or state is AgentState.CONFIGURING:
            at = self._agent_connected_at + config.settings_timeout
            if state is AgentState.AWAITING_WELCOME:
                at = min(at, self._agent_connected_at + config.welcome_timeout)
            if at < deadline:
                deadline = at
        return deadline

    # ------------------------------------------------------------------ Twilio inputs

    def twilio_text(self, text: str, now: float) -> None:
        """One text message from Twilio's WebSocket."""
        if self.twilio_state is TwilioState.CLOSED:
            raise LocalProtocolError("twilio_text() after twilio_closed()")
        self._twilio_rx = now
        if self.ended is not None:
            return
        message = self._decode(text, Peer.TWILIO, "Twilio", now)
        if message is None:
            return
        event = message.get("event")
        if event == "media":  # the hot path: 50 per second
            if self.twilio_state is TwilioState.STREAMING:
                self._on_media(message, now)
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
        if self.twilio_state is TwilioState.CLOSED:
            raise LocalProtocolError("twilio_bytes() after twilio_closed()")
        self._twilio_rx = now
        if self.ended is None:
            self._fail(Peer.TWILIO, "Twilio sent a binary message", 1003, now)

    def twilio_closed(self, code: int | None, now: float) -> None:
        """Twilio's WebSocket is gone (closed by either side, or dropped)."""
        if self.twilio_state is TwilioState.CLOSED:
            return
        self.twilio_state = TwilioState.CLOSED
        if self.ended is None:
            self._flush_pending()
            how = "without a close frame" if code is None else f"with code {code}"
            self._end(EndReason.HANGUP, f"Twilio closed the stream {how}", now)

    # ------------------------------------------------------------------ agent inputs

    def agent_connected(self, now: float) -> None:
        """The agent WebSocket asked for by :class:`OpenAgent` is open."""
        if self.agent_state is not AgentState.CONNECTING:
            raise LocalProtocolError(f"agent_connected() in agent state {self.agent_state.value}")
        self.agent_state = AgentState.AWAITING_WELCOME
        self._agent_connected_at = now
        self._agent_tx = now

    def agent_text(self, text: str, now: float) -> None:
        """One text message from the agent."""
        self._check_agent_open("agent_text")
        if self.ended is not None:
            return
        message = self._decode(text, Peer.AGENT, "the agent", now)
        if message is None:
            return
        kind = message.get("type")
        handler = self._agent_handlers.get(kind) if type(kind) is str else None
        if handler is None:
            self._actions.append(AgentNotice(str(kind), message))
        else:
            handler(message, now)

    def agent_audio(self, audio: bytes, now: float) -> None:
        """One binary message (agent speech, mu-law) from the agent."""
        self._check_agent_open("agent_audio")
        if self.ended is not None or not audio:
            return
        if self.agent_state is not AgentState.READY:
            self._fail(Peer.AGENT, "the agent sent audio before SettingsApplied", 1008, now)
            return
        assert self._encoder is not None  # READY implies Twilio's start was seen
        size = len(audio)
        self._agent_received += size
        reply = self._open_reply
        if reply is None:
            reply = self._open_reply = self._start_reply()
        reply.sent += size
        self._actions.append(SendTwilioMedia(self._encoder.media(audio)))
        if self._mark_every and reply.sent >= reply.next_mark:
            reply.next_mark = reply.sent + self._mark_every
            self._send_mark(reply, last=False)

    def agent_closed(self, code: int | None, now: float, reason: str = "") -> None:
        """The agent leg is gone, or could not be opened (``reason`` says why)."""
        if self.agent_state in (AgentState.IDLE, AgentState.CLOSED):
            return
        was = self.agent_state
        self.agent_state = AgentState.CLOSED
        if self.ended is None:
            if was is AgentState.CONNECTING:
                detail = "could not connect to the agent" + (f": {reason}" if reason else "")
                self._end(EndReason.AGENT_UNREACHABLE, detail, now)
            else:
                how = "without a close frame" if code is None else f"with code {code}"
                detail = f"the agent closed the connection {how}" + (
                    f": {reason}" if reason else ""
                )
                self._end(EndReason.AGENT_ERROR, detail, now)

    def tool_result(self, call_id: str, content: str, now: float) -> None:
        """The driver's answer to :class:`RunTool`; sent as ``FunctionCallResponse``."""
        name = self._tool_calls.pop(call_id, None)
        if name is None:
            if call_id in self._withdrawn_tools:
                return  # cancelled by the agent or by the end of the call: nobody wants it
            raise LocalProtocolError(f"tool_result() for unknown call id {call_id!r}")
        self._send_agent_text(function_call_response(call_id, name, content), now)

    # ------------------------------------------------------------------ driver decisions

    def end(self, reason: EndReason, detail: str, now: float) -> None:
        """End the call for a reason only the driver can see (shutdown, a stalled socket)."""
        if self.ended is None:
            self._end(reason, detail, now)

    def handle_timeout(self, now: float) -> None:
        """Run every timer that is due at ``now``."""
        if self.finished:
            return
        config = self.config
        if self.ended is not None:
            if now >= self._ended_at + config.close_timeout:
                self._abort_open_legs()
            return
        state = self.agent_state
        if state is AgentState.CONNECTING:
            if now >= self._agent_opened_at + config.agent_connect_timeout:
                after = config.agent_connect_timeout
                self._end(EndReason.TIMEOUT, f"agent_connect: no connection after {after}s", now)
                return
        elif state is AgentState.AWAITING_WELCOME or state is AgentState.CONFIGURING:
            if now >= self._agent_connected_at + config.settings_timeout:
                after = config.settings_timeout
                self._end(EndReason.TIMEOUT, f"settings_applied: none after {after}s", now)
                return
            if state is AgentState.AWAITING_WELCOME and (
                now >= self._agent_connected_at + config.welcome_timeout
            ):
                self._ignore(Peer.AGENT, "no Welcome; Settings sent anyway")
                self._send_settings(now)
        if now >= self._twilio_rx + config.twilio_idle_timeout:
            after = config.twilio_idle_timeout
            self._end(EndReason.TIMEOUT, f"twilio_idle: no message for {after}s", now)
            return
        if state is AgentState.READY:
            if self._pending and now >= self._pending_since + self._chunk_s:
                self._flush_pending()
            if now >= self._agent_tx + config.keepalive_interval:
                self._keepalives += 1
                self._send_agent_text(KEEPALIVE, now)
            if self._hangup_at is not None and now >= self._hangup_at:
                self._hang_up_if_drained(now, deadline=True)

    # ------------------------------------------------------------------ Twilio events

    def _on_connected(self, message: dict[str, Any], now: float) -> None:
        """``connected`` carries nothing the call needs."""

    def _on_start(self, message: dict[str, Any], now: float) -> None:
        if self.twilio_state is not TwilioState.AWAITING_START:
            self._ignore(Peer.TWILIO, "a second start")
            return
        start = message.get("start")
        if type(start) is not dict:
            self._fail(Peer.TWILIO, "start without a start object", 1008, now)
            return
        stream_sid = start.get("streamSid") or message.get("streamSid")
        if type(stream_sid) is not str or not stream_sid:
            self._fail(Peer.TWILIO, "start without a streamSid", 1008, now)
            return
        media_format = start.get("mediaFormat")
        if media_format is not None and not (
            type(media_format) is dict
            and media_format.get("encoding") == "audio/x-mulaw"
            and media_format.get("sampleRate") == 8000
            and media_format.get("channels") == 1
        ):
            shown = json.dumps(media_format)[:60]
            self._fail(
                Peer.TWILIO, f"unsupported media format {shown}; need mu-law/8000/1", 1003, now
            )
            return
        raw_parameters = start.get("customParameters")
        parameters = (
            {str(k): str(v) for k, v in raw_parameters.items()}
            if type(raw_parameters) is dict
            else {}
        )
        call_sid = start.get("callSid")
        self.call_sid = call_sid if type(call_sid) is str else ""
        admit = self.config.admit
        if admit is not None:
            refusal = admit(self.call_sid, parameters)
            if refusal is not None:
                self._fail(Peer.TWILIO, f"call refused: {refusal}", 1008, now)
                return
        account_sid = start.get("accountSid")
        self.stream_sid = stream_sid
        self.custom_parameters = parameters
        self.twilio_state = TwilioState.STREAMING
        self._encoder = TwilioEncoder(stream_sid)
        self._settings_text = json.dumps(fill_placeholders(self.config.settings, parameters))
        self._actions.append(
            CallStarted(
                stream_sid,
                self.call_sid,
                account_sid if type(account_sid) is str else "",
                parameters,
            )
        )
        self.agent_state = AgentState.CONNECTING
        self._agent_opened_at = now
        self._actions.append(OpenAgent())

    def _on_media(self, message: dict[str, Any], now: float) -> None:
        media = message.get("media")
        if type(media) is not dict:
            self._undecodable += 1
            self._ignore(Peer.TWILIO, "media without a media object")
            return
        track = media.get("track", "inbound")
        if track != "inbound":
            self._ignore(Peer.TWILIO, f"media on track {str(track)[:20]!r}")
            return
        payload = media.get("payload")
        try:
            audio = a2b_base64(payload, strict_mode=True)  # type: ignore[arg-type]
        except (binascii.Error, TypeError, ValueError):
            self._undecodable += 1
            self._ignore(Peer.TWILIO, "media payload that is not base64")
            return
        if audio:
            self._caller_bytes += len(audio)
            self._push_caller_audio(audio, now)

    def _on_mark(self, message: dict[str, Any], now: float) -> None:
        mark = message.get("mark")
        name = mark.get("name") if type(mark) is dict else None
        entry = self._marks.pop(name, None) if type(name) is str else None
        if entry is None:
            self._ignore(Peer.TWILIO, "echo of a mark never sent")
            return
        generation, reply, offset, last = entry
        if generation == self._generation:  # older generations were cleared, not played
            reply.heard = offset
            if last:
                del self._playing[reply.id]
                self._report(reply, Playback.PLAYED)
        if last and self._hangup_at is not None:
            self._hang_up_if_drained(now, deadline=False)

    def _on_dtmf(self, message: dict[str, Any], now: float) -> None:
        dtmf = message.get("dtmf")
        digit = dtmf.get("digit") if type(dtmf) is dict else None
        if type(digit) is not str or digit not in _DTMF_DIGITS:
            self._ignore(Peer.TWILIO, "dtmf without a valid digit")
            return
        self._actions.append(Dtmf(digit))
        text = inject_user_message(self.config.dtmf_template.replace("{digit}", digit))
        if self.agent_state is AgentState.READY:
            self._send_agent_text(text, now)
        elif len(self._held_dtmf) < MAX_HELD_DTMF:
            self._held_dtmf.append(text)
        else:
            self._ignore(Peer.TWILIO, "dtmf beyond what is held before the agent is ready")

    def _on_stop(self, message: dict[str, Any], now: float) -> None:
        self._flush_pending()
        self._end(EndReason.HANGUP, "the caller hung up (stop)", now)

    # ------------------------------------------------------------------ agent events

    def _on_welcome(self, message: dict[str, Any], now: float) -> None:
        request_id = message.get("request_id")
        self._request_id = request_id if type(request_id) is str else ""
        if self.agent_state is AgentState.AWAITING_WELCOME:
            self._send_settings(now)

    def _on_settings_applied(self, message: dict[str, Any], now: float) -> None:
        if self.agent_state is not AgentState.CONFIGURING:
            self._ignore(Peer.AGENT, "SettingsApplied that was not awaited")
            return
        self.agent_state = AgentState.READY
        self._actions.append(AgentReady(self._request_id, len(self._pending)))
        if self._pending:
            self._push_full_chunks(self._pending_since, now)
        for text in self._held_dtmf:
            self._send_agent_text(text, now)
        self._held_dtmf.clear()

    def _on_user_started_speaking(self, message: dict[str, Any], now: float) -> None:
        """Barge-in: always clear, whatever we believe is playing (reference §2.3)."""
        assert self._encoder is not None  # the agent leg exists only after start
        self._actions.append(ClearTwilio(self._encoder.clear))
        for reply in self._playing.values():
            self._report(reply, Playback.CLEARED)
        self._playing.clear()
        self._open_reply = None
        self._generation += 1
        self._barge_ins += 1
        self._actions.append(BargeIn(self._generation))

    def _on_agent_audio_done(self, message: dict[str, Any], now: float) -> None:
        if self.agent_state is not AgentState.READY:
            self._ignore(Peer.AGENT, "AgentAudioDone before SettingsApplied")
            return
        reply = self._open_reply or self._start_reply()
        self._open_reply = None
        self._send_mark(reply, last=True)

    def _on_conversation_text(self, message: dict[str, Any], now: float) -> None:
        self._actions.append(Transcript(_text(message, "role"), _text(message, "content")))

    def _on_agent_thinking(self, message: dict[str, Any], now: float) -> None:
        self._actions.append(AgentThinking(_text(message, "content")))

    def _on_agent_started_speaking(self, message: dict[str, Any], now: float) -> None:
        self._actions.append(
            AgentStartedSpeaking(
                _number(message, "total_latency"),
                _number(message, "tts_latency"),
                _number(message, "ttt_latency"),
            )
        )

    def _on_latency_report(self, message: dict[str, Any], now: float) -> None:
        latencies = {k: float(v) for k, v in message.items() if _is_number(v)}
        self._actions.append(LatencyReport(latencies))

    def _on_history(self, message: dict[str, Any], now: float) -> None:
        self._actions.append(History(message))

    def _on_warning(self, message: dict[str, Any], now: float) -> None:
        self._actions.append(AgentWarning(_text(message, "code"), _text(message, "description")))

    def _on_error(self, message: dict[str, Any], now: float) -> None:
        code = _text(message, "code") or "UNKNOWN"
        description = _text(message, "description") or _text(message, "message")
        self._end(EndReason.AGENT_ERROR, f"agent error {code}: {description}", now)

    def _on_function_call_request(self, message: dict[str, Any], now: float) -> None:
        if self.agent_state is not AgentState.READY:  # an answer must not precede Settings
            self._ignore(Peer.AGENT, "FunctionCallRequest before SettingsApplied")
            return
        functions = message.get("functions")
        if type(functions) is not list:
            self._ignore(Peer.AGENT, "FunctionCallRequest without functions")
            return
        for function in functions:
            call_id = function.get("id") if type(function) is dict else None
            name = function.get("name") if type(function) is dict else None
            if type(call_id) is not str or type(name) is not str:
                self._ignore(Peer.AGENT, "function call without an id and a name")
                continue
            assert type(function) is dict
            if function.get("client_side") is not True:
                self._actions.append(AgentNotice("FunctionCallRequest", function))
                continue
            arguments = _parse_arguments(function.get("arguments"), self._loads)
            if arguments is None:
                error = json.dumps({"error": "arguments must be a JSON object"})
                self._send_agent_text(function_call_response(call_id, name, error), now)
            elif name == self.config.end_call_tool:
                self._actions.append(AgentNotice("FunctionCallRequest", function))
                content = json.dumps({"ok": True, "result": "The call ends after your goodbye."})
                self._send_agent_text(function_call_response(call_id, name, content), now)
                if self._hangup_requested is None:
                    self._hangup_requested = now
                    self._hangup_at = now + self.config.hangup_grace
            else:
                self._tool_calls[call_id] = name
                self._actions.append(RunTool(call_id, name, arguments))

    def _on_function_call_cancelled(self, message: dict[str, Any], now: float) -> None:
        functions = message.get("functions")
        for function in functions if type(functions) is list else ():
            call_id = function.get("id") if type(function) is dict else None
            if type(call_id) is str and call_id in self._tool_calls:
                del self._tool_calls[call_id]
                self._withdrawn_tools.add(call_id)
                self._actions.append(CancelTool(call_id))

    # ------------------------------------------------------------------ caller audio path

    def _push_caller_audio(self, audio: bytes, now: float) -> None:
        pending = self._pending
        if self.agent_state is AgentState.READY:
            if not pending:
                size = len(audio)
                if size == self._chunk:  # the steady state: one frame is one chunk
                    self._agent_sent += size
                    self._agent_tx = now
                    self._actions.append(SendAgentAudio(audio, now))
                    return
                self._pending_since = now
            pending += audio
            if len(pending) >= self._chunk:
                self._push_full_chunks(self._pending_since, now)
            return
        # Pre-roll: hold audio until SettingsApplied, dropping the oldest beyond the cap.
        if not pending:
            self._pending_since = now
        pending += audio
        excess = len(pending) - self._preroll_cap
        if excess > 0:
            del pending[:excess]
            self._dropped += excess

    def _push_full_chunks(self, since: float, now: float) -> None:
        """Send every whole chunk held in the buffer; keep the remainder for its deadline."""
        pending = self._pending
        chunk = self._chunk
        full = len(pending) - len(pending) % chunk
        if full:
            append = self._actions.append
            with memoryview(pending) as view:
                for start in range(0, full, chunk):
                    append(SendAgentAudio(bytes(view[start : start + chunk]), since))
            del pending[:full]
            self._agent_sent += full
            self._agent_tx = now
        # The remainder (if any) came with the newest frame, so its clock starts now.
        self._pending_since = now

    def _flush_pending(self) -> None:
        """Send a partial chunk: its deadline passed, or the caller is gone."""
        if self._pending and self.agent_state is AgentState.READY:
            self._agent_sent += len(self._pending)
            self._actions.append(SendAgentAudio(bytes(self._pending), self._pending_since))
            self._pending.clear()

    # ------------------------------------------------------------------ agent audio path

    def _start_reply(self) -> _Reply:
        self._reply_count += 1
        reply = _Reply(self._reply_count, self._mark_every)
        self._playing[reply.id] = reply
        return reply

    def _send_mark(self, reply: _Reply, *, last: bool) -> None:
        if not last and len(self._marks) >= MAX_PENDING_MARKS:
            return  # progress marks are a nicety; never let them grow without bound
        assert self._encoder is not None
        name = f"{self._generation}.{reply.id}.{'end' if last else reply.sent}"
        self._marks[name] = (self._generation, reply, reply.sent, last)
        self._actions.append(SendTwilioMark(self._encoder.mark(name)))

    def _report(self, reply: _Reply, outcome: Playback) -> None:
        heard = reply.sent if outcome is Playback.PLAYED else reply.heard
        self.last_reply = ReplyPlayback(reply.id, outcome, reply.sent, heard)
        self._actions.append(self.last_reply)

    def _hang_up_if_drained(self, now: float, *, deadline: bool) -> None:
        """Finish an ``end_call`` once the goodbye has played, or when waiting is pointless.

        Called on each reply's last mark echo and when ``_hangup_at`` passes. The first
        deadline (``hangup_grace``) gives the agent time to start its goodbye; if audio is
        still playing then, wait for its mark, but never past ``hangup_timeout``.
        """
        assert self._hangup_at is not None and self._hangup_requested is not None
        if not self._playing and self._open_reply is None:
            self._end(EndReason.TOOL, "end_call: goodbye played", now)
        elif deadline:
            final = self._hangup_requested + self.config.hangup_timeout
            if now >= final:
                self._end(EndReason.TOOL, "end_call: goodbye still playing at hangup_timeout", now)
            else:
                self._hangup_at = final

    # ------------------------------------------------------------------ plumbing

    def _send_settings(self, now: float) -> None:
        self.agent_state = AgentState.CONFIGURING
        self._send_agent_text(self._settings_text, now)

    def _send_agent_text(self, text: str, now: float) -> None:
        self._agent_tx = now
        self._actions.append(SendAgentText(text))

    def _check_agent_open(self, method: str) -> None:
        if self.agent_state not in _AGENT_OPEN:
            raise LocalProtocolError(f"{method}() in agent state {self.agent_state.value}")

    def _decode(self, text: str, peer: Peer, who: str, now: float) -> dict[str, Any] | None:
        """A peer's message as a JSON object; anything else fails the call (close 1007)."""
        try:
            message = self._loads(text)
        except (ValueError, TypeError, RecursionError):
            self._fail(peer, f"{who} sent a message that is not JSON", 1007, now)
            return None
        if type(message) is not dict:
            self._fail(peer, f"{who} sent JSON that is not an object", 1007, now)
            return None
        return message

    def _ignore(self, peer: Peer, detail: str) -> None:
        """Tolerate a peer's oddity: count it, and report each kind once per call."""
        self._ignored += 1
        if detail not in self._noticed and len(self._noticed) < 64:
            self._noticed.add(detail)
            self._actions.append(PeerIgnored(peer.value, detail))

    def _fail(self, peer: Peer, message: str, close_code: int, now: float) -> None:
        self.error = RemoteProtocolError(peer, message, close_code)
        self._end(EndReason.PROTOCOL_ERROR, message, now)

    def _end(self, reason: EndReason, detail: str, now: float) -> None:
        """End the call exactly once: withdraw tools, report, then close both legs."""
        for call_id in self._tool_calls:
            self._withdrawn_tools.add(call_id)
            self._actions.append(CancelTool(call_id))
        self._tool_calls.clear()
        self.ended = CallEnded(reason, detail, self.stats())
        self._ended_at = now
        self._actions.append(self.ended)
        text = _close_reason(f"{reason.value}: {detail}")
        error = self.error
        if self.twilio_state is not TwilioState.CLOSED:
            code = error.close_code if error and error.peer is Peer.TWILIO else 1000
            self._actions.append(CloseTwilio(code, text))
        if self.agent_state is AgentState.IDLE:
            self.agent_state = AgentState.CLOSED
        elif self.agent_state is not AgentState.CLOSED:
            code = error.close_code if error and error.peer is Peer.AGENT else 1000
            self._actions.append(CloseAgent(code, text))

    def _abort_open_legs(self) -> None:
        text = _close_reason("close handshake timed out")
        if self.twilio_state is not TwilioState.CLOSED:
            self.twilio_state = TwilioState.CLOSED
            self._actions.append(CloseTwilio(1006, text, abort=True))
        if self.agent_state is not AgentState.CLOSED:
            self.agent_state = AgentState.CLOSED
            self._actions.append(CloseAgent(1006, text, abort=True))


def _text(message: Mapping[str, Any], key: str) -> str:
    value = message.get(key)
    return value if type(value) is str else ""


def _is_number(value: object) -> bool:
    return type(value) is int or type(value) is float


def _number(message: Mapping[str, Any], key: str) -> float | None:
    value = message.get(key)
    return float(value) if type(value) is int or type(value) is float else None


def _parse_arguments(raw: object, loads: Callable[[str], Any]) -> Mapping[str, Any] | None:
    """Deepgram sends arguments as a JSON string; accept an object too, reject the rest."""
    if raw is None or raw == "":
        return {}
    if type(raw) is dict:
        return raw
    if type(raw) is not str:
        return None
    try:
        value = loads(raw)
    except (ValueError, TypeError, RecursionError):
        return None
    return value if type(value) is dict else None


def _close_reason(text: str) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= MAX_CLOSE_REASON_BYTES:
        return text
    return encoded[:MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore")
