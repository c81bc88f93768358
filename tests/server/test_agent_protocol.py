"""Issue 11 through the real server on loopback: the local agent's failure modes, speculative
end_call, refused keypresses, and a caller who speaks before SettingsApplied.

Every message the bridge sends the agent in these calls is validated against deepgram-sdk v7's
models (tests/deepgram_models.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from peers.agent import GOODBYE_TEXT, Failure, LocalAgent
from peers.audio import load_clip, silence, tone
from peers.caller import TwilioCaller
from server.app import Server
from server.cli import build_parser
from tests.peers.deepgram_models import validate_client_message
from tests.server_support import CONFIG, options, run, until

KEY_TEXT = "The caller pressed the 5 key on the phone keypad."


def check_sdk(agent: LocalAgent) -> int:
    """Validate every JSON message every session received; return how many there were."""
    count = 0
    for session in agent.sessions:
        for received in session.received:
            if isinstance(received.message, dict):
                validate_client_message(received.message)
                count += 1
    return count


@asynccontextmanager
async def bridge(agent: LocalAgent, *flags: str, **bridge: Any) -> AsyncIterator[Server]:
    # The product's defaults (reconnect, drop the pre-roll), not server_support's.
    defaults = build_parser()
    retries, policy = defaults.get_default("agent_retries"), defaults.get_default("preroll_policy")
    product = ("--agent-retries", str(retries), "--preroll-policy", policy)
    opts = options(*product, "--agent-url", agent.url, *flags)
    if bridge:
        opts = dataclasses.replace(opts, bridge=dataclasses.replace(opts.bridge, **bridge))
    server = Server(opts)
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(0.0)


def url(server: Server) -> str:
    return f"ws://127.0.0.1:{server.port}/media-stream"


# ---------------------------------------------------------------- failover


@pytest.mark.parametrize("mode", ["close_1011", "drop"])
def test_killing_the_agent_mid_call_reconnects(mode: str) -> None:
    async def body() -> None:
        agent = LocalAgent(pace=8, settings_delay=0, failure=Failure(mode, after=0.8))  # type: ignore[arg-type]
        frames: list[bytes] = []

        def record(chunk: int, payload: bytes) -> bytes:
            frames.append(payload)
            return payload

        async with agent, bridge(agent) as server:
            async with TwilioCaller(url(server), speed=2, frame_hook=record) as caller:
                await until(lambda: bool(agent.sessions) and agent.sessions[0].settings_applied)
                await caller.dtmf("5")  # a turn of the first session: it must survive
                await until(lambda: server.metrics.agent_reconnects == 1, 5, "a reconnect")
                gap = len(frames)
                marker = tone(880, 600)
                await caller.play(marker, "after the gap")
                await until(lambda: len(agent.sessions) == 2 and agent.sessions[1].settings_applied)
                await caller.silence(0.6)
                assert not caller.closed  # the caller's stream stayed open throughout
                await caller.hangup()
            first, second = agent.sessions
            assert first.failed == mode and second.failed is None
            contents = [m.get("content") for m in second.context_messages]
            assert KEY_TEXT in contents  # the earlier turn, in agent.context.messages
            assert "greeting" not in second.settings["agent"]  # type: ignore[index]
            # Caller audio after the gap arrives in order: what the caller sent from the gap on
            # is one contiguous run of what the new session received.
            heard = bytes(second.audio)
            heard = heard[heard.index(marker) :]
            sent_after = b"".join(frames[gap:])
            sent_after = sent_after[sent_after.index(marker) :]
            assert len(heard) > len(marker) and sent_after[: len(heard)] == heard
            assert second.audio_before_settings_applied == 0
            assert server.metrics.calls_ended == {"hangup": 1}
            assert "agent_reconnects_total 1" in server.metrics.render()
            assert check_sdk(agent) > 0
            assert caller.figures().violations == ()

    run(body(), timeout=30)


def test_after_the_last_retry_the_call_ends_with_its_reason() -> None:
    async def body() -> None:
        failure = Failure("close_1011", after=0.2, sessions=10)
        agent = LocalAgent(pace=8, settings_delay=0, failure=failure)
        async with agent, bridge(agent) as server:
            async with TwilioCaller(url(server), speed=2) as caller:
                assert await caller.wait_closed(15)
            assert len(agent.sessions) == 3  # the first, and agent_retries=2 reconnects
            assert server.metrics.calls_ended == {"agent_error": 1}
            assert server.metrics.agent_reconnects == 2
            assert caller.figures().close_reason.startswith("agent_error")  # type: ignore[union-attr]
            check_sdk(agent)

    run(body(), timeout=30)


def test_an_error_mid_call_reconnects(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="server.call")

    async def body() -> None:
        agent = LocalAgent(pace=8, settings_delay=0, failure=Failure("error", after=0.3))
        async with agent, bridge(agent) as server:
            async with TwilioCaller(url(server), speed=2) as caller:
                await until(
                    lambda: len(agent.sessions) == 2 and agent.sessions[1].settings_applied, 6
                )
                assert not caller.closed
                await caller.hangup()
            assert agent.sessions[0].error == "INTERNAL_SERVER_ERROR"
            infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
            for session in agent.sessions:  # Deepgram support asks for each session's id
                assert any(f"request_id={session.request_id}" in line for line in infos)
            warnings = [r for r in caplog.records if "reconnecting" in r.getMessage()]
            assert len(warnings) == 1
            assert server.metrics.calls_ended == {"hangup": 1}
            check_sdk(agent)

    run(body(), timeout=30)


# ---------------------------------------------------------------- speculative end_call


def speculative_config(tmp_path: Path) -> str:
    """config.json with end_call dispatched speculatively (no defer_until_eot)."""
    settings = json.loads(CONFIG.read_text())
    for function in settings["agent"]["think"]["functions"]:
        function.pop("defer_until_eot", None)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(settings))
    return str(path)


def test_a_cancelled_end_call_does_not_hang_up_and_a_confirmed_one_does(tmp_path: Path) -> None:
    async def body() -> None:
        agent = LocalAgent(
            pace=8, settings_delay=0, speculative=True, hangup_after_utterances=1, think_delay=0
        )
        async with agent, bridge(agent, "--config", speculative_config(tmp_path)) as server:
            async with TwilioCaller(url(server), speed=1) as caller:
                await caller.wait_agent_speaking(5)
                await caller.wait_agent_silent(10, quiet=0.3)
                await caller.play(tone(300, 500), "bye")
                await caller.silence(0.35)  # inside the speculative window: end_call dispatched
                await caller.play(tone(300, 4000), "actually, one more thing")
                session = agent.sessions[0]
                assert session.cancelled, "the agent withdrew its speculative end_call"
                assert not caller.closed, "a cancelled end_call hung up"
                assert await caller.wait_closed(15), "the confirmed end_call hangs up"
            sent = [m for m in session.sent_messages if m.get("type") == "ConversationText"]
            assert sent[-1]["content"] == GOODBYE_TEXT
            assert server.metrics.calls_ended == {"tool": 1}
            check_sdk(agent)

    run(body(), timeout=40)


# ---------------------------------------------------------------- refused keypress


def test_a_refused_keypress_reaches_the_agent_after_agent_audio_done() -> None:
    async def body() -> None:
        agent = LocalAgent(pace=2, settings_delay=0, refuse_injections=True)
        async with agent, bridge(agent) as server:
            async with TwilioCaller(url(server), speed=2) as caller:
                assert await caller.wait_agent_speaking(5)
                await caller.dtmf("5")  # while the greeting plays: refused
                session = agent.sessions[0]
                await until(lambda: bool(session.refused), 3, "a refusal")
                await until(lambda: session.events.count("InjectUserMessage") == 2, 10, "a retry")
                await caller.hangup()
            kinds = [m.get("type") for m in session.sent_messages]
            refused = kinds.index("InjectionRefused")
            done = kinds.index("AgentAudioDone", refused)
            accepted = [
                i
                for i, m in enumerate(session.sent_messages)
                if m.get("type") == "ConversationText" and m.get("content") == KEY_TEXT
            ]
            assert accepted and accepted[0] > done  # taken only after the agent's turn ended
            check_sdk(agent)

    run(body(), timeout=30)


# ---------------------------------------------------------------- the greeting and the pre-roll


async def greeting_heard(policy: str | None) -> tuple[int, int]:
    """(bytes of the greeting the early caller heard before any clear, the greeting's size)."""
    agent = LocalAgent(pace=4, settings_delay=0.6)
    opening = load_clip("caller-hello")[:6400] + silence(4000)  # "Hello?" (0.8 s), then quiet
    heard: list[int] = []
    extra = {} if policy is None else {"preroll_policy": policy}
    async with agent, bridge(agent, **extra) as server:
        caller = TwilioCaller(url(server), speed=4, opening=opening)
        caller.on_media = lambda audio, t: (
            heard.append(len(audio)) if not caller.clear_times else None
        )
        async with caller:
            await caller.wait_agent_speaking(5)
            await caller.wait_agent_silent(10, quiet=0.4)
            await caller.hangup()
        check_sdk(agent)
    return sum(heard), len(agent.greeting_audio)


@pytest.mark.parametrize(("policy", "whole"), [(None, True), ("keep", False)])
def test_an_early_caller_hears_the_whole_greeting_by_default(
    policy: str | None, whole: bool
) -> None:
    heard, greeting = run(greeting_heard(policy), timeout=30)
    assert (heard >= greeting) is whole, (heard, greeting)


def measure_preroll_policies() -> None:  # pragma: no cover - run by hand, see README
    """Print how much of the greeting an early caller hears under each policy."""
    for policy in ("keep", "last", "drop"):
        heard, greeting = asyncio.run(greeting_heard(policy))
        print(
            f"{policy}: heard {heard} of {greeting} greeting bytes ({100 * heard / greeting:.0f}%)"
        )


if __name__ == "__main__":  # pragma: no cover
    measure_preroll_policies()
