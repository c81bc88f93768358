"""--record-audio: the stereo WAV (caller left, agent as heard right), crash safety, retention,
and --recording-notice."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys
import time
import wave
from pathlib import Path

from websockets.asyncio.client import connect

from peers.audio import DECODE_TABLE
from server.recording import MULAW, RATE, SILENCE, WavTrack, recording_path
from server.records import RecordStore
from server.records import cli as records_cli
from server.records.store import Database
from tests.server.test_records import _full_record, _write_call
from tests.server_support import (
    CALL_SID,
    CONFIG,
    ROOT,
    caller,
    fake_agent,
    recv_until,
    run,
    running_server,
    twilio_connected,
    twilio_media,
    twilio_start,
    twilio_stop,
    until,
)

VOICE = 0x10  # a loud mu-law code: never mistaken for silence


def _channels(path: Path) -> tuple[int, int, list[int], list[int]]:
    """(channels, rate, left, right) of a 16-bit WAV."""
    with wave.open(str(path)) as wav:
        assert wav.getsampwidth() == 2
        channels, rate = wav.getnchannels(), wav.getframerate()
        samples = memoryview(wav.readframes(wav.getnframes())).cast("h").tolist()
    return channels, rate, samples[0::2], samples[1::2]


def _runs(samples: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each stretch of sound (runs of silence shorter than 10 ms are bridged)."""
    runs: list[tuple[int, int]] = []
    for i, value in enumerate(samples):
        if value == 0:
            continue
        if runs and i - runs[-1][1] <= 80:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def test_the_mulaw_table_matches_an_independent_decoder() -> None:
    assert MULAW == DECODE_TABLE
    assert MULAW[SILENCE] == 0 and MULAW[0x00] == -32124 and MULAW[0x80] == 32124


def test_a_clear_cuts_the_agent_channel_where_it_happened(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    track = WavTrack(str(path), origin=10.0)
    for i in range(100):  # the caller: 2 s of 20 ms frames, in real time
        now = 10.0 + i * 0.02
        if i == 0:
            track.agent_audio(now, bytes([VOICE]) * 2 * RATE)  # a 2 s reply, sent at once...
        elif i == 25:
            track.clear(now)  # ...cut after 0.5 s by a barge-in
        elif i == 50:
            track.agent_audio(now, bytes([VOICE]) * (RATE // 4))  # the next reply, 0.25 s
        track.caller_audio(now, bytes([VOICE]) * 160)
        track.advance(now)
    track.close(12.0)
    channels, rate, left, right = _channels(path)
    assert (channels, rate, len(left)) == (2, 8000, 2 * RATE)
    assert _runs(right) == [(0, 4000), (8000, 10000)]  # silent from the clear to the next reply
    assert _runs(left) == [(0, 16000)]


def test_recording_path_keeps_a_call_sid_inside_the_directory() -> None:
    assert recording_path("/rec", "CA123") == os.path.join("/rec", "CA123.wav")
    assert recording_path("/rec", "../../etc/x") == os.path.join("/rec", "______etc_x.wav")


def test_a_call_with_a_barge_in_is_recorded_as_the_caller_heard_it(tmp_path: Path) -> None:
    records = str(tmp_path / "calls.db")

    async def body() -> None:
        async with (
            fake_agent() as agent,
            running_server(
                "--records", records, "--record-audio", str(tmp_path), agent=agent
            ) as server,
        ):
            ws = await caller(server)
            await ws.send(twilio_connected())
            await ws.send(twilio_start({"From": "+15550100"}))
            session = await agent.session()
            await until(lambda: session.applied_at is not None)

            async def talk() -> None:  # the caller's line: 20 ms frames in real time
                for i in range(150):
                    await ws.send(twilio_media(bytes([VOICE]) * 160, seq=i + 2))
                    await asyncio.sleep(0.02)

            talking = asyncio.create_task(talk())
            await asyncio.sleep(0.3)
            await session.send(bytes([VOICE]) * 2 * RATE)  # a 2 s reply, sent at once
            await asyncio.sleep(0.5)
            await session.send({"type": "UserStartedSpeaking"})
            await recv_until(ws, "clear")
            await asyncio.sleep(0.6)
            await session.send(bytes([VOICE]) * (RATE // 4))  # the next reply, 0.25 s
            await talking
            await ws.send(twilio_stop())
            await until(lambda: not server.calls, what="the call to end")

    run(body())
    wav = tmp_path / f"{CALL_SID}.wav"
    channels, rate, left, right = _channels(wav)
    assert (channels, rate) == (2, 8000)
    record = Database(records).load(CALL_SID)
    assert record is not None and record.ended_at is not None
    assert record.recording == str(wav)
    duration = record.ended_at - record.started_at
    assert abs(len(left) / RATE - duration) < 0.25  # as long as the call
    first, second = _runs(right)  # two replies, the first cut short, silence between
    assert 0.3 * RATE < first[1] - first[0] < 1.0 * RATE  # heard about 0.5 s of the 2 s
    assert second[0] - first[1] > 0.4 * RATE  # silent from the clear until the next reply
    assert abs((second[1] - second[0]) - RATE // 4) < 0.05 * RATE
    assert sum(1 for s in left if s) > 2.5 * RATE  # the caller's 3 s (from SettingsApplied on)
    out = io.StringIO()
    assert records_cli.main(["--records", records, "show", CALL_SID], out) == 0
    assert f"recording: {wav}" in out.getvalue()


def test_a_recording_cut_by_a_crash_is_still_a_valid_wav(tmp_path: Path) -> None:
    async def body() -> None:
        async with fake_agent() as agent:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("DEEPGRAM", "TWILIO"))}
            env.update(DEEPGRAM_API_KEY="test-key-0123456789", PYTHONPATH=str(ROOT))
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", "0",
                "--config", str(CONFIG), "--agent-url", agent.url,
                "--records", str(tmp_path / "calls.db"), "--record-audio", str(tmp_path),
                stderr=asyncio.subprocess.PIPE, env=env, cwd=str(tmp_path),
            )  # fmt: skip
            assert process.stderr is not None
            try:
                while True:
                    line = (await asyncio.wait_for(process.stderr.readline(), 15)).decode()
                    assert line, "the server exited before listening"
                    if "listening on http://127.0.0.1:" in line:
                        port = int(line.split("127.0.0.1:")[1].split()[0])
                        break
                ws = await connect(f"ws://127.0.0.1:{port}/media-stream", compression=None)
                await ws.send(twilio_connected())
                await ws.send(twilio_start())
                session = await agent.session(timeout=10)
                await until(lambda: session.applied_at is not None, 10)
                await session.send(bytes([VOICE]) * RATE)
                for i in range(100):  # 2 s of the call, then the crash
                    await ws.send(twilio_media(bytes([VOICE]) * 160, seq=i + 2))
                    await asyncio.sleep(0.02)
            finally:
                process.kill()  # SIGKILL: no shutdown, no last flush
                await process.wait()
                with contextlib.suppress(Exception):
                    await ws.close()

    run(body(), timeout=40)
    channels, rate, left, right = _channels(tmp_path / f"{CALL_SID}.wav")
    assert (channels, rate) == (2, 8000)
    assert len(left) > 0.5 * RATE and any(right)  # what was flushed before the crash


def test_retention_deletes_the_recordings_of_purged_calls(tmp_path: Path) -> None:
    now = time.time()
    spec = str(tmp_path / "calls.db")
    old, new = _full_record("CA-old", now - 10 * 86400), _full_record("CA-new", now)
    store = RecordStore(spec)
    for record in (old, new):
        wav = tmp_path / f"{record.call_sid}.wav"
        wav.write_bytes(b"RIFF")
        record.recording = str(wav)
        _write_call(store, record)
    assert store.flush()
    store.close()
    store = RecordStore(spec, retention_days=7)
    assert store.flush()
    store.close()
    assert not (tmp_path / "CA-old.wav").exists() and (tmp_path / "CA-new.wav").exists()


def test_the_recording_notice_is_the_first_thing_the_agent_says() -> None:
    notice = "This call is recorded for quality and safety."

    async def greeting(*flags: str) -> str:
        async with fake_agent() as agent, running_server(*flags, agent=agent) as server:
            ws = await caller(server)
            await ws.send(twilio_start())
            session = await agent.session()
            await until(lambda: session.applied_at is not None)
            await ws.close()
            settings = next(t for t in session.texts if t.get("type") == "Settings")
            text: str = settings["agent"]["greeting"]
            return text

    plain = run(greeting())
    assert plain and not plain.startswith(notice)
    assert run(greeting("--recording-notice", notice)) == f"{notice} {plain}"
