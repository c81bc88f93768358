"""The command line, run as a real process: startup errors, serving, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from server.tools import ToolLoadError, ToolRegistry
from tests.server_support import (
    CONFIG,
    ROOT,
    caller,
    fake_agent,
    frame,
    run,
    twilio_connected,
    twilio_media,
    twilio_start,
    until,
)


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DEEPGRAM_API_KEY", "TWILIO_AUTH_TOKEN", "PUBLIC_URL", "DEEPGRAM_AGENT_URL")
    }
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def _run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_missing_key(tmp_path: Path) -> None:
    result = _run_cli(["--config", str(CONFIG)], _env(), tmp_path)
    line = _one_error_line(result)
    assert "DEEPGRAM_API_KEY" in line and result.returncode == 2


def test_env_file_is_read_and_does_not_override(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DEEPGRAM_API_KEY=from-dotenv\nPUBLIC_URL=ftp://bad\n")
    # the .env supplies the key; the real environment's PUBLIC_URL wins over the bad one
    result = _run_cli(
        ["--config", "missing.json"], _env(PUBLIC_URL="https://ok.example.com"), tmp_path
    )
    line = _one_error_line(result)
    assert "missing.json" in line  # got past the key and the public URL checks


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not valid JSON"),
        ('{"type": "Settings"}', "settings.audio"),
        (
            json.dumps(
                {
                    "type": "Settings",
                    "audio": {
                        "input": {"encoding": "mulaw", "sample_rate": 16000},
                        "output": {"encoding": "mulaw", "sample_rate": 8000},
                    },
                    "agent": {},
                }
            ),
            "settings.audio.input.sample_rate",
        ),
        (
            json.dumps(
                {
                    **json.loads(CONFIG.read_text()),
                    "agent": {"think": {"provider": {"type": "open_ai"}, "functions": {"a": 1}}},
                }
            ),
            "settings.agent.think.functions",
        ),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(content)
    result = _run_cli(["--config", str(path)], _env(DEEPGRAM_API_KEY="k"), tmp_path)
    line = _one_error_line(result)
    assert expected in line and result.returncode == 2


def test_unreadable_config(tmp_path: Path) -> None:
    result = _run_cli(
        ["--config", str(tmp_path / "nope.json")], _env(DEEPGRAM_API_KEY="k"), tmp_path
    )
    assert "cannot read config file" in _one_error_line(result)


@pytest.mark.parametrize(
    "args",
    [
        ["--port", "70000"],
        ["--chunk-ms", "0"],
        ["--request-timeout", "-1"],
        ["--agent-url", "http://x"],
        ["--public-url", "nope"],
        ["--tools", "no_such_module_x"],
        ["--dtmf-template", "no placeholder"],
        ["--hangup-grace", "0"],
    ],
)
def test_invalid_values_one_line(tmp_path: Path, args: list[str]) -> None:
    result = _run_cli(["--config", str(CONFIG), *args], _env(DEEPGRAM_API_KEY="k"), tmp_path)
    _one_error_line(result)
    assert result.returncode == 2


def test_port_taken(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = _run_cli(
            ["--host", "127.0.0.1", "--port", str(port), "--config", str(CONFIG)],
            _env(DEEPGRAM_API_KEY="k", TWILIO_AUTH_TOKEN="t"),
            tmp_path,
        )
    line = _one_error_line(result)
    assert "address already in use" in line and result.returncode == 1


def test_serves_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()

    async def body() -> None:
        async with fake_agent() as agent:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--config",
                str(CONFIG),
                "--agent-url",
                agent.url,
                "--shutdown-grace",
                "0.5",
                env=_env(DEEPGRAM_API_KEY="test-secret-key"),
                cwd=tmp_path,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                deadline = time.monotonic() + 8
                status = None
                while time.monotonic() < deadline:
                    try:
                        status = await asyncio.to_thread(_get_status, port)
                        break
                    except OSError:
                        await asyncio.sleep(0.1)
                assert status == 200

                class Srv:  # what tests.server_support.caller needs
                    pass

                srv = Srv()
                srv.port = port  # type: ignore[attr-defined]
                ws = await caller(srv)  # type: ignore[arg-type]
                await ws.send(twilio_connected())
                await ws.send(twilio_start())
                session = await agent.session()
                await until(lambda: session.applied_at is not None)
                await ws.send(twilio_media(frame(1), 2))
                await until(lambda: len(session.audio) == 160)
                assert session.headers["Authorization"] == "Token test-secret-key"
                proc.send_signal(signal.SIGTERM)
                _, err = await asyncio.wait_for(proc.communicate(), 10)
                assert proc.returncode == 0
                assert await _closed(ws) and ws.close_code == 1000
                await ws.close()
                await asyncio.wait_for(session.closed.wait(), 2)
                stderr = err.decode()
                assert "TWILIO_AUTH_TOKEN is not set" in stderr
                assert stderr.count("TWILIO_AUTH_TOKEN is not set") == 1
                assert "reason=shutdown" in stderr
                assert "test-secret-key" not in stderr
                assert "Traceback" not in stderr
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()

    run(body(), timeout=40)


async def _closed(ws: object) -> bool:
    from websockets.exceptions import ConnectionClosed

    try:
        while True:
            await asyncio.wait_for(ws.recv(), 2)  # type: ignore[attr-defined]
    except ConnectionClosed:
        return True


def _get_status(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
        return int(response.status)


def test_tools_module_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_tools_mod.py").write_text(
        "async def hours(args):\n    return {'day': args.get('day'), 'open': '9'}\n"
        "def echo(args):\n    return 'echo ' + args.get('x', '')\n"
        "TOOLS = {'hours': hours, 'echo': echo}\nOTHER = {'other': echo}\n"
    )
    (tmp_path / "bad_tools_mod.py").write_text("TOOLS = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = ToolRegistry.load(["my_tools_mod", "my_tools_mod:OTHER"])
    assert sorted(registry.tools) == ["echo", "hours", "other"]

    async def body() -> None:
        assert await registry.run("hours", {"day": "mon"}) == ('{"day": "mon", "open": "9"}', True)
        assert await registry.run("echo", {"x": "hi"}) == ("echo hi", True)
        content, ok = await registry.run("nope", {})
        assert not ok and "unknown tool" in json.loads(content)["error"]

    run(body())
    with pytest.raises(ToolLoadError):
        ToolRegistry.load(["bad_tools_mod"])


def test_demo_subcommand_is_routed(tmp_path: Path) -> None:
    """``python -m server demo`` reaches peers/demo.py's own parser (the demo ships)."""
    assert (ROOT / "peers" / "demo.py").is_file(), "peers/demo.py is missing"
    result = _run_cli(["demo", "--help"], _env(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m server demo"), result.stdout
    assert "--speed" in result.stdout and "--wav" in result.stdout


def test_transfer_targets_without_public_url_refuse_to_start(tmp_path: Path) -> None:
    """Without --public-url a failed transfer could not come back: say so at startup."""
    args = ["--config", str(CONFIG), "--transfer-target", "front_desk=+15551230000"]
    result = _run_cli(args, _env(DEEPGRAM_API_KEY="k"), tmp_path)
    line = _one_error_line(result)
    assert "--transfer-target needs --public-url" in line and result.returncode == 2
