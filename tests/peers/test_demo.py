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
from peers.demo import FRONT_DESK

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
    # The demo exits 0 only if the bridge hung up the first call, Twilio would have objected
    # to nothing, no caller audio reached the agent before SettingsApplied, and the second
    # call was updated with <Dial> only once every mark of the announcement was echoed.
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
    # After the summaries, the records: the same text as 'calls show', with what was heard.
    commands = [
        part.split(")")[0].split() for part in out.split("the call record (python -m server ")[1:]
    ]
    assert len(commands) == 2, out
    shown_calls = [show(command, tmp_path, env) for command in commands]
    for command, shown_text in zip(commands, shown_calls, strict=True):
        assert command[:3] == ["calls", "--records", "demo-calls.db"] and command[3] == "show"
        assert shown_text in out
    command, shown = commands[0], shown_calls[0]
    sid = command[4]
    assert "end: tool" in shown and "assistant" in shown
    assert "partly heard" in shown or "cleared" in shown  # the barged-in reply
    assert f"recording: recordings/{sid}.wav" in shown
    with wave.open(str(tmp_path / "recordings" / f"{sid}.wav")) as stereo:
        assert stereo.getnchannels() == 2 and stereo.getframerate() == 8000

    # The second call: the caller asks for the front desk and is transferred.
    transfer = out.split("second call:")[1]
    assert "caller  hears the announcement" in transfer and "transfer_call ->" in transfer
    assert f"twilio  call updated: <Dial>{FRONT_DESK}</Dial>" in transfer, transfer
    assert re.search(r"^marks not echoed at the update +0$", transfer, re.M), transfer
    heard = stamp(transfer, "caller  has heard the announcement (mark ")
    updated = stamp(transfer, f"twilio  call updated: <Dial>{FRONT_DESK}</Dial>")
    assert updated >= heard, transfer  # the update waited for what the caller heard
    assert re.search(r"^dial action +200 .*<Hangup/>", transfer, re.M), transfer
    assert "\nend: transfer (transferred to front_desk)\n" in shown_calls[1]


def show(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    """What ``python -m server calls ... show SID`` prints."""
    shown = subprocess.run(
        [sys.executable, "-m", "server", *command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


def stamp(out: str, text: str) -> float:
    """The timeline stamp of the first line with ``text``."""
    found = re.search(rf"^\[ *([\d.]+)s\] {re.escape(text)}", out, re.M)
    assert found is not None, f"no {text!r} in {out}"
    return float(found.group(1))
