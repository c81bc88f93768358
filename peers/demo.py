"""``python -m server demo``: one whole phone call on loopback, with no key and no network.

Three real programs talk over real WebSockets on 127.0.0.1: the bridge server, the local
Deepgram-protocol agent and the Twilio caller simulator. The caller plays shipped speech
clips; the agent greets, answers, is interrupted, and ends the call with the ``end_call``
tool. The timeline is printed as it happens, then a summary, and what the caller heard is
written to ``demo-call.wav``.

This module drives the peers only: the bridge comes from a :data:`StartBridge` callable that
the bridge's own entry point passes in (``server/local.py``), so any bridge can be demonstrated.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NamedTuple

from .agent import LocalAgent
from .audio import BYTES_PER_MS, load_clip
from .caller import TwilioCaller

PARAMETERS = {"From": "+15550100", "To": "+15550199", "CallSid": "CA-demo"}


class RunningBridge(NamedTuple):
    """A bridge the demo started: where its media stream listens, and how to stop it."""

    url: str
    stop: Callable[[], Awaitable[None]]


StartBridge = Callable[[str], Awaitable[RunningBridge]]
"""``start(agent_url)``: start a bridge whose agent is at ``agent_url``, once it listens."""


class Timeline:
    """Prints what happens, stamped with seconds since the call started."""

    def __init__(self) -> None:
        self.origin = time.perf_counter()

    def say(self, who: str, text: str) -> None:
        print(f"[{time.perf_counter() - self.origin:6.2f}s] {who:<7} {text}", flush=True)


class _BridgeLog(logging.Handler):
    """Shows the bridge's own INFO lines (call start and end, transcript, tools)."""

    def __init__(self, timeline: Timeline) -> None:
        super().__init__(logging.INFO)
        self.timeline = timeline

    def emit(self, record: logging.LogRecord) -> None:
        self.timeline.say("bridge", record.getMessage())


async def _within(step: Awaitable[bool], timeline: Timeline, what: str) -> bool:
    done = await step
    if not done:
        timeline.say("demo", f"(gave up waiting for {what})")
    return done


async def run_call(caller: TwilioCaller, agent: LocalAgent, timeline: Timeline) -> None:
    """The script: greeting, hello, symptoms, a barge-in, goodbye, the tool call, hangup."""

    async def hear_agent(what: str) -> None:
        if await _within(caller.wait_agent_speaking(10), timeline, what):
            timeline.say("caller", f"hears the agent: {what}")
            await _within(caller.wait_agent_silent(30, quiet=0.6), timeline, f"{what} to end")

    await hear_agent("the greeting")
    for clip, words in (
        ("caller-hello", "says hello and asks for an appointment"),
        ("caller-symptoms", "describes their symptoms"),
    ):
        timeline.say("caller", f"{words} ({len(load_clip(clip)) / BYTES_PER_MS / 1000:.1f} s)")
        await caller.play(load_clip(clip), clip)
        if clip == "caller-hello":
            await hear_agent("a reply")
    if await _within(caller.wait_agent_speaking(10), timeline, "a reply"):
        timeline.say("caller", "hears the agent reply...")
        await caller.silence(1.2)
        timeline.say("caller", "...and talks over it (barge-in)")
        await caller.play(load_clip("caller-interrupt"), "interrupt")
        for label, latency in caller.figures().barge_in_latencies:
            if label == "interrupt":
                timeline.say(
                    "caller", f"playback was cleared {latency * 1000:.0f} ms after they spoke up"
                )
    await hear_agent("a reply to the interruption")
    timeline.say("caller", "says goodbye")
    await caller.play(load_clip("caller-goodbye"), "goodbye")
    if await _within(caller.wait_closed(40), timeline, "the bridge to hang up"):
        timeline.say("caller", f"line closed by the {caller.closed_by}: {caller.close_reason}")
    else:
        await caller.hangup()


def summary(caller: TwilioCaller, agent: LocalAgent, wav: Path, seconds: float) -> str:
    figures = caller.figures()
    session = agent.sessions[0] if agent.sessions else None
    tools = ", ".join(
        f"{r.get('name')} -> {r.get('content')}"
        for r in (session.function_call_responses if session else [])
    )

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f} ms"

    rows = [
        ("call length", f"{seconds:.1f} s"),
        ("time to first agent audio", ms(figures.time_to_first_audio)),
        *((f"barge-in clear latency ({label})", ms(v)) for label, v in figures.barge_in_latencies),
        (
            "caller audio sent / at the agent",
            f"{figures.bytes_sent} / {session.audio_bytes if session else 0} B",
        ),
        (
            "agent audio sent / at the caller",
            f"{session.audio_bytes_sent if session else 0} / {figures.bytes_received} B",
        ),
        (
            "audio before SettingsApplied",
            f"{session.audio_before_settings_applied if session else 0} B",
        ),
        ("marks received / echoed", f"{figures.marks_received} / {figures.marks_echoed}"),
        ("tool calls", tools or "-"),
        (
            "how the call ended",
            f"closed by the {figures.closed_by}, code {figures.close_code}: {figures.close_reason}",
        ),
        ("Twilio protocol violations", str(len(figures.violations))),
        ("what the caller heard", f"{wav} ({len(caller.recording) / BYTES_PER_MS / 1000:.1f} s)"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = ["", "summary", "-" * (width + 40)]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    lines += [f"  violation: {v}" for v in figures.violations]
    return "\n".join(lines)


async def demo(start_bridge: StartBridge, wav: Path, speed: float, bridge_logger: str) -> int:
    """One call through the bridge ``start_bridge`` starts; its ``bridge_logger`` INFO lines
    join the timeline. 0 if Twilio saw no violation, the bridge hung up and no audio came early.
    """
    timeline = Timeline()
    logging.getLogger("websockets").setLevel(logging.CRITICAL)
    bridge_log = logging.getLogger(bridge_logger)
    bridge_log.setLevel(logging.INFO)
    bridge_log.addHandler(_BridgeLog(timeline))
    bridge_log.propagate = False

    agent = LocalAgent(hangup_after_utterances=4, idle_timeout=30)
    await agent.start()
    try:
        bridge = await start_bridge(agent.url)
        timeline.say("demo", f"bridge at {bridge.url}, local agent at {agent.url}; calling...")
        caller = TwilioCaller(bridge.url, custom_parameters=PARAMETERS, speed=speed)
        try:
            async with caller:
                await run_call(caller, agent, timeline)
            seconds = time.perf_counter() - timeline.origin
        finally:
            await bridge.stop()
    finally:
        await agent.stop()
    caller.record_wav(wav)
    print(summary(caller, agent, wav, seconds), flush=True)
    early = agent.sessions[0].audio_before_settings_applied if agent.sessions else 0
    ok = not caller.figures().violations and caller.closed_by == "bridge" and early == 0
    return 0 if ok else 1


def main(argv: list[str] | None, start_bridge: StartBridge, bridge_logger: str) -> int:
    """The demo's command line, for the bridge entry point that owns ``start_bridge``."""
    parser = argparse.ArgumentParser(
        prog="python -m server demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--wav", type=Path, default=Path("demo-call.wav"), help="where to save the call"
    )
    parser.add_argument("--speed", type=float, default=1.0, help="run the call this much faster")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(demo(start_bridge, args.wav, args.speed, bridge_logger))
    except KeyboardInterrupt:
        return 130
