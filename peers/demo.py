"""``python -m server demo``: two whole phone calls on loopback, with no key and no network.

Three real programs talk over real WebSockets on 127.0.0.1: the bridge server, the local
Deepgram-protocol agent and the Twilio caller simulator. The caller plays shipped speech
clips; the agent greets, answers, is interrupted, and ends the call with the ``end_call``
tool. The timeline is printed as it happens, then a summary, and what the caller heard is
written to ``demo-call.wav``.

In the second call the caller asks for the front desk: the agent calls ``transfer_call`` and
announces it, and once the caller has heard the announcement the bridge updates the call with
``<Dial>`` through the local Twilio REST peer (:mod:`.twilio_api`), which ends the stream.

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
from xml.etree import ElementTree

from .agent import LocalAgent
from .audio import BYTES_PER_MS, load_clip
from .caller import StreamRegistry, TwilioCaller
from .twilio_api import RecordedRequest, TwilioApiPeer

PARAMETERS = {"From": "+15550100", "To": "+15550199", "CallSid": "CA-demo"}
FRONT_DESK = "+15550123"
DEMO_ACCOUNT_SID = "AC" + "de30" * 8
DEMO_AUTH_TOKEN = "demo-auth-token-not-a-secret"
UPDATE_WAIT = 15.0
"""Wall-clock seconds the transfer call waits for the update once the announcement plays."""


class Transfer(NamedTuple):
    """What a bridge needs to transfer calls through the local REST peer (demo values)."""

    target: str
    number: str
    api_url: str
    account_sid: str
    auth_token: str


class RunningBridge(NamedTuple):
    """A bridge the demo started: where its media stream listens, and how to stop it; with
    a transfer, the public ``wss://`` URL Twilio signs the stream's upgrade for."""

    url: str
    stop: Callable[[], Awaitable[None]]
    signed_url: str | None = None


StartBridge = Callable[[str, Transfer | None], Awaitable[RunningBridge]]
"""``start(agent_url, transfer)``: start a bridge whose agent is at ``agent_url`` (able to
transfer calls as ``transfer`` says, if given), once it listens."""


class Timeline:
    """Prints what happens, stamped with seconds since the call started."""

    def __init__(self) -> None:
        self.origin = time.perf_counter()

    def say(self, who: str, text: str, at: float | None = None) -> None:
        """Print now; ``at`` (``time.perf_counter()``) stamps something that already happened."""
        when = (time.perf_counter() if at is None else at) - self.origin
        print(f"[{when:6.2f}s] {who:<7} {text}", flush=True)


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


class _TwilioSide:
    """The caller's stream in the REST peer's hands (a ``StreamRegistry``). When a call update
    ends it, that is the moment to check what the caller had heard: every mark it was sent
    must have been echoed before the update arrived."""

    def __init__(self, peer: TwilioApiPeer, timeline: Timeline) -> None:
        self.peer = peer
        self.timeline = timeline
        self.caller: TwilioCaller | None = None
        self.echoes: list[tuple[str, float]] = []
        """Every mark the caller echoed, with ``time.perf_counter()``."""
        self.update: RecordedRequest | None = None
        self.unechoed_at_update: int | None = None
        """Marks the caller had been sent but not echoed when the update ended its stream."""

    def on_mark(self, name: str, t: float) -> None:
        self.echoes.append((name, t))

    def register(self, call_sid: str, stop: Callable[[], Awaitable[None]]) -> None:
        async def stop_after_update() -> None:
            self.update = next((r for r in reversed(self.peer.requests)
                                if r.method == "POST" and r.path.endswith(f"/{call_sid}.json")),
                               None)  # fmt: skip
            if self.caller is not None:
                figures = self.caller.figures()
                self.unechoed_at_update = figures.marks_received - figures.marks_echoed
            if self.unechoed_at_update == 0 and self.echoes:
                name, t = self.echoes[-1]
                self.timeline.say("caller", f"has heard the announcement (mark {name})", at=t)
            else:
                unheard = self.unechoed_at_update
                self.timeline.say("caller", f"has not heard it all: {unheard} marks not echoed")
            if self.update is not None:
                dial = _dial(self.update.field("Twiml"))
                self.timeline.say("twilio", f"call updated: {dial}", at=self.update.at)
            await stop()

        self.peer.register(call_sid, stop_after_update)

    def unregister(self, call_sid: str) -> None:
        self.peer.unregister(call_sid)

    def heard_before_update(self) -> bool:
        """Whether every mark had been echoed, the last one before the update arrived."""
        update, echoes = self.update, self.echoes
        return (
            update is not None
            and self.unechoed_at_update == 0
            and bool(echoes)
            and echoes[-1][1] < update.at
        )


def _dial(twiml: str | None) -> str:
    """``<Dial>NUMBER</Dial>`` of an update's TwiML, or what it was instead."""
    try:
        dial = ElementTree.fromstring(twiml or "").find("Dial")
    except ElementTree.ParseError:
        dial = None
    if dial is None:
        return f"no <Dial> in {twiml!r}"
    return f"<Dial>{(dial.text or '').strip()}</Dial>"


async def run_transfer_call(caller: TwilioCaller, timeline: Timeline) -> None:
    """The second script: greeting, the caller asks for the front desk, the announcement,
    and the line is closed by Twilio once the bridge has updated the call."""
    if await _within(caller.wait_agent_speaking(10), timeline, "the greeting"):
        timeline.say("caller", "hears the agent: the greeting")
        await _within(caller.wait_agent_silent(30, quiet=0.6), timeline, "the greeting to end")
    clip = load_clip("caller-hello")
    timeline.say("caller", f"asks for the front desk ({len(clip) / BYTES_PER_MS / 1000:.1f} s)")
    await caller.play(clip, "front desk")
    if await _within(caller.wait_agent_speaking(10), timeline, "the announcement"):
        timeline.say("caller", "hears the announcement")
    if await _within(caller.wait_closed(UPDATE_WAIT), timeline, "the call update"):
        timeline.say("caller", f"line closed by Twilio after the update: {caller.close_reason}")
    else:
        await caller.hangup()


async def transfer_demo(start_bridge: StartBridge, timeline: Timeline, speed: float) -> bool:
    """The transfer call, then its summary; True if every check held."""
    print(flush=True)
    timeline.origin = time.perf_counter()
    agent = LocalAgent(transfer_after_utterances=1, idle_timeout=30)
    peer = TwilioApiPeer(account_sid=DEMO_ACCOUNT_SID, auth_token=DEMO_AUTH_TOKEN)
    twilio = _TwilioSide(peer, timeline)
    async with agent, peer:
        transfer = Transfer("front_desk", FRONT_DESK, peer.url, DEMO_ACCOUNT_SID, DEMO_AUTH_TOKEN)
        bridge = await start_bridge(agent.url, transfer)
        timeline.say(
            "demo",
            f"second call: bridge at {bridge.url}, Twilio REST peer at {peer.url}, "
            f"transfer target front_desk={FRONT_DESK}; calling...",
        )
        registry: StreamRegistry = twilio
        caller = TwilioCaller(
            bridge.url, auth_token=DEMO_AUTH_TOKEN, signed_url=bridge.signed_url,
            custom_parameters=PARAMETERS, speed=speed, account_sid=DEMO_ACCOUNT_SID,
            on_mark=twilio.on_mark, registry=registry, record=False,
        )  # fmt: skip
        twilio.caller = caller
        try:
            async with caller:
                await run_transfer_call(caller, timeline)
            # The dial is answered; Twilio then asks the action URL what comes next.
            await peer.wait_until(lambda: any(c.kind == "dial-action" for c in peer.callbacks), 5)
        finally:
            await bridge.stop()
    print(transfer_summary(caller, agent, twilio, timeline.origin), flush=True)
    update = twilio.update
    dialled = update is not None and _dial(update.field("Twiml")) == f"<Dial>{FRONT_DESK}</Dial>"
    ok_update = update is not None and update.authenticated and update.status == 200
    return (
        not caller.figures().violations
        and ok_update
        and dialled
        and twilio.heard_before_update()
        and caller.closed_by == "caller"  # Twilio (the peer) ended the stream, not the bridge
    )


def transfer_summary(
    caller: TwilioCaller, agent: LocalAgent, twilio: _TwilioSide, origin: float
) -> str:
    """The transfer call's figures; times in seconds on the timeline (from ``origin``)."""
    figures = caller.figures()
    session = agent.sessions[0] if agent.sessions else None
    tools = ", ".join(
        f"{r.get('name')} -> {r.get('content')}"
        for r in (session.function_call_responses if session else [])
    )
    update, echo = twilio.update, twilio.echoes[-1] if twilio.echoes else None
    heard = "-" if echo is None else f"{echo[1] - origin:.2f} s (mark {echo[0]})"
    updated = "-"
    if update is not None:
        updated = f"{update.at - origin:.2f} s: {_dial(update.field('Twiml'))}"
        if echo is not None:
            updated += f", {(update.at - echo[1]) * 1000:.0f} ms after the last mark echo"
    action = next((c for c in twilio.peer.callbacks if c.kind == "dial-action"), None)
    rows = [
        ("tool calls", tools or "-"),
        ("announcement heard (last mark echoed)", heard),
        ("call update arrived", updated),
        ("marks not echoed at the update", str(twilio.unechoed_at_update)),
        ("dial action", "-" if action is None else f"{action.status} {action.body.strip()}"),
        ("how the stream ended", f"closed by the {figures.closed_by}, code {figures.close_code}"),
        ("Twilio protocol violations", str(len(figures.violations))),
    ]
    width = max(len(name) for name, _ in rows)
    lines = ["", "transfer summary", "-" * (width + 40)]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    lines += [f"  violation: {v}" for v in figures.violations]
    return "\n".join(lines)


async def demo(start_bridge: StartBridge, wav: Path, speed: float, bridge_logger: str) -> int:
    """Two calls through bridges ``start_bridge`` starts; their ``bridge_logger`` INFO lines
    join the timeline. 0 if Twilio saw no violation, the bridge hung up the first call, no
    audio came early, and the second call was transferred only after the caller heard why.
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
        bridge = await start_bridge(agent.url, None)
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
    transferred = await transfer_demo(start_bridge, timeline, speed)
    return 0 if ok and transferred else 1


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
