"""CallRecorder: builds a :class:`CallRecord` from what the call driver sees. No I/O, no clock.

The driver hands it every batch of the core's actions (:meth:`feed`) with the loop time, the
echo of an awaited mark (:meth:`mark_echoed`, when :attr:`awaiting_mark` occurs in a Twilio
message) and tool results (:meth:`tool_result`). :meth:`take` returns what changed since the
last call as :class:`Write` items for the store, copies that are safe to hand to a thread.

Replies are followed as the core numbers them: a reply starts with the first agent audio
after the previous one ended, and its number appears in every mark name (``gen.reply.offset``
or ``gen.reply.end``). A reply is bound to the agent's ``ConversationText`` line that
precedes it (or follows it, when the text comes after the audio).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from sansio import (
    Action,
    AgentNotice,
    BargeIn,
    CallEnded,
    CallStarted,
    Dtmf,
    Playback,
    ReplyPlayback,
    RunTool,
    SendTwilioMark,
    SendTwilioMedia,
    Transcript,
)
from server.records.model import CLEARED, PARTLY_HEARD, PLAYED, CallRecord, Event, Turn
from server.records.redact import Redactor, keep


@dataclass(frozen=True, slots=True)
class Write:
    """One change for the store: ``start`` (the call row), ``turn``, ``event``, ``finish``, or
    ``outbound`` (columns of an outbound call's row)."""

    op: str
    call_sid: str
    record: CallRecord | None = None
    turn: Turn | None = None
    event: Event | None = None
    resumed: bool = False  # a ``start`` that continues its call after a failed transfer
    outbound: dict[str, Any] | None = None


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)


class CallRecorder:
    def __init__(
        self,
        *,
        clock_offset: float = 0.0,
        redact: Redactor = keep,
        recording: Callable[[str], str] | None = None,
        on_latency: Callable[[str, float], None] | None = None,
    ) -> None:
        """``clock_offset`` turns the driver's monotonic ``now`` into epoch seconds;
        ``recording`` names a call's WAV from its CallSid (with ``--record-audio``);
        ``on_latency(stage, seconds)`` hears each turn's latency at the caller's ear as it is
        measured (``first_audio``, ``first_mark``: the server's histogram)."""
        self._offset = clock_offset
        self._on_latency = on_latency
        self._recording = recording
        self._redact = redact
        self.record: CallRecord | None = None
        self.awaiting_mark: str | None = None
        """The quoted name of the mark whose echo ends a latency measurement, if any."""
        self._finish_pending = False
        self._changed_turns: dict[int, Turn] = {}
        self._changed_events: dict[int, Event] = {}
        self._writes: list[Write] = []
        self._reply_count = 0
        self._open_reply: int | None = None
        self._turn_of_reply: dict[int, Turn] = {}
        self._unbound: list[Turn] = []  # agent lines whose audio has not started yet
        self._textless: Turn | None = None  # a reply whose line has not arrived yet
        self._caller_done_at: float | None = None  # the caller's last turn, awaiting a reply
        self._measure_from: float | None = None  # the caller's turn the measured reply answers
        self._measured: Turn | None = None
        self._tools: dict[str, Event] = {}

    # ------------------------------------------------------------------ inputs

    def feed(self, actions: Iterable[Action], now: float) -> None:
        for action in actions:
            kind = type(action)
            if kind is SendTwilioMedia:
                if self._open_reply is None and self.record is not None:
                    self._start_reply(now)
            elif kind is SendTwilioMark:
                self._on_mark_sent(action, now)  # type: ignore[arg-type]
            elif kind is Transcript:
                self._on_transcript(action, now)  # type: ignore[arg-type]
            elif kind is ReplyPlayback:
                self._on_playback(action)  # type: ignore[arg-type]
            elif kind is BargeIn:
                self._on_barge_in(action, now)  # type: ignore[arg-type]
            elif kind is Dtmf:
                if self.record is not None:
                    self.record.dtmf_count += 1
            elif kind is RunTool:
                self._on_run_tool(action, now)  # type: ignore[arg-type]
            elif kind is AgentNotice:
                self._on_agent_notice(action, now)  # type: ignore[arg-type]
            elif kind is CallStarted:
                self._on_started(action, now)  # type: ignore[arg-type]
            elif kind is CallEnded:
                self._on_ended(action, now)  # type: ignore[arg-type]

    def mark_echoed(self, message: str, now: float) -> None:
        """A Twilio message that contains :attr:`awaiting_mark`: the measured audio was heard."""
        if self.awaiting_mark is None or self.awaiting_mark not in message:
            return
        try:
            data = json.loads(message)
            name = data["mark"]["name"]
        except (ValueError, KeyError, TypeError):
            return
        if data.get("event") != "mark" or json.dumps(name) != self.awaiting_mark:
            return
        self.awaiting_mark = None
        turn = self._measured
        self._measured = None
        if turn is not None and self._measure_from is not None:
            turn.latency_mark_ms = _ms(now - self._measure_from)
            if self._on_latency is not None:
                self._on_latency("first_mark", now - self._measure_from)
            self._changed(turn)

    def tool_result(self, call_id: str, content: str, ok: bool) -> None:
        event = self._tools.pop(call_id, None)
        if event is not None:
            event.data["result"] = self._redact("tool_result", content)
            event.data["ok"] = ok
            self._changed_events[event.seq] = event

    def event(self, kind: str, name: str, data: Mapping[str, Any], now: float) -> None:
        """Record something the core does not report (a transfer, a fallback...)."""
        self._add_event(kind, name, dict(data), now)

    # ------------------------------------------------------------------ output

    def take(self) -> list[Write]:
        """What changed since the last call, in an order the store can apply."""
        record = self.record
        if record is None:
            return []
        writes, self._writes = self._writes, []
        sid = record.call_sid
        writes.extend(Write("turn", sid, turn=replace(t)) for t in self._changed_turns.values())
        writes.extend(
            Write("event", sid, event=replace(e, data=dict(e.data)))
            for e in self._changed_events.values()
        )
        self._changed_turns.clear()
        self._changed_events.clear()
        if self._finish_pending:  # finish comes last, after its turns
            self._finish_pending = False
            writes.append(Write("finish", sid, record=record.copy()))
        return writes

    @property
    def dirty(self) -> bool:
        return bool(
            self._writes or self._changed_turns or self._changed_events or self._finish_pending
        )

    # ------------------------------------------------------------------ handlers

    def _wall(self, now: float) -> float:
        return round(now + self._offset, 3)

    def _on_started(self, notice: CallStarted, now: float) -> None:
        params = notice.custom_parameters
        number = self._redact
        self.record = CallRecord(
            call_sid=notice.call_sid or notice.stream_sid,
            stream_sid=notice.stream_sid,
            account_sid=notice.account_sid,
            from_number=number("number", params.get("From", "")) if "From" in params else "",
            to_number=number("number", params.get("To", "")) if "To" in params else "",
            started_at=self._wall(now),
        )
        if self._recording is not None:
            self.record.recording = self._recording(self.record.call_sid)
        resumed = notice.resumed
        if resumed:
            self._add_event("call", "resumed", {}, now)
        start = Write("start", self.record.call_sid, record=self.record.copy(), resumed=resumed)
        self._writes.append(start)

    def _on_ended(self, notice: CallEnded, now: float) -> None:
        record = self.record
        if record is None:  # no valid start: the stream never became a call
            return
        record.ended_at = self._wall(now)
        record.end_reason = notice.reason.value
        record.end_detail = notice.detail
        record.barge_ins = notice.stats.barge_ins
        self._finish_pending = True

    def _add_turn(self, role: str, text: str, now: float) -> Turn:
        assert self.record is not None
        turn = Turn(len(self.record.turns), role, text, self._wall(now))
        self.record.turns.append(turn)
        self._changed(turn)
        return turn

    def _changed(self, turn: Turn) -> None:
        self._changed_turns[turn.seq] = turn

    def _add_event(self, kind: str, name: str, data: dict[str, Any], now: float) -> Event:
        assert self.record is not None
        event = Event(len(self.record.events), self._wall(now), kind, name, data)
        self.record.events.append(event)
        self._changed_events[event.seq] = event
        return event

    def _on_transcript(self, notice: Transcript, now: float) -> None:
        if self.record is None:
            return
        text = self._redact("transcript", notice.content)
        if notice.role == "user":
            self._add_turn("user", text, now)
            self._caller_done_at = now
            return
        textless = self._textless
        if notice.role == "assistant" and textless is not None:
            textless.text = text  # the line came after its audio started
            self._textless = None
            self._changed(textless)
            return
        turn = self._add_turn(notice.role, text, now)
        if notice.role == "assistant":
            self._unbound.append(turn)

    def _start_reply(self, now: float) -> None:
        self._reply_count += 1
        reply = self._open_reply = self._reply_count
        if self._unbound:
            turn = self._unbound.pop(0)
        else:
            turn = self._textless = self._add_turn("assistant", "", now)
        turn.reply = reply
        self._turn_of_reply[reply] = turn
        if self._caller_done_at is not None:
            turn.latency_audio_ms = _ms(now - self._caller_done_at)
            if self._on_latency is not None:
                self._on_latency("first_audio", now - self._caller_done_at)
            self._measure_from = self._caller_done_at
            self._caller_done_at = None
            self._measured = turn
            self.awaiting_mark = None  # armed by the next mark of this reply
        self._changed(turn)

    def _on_mark_sent(self, action: SendTwilioMark, now: float) -> None:
        try:
            name = json.loads(action.text)["mark"]["name"]
            _, reply_text, offset = name.split(".")
            reply = int(reply_text)
        except (ValueError, KeyError, TypeError, AttributeError):
            return
        self._reply_count = max(self._reply_count, reply)
        measured = self._measured
        if (
            measured is not None
            and self.awaiting_mark is None
            and measured.reply == reply
            and measured.latency_mark_ms is None
        ):
            self.awaiting_mark = json.dumps(name)
        if offset == "end" and self._open_reply == reply:
            self._open_reply = None
            if self._textless is not None and self._textless.reply == reply:
                self._textless = None

    def _on_playback(self, notice: ReplyPlayback) -> None:
        turn = self._turn_of_reply.pop(notice.reply, None)
        if turn is None:
            return
        turn.sent_bytes = notice.sent_bytes
        turn.heard_bytes = notice.heard_bytes
        if notice.outcome is Playback.PLAYED:
            turn.playback = PLAYED
        else:
            turn.playback = PARTLY_HEARD if notice.heard_bytes else CLEARED
        sent = notice.sent_bytes
        turn.heard_fraction = round(notice.heard_bytes / sent, 4) if sent else 0.0
        self._changed(turn)

    def _on_barge_in(self, notice: BargeIn, now: float) -> None:
        if self.record is None:
            return
        self._open_reply = None
        self._textless = None
        self._add_event("barge_in", "UserStartedSpeaking", {"generation": notice.generation}, now)

    def _on_run_tool(self, action: RunTool, now: float) -> None:
        if self.record is None:
            return
        arguments = self._redact("tool_arguments", json.dumps(dict(action.arguments)))
        data: dict[str, Any] = {"call_id": action.call_id, "arguments": arguments}
        self._tools[action.call_id] = self._add_event("tool_call", action.name, data, now)

    def _on_agent_notice(self, notice: AgentNotice, now: float) -> None:
        if notice.type != "FunctionCallRequest" or self.record is None:
            return
        message = notice.message
        raw = message.get("arguments")
        arguments = raw if isinstance(raw, str) else json.dumps(raw)
        data = {
            "call_id": str(message.get("id", "")),
            "arguments": self._redact("tool_arguments", arguments),
            "client_side": message.get("client_side") is True,
        }
        self._add_event("function_call", str(message.get("name", "")), data, now)
