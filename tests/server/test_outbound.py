"""Outbound calls, checked from outside: a real ``python -m server`` process on loopback, the
local Twilio REST peer placing the call (status callbacks, async AMD, the TwiML's stream played
by a simulated caller) and the local agent recording what the bridge sends it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from peers.agent import LocalAgent
from peers.twilio_api import TwilioApiPeer, caller_connector, sign
from server.records.store import Database
from tests.helpers import ACCOUNT_SID
from tests.server.test_call_control import free_port
from tests.server.test_cli import _env, _run_cli
from tests.server.test_routing import _agent_file
from tests.server_support import CONFIG, fake_agent, http, run, until

TOKEN = "twilio-" + "a" * 24
CONTROL = "control-" + "b" * 16
VOICEMAIL = "Hi, this is the clinic about your appointment tomorrow. Goodbye."
DESK, PATIENT = "+15550100", "+15557654321"


def _post(path: str, body: object, token: str | None = CONTROL) -> bytes:
    data = json.dumps(body).encode()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode() + data


def _form(url: str, form: list[tuple[str, str]], signed: bool = True) -> bytes:
    path, data = url.split("/", 3)[3], urlencode(form)
    sig = f"X-Twilio-Signature: {sign(TOKEN, url, form)}\r\n" if signed else ""
    return (
        f"POST /{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{sig}"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(data)}\r\n\r\n{data}"
    ).encode()


class Rig:
    def __init__(self, agent: LocalAgent, peer: TwilioApiPeer, port: int, db: Path) -> None:
        self.agent, self.peer, self.port, self.db = agent, peer, port, db

    def row(self, sid: str) -> dict[str, Any] | None:
        db = Database(str(self.db))
        try:
            return db.outbound(sid)
        finally:
            db.close()


@contextlib.asynccontextmanager
async def rig(tmp: Path, *flags: str) -> AsyncIterator[Rig]:
    port, db = free_port(), tmp / "calls.db"
    async with fake_agent() as agent:
        peer = TwilioApiPeer(account_sid=ACCOUNT_SID, auth_token=TOKEN, dial_delay=0.05)
        r = Rig(agent, peer, port, db)
        peer.stream_connector = caller_connector(peer)  # peers/caller.py on the <Stream>
        async with peer:
            env = _env(DEEPGRAM_API_KEY="k", TWILIO_AUTH_TOKEN=TOKEN,
                       TWILIO_ACCOUNT_SID=ACCOUNT_SID, TWILIO_API_URL=peer.url,
                       BRIDGE_CONTROL_TOKEN=CONTROL)  # fmt: skip
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port),
                "--public-url", f"http://127.0.0.1:{port}", "--config", str(CONFIG),
                "--agent-url", agent.url, "--records", str(db), "--hangup-grace", "0.5",
                "--voicemail-message", VOICEMAIL, *flags,
                env=env, cwd=tmp, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert proc.stderr is not None
            lines: list[str] = []
            while not any("listening on" in line for line in lines):
                line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
                assert line, "the server exited: " + "".join(lines)
                lines.append(line)
            try:
                yield r
            finally:
                proc.send_signal(signal.SIGTERM)
                rest = (await asyncio.wait_for(proc.stderr.read(), 20)).decode()
                assert await asyncio.wait_for(proc.wait(), 20) == 0
                assert "Traceback" not in rest
                assert TOKEN not in rest and CONTROL not in rest


def test_a_machine_gets_the_voicemail_then_a_hangup(tmp_path: Path) -> None:
    kids = _agent_file(tmp_path, "pediatrics", "You are the pediatrics line.")

    async def body() -> None:
        async with rig(tmp_path, "--route", f"{DESK}={kids}") as r:
            r.peer.place_calls, r.peer.answered_by = True, "machine_end_beep"
            call = {"to": PATIENT, "from": DESK, "agent": "pediatrics",
                    "parameters": {"appointment": "tomorrow 9am"}}  # fmt: skip
            created = await http(r.port, _post("/calls", call), timeout=10)
            assert created.status == 201, created.text
            answer = json.loads(created.body)
            sid = answer["call_sid"]
            assert sid.startswith("CA") and answer["status"] == "queued"

            sent = [q for q in r.peer.requests if q.path.endswith("/Calls.json")]
            assert len(sent) == 1 and sent[0].authenticated
            form = sent[0]
            assert (form.field("To"), form.field("From")) == (PATIENT, DESK)
            assert form.field("MachineDetection") == "DetectMessageEnd"
            assert form.field("AsyncAmd") == "true"
            assert form.field("AsyncAmdStatusCallback") == f"http://127.0.0.1:{r.port}/outbound/amd"
            assert form.field("AsyncAmdStatusCallbackMethod") == "POST"
            assert form.field("StatusCallback") == f"http://127.0.0.1:{r.port}/outbound/status"
            events = [v for k, v in form.form if k == "StatusCallbackEvent"]
            assert events == ["initiated", "ringing", "answered", "completed"]
            twiml = form.field("Twiml") or ""
            assert f'<Stream url="wss://127.0.0.1:{r.port}/media-stream"' in twiml
            assert '<Parameter name="appointment" value="tomorrow 9am"/>' in twiml
            assert re.search(r'<Parameter name="bridgeAgent" value="pediatrics\.[0-9a-f]{32}"/>',
                             twiml)  # fmt: skip

            session = await r.agent.session(0, timeout=10)
            await until(lambda: session.settings is not None, 10, "Settings")
            assert session.settings is not None
            assert session.settings["agent"]["think"]["prompt"] == "You are the pediatrics line."

            def voicemail() -> list[dict[str, Any]]:
                return [t for t in session.texts if t.get("type") == "InjectAgentMessage"]

            await until(lambda: bool(voicemail()), 10, "the voicemail")
            assert voicemail() == [
                {"type": "InjectAgentMessage", "message": VOICEMAIL, "behavior": "interrupt"}
            ]
            said = time.monotonic()
            await until(lambda: r.peer.calls[sid].status == "completed", 10, "the hangup")
            assert time.monotonic() - said < 5  # --hangup-grace 0.5: nothing was playing
            await until(lambda: (r.row(sid) or {}).get("outcome") == "voicemail", 5, "record")
            row = r.row(sid)
            assert row is not None
            assert (row["to_number"], row["agent"], row["answered_by"]) == (
                PATIENT, "pediatrics", "machine_end_beep")  # fmt: skip

    run(body(), timeout=90)


def test_outbound_refusals_and_a_never_answered_call(tmp_path: Path) -> None:
    async def body() -> None:
        async with rig(tmp_path, "--max-outbound-per-minute", "2") as r:
            call = {"to": PATIENT, "from": DESK}
            denied = await http(r.port, _post("/calls", call, token=None))
            assert denied.status == 401 and json.loads(denied.body)["error"]
            wrong = await http(r.port, _post("/calls", call, token="nope"))
            assert wrong.status == 401
            for bad, why in (
                ({"to": "5557654321", "from": DESK}, '"to"'),
                ({"to": PATIENT, "from": "sip:x@y"}, '"from"'),
                ({**call, "agent": "../../etc/passwd"}, '"agent"'),
                ({**call, "parameters": {"bridgeAgent": "x"}}, "not allowed"),
                ({**call, "extra": 1}, "unknown field"),
            ):
                result = await http(r.port, _post("/calls", bad))
                assert result.status == 400 and why in json.loads(result.body)["error"], bad
            assert not [q for q in r.peer.requests if q.path.endswith("/Calls.json")]

            first = await http(r.port, _post("/calls", call))
            assert first.status == 201, first.text
            sid = json.loads(first.body)["call_sid"]
            assert (await http(r.port, _post("/calls", call))).status == 201
            limited = await http(r.port, _post("/calls", call))
            assert limited.status == 429 and "minute" in json.loads(limited.body)["error"]
            assert len([q for q in r.peer.requests if q.path.endswith("/Calls.json")]) == 2

            url = f"http://127.0.0.1:{r.port}/outbound/status"
            form = [("AccountSid", ACCOUNT_SID), ("CallSid", sid), ("CallStatus", "no-answer"),
                    ("To", PATIENT), ("From", DESK)]  # fmt: skip
            unsigned = await http(r.port, _form(url, form, signed=False))
            assert unsigned.status == 403
            amd_url = f"http://127.0.0.1:{r.port}/outbound/amd"
            forged = await http(r.port, _form(amd_url, [("CallSid", sid)], signed=False))
            assert forged.status == 403
            assert (await http(r.port, _form(url, form))).status == 200
            await until(lambda: (r.row(sid) or {}).get("outcome") == "no-answer", 5, "record")
            row = r.row(sid)
            assert row is not None and row["status"] == "no-answer" and row["to_number"] == PATIENT

    run(body(), timeout=90)


def test_dial_talks_to_the_running_bridge(tmp_path: Path) -> None:
    async def body() -> None:
        async with rig(tmp_path) as r:
            bridge = f"http://127.0.0.1:{r.port}"
            env = _env(BRIDGE_CONTROL_TOKEN=CONTROL)
            args = ["dial", PATIENT, "--from", DESK, "--bridge", bridge, "--parameter", "a=b"]
            done = await asyncio.to_thread(_run_cli, args, env, tmp_path)
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["call_sid"].startswith("CA")
            created = [q for q in r.peer.requests if q.path.endswith("/Calls.json")]
            assert len(created) == 1 and '<Parameter name="a" value="b"/>' in (
                created[0].field("Twiml") or "")  # fmt: skip
            bad = await asyncio.to_thread(_run_cli, ["dial", "123", "--from", DESK, "--bridge",
                                                     bridge], env, tmp_path)  # fmt: skip
            assert bad.returncode == 1 and '"to" must be' in json.loads(bad.stdout)["error"]

    run(body(), timeout=90)
