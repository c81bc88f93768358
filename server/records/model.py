"""The call record: what was said, what the caller heard, what the agent did, why it ended.

Plain mutable dataclasses while a call is being recorded (the recorder owns them); the store
receives copies. ``to_json``/``from_json`` give the one JSON shape used by ``calls show
--json``, ``calls export`` and ``GET /calls/{CallSid}/record``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

PLAYED = "played"
CLEARED = "cleared"
PARTLY_HEARD = "partly_heard"


@dataclass(slots=True)
class Turn:
    """One line of the conversation; agent replies also say how much of them was heard.

    ``playback`` is None while the reply's fate is unknown (still playing when the call
    ended, or a line with no audio). Latencies are measured from the caller's turn (the
    agent's ``ConversationText`` for the caller, its end-of-turn) to the reply's first audio
    sent to Twilio, and to the echo of the first mark after that audio.
    """

    seq: int
    role: str
    text: str
    at: float
    reply: int | None = None
    playback: str | None = None
    heard_fraction: float | None = None
    sent_bytes: int = 0
    heard_bytes: int = 0
    latency_audio_ms: float | None = None
    latency_mark_ms: float | None = None


@dataclass(slots=True)
class Event:
    """Anything else that happened: tool and function calls, barge-ins, transfers, fallbacks."""

    seq: int
    at: float
    kind: str
    name: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class CallRecord:
    """A call as the store keeps it; times are seconds since the Unix epoch (UTC)."""

    call_sid: str
    stream_sid: str
    account_sid: str
    from_number: str
    to_number: str
    started_at: float
    ended_at: float | None = None
    end_reason: str | None = None
    end_detail: str | None = None
    dtmf_count: int = 0
    barge_ins: int = 0
    recording: str | None = None
    turns: list[Turn] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.ended_at is not None

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["complete"] = self.complete
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CallRecord:
        fields = {f.name for f in dataclasses.fields(cls)} - {"turns", "events"}
        record = cls(**{k: v for k, v in data.items() if k in fields})
        record.turns = [Turn(**t) for t in data.get("turns", ())]
        record.events = [Event(**e) for e in data.get("events", ())]
        return record

    def copy(self) -> CallRecord:
        """A deep copy, safe to hand to another thread."""
        return CallRecord.from_json(self.to_json())
