"""``/metrics`` shows the whole server under ``--workers N``, whichever process answers.

- A real ``python -m server --workers 2`` on loopback: calls land on both processes, and every
  scrape (each on a new connection, so spread over both) counts all of them: calls started and
  ended exactly, calls active while they run. A clean stop removes the shared directory.
- A worker that has exited still counts in the counters (its calls happened) but no longer in
  ``calls_active`` (Prometheus's ``livesum``); histograms (turn latency) add up bucket by bucket.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect

from server.metrics import MULTIPROCESS_ENV, Metrics
from tests.server_support import (
    CONFIG,
    ROOT,
    fake_agent,
    frame,
    http,
    run,
    twilio_media,
    twilio_start,
    twilio_stop,
    until,
)

_LISTENING = re.compile(r"(\[worker \d+\])?: listening on .* \(pid (\d+);")
_STARTED = re.compile(r"(\[worker \d+\])?: call started .*streamSid=(\w+)")
_ENDED = re.compile(r"(\[worker \d+\])?: call ended .*streamSid=(\w+) .*reason=(\w+)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sid(i: int) -> str:
    return f"MZ{i:032x}"


def _value(text: str, sample: str) -> float:
    """The value of one sample line (name and labels exactly as rendered); 0 if absent."""
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def _scrape(port: int) -> str:
    """One scrape on a new connection, so SO_REUSEPORT may hand it to either process."""
    raw = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    result = await http(port, raw)
    assert result.status == 200
    return result.text


def test_metrics_add_up_across_two_workers(tmp_path: Path) -> None:
    port, scrapes = _free_port(), 12

    async def body() -> None:
        async with fake_agent() as agent:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO", "DEEPGRAM"))}
            env.pop(MULTIPROCESS_ENV, None)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port),
                "--config", str(CONFIG), "--agent-url", agent.url, "--workers", "2",
                env={**env, "DEEPGRAM_API_KEY": "k", "PYTHONPATH": str(ROOT),
                     "TMPDIR": str(tmp_path)},
                cwd=ROOT, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            lines: list[str] = []

            async def read_stderr() -> None:
                assert proc.stderr is not None
                async for line in proc.stderr:
                    lines.append(line.decode())

            reader = asyncio.create_task(read_stderr())
            socks: list[ClientConnection] = []
            try:
                await until(
                    lambda: sum(bool(_LISTENING.search(x)) for x in lines) == 2, 20, "listening"
                )
                shared = list(tmp_path.glob("twilio-bridge-metrics-*"))
                assert len(shared) == 1 and len(list(shared[0].glob("*.metrics"))) == 2, shared

                def served_by() -> dict[str, str]:
                    return {m[2]: m[1] or "parent" for x in lines if (m := _STARTED.search(x))}

                # Calls until both processes serve some (each has a 1 in 2 chance per call).
                url = f"ws://127.0.0.1:{port}/media-stream"
                while len(socks) < 6 or len(set(served_by().values())) < 2:
                    assert len(socks) < 40, f"every call landed in {set(served_by().values())}"
                    ws = await connect(url, compression=None, open_timeout=3, close_timeout=2)
                    await ws.send(twilio_start(stream_sid=_sid(len(socks))))
                    socks.append(ws)
                    await until(lambda: len(served_by()) == len(socks), 5, "call started")
                calls = len(socks)
                await until(lambda: all(s.applied_at for s in agent.sessions), 5, "applied")
                for i, ws in enumerate(socks):
                    await ws.send(twilio_media(frame(i), 2, stream_sid=_sid(i)))

                for _ in range(scrapes):  # while every call is in progress
                    text = await _scrape(port)
                    assert _value(text, "twilio_bridge_calls_started_total") == calls, text
                    assert _value(text, "twilio_bridge_calls_active") == calls, text

                for i, ws in enumerate(socks):
                    await ws.send(twilio_stop(stream_sid=_sid(i)))
                await until(
                    lambda: sum(bool(_ENDED.search(x)) for x in lines) == calls, 5, "calls ended"
                )
                for _ in range(scrapes):
                    text = await _scrape(port)
                    assert _value(text, "twilio_bridge_calls_started_total") == calls, text
                    ended = 'twilio_bridge_calls_ended_total{reason="hangup"}'
                    assert _value(text, ended) == calls, text
                    total = re.findall(r"^twilio_bridge_calls_ended_total\{.*\} (\S+)$", text, re.M)
                    assert sum(map(float, total)) == calls, text

                # The gauge of a process that ended a call is published within a second.
                async def idle() -> bool:
                    return _value(await _scrape(port), "twilio_bridge_calls_active") == 0

                for _ in range(40):
                    if await idle():
                        break
                    await asyncio.sleep(0.1)
                assert await idle()

                proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(proc.wait(), 15) == 0
                await asyncio.wait_for(reader, 5)
            finally:
                for ws in socks:
                    await ws.close()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            assert "Traceback" not in "".join(lines)
            assert not list(tmp_path.glob("twilio-bridge-metrics-*")), "shared dir left behind"

    run(body(), timeout=60)


_WORKER = textwrap.dedent(
    """
    import sys
    from server.metrics import Metrics

    metrics = Metrics(lambda: 3)  # three calls in progress in this worker
    metrics.calls_started += 5
    metrics.call_ended("hangup")
    metrics.caller_audio_bytes += 160
    metrics.observe_turn("first_audio", 0.8)
    metrics.publish()
    print("published", flush=True)
    sys.stdin.read()  # live until the test closes our stdin
    """
)


def test_an_exited_worker_keeps_its_counters_and_drops_its_gauge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MULTIPROCESS_ENV, str(tmp_path))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen(
        [sys.executable, "-c", _WORKER], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert worker.stdout is not None and worker.stdout.readline() == b"published\n"
        metrics = Metrics(lambda: 1)
        metrics.calls_started += 1
        metrics.caller_audio_bytes += 320
        metrics.observe_turn("first_audio", 1.1)
        metrics.observe_turn("first_mark", 1.3)

        def sample(name: str) -> float:
            return _value(metrics.render(), f"twilio_bridge_{name}")

        assert sample("calls_active") == 4
        assert sample("calls_started_total") == 6
        assert sample('calls_ended_total{reason="hangup"}') == 1
        assert sample('audio_bytes_total{direction="caller_to_agent"}') == 480
        turn = "turn_latency_seconds"
        assert sample(f'{turn}_bucket{{stage="first_audio",le="1.0"}}') == 1  # the worker's 0.8
        assert sample(f'{turn}_count{{stage="first_audio"}}') == 2
        assert sample(f'{turn}_count{{stage="first_mark"}}') == 1
        assert sample(f'{turn}_sum{{stage="first_audio"}}') == pytest.approx(1.9)
        assert worker.stdin is not None
        worker.stdin.close()
        assert worker.wait(10) == 0
        assert sample("calls_active") == 1  # its calls are gone with it
        assert sample("calls_started_total") == 6  # but they happened
        assert sample('audio_bytes_total{direction="caller_to_agent"}') == 480
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
