"""The signed end-of-call webhook, received by examples/webhook_receiver.py on loopback.

Every case that touches the store runs on SQLite and on PostgreSQL (see
tests/server/test_records.py).
The receiver is the documented example, wrapped so a test can script failures (a 500, a
timeout) and count the attempts and the verified arrivals before the example's own dedupe.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from examples import webhook_receiver
from peers.agent import LocalAgent
from server.cli import main as cli_main
from server.metrics import Metrics
from server.records import RecordStore
from server.records import cli as records_cli
from server.records.store import Database
from server.records.webhook import Deliverer, WebhookConfig, sign, verify
from tests.server.test_records import _full_record, _write_call
from tests.server.test_records import spec as spec
from tests.server_support import (
    CALL_SID,
    CONFIG,
    ROOT,
    fake_agent,
    run,
    running_server,
    twilio_connected,
    twilio_start,
    twilio_stop,
    until,
)

SECRET = "webhook-secret-0123456789"


class Receiver:
    """The example receiver on 127.0.0.1:0 in a thread; ``script`` fails the first attempts."""

    def __init__(self, script: list[str] | None = None, hang: float = 1.5) -> None:
        self.script = list(script or [])
        self.attempts: list[tuple[dict[str, str], bytes]] = []
        self.verified: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        outer = self

        class Handler(webhook_receiver.Receiver):
            seen: set[str] = set()  # noqa: RUF012 - a fresh dedupe set per receiver

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.attempts.append((dict(self.headers.items()), body))
                mode = outer.script.pop(0) if outer.script else "ok"
                if mode == "500":
                    self.send_response(500)
                    self.end_headers()
                    outer.statuses.append(500)
                    return
                if mode == "hang":  # longer than --webhook-timeout: the bridge gives up
                    time.sleep(hang)
                    outer.statuses.append(0)
                    return
                self.rfile = io.BytesIO(body)
                self.headers["Content-Length"] = str(len(body))
                super().do_POST()

            def keep(self, record: dict[str, Any]) -> None:
                outer.verified.append(record)

            def send_response(self, code: int, message: str | None = None) -> None:
                if code != 500:
                    outer.statuses.append(code)
                super().send_response(code, message)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hooks/call-ended"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def _receiver_secret(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(webhook_receiver, "SECRET", SECRET.encode())
    yield


def _flags(receiver: Receiver, spec: str, *extra: str) -> tuple[str, ...]:
    return ("--records", spec, "--webhook-url", receiver.url, *extra)


async def _short_call(port: int, agent: LocalAgent) -> None:
    ws = await connect(f"ws://127.0.0.1:{port}/media-stream", compression=None, open_timeout=5)
    await ws.send(twilio_connected())
    await ws.send(twilio_start({"From": "+15550100", "To": "+15550199"}))
    session = await agent.session(len(agent.sessions) - 1 if agent.sessions else 0, timeout=10)
    await until(lambda: session.applied_at is not None, 10)
    await session.send({"type": "ConversationText", "role": "user", "content": "hello there"})
    await asyncio.sleep(0.05)
    await ws.send(twilio_stop())
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.wait_closed(), 3)


def _show_json(spec: str) -> dict[str, Any]:
    out = io.StringIO()
    assert records_cli.main(["--records", spec, "show", CALL_SID, "--json"], out) == 0
    data: dict[str, Any] = json.loads(out.getvalue())
    return data


# ---------------------------------------------------------------------- the signature


def test_the_signature_covers_the_timestamp_and_the_body_and_the_example_checks_it() -> None:
    body = b'{"call_sid":"CA1"}'
    now = int(time.time())
    signature = sign(SECRET, now, body)
    assert signature.startswith("sha256=") and len(signature) == 7 + 64
    headers = {"X-Bridge-Timestamp": str(now), "X-Bridge-Signature": signature}
    from email.message import Message

    message = Message()
    for name, value in headers.items():
        message[name] = value
    assert webhook_receiver.verified(message, body)  # the documented check, independently
    assert verify(SECRET, str(now), signature, body)
    assert not webhook_receiver.verified(message, body.replace(b"CA1", b"CA2"))  # tampered
    assert not verify(SECRET, str(now), signature, body + b" ")
    assert not verify(SECRET, str(now + 1), signature, body)  # the timestamp is signed too
    assert not verify("another-secret", str(now), signature, body)
    old = now - 301  # a replay outside the window
    assert not verify(SECRET, str(old), sign(SECRET, old, body), body)
    stale = Message()
    stale["X-Bridge-Timestamp"], stale["X-Bridge-Signature"] = str(old), sign(SECRET, old, body)
    assert not webhook_receiver.verified(stale, body)


def test_the_docs_show_the_example_receiver_verbatim() -> None:
    docs = (ROOT / "docs" / "records.md").read_text()
    example = (ROOT / "examples" / "webhook_receiver.py").read_text()
    assert example.strip() in docs


# ---------------------------------------------------------------------- calls on loopback


def test_a_calls_record_arrives_once_signed_when_it_ends(spec: str) -> None:
    async def body(receiver: Receiver) -> Metrics:
        env = {"BRIDGE_WEBHOOK_SECRET": SECRET}
        async with (
            fake_agent() as agent,
            running_server(*_flags(receiver, spec), agent=agent, env=env) as server,
        ):
            await _short_call(server.port, agent)
            await until(lambda: receiver.verified, 10, "the webhook")
            await asyncio.sleep(1.5)  # more than a poll of the outbox: no second delivery
            metrics = server.metrics
            assert "twilio_bridge_webhook_deliveries_total 1" in metrics.render()
            return metrics

    with Receiver() as receiver:
        metrics = run(body(receiver))
    assert len(receiver.attempts) == 1 and len(receiver.verified) == 1
    headers, raw = receiver.attempts[0]
    assert headers["Idempotency-Key"] == CALL_SID
    assert headers["Content-Type"] == "application/json"
    assert verify(SECRET, headers["X-Bridge-Timestamp"], headers["X-Bridge-Signature"], raw)
    assert json.loads(raw) == _show_json(spec)  # the record, as 'calls show --json' gives it
    assert receiver.verified[0]["turns"][0]["text"] == "hello there"
    assert metrics.webhook_delivered == 1 and metrics.webhook_failures == {}


def test_a_receiver_failing_twice_still_gets_the_record_once(spec: str) -> None:
    async def body(receiver: Receiver) -> Metrics:
        env = {"BRIDGE_WEBHOOK_SECRET": SECRET}
        flags = _flags(receiver, spec, "--webhook-timeout", "0.5", "--webhook-backoff", "0.1")
        async with (
            fake_agent() as agent,
            running_server(*flags, agent=agent, env=env) as server,
        ):
            await _short_call(server.port, agent)
            await until(lambda: receiver.verified, 15, "the webhook")
            await asyncio.sleep(1.5)
            return server.metrics

    with Receiver(["500", "hang"]) as receiver:
        metrics = run(body(receiver))
    assert len(receiver.attempts) == 3 and len(receiver.verified) == 1
    assert [h["Idempotency-Key"] for h, _ in receiver.attempts] == [CALL_SID] * 3
    assert metrics.webhook_failures == {"status": 1, "timeout": 1}
    assert metrics.webhook_delivered == 1
    text = metrics.render()
    assert 'twilio_bridge_webhook_failures_total{reason="status"} 1' in text
    assert 'twilio_bridge_webhook_failures_total{reason="timeout"} 1' in text
    row = Database(spec).outbox_row(CALL_SID)
    assert row is not None and row["attempts"] == 3 and row["delivered_at"] is not None


async def _server_process(spec: str, url: str, agent_url: str, cwd: Path) -> tuple[Any, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEEPGRAM", "TWILIO"))}
    env.update(
        DEEPGRAM_API_KEY="test-key-0123456789",
        BRIDGE_WEBHOOK_SECRET=SECRET,
        PYTHONPATH=str(ROOT),
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--config",
        str(CONFIG),
        "--agent-url",
        agent_url,
        "--records",
        spec,
        "--webhook-url",
        url,
        "--webhook-backoff",
        "1.5",
        "--log-level",
        "DEBUG",
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=str(cwd),
    )
    assert process.stderr is not None
    while True:
        line = (await asyncio.wait_for(process.stderr.readline(), 15)).decode()
        assert line, "the server exited before listening"
        if "listening on http://127.0.0.1:" in line:
            return process, int(line.split("127.0.0.1:")[1].split()[0])


def test_a_restart_between_failures_still_delivers_exactly_once(spec: str, tmp_path: Path) -> None:
    """Attempt 1 fails (500) in the first process, which is then killed (SIGKILL: no clean
    shutdown); the second process finds the pending row, fails once more, then delivers."""

    def attempted_once() -> bool:
        row = Database(spec).outbox_row(CALL_SID)
        return row is not None and row["attempts"] == 1 and row["claimed_until"] is None

    async def body(receiver: Receiver) -> str:
        async with fake_agent() as agent:
            first, port = await _server_process(spec, receiver.url, agent.url, tmp_path)
            try:
                await _short_call(port, agent)
                await until(attempted_once, 10, "the first failed attempt")
            finally:
                first.kill()
                await first.wait()
            assert receiver.statuses == [500] and not receiver.verified
            second, _ = await _server_process(spec, receiver.url, agent.url, tmp_path)
            try:
                await until(lambda: receiver.verified, 15, "the webhook after the restart")
                await asyncio.sleep(1.5)
            finally:
                second.send_signal(signal.SIGTERM)
                assert second.stderr is not None
                output = await asyncio.wait_for(second.stderr.read(), 15)
                await second.wait()
            return output.decode()

    with Receiver(["500", "500"]) as receiver:
        output = run(body(receiver), timeout=60)
    assert len(receiver.attempts) == 3 and len(receiver.verified) == 1
    assert receiver.statuses == [500, 500, 204]
    assert "webhook delivered callSid=" in output and SECRET not in output


def test_two_deliverers_on_one_store_never_send_the_same_record(spec: str) -> None:
    store = RecordStore(spec)
    store.outbox = True
    sids = [f"CA-{i:02d}" for i in range(16)]
    for i, sid in enumerate(sids):
        _write_call(store, _full_record(sid, 1_700_000_000.0 + i))
    assert store.flush()
    store.close()
    with Receiver() as receiver:
        config = WebhookConfig(receiver.url, SECRET, timeout=2.0)
        metrics = Metrics()
        deliverers = [Deliverer(spec, config, metrics, poll=0.05) for _ in range(2)]
        try:
            deadline = time.monotonic() + 20
            while len(receiver.verified) < len(sids) and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.5)
        finally:
            for deliverer in deliverers:
                deliverer.close()
    keys = sorted(h["Idempotency-Key"] for h, _ in receiver.attempts)
    assert keys == sids  # each once: the claim lets one process send a row
    assert metrics.webhook_delivered == len(sids)


def test_a_webhook_is_given_up_after_max_attempts(spec: str) -> None:
    store = RecordStore(spec)
    store.outbox = True
    _write_call(store, _full_record("CA-gone"))
    assert store.flush()
    store.close()
    with Receiver(["500"] * 10) as receiver:
        config = WebhookConfig(receiver.url, SECRET, timeout=2.0, max_attempts=3, backoff=0.05)
        metrics = Metrics()
        deliverer = Deliverer(spec, config, metrics, poll=0.05)
        try:
            deadline = time.monotonic() + 10
            while metrics.webhook_gave_up == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.3)
        finally:
            deliverer.close()
    assert len(receiver.attempts) == 3 and metrics.webhook_failures == {"status": 3}
    assert metrics.webhook_gave_up == 1
    row = Database(spec).outbox_row("CA-gone")
    assert row is not None and row["failed_at"] is not None and row["last_error"] == "HTTP 500"


def test_webhook_url_without_a_secret_refuses_to_start(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("BRIDGE_WEBHOOK_SECRET", raising=False)
    monkeypatch.setenv("DEEPGRAM_API_KEY", "test-key-0123456789")
    args = ["--config", str(CONFIG), "--env-file", str(tmp_path / "none.env")]
    assert cli_main([*args, "--webhook-url", "http://127.0.0.1:9/x"]) == 2
    assert "--webhook-url needs BRIDGE_WEBHOOK_SECRET" in capsys.readouterr().err
    monkeypatch.setenv("BRIDGE_WEBHOOK_SECRET", SECRET)
    assert cli_main([*args, "--records", "none", "--webhook-url", "http://127.0.0.1:9/x"]) == 2
    assert "needs --records" in capsys.readouterr().err
    assert cli_main([*args, "--webhook-url", "ftp://example/x"]) == 2
    assert "invalid --webhook-url" in capsys.readouterr().err
