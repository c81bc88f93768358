"""The agent's audio as it plays at Twilio: replies, marks, generations, what was heard.

Pure bookkeeping with no wire format: it names the marks to send and reads their echoes, and
the bridge encodes. A reply is the audio between two ``AgentAudioDone``; a barge-in
(:meth:`AgentPlayback.clear`) starts a new generation, and echoes of older marks then report
nothing as played.
"""

from __future__ import annotations

from typing import NamedTuple

from ._actions import Playback, ReplyPlayback
from ._counters import Counters

MAX_PENDING_MARKS = 4096


class _Reply:
    """Playback bookkeeping of one agent reply."""

    __slots__ = ("heard", "id", "next_mark", "sent")

    def __init__(self, reply_id: int, next_mark: int) -> None:
        self.id = reply_id
        self.sent = 0
        self.heard = 0
        self.next_mark = next_mark


# A pending mark: (generation, reply, byte offset it acknowledges, is the reply's last mark)
_Mark = tuple[int, _Reply, int, bool]


class Echo(NamedTuple):
    """A mark came back: ``played`` is its reply's fate when it was the reply's last mark."""

    last: bool
    played: ReplyPlayback | None


class AgentPlayback:
    """Tracks what the agent said and how much of it the caller heard."""

    __slots__ = ("_counters", "_mark_every", "_open", "_playing", "generation", "last", "marks")

    def __init__(self, mark_interval_bytes: int, counters: Counters) -> None:
        self._mark_every = mark_interval_bytes  # 0: no progress marks
        self._counters = counters
        self.generation = 0
        self.last: ReplyPlayback | None = None  # the latest reply whose fate is known
        self._open: _Reply | None = None
        self._playing: dict[int, _Reply] = {}
        self.marks: dict[str, _Mark] = {}  # awaiting their echo

    @property
    def drained(self) -> bool:
        """Nothing is playing or being sent."""
        return not self._playing and self._open is None

    @property
    def replying(self) -> bool:
        """A reply is being sent: audio came since the last ``AgentAudioDone``."""
        return self._open is not None

    def audio(self, size: int) -> str | None:
        """``size`` bytes of agent audio go out; returns a progress mark's name when one is due."""
        self._counters.agent_audio_bytes_received += size
        reply = self._open
        if reply is None:
            reply = self._open = self._start_reply()
        reply.sent += size
        if self._mark_every and reply.sent >= reply.next_mark:
            reply.next_mark = reply.sent + self._mark_every
            if len(self.marks) < MAX_PENDING_MARKS:  # progress marks are a nicety: bounded
                return self._mark(reply, last=False)
        return None

    def audio_done(self) -> str:
        """``AgentAudioDone``: the open reply (maybe empty) is complete; its last mark's name."""
        reply = self._open or self._start_reply()
        self._open = None
        return self._mark(reply, last=True)

    def echoed(self, name: str) -> Echo | None:
        """Twilio echoed the mark ``name``; None if it was never sent (or already echoed)."""
        entry = self.marks.pop(name, None)
        if entry is None:
            return None
        generation, reply, offset, last = entry
        played = None
        if generation == self.generation:  # older generations were cleared, not played
            reply.heard = offset
            if last:
                del self._playing[reply.id]
                played = self._report(reply, Playback.PLAYED)
        return Echo(last, played)

    def clear(self) -> list[ReplyPlayback]:
        """Barge-in: every reply playing is cleared; a new generation starts."""
        cleared = [self._report(reply, Playback.CLEARED) for reply in self._playing.values()]
        self._playing.clear()
        self._open = None
        self.generation += 1
        self._counters.barge_ins += 1
        return cleared

    def _start_reply(self) -> _Reply:
        self._counters.replies += 1
        reply = _Reply(self._counters.replies, self._mark_every)
        self._playing[reply.id] = reply
        return reply

    def _mark(self, reply: _Reply, *, last: bool) -> str:
        name = f"{self.generation}.{reply.id}.{'end' if last else reply.sent}"
        self.marks[name] = (self.generation, reply, reply.sent, last)
        return name

    def _report(self, reply: _Reply, outcome: Playback) -> ReplyPlayback:
        heard = reply.sent if outcome is Playback.PLAYED else reply.heard
        self.last = ReplyPlayback(reply.id, outcome, reply.sent, heard)
        return self.last
