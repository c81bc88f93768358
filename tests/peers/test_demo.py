"""`python -m server demo` end to end, as a user runs it: an empty folder, no key, no network."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import wave
from pathlib import Path

from peers.agent import GOODBYE_TEXT, LocalAgent
from peers.audio import BYTES_PER_MS

ROOT = Path(__file__).resolve().parents[2]
SPEED = 4


def test_the_packaged_default_config_is_the_repository_config() -> None:
    packaged = json.loads((ROOT / "server" / "default_config.json").read_text())
    assert packaged == json.loads((ROOT / "config.json").read_text())


def test_demo_runs_a_whole_call_and_writes_what_the_caller_heard(tmp_path: Path) -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("DEEPGRAM_API_KEY", "TWILIO_AUTH_TOKEN")
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "server",
            "demo",
            "--speed",
            str(SPEED),
            "--record-audio",
            "recordings",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    # The demo exits 0 only if the bridge hung up, Twilio would have objected to nothing and
    # no caller audio reached the agent before SettingsApplied.
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"^audio before SettingsApplied +0 B$", out, re.M), out
    assert "barge-in" in out and "playback was cleared" in out
    assert "end_call" in out and "closed by the bridge, code 1000: tool: end_call" in out
    # The hangup waits for the goodbye: the agent starts it (its transcript line) only after
    # the end_call answer, and the bridge ends the call once the caller has played it all.
    stamps: dict[str, float] = {}
    for line in out.splitlines():
        if (found := re.match(r"\[ *([\d.]+)s\] (.*)$", line)) is not None:
            if f"assistant: {GOODBYE_TEXT}" in found.group(2):
                stamps.setdefault("goodbye", float(found.group(1)))
            elif "bridge  call ended" in found.group(2):
                stamps.setdefault("ended", float(found.group(1)))
    assert "goodbye" in stamps and "ended" in stamps, out
    playing = len(LocalAgent().goodbye_audio) / BYTES_PER_MS / 1000 / SPEED
    assert stamps["ended"] - stamps["goodbye"] >= 0.8 * playing, out
    with wave.open(str(tmp_path / "demo-call.wav")) as wav:
        assert wav.getsampwidth() == 2 and wav.getframerate() == 8000 and wav.getnchannels() == 1
        frames = wav.readframes(wav.getnframes())
        assert wav.getnframes() / 8000 > 2.0
    samples = memoryview(frames).cast("h")
    assert max(abs(s) for s in samples) > 1000  # the agent's speech, not silence
    # After the summary, the record: the same text as 'calls show', with what was heard.
    command = out.split("the call record (python -m server ")[1].split(")")[0].split()
    assert command[:3] == ["calls", "--records", "demo-calls.db"] and command[3] == "show"
    sid = command[4]
    shown = subprocess.run(
        [sys.executable, "-m", "server", *command],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout in out
    assert "end: tool" in shown.stdout and "assistant" in shown.stdout
    assert "partly heard" in shown.stdout or "cleared" in shown.stdout  # the barged-in reply
    assert f"recording: recordings/{sid}.wav" in shown.stdout
    with wave.open(str(tmp_path / "recordings" / f"{sid}.wav")) as stereo:
        assert stereo.getnchannels() == 2 and stereo.getframerate() == 8000
