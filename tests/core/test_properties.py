"""Hypothesis properties of the core: conservation, exact Twilio output, no raise on peer
input, nothing after the end but closing, and barge-in clears in the same step."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from sansio import (
    Action,
    AgentReady,
    AgentState,
    CallEnded,
    CallStarted,
    ClearTwilio,
    CloseAgent,
    CloseTwilio,
    EndReason,
    OpenAgent,
    Playback,
    ReplyPlayback,
    RunTool,
    SendAgentAudio,
    SendAgentText,
    SendTwilioText,
    TwilioState,
)
from tests.helpers import (
    STREAM_SID,
    Call,
    agent,
    config,
    function_call,
    twilio_connected,
    twilio_dtmf,
    twilio_mark,
    twilio_media,
    twilio_messages,
    twilio_start,
    twilio_stop,
)

COMMON = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- property 1: conservation

FRAME = 160  # Twilio sends 20 ms of 8 kHz mu-law per media message
CHUNK_MS = st.sampled_from(range(20, 401, 20))
GAP_S = st.sampled_from([0.0, 0.005, 0.02, 0.05])


def frame(index: int) -> bytes:
    """A frame that differs from every other, so loss, duplication and reordering all show."""
    return index.to_bytes(4, "big") * (FRAME // 4)


def caller_audio(frames: int, lead: int) -> list[bytes]:
    """``frames`` whole frames, after one short frame of ``lead`` bytes if ``lead`` is set."""
    first = [b"\xff" * lead] if lead else []
    return first + [frame(i) for i in range(frames)]


def run_call(
    payloads: list[bytes],
    *,
    chunk_ms: int,
    preroll_ms: int,
    ready_after: int,
    gap: float,
    ending: str,
) -> None:
    """Play ``payloads`` ``gap`` apart, SettingsApplied before payload ``ready_after``, then
    end the call at once (or, for ``timeout``, by an idle timeout shorter than one chunk), so
    a partial chunk is still held when the call ends. Check where every byte went."""
    idle = chunk_ms / 2000 if ending == "timeout" else 1e6
    gap = min(gap, idle / 2)
    call = Call(
        config(
            chunk_ms=chunk_ms,
            preroll_ms=preroll_ms,
            twilio_idle_timeout=idle,
            settings_timeout=1e6,
            preroll_policy="keep",
        )
    )
    call.start()
    call.core.agent_connected(call.now)
    call.agent(agent("Welcome"))
    ready_at: float | None = None
    before_ready = 0
    sent: list[tuple[SendAgentAudio, float]] = []

    def collect(actions: list[Action]) -> None:
        sent.extend((a, call.now) for a in actions if isinstance(a, SendAgentAudio))

    def advance(to: float) -> None:
        """Fire deadlines one at a time, noting when each action was emitted."""
        for _ in range(10 * len(payloads) + 10):
            deadline = call.core.next_deadline()
            if deadline is None or deadline > to:
                break
            collect(call.advance_to(deadline))
        call.at(max(call.now, to))

    for i, payload in enumerate(payloads):
        if i == ready_after:
            collect(call.agent(agent("SettingsApplied")))
            ready_at = call.now
        advance(call.now + gap)
        if ready_at is None:
            before_ready += len(payload)
        collect(call.twilio(twilio_media(payload)))
    if ready_at is None:
        collect(call.agent(agent("SettingsApplied")))
        ready_at = call.now
    stats = call.core.stats()
    held = stats.caller_audio_bytes - stats.agent_audio_bytes_sent - stats.preroll_dropped_bytes
    event(f"{'a partial chunk' if held else 'nothing'} held when the call ends by {ending}")
    event("pre-roll cap reached" if before_ready > preroll_ms * 8 else "pre-roll cap not reached")
    if ending == "stop":
        collect(call.twilio(twilio_stop()))
    elif ending == "close":
        call.core.twilio_closed(1000, call.now)
        collect(call.drain())
    else:
        advance(call.now + idle)
    ended = next(a for a in call.log if isinstance(a, CallEnded))
    assert ended.reason is (EndReason.TIMEOUT if ending == "timeout" else EndReason.HANGUP)

    inbound = b"".join(payloads)
    dropped = ended.stats.preroll_dropped_bytes
    # The pre-roll keeps the newest ``preroll_ms`` of audio and counts what it drops...
    assert dropped == max(0, before_ready - preroll_ms * 8)
    # ...and every other byte reaches the agent once, in order, when the call ends however.
    assert b"".join(a.audio for a, _ in sent) == inbound[dropped:]
    assert ended.stats.caller_audio_bytes == len(inbound)
    assert ended.stats.agent_audio_bytes_sent + dropped == len(inbound)
    chunk = chunk_ms * 8
    assert all(0 < len(a.audio) <= chunk for a, _ in sent)
    for action, emitted_at in sent:
        if action.since >= ready_at:
            assert emitted_at - action.since <= chunk_ms / 1000 + 1e-9


CONSERVATION: dict[str, st.SearchStrategy[Any]] = {
    "frames": st.integers(min_value=1, max_value=500),
    "lead": st.integers(min_value=0, max_value=FRAME - 1),
    "chunk_ms": CHUNK_MS,
    "preroll_ms": st.integers(min_value=20, max_value=1000),
    "ready_after": st.integers(min_value=0, max_value=501),
    "gap": GAP_S,
}


@COMMON
@given(**CONSERVATION, ending=st.sampled_from(["stop", "close"]))
@example(frames=1, lead=0, chunk_ms=20, preroll_ms=20, ready_after=0, gap=0.02, ending="stop")
@example(frames=1, lead=0, chunk_ms=20, preroll_ms=20, ready_after=1, gap=0.02, ending="close")
@example(frames=1, lead=1, chunk_ms=20, preroll_ms=20, ready_after=2, gap=0.0, ending="stop")
@example(frames=3, lead=1, chunk_ms=60, preroll_ms=60, ready_after=9, gap=0.02, ending="close")
@example(frames=7, lead=0, chunk_ms=400, preroll_ms=20, ready_after=3, gap=0.02, ending="stop")
@example(frames=2, lead=0, chunk_ms=60, preroll_ms=20, ready_after=0, gap=0.02, ending="close")
@example(frames=3, lead=1, chunk_ms=20, preroll_ms=20, ready_after=0, gap=0.02, ending="stop")
@example(frames=3, lead=1, chunk_ms=20, preroll_ms=20, ready_after=0, gap=0.0, ending="stop")
def test_conservation_of_caller_audio(
    frames: int,
    lead: int,
    chunk_ms: int,
    preroll_ms: int,
    ready_after: int,
    gap: float,
    ending: str,
) -> None:
    """Audio reaches the agent in order, equal to the input less the counted pre-roll drops,
    even when the caller hangs up (stop or close) with a partial chunk held, and no partial
    chunk waits longer than one chunk's duration once the agent is ready.

    The examples: exactly one chunk sent live; exactly one chunk held in a full pre-roll;
    one byte over the pre-roll cap; a full pre-roll plus a partial chunk at the hang-up; a
    400 ms chunk never filled before the hang-up; a partial chunk held at a close; one byte
    over a chunk, flushed by its deadline, or carried from frame to frame in a burst."""
    payloads = caller_audio(frames, lead)
    run_call(
        payloads,
        chunk_ms=chunk_ms,
        preroll_ms=preroll_ms,
        ready_after=ready_after,
        gap=gap,
        ending=ending,
    )


# ---------------------------------------------------------------- property 5: barge-in

PLAYBACK_STEP = st.one_of(
    st.tuples(st.just("audio"), st.integers(min_value=1, max_value=4000)),
    st.tuples(st.just("done"), st.none()),
    st.tuples(st.just("echo"), st.integers(min_value=0, max_value=50)),
    st.tuples(st.just("barge_in"), st.none()),
    st.tuples(st.just("caller"), st.integers(min_value=1, max_value=FRAME)),
    st.tuples(st.just("advance"), st.floats(min_value=0.0, max_value=2.0)),
)


@COMMON
@given(steps=st.lists(PLAYBACK_STEP, max_size=30))
@example(steps=[])
@example(steps=[("audio", 1600), ("done", None), ("echo", 0)])
def test_user_started_speaking_clears_twilio_in_the_same_step(
    steps: list[tuple[str, Any]],
) -> None:
    """Whatever is (believed to be) playing, a barge-in is answered by exactly one ``clear``,
    first, in the step that saw it; every reply still playing is reported cleared."""
    call = Call(config(mark_interval_ms=100, twilio_idle_timeout=1e6, keepalive_interval=1e6))
    call.ready()
    marks: list[str] = []
    playing: set[int] = set()

    def track(actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendTwilioText):
                message = json.loads(action.text)
                if message["event"] == "mark":
                    marks.append(message["mark"]["name"])
                    playing.add(int(message["mark"]["name"].split(".")[1]))
            elif isinstance(action, ReplyPlayback):
                playing.discard(action.reply)

    for kind, arg in [*steps, ("barge_in", None)]:
        if kind == "audio":
            track(call.agent_audio(b"\x01" * arg))
        elif kind == "done":
            track(call.agent(agent("AgentAudioDone")))
        elif kind == "echo" and marks:
            track(call.twilio(twilio_mark(marks.pop(arg % len(marks)))))
        elif kind == "caller":
            track(call.twilio(twilio_media(frame(arg)[:arg])))
        elif kind == "advance":
            track(call.advance_to(call.now + arg))
        elif kind == "barge_in":
            before = set(playing)
            out = call.agent(agent("UserStartedSpeaking"))
            assert out and isinstance(out[0], ClearTwilio), out
            assert sum(isinstance(a, ClearTwilio) for a in out) == 1
            assert twilio_messages(out)[0] == {"event": "clear", "streamSid": STREAM_SID}
            cleared = {a.reply for a in out if isinstance(a, ReplyPlayback)}
            assert all(a.outcome is Playback.CLEARED for a in out if isinstance(a, ReplyPlayback))
            assert before <= cleared
            track(out)
            playing.clear()


# ---------------------------------------------------------------- a random, valid driver

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
TWILIO_EVENTS = ["connected", "start", "media", "mark", "dtmf", "stop", "other"]
AGENT_TYPES = [
    "Welcome",
    "SettingsApplied",
    "UserStartedSpeaking",
    "AgentAudioDone",
    "ConversationText",
    "AgentThinking",
    "AgentStartedSpeaking",
    "LatencyReport",
    "History",
    "Warning",
    "Error",
    "FunctionCallRequest",
    "FunctionCallCancelled",
    "InjectionRefused",
]


def structured(key: str, kinds: list[str]) -> st.SearchStrategy[str]:
    """JSON objects with a known discriminator and random fields, to reach the handlers."""
    return st.builds(
        lambda kind, extra: json.dumps({key: kind, **extra}),
        st.sampled_from(kinds),
        st.dictionaries(
            st.sampled_from(
                ["start", "media", "mark", "dtmf", "functions", "streamSid", "name", "id"]
            ),
            JSONISH,
            max_size=3,
        ),
    )


STEP = st.one_of(
    st.tuples(st.just("start"), st.text(min_size=1, max_size=12)),
    st.tuples(st.just("media"), st.binary(max_size=400)),
    st.tuples(st.just("mark_echo"), st.integers(min_value=0, max_value=50)),
    st.tuples(st.just("dtmf"), st.sampled_from(["1", "#", "*", "x"])),
    st.tuples(st.just("stop"), st.none()),
    st.tuples(st.just("twilio_text"), st.text(max_size=40) | structured("event", TWILIO_EVENTS)),
    st.tuples(st.just("twilio_bytes"), st.binary(max_size=20)),
    st.tuples(st.just("twilio_closed"), st.none()),
    st.tuples(st.just("agent_connected"), st.none()),
    st.tuples(st.just("agent_closed"), st.none()),
    st.tuples(st.just("agent_type"), st.sampled_from(AGENT_TYPES)),
    st.tuples(st.just("agent_type"), st.just("UserStartedSpeaking")),  # barge-in, often
    st.tuples(st.just("agent_audio"), st.binary(max_size=400)),
    st.tuples(st.just("agent_text"), st.text(max_size=40) | structured("type", AGENT_TYPES)),
    st.tuples(st.just("tool_call"), st.sampled_from(["lookup", "end_call"])),
    st.tuples(st.just("tool_result"), st.none()),
    st.tuples(st.just("advance"), st.floats(min_value=0.0, max_value=12.0)),
)

MESSAGE_SHAPES = {
    "media": ({"event", "streamSid", "media"}, "media", {"payload"}),
    "mark": ({"event", "streamSid", "mark"}, "mark", {"name"}),
    "clear": ({"event", "streamSid"}, None, None),
}


class Checker:
    """Drives a core with random but valid driver behaviour and checks invariants per step."""

    def __init__(self) -> None:
        self.call = Call(config(welcome_timeout=1.0, hangup_grace=1.0))
        self.core = self.call.core
        self.stream_sid: str | None = None
        self.marks: list[str] = []
        self.tools: list[str] = []
        self.ended = False
        self.ready = False
        self.agent_texts = 0
        self.tool_seq = 0

    def step(self, kind: str, arg: Any) -> None:
        call, core = self.call, self.core
        twilio_open = core.twilio_state is not TwilioState.CLOSED
        agent_open = core.agent_state in (
            AgentState.AWAITING_WELCOME,
            AgentState.CONFIGURING,
            AgentState.READY,
        )
        before_end = core.ended is None
        if kind == "start" and twilio_open:
            core.twilio_text(twilio_connected(), call.now)
            core.twilio_text(twilio_start(stream_sid=arg), call.now)
        elif kind == "media" and twilio_open:
            core.twilio_text(twilio_media(arg), call.now)
        elif kind == "mark_echo" and twilio_open and self.marks:
            core.twilio_text(twilio_mark(self.marks[arg % len(self.marks)]), call.now)
        elif kind == "dtmf" and twilio_open:
            core.twilio_text(twilio_dtmf(arg), call.now)
        elif kind == "stop" and twilio_open:
            core.twilio_text(twilio_stop(), call.now)
        elif kind == "twilio_text" and twilio_open:
            core.twilio_text(arg, call.now)
        elif kind == "twilio_bytes" and twilio_open:
            core.twilio_bytes(arg, call.now)
        elif kind == "twilio_closed":
            core.twilio_closed(1000, call.now)
        elif kind == "agent_connected" and core.agent_state is AgentState.CONNECTING:
            core.agent_connected(call.now)
        elif kind == "agent_closed":
            core.agent_closed(1000, call.now)
        elif kind == "agent_type" and agent_open:
            core.agent_text(agent(arg), call.now)
        elif kind == "agent_audio" and agent_open:
            core.agent_audio(arg, call.now)
        elif kind == "agent_text" and agent_open:
            core.agent_text(arg, call.now)
        elif kind == "tool_call" and agent_open:
            self.tool_seq += 1
            core.agent_text(function_call(f"fc_{self.tool_seq}", arg), call.now)
        elif kind == "tool_result" and self.tools:
            core.tool_result(self.tools.pop(0), "{}", call.now)
        elif kind == "advance":
            self.check(call.advance_to(call.now + arg), None, before_end)
            return
        self.check(call.drain(), (kind, arg) if agent_open else None, before_end)

    def check(self, actions: list[Action], step: tuple[str, Any] | None, before_end: bool) -> None:
        for action in actions:
            # Property 4: after the end, only closing.
            if self.ended:
                assert isinstance(action, CloseTwilio | CloseAgent), action
            if isinstance(action, CallEnded):
                assert not self.ended, "a call ends exactly once"
                self.ended = True
            elif isinstance(action, CallStarted):
                self.stream_sid = action.stream_sid
            elif isinstance(action, AgentReady):
                self.ready = True
            elif isinstance(action, RunTool):
                self.tools.append(action.call_id)
            elif isinstance(action, SendAgentAudio):
                assert self.ready, "no caller audio before SettingsApplied"
            elif isinstance(action, SendAgentText):
                first = self.agent_texts == 0
                self.agent_texts += 1
                assert (json.loads(action.text)["type"] == "Settings") is first
            elif isinstance(action, OpenAgent):
                assert self.stream_sid is not None
            # Property 2: nothing to Twilio before start, and exact fields with the streamSid.
            if isinstance(action, SendTwilioText):
                assert self.stream_sid is not None, "nothing is sent to Twilio before start"
                message = json.loads(action.text)
                keys, inner, inner_keys = MESSAGE_SHAPES[message["event"]]
                assert set(message) == keys
                assert message["streamSid"] == self.stream_sid
                if inner is not None:
                    assert set(message[inner]) == inner_keys
                if message["event"] == "mark":
                    self.marks.append(message["mark"]["name"])
        # Property 5: UserStartedSpeaking is answered with clear in the same step.
        if step == ("agent_type", "UserStartedSpeaking") and before_end:
            assert any(isinstance(a, ClearTwilio) for a in actions)
        # Closed legs must eventually let the call finish: deadlines are never in the past.
        deadline = self.core.next_deadline()
        assert deadline is None or deadline > self.call.now - 1e-9


BOOTSTRAP: list[list[tuple[str, Any]]] = [
    [],
    [("start", "MZ1")],
    [("start", 'M"Z\\é'), ("agent_connected", None)],
    [
        ("start", "MZ2"),
        ("agent_connected", None),
        ("agent_type", "Welcome"),
        ("agent_type", "SettingsApplied"),
    ],
]


@COMMON
@given(bootstrap=st.sampled_from(BOOTSTRAP), steps=st.lists(STEP, max_size=60))
def test_random_valid_drivers_keep_every_invariant(
    bootstrap: list[tuple[str, Any]], steps: list[tuple[str, Any]]
) -> None:
    """Properties 2-5 under arbitrary peer input (including junk text and bytes from either
    peer, which must never raise) and arbitrary timing, from each stage of a call."""
    checker = Checker()
    for kind, arg in bootstrap + steps:
        checker.step(kind, arg)
    # Whatever happened, the driver can always bring the call to an end and to finished.
    core = checker.core
    core.end(EndReason.SHUTDOWN, "test over", checker.call.now)
    checker.check(checker.call.drain(), None, False)
    checker.check(checker.call.advance_to(checker.call.now + 60.0), None, False)
    assert checker.ended and core.finished


@COMMON
@given(
    text=st.text(max_size=200) | structured("event", TWILIO_EVENTS),
    data=st.binary(max_size=200),
    agent_text=st.text(max_size=200) | structured("type", AGENT_TYPES),
)
def test_arbitrary_peer_input_never_raises_in_any_state(
    text: str, data: bytes, agent_text: str
) -> None:
    """Property 3, state by state: fresh, streaming, and ready."""
    for stage in range(3):
        call = Call()
        if stage == 1:
            call.start()
        if stage == 2:
            call.ready()
            call.core.agent_text(agent_text, call.now)
            if call.core.accepts_agent_input:  # an Error starts a reconnect: the leg is closing
                call.core.agent_audio(data, call.now)
        call.core.twilio_text(text, call.now)
        call.core.twilio_bytes(data, call.now)
        call.drain()


@COMMON
@given(**CONSERVATION)
@example(frames=1, lead=0, chunk_ms=40, preroll_ms=20, ready_after=0, gap=0.0)
def test_conservation_of_caller_audio_when_the_call_times_out(
    frames: int, lead: int, chunk_ms: int, preroll_ms: int, ready_after: int, gap: float
) -> None:
    """As above, for a call that ends by the caller's idle timeout before the partial chunk's
    deadline (an idle timeout shorter than one chunk)."""
    run_call(
        caller_audio(frames, lead),
        chunk_ms=chunk_ms,
        preroll_ms=preroll_ms,
        ready_after=ready_after,
        gap=gap,
        ending="timeout",
    )
