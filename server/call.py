"""CallDriver: runs one call by executing the actions of a :class:`sansio.CallBridge`.

It owns the core, the two legs (:class:`~server.twilio_leg.TwilioLeg` on the accepted TCP
transport, :class:`~server.agent_leg.AgentLeg` to the agent) and a single timer. It holds no
call logic: the legs report to it through their narrow event interfaces, inputs go to the core
with ``now=loop.time()``, and :meth:`CallDriver._pump` executes what comes out
(:meth:`CallDriver._execute`), then writes all Twilio output of the pump with one write. What
it needs from the server comes in a :class:`CallContext` and an ``on_finished`` callback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from sansio import (
    Action,
    AgentNotice,
    AgentReady,
    AgentReconnected,
    AgentReconnecting,
    AgentWarning,
    BargeIn,
    CallBridge,
    CallEnded,
    CallStarted,
    CancelTool,
    ClearTwilio,
    CloseAgent,
    CloseTwilio,
    Dtmf,
    EndReason,
    FallbackCall,
    KeypadEntry,
    Notice,
    OpenAgent,
    PeerIgnored,
    ReplyPlayback,
    RunTool,
    SendAgentAudio,
    SendAgentText,
    SendTwilioMark,
    SendTwilioMedia,
    SendTwilioText,
    Transcript,
    TransferCall,
    TransferCancelled,
)
from server import handoff
from server.agent_leg import AgentLeg
from server.call_handle import CallHandle
from server.coalesce import Coalescer
from server.metrics import Metrics
from server.options import ServerOptions
from server.recording import AudioRecorder, recording_path
from server.records.recorder import CallRecorder
from server.records.store import RecordStore
from server.tools import ToolRegistry
from server.twilio_leg import StreamFactory, TwilioLeg, TwilioLink, TwilioStream
from server.twilio_rest import TwilioRestClient, TwilioRestError
from server.twiml import twiml_dial
from server.ws import WsPeer

log = logging.getLogger("server.call")

RECORDS_BEFORE_TRANSFER = 2.0  # s a transfer waits for the call's turns to be written
_AGENT_ERRORS = frozenset({EndReason.AGENT_ERROR, EndReason.AGENT_UNREACHABLE})
_PEER_FAULTS = frozenset({1002, 1003, 1007, 1009})  # close codes that blame the peer's frames


@dataclass(frozen=True, slots=True)
class CallContext:
    """What every call of one server shares (the agent URL is known once the server started)."""

    loop: asyncio.AbstractEventLoop
    options: ServerOptions
    metrics: Metrics
    tools: ToolRegistry
    agent_url: str
    records: RecordStore | None
    recordings: AudioRecorder | None
    twilio: TwilioRestClient | None = None
    live: Callable[[CallHandle, bool], None] | None = None  # a call started (True) or finished
    coalescer: Coalescer | None = None  # --coalesce-ms: every pump reports to it


class CallDriver:
    def __init__(
        self,
        context: CallContext,
        transport: asyncio.Transport,
        trailing_data: bytes,
        peer: str,
        on_finished: Callable[[CallDriver], None],
        stream: StreamFactory | None = None,
    ) -> None:
        """``stream`` builds the Twilio leg instead of a WebSocket over ``transport`` (the ASGI
        embedding: :mod:`server.asgi_leg`)."""
        self.context = context
        self.loop = context.loop
        self.metrics = context.metrics
        self.options = context.options
        self._on_finished = on_finished
        self.ws: TwilioStream
        self.twilio: TwilioLink
        if stream is None:
            self.ws = WsPeer(trailing_data, self.options.max_message_bytes)
            self.twilio = TwilioLeg(transport, self.ws, self, peer)
        else:
            self.ws, self.twilio = stream(self)
        self.peer = peer
        now = self.loop.time()
        self.core = CallBridge(self.options.bridge, now=now)
        self.started_at = now
        self.agent: AgentLeg | None = None
        self.call_sid = ""
        self.stream_sid = ""
        self.account_sid = ""
        self.handle = CallHandle(self)
        self._turns: deque[tuple[str, str]] = deque(maxlen=handoff.MAX_TURNS)  # for a transfer
        self._redirects: set[asyncio.Task[None]] = set()
        self.finished = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._pumping = False
        self._coalescer = context.coalescer
        self._write_cap = self.options.max_write_buffer
        self._tools: dict[str, asyncio.Task[None]] = {}
        self._debug = log.isEnabledFor(logging.DEBUG)
        self._private = not self.options.log_transcripts  # logs never carry what was said
        self._redact = self.options.redact
        self._raw = self.options.raw_logs  # whole notices in DEBUG lines
        self._observe_latency = self.metrics.added_latency.observe
        self._store = context.records
        directory = self.options.record_audio
        self.recorder = (
            CallRecorder(
                clock_offset=time.time() - now,
                redact=self._redact,
                recording=partial(recording_path, directory) if directory else None,
                on_latency=self.metrics.observe_turn,
            )
            if self._store is not None
            else None
        )
        recordings = context.recordings
        self.audio = recordings.call() if recordings is not None else None
        self._dispatch: dict[type[Action], Callable[[Any], None]] = {
            SendAgentAudio: self._send_agent_audio,
            SendAgentText: self._send_agent_text,
            SendTwilioText: self._send_twilio,
            SendTwilioMedia: self._send_twilio,
            SendTwilioMark: self._send_twilio,
            ClearTwilio: self._send_twilio,
            OpenAgent: self._open_agent,
            CloseTwilio: self._close_twilio,
            CloseAgent: self._close_agent,
            RunTool: self._run_tool,
            CancelTool: self._cancel_tool,
            CallStarted: self._on_call_started,
            CallEnded: self._on_call_ended,
            Transcript: self._on_turn,
            BargeIn: self._on_barge_in,
            AgentWarning: self._on_agent_warning,
            PeerIgnored: self._on_peer_ignored,
            AgentNotice: self._on_agent_notice,
            AgentReady: self._on_agent_ready,
            AgentReconnecting: self._on_agent_reconnecting,
            AgentReconnected: self._on_agent_ready,
            ReplyPlayback: self._on_debug_notice,
            Dtmf: self._on_dtmf,
            TransferCall: self._transfer,
            FallbackCall: self._fallback,
            TransferCancelled: self._on_transfer_cancelled,
            KeypadEntry: self._on_keypad_entry,
        }

    # ------------------------------------------------------------------ Twilio side

    def start(self) -> None:
        """Process what arrived behind the upgrade request, and arm the first timer."""
        self.twilio_messages(self.ws.feed(b""))

    def twilio_lost(self) -> None:
        """The TCP connection is gone."""
        core = self.core
        if core.accepts_twilio_input:
            core.twilio_closed(_close_code(self.ws.close_code), self.loop.time())
        self._pump()

    def twilio_messages(self, messages: list[str | bytes]) -> None:
        """Everything one read gave: all messages first, then one pump."""
        core = self.core
        ws = self.ws
        if core.accepts_twilio_input:
            now = self.loop.time()
            for message in messages:
                if type(message) is str:
                    core.twilio_text(message, now)
                else:
                    core.twilio_bytes(message, now)  # type: ignore[arg-type]
            if ws.error is not None:
                code, why = ws.error
                core.end(EndReason.PROTOCOL_ERROR, f"Twilio WebSocket: {why} (closed {code})", now)
            if ws.remote_closed:
                core.twilio_closed(_close_code(ws.close_code), now)
            recorder = self.recorder
            if recorder is not None and recorder.awaiting_mark is not None:
                awaited = recorder.awaiting_mark
                for message in messages:
                    if type(message) is str and awaited in message:
                        recorder.mark_echoed(message, now)
        self._pump()

    # ------------------------------------------------------------------ agent side

    def agent_connected(self) -> None:
        if self.core.awaits_agent_connection:
            self.core.agent_connected(self.loop.time())
            self._pump()

    def agent_message(self, message: str | bytes) -> None:
        core = self.core
        if not core.accepts_agent_input:
            return
        if type(message) is str:
            core.agent_text(message, self.loop.time())
        else:
            self.metrics.agent_audio_bytes += len(message)
            core.agent_audio(message, self.loop.time())  # type: ignore[arg-type]
        self._pump()

    def agent_closed(
        self, code: int | None, reason: str, failure: tuple[int, str] | None = None
    ) -> None:
        """The agent leg is gone; ``failure`` is the close the client itself sent, when the
        agent broke the WebSocket protocol (a message over the size limit, a bad frame)."""
        core = self.core
        now = self.loop.time()
        if failure is not None:
            failed_code, why = failure
            blame = failed_code in _PEER_FAULTS
            kind = EndReason.PROTOCOL_ERROR if blame else EndReason.AGENT_ERROR
            core.end(kind, f"agent WebSocket: {why} (closed {failed_code})", now)
        core.agent_closed(code, now, reason)
        self._pump()

    # ------------------------------------------------------------------ server decisions

    def shutdown(self, detail: str = "the server is shutting down") -> None:
        self.core.end(EndReason.SHUTDOWN, detail, self.loop.time())
        self._pump()

    def abort(self) -> None:
        """Drop both legs at once (the end of a shutdown that waited long enough)."""
        self.twilio.abort()
        if self.agent is not None:
            self.agent.abort()

    def pump(self) -> None:
        """Carry out what an outside input (a tool's or the control API's) asked of the core."""
        self._pump()

    # ------------------------------------------------------------------ the pump

    def _pump(self) -> None:
        if self._pumping:  # a report from inside an action: the loop below picks it up
            return
        self._pumping = True
        if self._coalescer is not None:
            self._coalescer.served()
        core = self.core
        ws = self.ws
        recorder = self.recorder
        audio = self.audio
        try:
            while True:
                actions = core.actions()
                if actions:
                    if recorder is not None:
                        recorder.feed(actions, self.loop.time())
                    if audio is not None:  # queue puts only: the WAV is written by another thread
                        audio.feed(actions, self.loop.time())
                    self._execute(actions)
                elif not ws.out:
                    break
                if ws.out:  # pongs and close replies from the input, then what actions sent
                    self._flush_twilio()
            if ws.remote_closed or ws.done:
                self.twilio.close()  # the close handshake is over (or broken): end the TCP
            self._arm_timer()
            if recorder is not None and recorder.dirty and self._store is not None:
                self._store.submit(recorder.take())  # a queue put: written by another thread
            if core.finished and not self.finished:
                self._finish()
        finally:
            self._pumping = False

    def _execute(self, actions: list[Action]) -> None:
        """The action dispatch: run each action's handler, chosen by the action's class."""
        dispatch = self._dispatch
        for action in actions:
            kind = type(action)
            handler = dispatch.get(kind)
            if handler is None:
                handler = dispatch[kind] = self._handler_for(kind)
            handler(action)

    def _flush_twilio(self) -> None:
        """One write of the pump's Twilio output. The write cap may end the call here; the
        pump loop then carries out the actions that follow from that, in the same pump."""
        unsent = self.twilio.flush()
        if unsent > self._write_cap and self.core.ended is None:
            self.core.end(
                EndReason.TIMEOUT, f"caller not reading: {unsent} bytes unsent", self.loop.time()
            )

    def _arm_timer(self) -> None:
        at = self.core.next_deadline()
        timer_at = self._timer_at
        if at == timer_at:
            return
        if at is None or timer_at is None or at < timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(at, self._on_timer) if at is not None else None
            self._timer_at = at
        # A later deadline keeps the armed timer: when it fires, the core does what is due
        # (maybe nothing) and the timer is re-armed then. The core moves its deadline with
        # every frame (idle and keepalive clocks), so re-arming on each change would churn.

    def _on_timer(self) -> None:
        timer_at = self._timer_at if self._timer_at is not None else 0.0
        now = max(timer_at, self.loop.time())  # asyncio may fire a little early
        self._timer = None
        self._timer_at = None
        try:
            self.core.handle_timeout(now)
            self._pump()
        except Exception:  # a driver bug must cost one call, never the server
            log.exception("error in call %s; dropping it", self.call_sid or self.peer)
            self._fault_fallback()

    def _finish(self) -> None:
        self.finished = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = None
        for task in self._tools.values():
            task.cancel()
        self.twilio.close()
        if self.context.live is not None and self.stream_sid:
            self.context.live(self.handle, False)
        self._on_finished(self)

    # ------------------------------------------------------------------ commands

    def _send_agent_audio(self, action: SendAgentAudio) -> None:
        agent = self.agent
        if agent is None:  # pragma: no cover - the core sends audio only to an open agent
            return
        audio = action.audio
        agent.send(audio)  # written at once: the end of this frame's path from Twilio
        self.metrics.caller_audio_bytes += len(audio)
        self._observe_latency(self.loop.time() - action.since)
        if agent.buffered > self._write_cap:
            self._agent_not_reading(agent)

    def _send_agent_text(self, action: SendAgentText) -> None:
        agent = self.agent
        if agent is None:  # pragma: no cover
            return
        agent.send(action.text)
        if agent.buffered > self._write_cap:
            self._agent_not_reading(agent)

    def _agent_not_reading(self, agent: AgentLeg) -> None:
        if self.core.ended is None:
            self.core.end(
                EndReason.AGENT_ERROR,
                f"agent not reading: {agent.buffered} bytes unsent",
                self.loop.time(),
            )

    def _send_twilio(self, action: SendTwilioText) -> None:
        self.ws.send_text(action.text)

    def _open_agent(self, action: OpenAgent) -> None:
        options = self.options
        self.agent = AgentLeg(
            self,
            self.context.agent_url,
            options.api_key,
            connect_timeout=options.bridge.agent_connect_timeout + 1.0,
            max_message_bytes=options.max_agent_message_bytes,
            close_timeout=options.bridge.close_timeout,
        )

    def _close_twilio(self, action: CloseTwilio) -> None:
        if action.abort:
            self.twilio.abort()
        else:
            self.ws.close(action.code, action.reason)

    def _close_agent(self, action: CloseAgent) -> None:
        if self.agent is not None:
            self.agent.close(action.code, action.reason, action.abort)

    def _run_tool(self, action: RunTool) -> None:
        self.metrics.tool_calls += 1
        log.info("tool call callSid=%s tool=%s", self.call_sid, action.name)
        self._tools[action.call_id] = self.loop.create_task(self._tool(action))

    async def _tool(self, action: RunTool) -> None:
        try:
            content, ok = await self.context.tools.run(action.name, action.arguments, self.handle)
        finally:
            self._tools.pop(action.call_id, None)
        if not ok:
            self.metrics.tool_errors += 1
        if self.recorder is not None:
            self.recorder.tool_result(action.call_id, content, ok)
        # A result the core no longer wants (cancelled, or the call ended) is dropped by it.
        self.core.tool_result(action.call_id, content, self.loop.time())
        self._pump()

    def _cancel_tool(self, action: CancelTool) -> None:
        task = self._tools.pop(action.call_id, None)
        if task is not None:
            task.cancel()

    # ------------------------------------------------------------------ notices

    def _on_call_started(self, notice: CallStarted) -> None:
        self.call_sid = notice.call_sid
        self.account_sid = notice.account_sid
        self.stream_sid = notice.stream_sid
        self.metrics.calls_started += 1
        if self.context.live is not None:
            self.context.live(self.handle, True)
        log.info(
            "call started callSid=%s streamSid=%s peer=%s",
            notice.call_sid or "-",
            notice.stream_sid,
            self.peer or "-",
        )
        if not self._private:
            params = notice.custom_parameters
            log.info(
                "call parties callSid=%s from=%s to=%s",
                notice.call_sid or "-",
                self._redact("number", params.get("From", "")) or "-",
                self._redact("number", params.get("To", "")) or "-",
            )

    def _on_call_ended(self, notice: CallEnded) -> None:
        reason = notice.reason
        stats = notice.stats
        metrics = self.metrics
        metrics.preroll_dropped_bytes += stats.preroll_dropped_bytes
        metrics.undecodable_media += stats.undecodable_media
        metrics.ignored_messages += stats.ignored_messages
        level = logging.INFO if reason is not EndReason.PROTOCOL_ERROR else logging.WARNING
        if not self.stream_sid:  # no valid start: the stream never became a call
            metrics.call_rejected("no_start")
            log.log(
                level,
                "stream ended before a valid start peer=%s reason=%s detail=%r ignored=%d",
                self.peer or "-",
                reason.value,
                notice.detail,
                stats.ignored_messages,
            )
            return
        metrics.call_ended(reason.value)
        if reason in _AGENT_ERRORS:
            metrics.agent_errors += 1
        duration = self.loop.time() - self.started_at
        log.log(
            level,
            "call ended callSid=%s streamSid=%s duration=%.1fs reason=%s detail=%r"
            " caller_bytes=%d agent_bytes=%d barge_ins=%d replies=%d"
            " preroll_dropped=%d undecodable=%d ignored=%d",
            self.call_sid or "-",
            self.stream_sid or "-",
            duration,
            reason.value,
            notice.detail,
            stats.caller_audio_bytes,
            stats.agent_audio_bytes_received,
            stats.barge_ins,
            stats.replies,
            stats.preroll_dropped_bytes,
            stats.undecodable_media,
            stats.ignored_messages,
        )

    def _on_turn(self, notice: Transcript) -> None:
        """A line of the conversation: kept (bounded) for a transfer's resume, then logged."""
        self._turns.append((notice.role, notice.content))
        self._on_transcript(notice)

    def _on_agent_ready(self, notice: AgentReady | AgentReconnected) -> None:
        """Deepgram support asks for the session's request_id: one INFO line per session."""
        again = f" reconnect={notice.attempt}" if isinstance(notice, AgentReconnected) else ""
        log.info(
            "agent session callSid=%s request_id=%s%s",
            self.call_sid or "-",
            notice.request_id or "-",
            again,
        )

    def _on_agent_reconnecting(self, notice: AgentReconnecting) -> None:
        self.metrics.agent_reconnects += 1
        log.warning(
            "agent leg failed, reconnecting callSid=%s attempt=%d reason=%s detail=%r",
            self.call_sid or "-",
            notice.attempt,
            notice.reason.value,
            notice.detail,
        )

    def _on_transcript(self, notice: Transcript) -> None:
        if self._private:
            if self._debug:
                log.debug(
                    "transcript callSid=%s %s (%d chars)",
                    self.call_sid,
                    notice.role,
                    len(notice.content),
                )
            return
        text = self._redact("transcript", notice.content)
        log.info("transcript callSid=%s %s: %s", self.call_sid or "-", notice.role, text)

    def _on_dtmf(self, notice: Dtmf) -> None:
        if self._debug:
            digit = "(private)" if self._private else notice.digit
            log.debug("keypad callSid=%s digit=%s", self.call_sid, digit)

    def _on_barge_in(self, notice: BargeIn) -> None:
        self.metrics.barge_ins += 1
        if self._debug:
            log.debug("barge-in callSid=%s generation=%d", self.call_sid, notice.generation)

    def _on_agent_warning(self, notice: AgentWarning) -> None:
        self.metrics.agent_warnings += 1
        log.warning(
            "agent warning callSid=%s code=%s: %s", self.call_sid, notice.code, notice.description
        )

    def _on_peer_ignored(self, notice: PeerIgnored) -> None:
        log.info("ignored from %s callSid=%s: %s", notice.peer, self.call_sid or "-", notice.detail)

    def _on_agent_notice(self, notice: AgentNotice) -> None:
        if notice.type == "FunctionCallRequest":  # end_call, or a function the agent runs itself
            side = "client" if notice.message.get("client_side") is True else "agent"
            log.info(
                "function call callSid=%s name=%s (%s side)",
                self.call_sid or "-",
                notice.message.get("name"),
                side,
            )
        elif self._debug:
            log.debug("callSid=%s %s", self.call_sid, self._shown(notice))

    def _on_debug_notice(self, notice: Notice) -> None:
        if self._debug:
            log.debug("callSid=%s %r", self.call_sid, notice)

    # ------------------------------------------------------------------ call control

    def _transfer(self, action: TransferCall) -> None:
        """Update the call with a ``<Dial>`` whose signed action URL can resume the call."""
        options = self.options
        public, key = options.public_url, options.handoff_key
        action_url = None
        if public is not None and key:
            # With a records store the dial action reads the turns from it; else they ride along.
            history = None if self._store is not None else handoff.bounded_history(self._turns)
            base = public.request_url("")
            action_url = handoff.action_url(base, key, self.call_sid, action.target, history)
        twiml = twiml_dial(action.number, action_url, options.dial_timeout)
        # The model's reason may repeat what the caller said: private like the transcript.
        reason = f"({len(action.reason)} chars)" if self._private else repr(action.reason[:80])
        log.info(
            "transfer callSid=%s target=%s reason=%s", self.call_sid or "-", action.target, reason
        )
        self._redirect(twiml, "transfer", self.metrics, self._store if action_url else None)

    def _fallback(self, action: FallbackCall) -> None:
        """The agent cannot go on: hand the caller to the fallback TwiML instead of hanging up."""
        twiml = self.options.fallback_twiml
        assert twiml is not None  # the core asks for it only when one is configured
        self.metrics.fallbacks += 1
        log.warning(
            "fallback callSid=%s reason=%s detail=%r",
            self.call_sid or "-",
            action.reason,
            action.detail,
        )
        self._redirect(twiml, "fallback", None)

    def _redirect(
        self, twiml: str, what: str, counted: Metrics | None, store: RecordStore | None = None
    ) -> None:
        task = self.loop.create_task(self._update_call(twiml, what, counted, store))
        self._redirects.add(task)
        task.add_done_callback(self._redirects.discard)

    async def _update_call(
        self, twiml: str, what: str, counted: Metrics | None, store: RecordStore | None
    ) -> None:
        """``store``: the dial action will read the turns from it, so they are written first
        (bounded: a slow store costs the caller a late history, never the transfer)."""
        rest = self.context.twilio
        ok, detail = False, "no Twilio REST credentials"
        if store is not None and not await store.written(RECORDS_BEFORE_TRANSFER):
            log.warning("transfer callSid=%s: the records are not written yet", self.call_sid)
        if rest is not None and self.call_sid:
            try:
                await rest.update_call(
                    self.call_sid, account_sid=self.account_sid or None, twiml=twiml
                )
                ok, detail = True, ""
            except (TwilioRestError, ValueError) as exc:
                detail = str(exc)
        if ok and counted is not None:
            counted.transfers += 1
        if not ok:
            self.metrics.redirect_failures += 1
            log.warning("%s failed callSid=%s: %s", what, self.call_sid or "-", detail)
        self.core.redirected(ok, detail, self.loop.time())
        self._pump()

    def _fault_fallback(self) -> None:
        """A driver fault: redirect the caller to the fallback (bounded), then drop the legs."""
        rest, twiml = self.context.twilio, self.options.fallback_twiml
        if rest is None or twiml is None or not self.call_sid or self.core.ended is not None:
            self.abort()
            return
        self.metrics.fallbacks += 1

        async def redirect_then_abort() -> None:
            try:
                await asyncio.wait_for(
                    rest.update_call(
                        self.call_sid, account_sid=self.account_sid or None, twiml=twiml
                    ),
                    2.0,
                )
            except (TwilioRestError, ValueError, TimeoutError) as exc:
                log.warning("fallback failed callSid=%s: %s", self.call_sid, exc)
            finally:
                self.abort()

        task = self.loop.create_task(redirect_then_abort())
        self._redirects.add(task)
        task.add_done_callback(self._redirects.discard)

    def _on_transfer_cancelled(self, notice: TransferCancelled) -> None:
        log.info(
            "transfer cancelled callSid=%s target=%s: %s",
            self.call_sid or "-",
            notice.target,
            notice.why,
        )

    def _on_keypad_entry(self, notice: KeypadEntry) -> None:
        log.info("keypad entry callSid=%s digits=%d", self.call_sid or "-", notice.digits)

    def _handler_for(self, kind: type[Action]) -> Callable[[Any], None]:
        """The handler of the nearest registered base class: a subclass of an action is run
        as that action (the result is cached in the dispatch table)."""
        for base in kind.__mro__[1:]:
            handler = self._dispatch.get(base)
            if handler is not None:
                return handler
        return self._unknown_action

    def _shown(self, notice: Notice) -> str:
        """A notice for a DEBUG line: whole with --log-transcripts (and no --redact), else only
        its kind (History, AgentThinking and agent messages carry what was said)."""
        if self._raw:
            return repr(notice)
        kind = type(notice).__name__
        return f"{kind}({notice.type!r})" if isinstance(notice, AgentNotice) else kind

    def _unknown_action(self, action: Action) -> None:
        if isinstance(action, Notice):
            if self._debug:
                log.debug("callSid=%s %s", self.call_sid, self._shown(action))
            return
        # A command this driver does not know would leave the call half-executed: end it.
        log.error("unknown action %r; ending the call", type(action).__name__)
        self.core.end(EndReason.PROTOCOL_ERROR, "driver bug: unknown action", self.loop.time())


def _close_code(code: int | None) -> int | None:
    """1005/1006 are placeholders for "no status" and "no close frame"."""
    return None if code in (None, 1005, 1006) else code
