"""Call control through the real server on 127.0.0.1, with the local Twilio REST peer
(``peers.twilio_api``) standing in for Twilio's API (``TWILIO_API_URL`` points at it).

Each test is an acceptance line of issue 12: what reaches the REST API (and when), what reaches
the agent, and how the call ends.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.protocol import State

from peers.agent import LocalAgent
from peers.twilio_api import RecordedRequest, SimCall, TwilioApiPeer
from server.app import Server
from server.signature import compute_signature
from tests.helpers import ACCOUNT_SID, CALL_SID, function_call, twilio_dtmf
from tests.helpers import agent as agent_message
from tests.server_support import (
    ROOT,
    AgentSession,
    caller,
    fake_agent,
    free_port,
    http,
    post_form,
    recv_until,
    running_server,
    twilio_mark,
    twilio_start,
    twilio_stop,
    until,
)
from tests.server_support import run as run_async

TOKEN = "tok-" + "c0ntr0l" * 4
FRONT_DESK = "+15551230000"
ON_CALL = "+15559870000"
SAFETY_RULES = str(ROOT / "examples" / "safety-rules.toml")


def run(coro: Any, timeout: float = 20.0) -> Any:
    return run_async(coro, timeout)


@dataclass
class Rig:
    """A server with REST credentials, its agent, the REST peer and one caller."""

    server: Server
    agent: LocalAgent
    peer: TwilioApiPeer
    port: int
    ws: ClientConnection | None = None
    session: AgentSession | None = None
    stopped_open: list[bool] = field(default_factory=list)  # the stream was open at the stop

    def updates(self) -> list[RecordedRequest]:
        return [
            r
            for r in self.peer.requests
            if r.method == "POST" and r.path.endswith(f"/Calls/{CALL_SID}.json")
        ]

    async def call(
        self, parameters: dict[str, str] | None = None
    ) -> tuple[ClientConnection, AgentSession]:
        url = f"wss://127.0.0.1:{self.port}/media-stream"
        headers = {"X-Twilio-Signature": compute_signature(TOKEN, url)}
        ws = await caller(self.server, headers)
        self.ws = ws

        async def stop_stream() -> None:  # what Twilio does when the call is updated
            self.stopped_open.append(ws.state is State.OPEN)
            with contextlib.suppress(Exception):
                await ws.send(twilio_stop())
                await ws.close()

        self.peer.register(CALL_SID, stop_stream)
        await ws.send(twilio_start(parameters))
        index = len(self.agent.sessions)
        session = await self.agent.session(index)
        await until(lambda: session.applied_at is not None)
        self.session = session
        return ws, session


@contextlib.asynccontextmanager
async def rig(
    *flags: str,
    dial_outcome: str = "answered",
    connector: Any = None,
    env: dict[str, str] | None = None,
) -> AsyncIterator[Rig]:
    port = free_port()
    async with (
        fake_agent() as agent,
        TwilioApiPeer(
            account_sid=ACCOUNT_SID,
            auth_token=TOKEN,
            dial_outcome=dial_outcome,
            stream_connector=connector,
        ) as peer,
    ):
        # No account SID: start's.
        env = {"TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_API_URL": peer.url, **(env or {})}
        async with running_server(
            "--port",
            str(port),
            "--public-url",
            f"http://127.0.0.1:{port}",
            "--records",
            "none",
            "--transfer-target",
            f"front_desk={FRONT_DESK}",
            "--transfer-target",
            f"on_call={ON_CALL}",
            *flags,
            agent=agent,
            env=env,
        ) as server:
            yield Rig(server, agent, peer, port)


def texts_of(session: AgentSession, kind: str) -> list[dict[str, Any]]:
    return [t for t in session.texts if t.get("type") == kind]


async def announce(session: AgentSession, ws: ClientConnection) -> dict[str, Any]:
    """The agent speaks a short reply; return the reply's last mark (not echoed yet)."""
    await session.send(b"\xff" * 1600)
    await session.send(agent_message("AgentAudioDone"))
    while True:
        message, _ = await recv_until(ws, "mark")
        if message["mark"]["name"].endswith(".end"):
            return message


async def ask_transfer(session: AgentSession, target: object) -> dict[str, Any]:
    arguments = json.dumps({"target": target, "reason": "the caller asked for a person"})
    await session.send(function_call("fc-1", "transfer_call", arguments))
    await until(lambda: bool(texts_of(session, "FunctionCallResponse")))
    return texts_of(session, "FunctionCallResponse")[0]


async def front_desk_heard(session: AgentSession, ws: ClientConnection) -> None:
    """The caller asks for the front desk, the agent transfers and the caller hears it say so."""
    said = agent_message("ConversationText", role="user", content="Front desk please.")
    await session.send(said)
    await ask_transfer(session, "front_desk")
    last = await announce(session, ws)
    await ws.send(twilio_mark(last["mark"]["name"]))


# ---------------------------------------------------------------------- transfer


def test_transfer_updates_the_call_only_after_the_announcement_mark_is_echoed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)

    async def main() -> None:
        async with rig() as r:
            ws, session = await r.call()
            answer = await ask_transfer(session, "front_desk")
            assert json.loads(answer["content"])["ok"] is True
            last = await announce(session, ws)
            await asyncio.sleep(0.5)  # AgentAudioDone went through; the caller has not heard it
            assert r.updates() == []
            await ws.send(twilio_mark(last["mark"]["name"]))
            await until(lambda: bool(r.updates()), 3, "the call update")
            update = r.updates()[0]
            assert update.authenticated and update.username == ACCOUNT_SID  # start's accountSid
            twiml = update.field("Twiml") or ""
            assert f">{FRONT_DESK}</Dial>" in twiml and 'action="http://127.0.0.1:' in twiml
            assert "/dial-action?" in twiml
            await until(lambda: r.server.metrics.calls_ended.get("transfer") == 1, 3)
            assert r.stopped_open == [True]  # Twilio, not the bridge, ended the stream
            # The dial is answered: the action request is signed, and answered with <Hangup/>.
            await until(lambda: any(c.kind == "dial-action" for c in r.peer.callbacks), 3)
            action = next(c for c in r.peer.callbacks if c.kind == "dial-action")
            assert action.status == 200 and "<Hangup/>" in action.body
            assert r.server.metrics.transfers == 1

    run(main())
    # The model's reason may repeat the caller's words: not in the log unless opted in.
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "target=front_desk" in logged and "asked for a person" not in logged


@pytest.mark.parametrize("target", ["reception", FRONT_DESK, "+15550000000", None])
def test_an_unknown_target_or_a_number_places_no_call_update(target: object) -> None:
    async def main() -> None:
        async with rig() as r:
            ws, session = await r.call()
            answer = await ask_transfer(session, target)
            assert "unknown transfer target" in json.loads(answer["content"])["error"]
            last = await announce(session, ws)
            await ws.send(twilio_mark(last["mark"]["name"]))
            await asyncio.sleep(0.5)
            assert r.updates() == [] and ws.state is State.OPEN  # the call goes on
            assert r.server.metrics.calls_ended == {}

    run(main())


def test_a_barge_in_before_the_update_cancels_the_transfer_and_tells_the_agent() -> None:
    async def main() -> None:
        async with rig() as r:
            ws, session = await r.call()
            await ask_transfer(session, "front_desk")
            last = await announce(session, ws)
            await session.send(agent_message("UserStartedSpeaking"))
            await until(lambda: bool(texts_of(session, "UpdatePrompt")), 2, "the system note")
            assert "cancelled" in texts_of(session, "UpdatePrompt")[0]["prompt"]
            await ws.send(twilio_mark(last["mark"]["name"]))
            await asyncio.sleep(0.5)
            assert r.updates() == []

    run(main())


def test_keypad_transfer_updates_within_a_second_with_no_agent_turn() -> None:
    async def main() -> None:
        async with rig("--keypad", "0=transfer:front_desk") as r:
            ws, session = await r.call()
            sent = time.monotonic()
            await ws.send(twilio_dtmf("0"))
            took = await until(lambda: bool(r.updates()), 1.0, "the keypad transfer")
            assert took < 1.0 and time.monotonic() - sent < 1.0
            assert f">{FRONT_DESK}</Dial>" in (r.updates()[0].field("Twiml") or "")
            assert texts_of(session, "InjectUserMessage") == []  # the agent was not asked

    run(main())


def test_an_emergency_phrase_says_the_fixed_message_then_dials_the_on_call_target() -> None:
    async def main() -> None:
        async with rig("--safety-rules", SAFETY_RULES) as r:
            ws, session = await r.call()
            line = agent_message("ConversationText", role="user", content="I have CHEST pain.")
            await session.send(line)
            await until(lambda: bool(texts_of(session, "InjectAgentMessage")), 2)
            injected = texts_of(session, "InjectAgentMessage")[0]
            assert "on-call doctor" in injected["message"] and injected["behavior"] == "interrupt"
            assert r.updates() == []  # not before the caller heard the message
            last = await announce(session, ws)
            await ws.send(twilio_mark(last["mark"]["name"]))
            await until(lambda: bool(r.updates()), 3, "the safety transfer")
            assert f">{ON_CALL}</Dial>" in (r.updates()[0].field("Twiml") or "")

    run(main())


# ---------------------------------------------------------------------- never drop a caller


def test_an_unreachable_agent_mid_call_redirects_to_the_fallback_within_two_seconds() -> None:
    async def main() -> None:
        async with rig("--fallback-target", "front_desk") as r:
            ws, session = await r.call()
            lost = time.monotonic()
            await session.ws.close(1011, "gone")
            await until(lambda: bool(r.updates()), 2.0, "the fallback update")
            assert time.monotonic() - lost < 2.0
            twiml = r.updates()[0].field("Twiml") or ""
            assert "<Say>" in twiml and f">{FRONT_DESK}</Dial>" in twiml
            await until(lambda: ws.state is State.CLOSED, 3, "the stream's end")
            assert r.stopped_open == [True]  # the stream was still open when the update came
            assert r.server.metrics.fallbacks == 1
            assert r.server.metrics.calls_ended == {"agent_error": 1}

    run(main())


# ---------------------------------------------------------------------- silence and keypad


def test_a_silent_caller_is_reprompted_then_hung_up() -> None:
    async def main() -> None:
        async with rig("--silence-reprompt", "0.3", "--silence-hangup", "1") as r:
            ws, session = await r.call()
            await until(lambda: len(texts_of(session, "InjectAgentMessage")) >= 1, 2)
            assert texts_of(session, "InjectAgentMessage")[0]["message"] == "Are you still there?"
            # The agent speaks the reprompt: its turn ends the injection in flight.
            await ws.send(twilio_mark((await announce(session, ws))["mark"]["name"]))
            await until(lambda: len(texts_of(session, "InjectAgentMessage")) >= 2, 2)
            assert "Goodbye" in texts_of(session, "InjectAgentMessage")[1]["message"]
            last = await announce(session, ws)
            await ws.send(twilio_mark(last["mark"]["name"]))
            await until(lambda: r.server.metrics.calls_ended.get("silence") == 1, 3)
            await until(lambda: ws.state is State.CLOSED, 3)

    run(main())


def test_collected_digits_reach_the_agent_as_one_message_and_never_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        async with rig("--dtmf-collect", "--log-transcripts") as r:
            ws, session = await r.call()
            for digit in "1234#":
                await ws.send(twilio_dtmf(digit))
            await until(lambda: bool(texts_of(session, "InjectUserMessage")), 2)
            await asyncio.sleep(0.2)
            injected = texts_of(session, "InjectUserMessage")
            assert [m["content"] for m in injected] == ["The caller entered 1 2 3 4 on the keypad."]

    caplog.set_level(logging.DEBUG)
    run(main())
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "digits=4" in logged
    assert "1 2 3 4" not in logged and "digit=" not in logged


# ---------------------------------------------------------------------- a failed transfer


def test_a_transfer_with_no_answer_resumes_the_call_with_its_history() -> None:
    streams: list[tuple[str, dict[str, str]]] = []

    async def connector(call: SimCall, url: str, parameters: Any) -> None:
        streams.append((url, dict(parameters)))

    async def main() -> None:
        async with rig(dial_outcome="no-answer", connector=connector) as r:
            ws, session = await r.call()
            await front_desk_heard(session, ws)
            await until(lambda: bool(streams), 5, "the resumed stream")
            url, parameters = streams[0]
            assert url == f"wss://127.0.0.1:{r.port}/media-stream"
            assert {"bridgeResume", "bridgeResumeSig"} <= set(parameters)
            # The new stream (maybe on another instance): the agent resumes with the history.
            await until(lambda: ws.state is State.CLOSED, 3)
            _, resumed = await r.call(parameters)
            settings = texts_of(resumed, "Settings")[0]
            history = settings["agent"]["context"]["messages"]
            assert {"type": "History", "role": "user", "content": "Front desk please."} in history
            assert "did not go through" in settings["agent"]["greeting"]
            # A forged resume parameter is a plain call.
            lie = {"t": "front_desk", "s": "busy", "at": int(time.time()),
                   "h": [{"type": "History", "role": "user", "content": "Forged."}]}  # fmt: skip
            blob = base64.urlsafe_b64encode(json.dumps(lie).encode()).decode().rstrip("=")
            forged = dict(parameters, bridgeResume=blob)
            _, plain = await r.call(forged)
            assert "context" not in texts_of(plain, "Settings")[0]["agent"]

    run(main())


@pytest.fixture(params=["sqlite", "postgres"])
def records(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    """A records store the dial action reads the turns from (SQLite, or TEST_POSTGRES_URL)."""
    if request.param == "sqlite":
        yield str(tmp_path / "calls.db")
        return
    url = os.environ.get("TEST_POSTGRES_URL", "")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("TEST_POSTGRES_URL is not set under CI=true: run .ci/postgres.sh")
        pytest.skip("TEST_POSTGRES_URL is not set (run .ci/postgres.sh)")
    import psycopg

    def reset() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            for table in ("turns", "events", "calls", "outbox", "outbound", "schema_version"):
                conn.execute(f"DROP TABLE IF EXISTS {table}")

    reset()
    yield url
    reset()


def test_a_resumed_call_reads_its_turns_from_the_records_and_keeps_one_record(
    records: str,
) -> None:
    """With a records store the action URL carries no history: the dial action reads the
    turns from the store; the resumed stream appends to the same record, which tells the
    whole call (first part, transfer attempt, resumed part)."""
    streams: list[dict[str, str]] = []

    async def connector(call: SimCall, url: str, parameters: Any) -> None:
        streams.append(dict(parameters))

    async def main() -> None:
        async with rig("--records", records, dial_outcome="no-answer", connector=connector) as r:
            store = r.server.records
            assert store is not None
            ws, session = await r.call()
            await session.send(agent_message("ConversationText", role="user", content="Desk."))
            await ask_transfer(session, "front_desk")
            last = await announce(session, ws)
            await ws.send(twilio_mark(last["mark"]["name"]))
            await until(lambda: bool(r.updates()), 3, "the call update")
            assert "ctx=&" in (r.updates()[0].field("Twiml") or "")  # no history in the URL
            await until(lambda: bool(streams), 5, "the resumed stream")
            await until(lambda: ws.state is State.CLOSED, 3)
            ws2, resumed = await r.call(streams[0])
            history = texts_of(resumed, "Settings")[0]["agent"]["context"]["messages"]
            assert {"type": "History", "role": "user", "content": "Desk."} in history
            await resumed.send(agent_message("ConversationText", role="user", content="Later."))
            await asyncio.sleep(0.2)
            await ws2.send(twilio_stop())
            await ws2.close()

            def whole() -> Any:
                record = store.load(CALL_SID)
                return record if record is not None and record.end_reason else None

            loop = asyncio.get_running_loop()
            record = None
            for _ in range(50):
                record = await loop.run_in_executor(None, whole)
                if record is not None and any(t.text == "Later." for t in record.turns):
                    break
                await asyncio.sleep(0.1)
            assert record is not None
            said = [(t.seq, t.text) for t in record.turns if t.role == "user"]
            assert [text for _, text in said] == ["Desk.", "Later."]
            assert len({t.seq for t in record.turns}) == len(record.turns)
            names = [e.name for e in record.events]
            assert "resumed" in names and names.index("resumed") > names.index("transfer_call")
            assert record.end_reason == "hangup" and record.ended_at is not None

    run(main(), 30)


def test_a_transfer_waits_for_a_slow_store_so_the_dial_action_reads_every_turn(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The records writer lags (the caller's turn takes 1 s to write): the call update waits
    until it is written, so the dial action (here, or on another instance) finds it."""
    from server.records import store as store_module

    apply = store_module.Database.apply

    def slow_apply(db: Any, writes: Any, outbox: bool = False) -> None:
        if any(w.turn is not None and w.turn.text == "Desk." for w in writes):
            time.sleep(1.0)
        apply(db, writes, outbox)

    monkeypatch.setattr(store_module.Database, "apply", slow_apply)
    streams: list[dict[str, str]] = []

    async def connector(call: SimCall, url: str, parameters: Any) -> None:
        streams.append(dict(parameters))

    async def main() -> None:
        records = str(tmp_path / "calls.db")
        async with rig("--records", records, dial_outcome="no-answer", connector=connector) as r:
            ws, session = await r.call()
            await session.send(agent_message("ConversationText", role="user", content="Desk."))
            await ask_transfer(session, "front_desk")
            last = await announce(session, ws)
            await ws.send(twilio_mark(last["mark"]["name"]))
            await until(lambda: bool(streams), 10, "the resumed stream")
            _, resumed = await r.call(streams[0])
            history = texts_of(resumed, "Settings")[0]["agent"]["context"]["messages"]
            assert {"type": "History", "role": "user", "content": "Desk."} in history

    run(main(), 30)


# ---------------------------------------------------------------------- another instance


@contextlib.asynccontextmanager
async def instance(*flags: str, port: int, env: dict[str, str]) -> AsyncIterator[list[str]]:
    """``python -m server`` in its own process (no memory shared with this one); its log."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO", "DEEPGRAM"))}
    clean.pop("BRIDGE_RECORDS", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port),
        "--config", str(ROOT / "config.json"), *flags,
        env={**clean, "DEEPGRAM_API_KEY": "k", "PYTHONPATH": str(ROOT), **env},
        cwd=ROOT, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    lines: list[str] = []

    async def read() -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            lines.append(line.decode())

    reader = asyncio.create_task(read())
    try:
        await until(lambda: any("listening on" in x for x in lines), 20, "the other instance")
        yield lines
    finally:
        if proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 10)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await asyncio.wait_for(reader, 5)


def count_rows(records: str) -> int:
    """Rows of CALL_SID in the ``calls`` table, read without the project's store."""
    query = "SELECT count(*) FROM calls WHERE call_sid = "
    if records.startswith("postgresql"):
        import psycopg

        with psycopg.connect(records) as conn:
            row = conn.execute(query + "%s", (CALL_SID,)).fetchone()
    else:
        import sqlite3

        with contextlib.closing(sqlite3.connect(records)) as conn:
            row = conn.execute(query + "?", (CALL_SID,)).fetchone()
    return int(row[0]) if row else 0


async def resume_on_another_instance(records: str) -> None:
    """Transfer on instance A; the no-answer Dial action and the new stream reach instance B,
    another ``python -m server`` process behind the same public URL (a load balancer would
    route them so). B's agent starts with A's conversation, and the call keeps one record."""
    streams: list[tuple[str, dict[str, str]]] = []

    async def connector(call: SimCall, url: str, parameters: Any) -> None:
        streams.append((url, dict(parameters)))

    port_b = free_port()
    public = f"http://127.0.0.1:{port_b}"  # what Twilio sees: here, B
    flags = ("--public-url", public, "--records", records, "--transfer-target",
             f"front_desk={FRONT_DESK}", "--agent-retries", "0")  # fmt: skip
    async with (
        fake_agent() as agent,
        TwilioApiPeer(
            account_sid=ACCOUNT_SID, auth_token=TOKEN, dial_outcome="no-answer",
            stream_connector=connector,
        ) as peer,
    ):  # fmt: skip
        env = {"TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_API_URL": peer.url}
        async with (
            instance(*flags, "--agent-url", agent.url, port=port_b, env=env) as log_b,
            running_server(*flags, agent=agent, env=env) as a,
        ):
            stream_url = f"wss://127.0.0.1:{port_b}/media-stream"
            signed = {"X-Twilio-Signature": compute_signature(TOKEN, stream_url)}
            ws = await caller(a, signed)
            stopped: list[bool] = []

            async def stop_stream() -> None:  # what Twilio does when the call is updated
                stopped.append(ws.state is State.OPEN)
                with contextlib.suppress(Exception):
                    await ws.send(twilio_stop())
                    await ws.close()

            peer.register(CALL_SID, stop_stream)
            await ws.send(twilio_start({"From": "+15550001"}))
            session = await agent.session(0)
            await until(lambda: session.applied_at is not None)
            await front_desk_heard(session, ws)
            await until(lambda: bool(streams), 8, "the resumed stream's TwiML")
            assert stopped == [True]
            await until(lambda: a.metrics.calls_ended.get("transfer") == 1, 3)
            action = next(c for c in peer.callbacks if c.kind == "dial-action")
            assert action.status == 200, action.body
            assert any("dial action" in x for x in log_b), "the action request reached B"
            url, parameters = streams[0]
            assert url == stream_url and {"bridgeResume", "bridgeResumeSig"} <= set(parameters)
            # The new stream, on B.
            ws_b = await connect(
                f"ws://127.0.0.1:{port_b}/media-stream", additional_headers=signed,
                compression=None, open_timeout=3, close_timeout=2,
            )  # fmt: skip
            await ws_b.send(twilio_start(parameters))
            resumed = await agent.session(1)
            await until(lambda: bool(texts_of(resumed, "Settings")), 5, "B's Settings")
            settings = texts_of(resumed, "Settings")[0]["agent"]
            history = settings.get("context", {}).get("messages", [])
            assert {"type": "History", "role": "user", "content": "Front desk please."} in history
            assert "did not go through" in settings["greeting"]
            await until(lambda: resumed.applied_at is not None)
            await resumed.send(agent_message("ConversationText", role="user", content="Later."))
            await asyncio.sleep(0.3)
            await ws_b.send(twilio_stop())
            await ws_b.close()
            await until(lambda: any("call ended" in x for x in log_b), 5, "B's call end")
            if a.records is None:
                return
            loop = asyncio.get_running_loop()
            record = None
            for _ in range(50):  # B writes its part in a thread after the call ends
                record = await loop.run_in_executor(None, a.records.load, CALL_SID)
                if record is not None and record.ended_at and len(record.turns) == 2:
                    break
                await asyncio.sleep(0.1)
            assert record is not None
            assert [t.text for t in record.turns if t.role == "user"] == [
                "Front desk please.",
                "Later.",
            ]
            assert "resumed" in [e.name for e in record.events]
            assert await loop.run_in_executor(None, count_rows, records) == 1


def test_a_dial_action_on_another_instance_resumes_the_call_from_signed_parameters() -> None:
    """Nothing shared between the instances but the auth token."""
    run(resume_on_another_instance("none"), 45)


def test_a_dial_action_on_another_instance_resumes_from_the_shared_records(records: str) -> None:
    run(resume_on_another_instance(records), 45)


# ---------------------------------------------------------------------- stream status


def test_the_stream_asks_for_status_callbacks_and_a_stream_error_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        async with rig() as r:
            base = f"http://127.0.0.1:{r.port}"
            form = [("CallSid", CALL_SID), ("From", "+15550001")]
            body = urlencode(form)
            sig = compute_signature(TOKEN, f"{base}/incoming-call", form)
            twiml = await http(
                r.port, post_form("/incoming-call", body, extra=f"X-Twilio-Signature: {sig}\r\n")
            )
            assert f'statusCallback="{base}/stream-status"' in twiml.text
            event = [("CallSid", CALL_SID), ("StreamSid", "MZ1"), ("StreamEvent", "stream-error"),
                     ("StreamError", "31920 handshake failed")]  # fmt: skip
            body = urlencode(event)
            unsigned = await http(r.port, post_form("/stream-status", body))
            assert unsigned.status == 403 and r.server.metrics.stream_errors == 0
            sig = compute_signature(TOKEN, f"{base}/stream-status", event)
            extra = f"X-Twilio-Signature: {sig}\r\n"
            signed = await http(r.port, post_form("/stream-status", body, extra=extra))
            assert signed.status == 200 and r.server.metrics.stream_errors == 1
            assert "stream_errors_total 1" in r.server.metrics.render()

    caplog.set_level(logging.WARNING)
    run(main())
    assert any("31920 handshake failed" in rec.getMessage() for rec in caplog.records)
