"""The agent-playback sub-machine alone: replies, marks, generations, what was heard."""

from __future__ import annotations

from sansio import Action, Playback, ReplyPlayback
from sansio._counters import Counters
from sansio._playback import MAX_PENDING_MARKS, AgentPlayback, Echo


def make(mark_every: int = 0) -> tuple[AgentPlayback, Counters]:
    actions: list[Action] = []
    counters = Counters(actions)
    return AgentPlayback(mark_every, counters), counters


def test_a_reply_is_played_when_its_last_mark_returns() -> None:
    playback, counters = make()
    assert playback.audio(480) is None and not playback.drained
    name = playback.audio_done()
    assert name == "0.1.end" and counters.replies == 1
    assert counters.agent_audio_bytes_received == 480
    played = ReplyPlayback(1, Playback.PLAYED, 480, 480)
    assert playback.echoed(name) == Echo(True, played)
    assert playback.last == played and playback.drained
    assert playback.echoed(name) is None  # an echo counts once


def test_progress_marks_say_how_much_was_heard_before_a_clear() -> None:
    playback, counters = make(mark_every=400)
    assert playback.audio(200) is None
    name = playback.audio(200)
    assert name == "0.1.400"
    assert playback.audio(100) is None
    assert playback.echoed(name) == Echo(False, None)
    cleared = playback.clear()
    assert cleared == [ReplyPlayback(1, Playback.CLEARED, 500, 400)]
    assert playback.generation == 1 and counters.barge_ins == 1 and playback.drained


def test_echoes_of_a_cleared_generation_report_nothing_played() -> None:
    playback, _ = make()
    playback.audio(160)
    old = playback.audio_done()
    playback.clear()
    assert playback.echoed(old) == Echo(True, None)
    playback.audio(160)
    assert playback.audio_done() == "1.2.end"  # the new generation names its marks anew


def test_progress_marks_stop_at_the_bound_but_last_marks_do_not() -> None:
    playback, _ = make(mark_every=1)
    playback.marks.update({f"x{i}": (0, None, 0, False) for i in range(MAX_PENDING_MARKS)})  # type: ignore[misc]
    assert playback.audio(80) is None
    assert playback.audio_done() == "0.1.end"
