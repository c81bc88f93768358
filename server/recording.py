"""``--record-audio DIR``: one stereo WAV per call, written in the background.

Left is the caller, right is the agent as the caller heard it. Both channels sit on one
timeline, the call driver's clock from Twilio's ``start`` (8000 frames a second):

- the caller's audio is placed when it reached the bridge (``SendAgentAudio.since``) and runs
  on contiguously from there; a gap of more than :data:`GAP_MS` (audio dropped or not sent) is
  kept as silence, so the channel stays aligned with the clock;
- the agent's audio plays out sequentially from when it was sent to Twilio: a chunk starts when
  it was sent or when the one before it ends, whichever is later;
- a ``clear`` (barge-in) cuts the agent's audio that had not played by then, so the right
  channel stops where the clear cut it and stays silent until the next reply is sent;
- silence (mu-law 0xFF) fills every gap; the file ends at the call's end.

The driver only puts small tuples on a bounded queue (:class:`CallAudio`; a full queue drops the
item, counted); a thread decodes mu-law to 16-bit PCM with a table and appends to the file. It
writes what is older than :data:`MARGIN_MS` every :data:`FLUSH_MS` of the call and rewrites the
RIFF and data sizes each time, so after a crash the file is a valid WAV up to its last flush.
Memory per call is bounded by that margin plus the agent audio sent ahead of playback. Caller
audio dropped from the pre-roll (before SettingsApplied) never reaches the driver and is silence.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import struct
import threading
from base64 import b64decode
from collections.abc import Iterable
from typing import Any, BinaryIO

from sansio import Action, CallEnded, CallStarted, ClearTwilio, SendAgentAudio, SendTwilioMedia

log = logging.getLogger("server.recording")

RATE = 8000
SILENCE = 0xFF  # mu-law code of 0
FLUSH_MS = 500
MARGIN_MS = 500  # caller audio this late still lands in place
GAP_MS = 60
QUEUE_ITEMS = 50_000
_HEADER = 44


def _decode(code: int) -> int:
    """G.711 mu-law to a 16-bit sample."""
    code = ~code & 0xFF
    magnitude = (((code & 0x0F) << 3) + 0x84) << ((code & 0x70) >> 4)
    return 0x84 - magnitude if code & 0x80 else magnitude - 0x84


MULAW = tuple(_decode(code) for code in range(256))
_STEREO = tuple(
    struct.pack("<hh", MULAW[left], MULAW[right]) for left in range(256) for right in range(256)
)


def stereo_pcm(left: bytes | bytearray, right: bytes | bytearray) -> bytes:
    """Interleaved 16-bit little-endian frames from two equal-length mu-law channels."""
    table = _STEREO
    return b"".join([table[(a << 8) | b] for a, b in zip(left, right, strict=True)])


def recording_path(directory: str, call_sid: str) -> str:
    """Where a call's WAV goes: ``DIR/<CallSid>.wav`` (other characters become ``_``)."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", call_sid)[:120] or "call"
    return os.path.join(directory, f"{name}.wav")


def _header(frames: int) -> bytes:
    data = frames * 4
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 2, RATE, RATE * 4, 4, 16)
        + b"data"
        + struct.pack("<I", data)
    )


class WavTrack:
    """One call's file and its two channels not yet written (used by the writer thread only)."""

    def __init__(self, path: str, origin: float) -> None:
        self.path = path
        self.origin = origin
        self.file: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.file.write(_header(0))
        self.file.flush()
        self.written = 0  # frames in the file
        self.caller = bytearray()  # mu-law from frame ``written`` on
        self.agent = bytearray()
        self.caller_end = 0  # the frame after the caller's last byte
        self.agent_end = 0  # the earliest frame the agent's next audio can start at
        self.flushed_at = origin

    def frame(self, t: float) -> int:
        return max(0, round((t - self.origin) * RATE))

    def _put(self, buffer: bytearray, at: int, data: bytes) -> None:
        offset = at - self.written
        if offset < 0:  # older than what is already written: keep only the rest
            data = data[-offset:]
            offset = 0
        end = offset + len(data)
        if len(buffer) < end:
            buffer.extend(bytes([SILENCE]) * (end - len(buffer)))
        buffer[offset:end] = data

    def caller_audio(self, since: float, data: bytes) -> None:
        ideal = self.frame(since)
        at = ideal if ideal > self.caller_end + GAP_MS * RATE // 1000 else self.caller_end
        self._put(self.caller, at, data)
        self.caller_end = at + len(data)

    def agent_audio(self, now: float, data: bytes) -> None:
        at = max(self.agent_end, self.frame(now))
        self._put(self.agent, at, data)
        self.agent_end = at + len(data)

    def clear(self, now: float) -> None:
        cut = max(self.written, self.frame(now))
        if cut < self.agent_end:
            del self.agent[cut - self.written :]
            self.agent_end = cut

    def advance(self, now: float) -> None:
        if (now - self.flushed_at) * 1000 >= FLUSH_MS:
            self.flushed_at = now
            self.flush(self.frame(now) - MARGIN_MS * RATE // 1000)

    def flush(self, upto: int) -> None:
        """Write the frames before ``upto`` and make the header match the file."""
        count = upto - self.written
        if count <= 0:
            return
        left = self._take(self.caller, count)
        right = self._take(self.agent, count)
        file = self.file
        file.write(stereo_pcm(left, right))
        self.written = upto
        file.seek(0)
        file.write(_header(upto))
        file.seek(0, os.SEEK_END)
        file.flush()

    @staticmethod
    def _take(buffer: bytearray, count: int) -> bytes:
        chunk = bytes(buffer[:count])
        del buffer[:count]
        return chunk + bytes([SILENCE]) * (count - len(chunk))

    def close(self, now: float) -> None:
        """The call ended at ``now``: write up to there (agent audio beyond it was not heard)."""
        self.flush(self.frame(now))
        self.file.close()


class CallAudio:
    """The driver's handle on one call's recording: feed it every batch of the core's actions."""

    __slots__ = ("_recorder", "track")

    def __init__(self, recorder: AudioRecorder) -> None:
        self._recorder = recorder
        self.track: WavTrack | None = None  # the writer thread's

    def feed(self, actions: Iterable[Action], now: float) -> None:
        put = self._recorder.submit
        for action in actions:
            kind = type(action)
            if kind is SendAgentAudio:
                put((self, "caller", now, action.since, action.audio))  # type: ignore[attr-defined]
            elif kind is SendTwilioMedia:
                put((self, "agent", now, now, action.text))  # type: ignore[attr-defined]
            elif kind is ClearTwilio:
                put((self, "clear", now, now, None))
            elif kind is CallStarted:
                sid = action.call_sid or action.stream_sid  # type: ignore[attr-defined]
                put((self, "open", now, now, recording_path(self._recorder.directory, sid)))
            elif kind is CallEnded:
                put((self, "end", now, now, None))


Item = tuple[CallAudio, str, float, float, Any]


class AudioRecorder:
    """The server's recording writer: one thread, one bounded queue, every call's WAV."""

    def __init__(self, directory: str, max_queue: int = QUEUE_ITEMS) -> None:
        self.directory = directory
        self.dropped = 0
        self._open: set[CallAudio] = set()
        self._last = 0.0
        self._queue: queue.Queue[Item | None] = queue.Queue(max_queue)
        self._thread = threading.Thread(target=self._run, name="audio-recorder", daemon=True)
        self._thread.start()

    def call(self) -> CallAudio:
        return CallAudio(self)

    def submit(self, item: Item) -> None:
        """Never blocks the audio path: a full queue drops the item (counted)."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("recording queue full: %d item(s) dropped", self.dropped)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, end the calls still open, and stop the thread."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            try:
                self._handle(item)
            except Exception as exc:  # one broken file must not stop the others
                handle = item[0]
                log.error("recording failed (%s): %s", type(exc).__name__, exc)
                self._drop(handle)
        for handle in list(self._open):
            track = handle.track
            if track is not None:
                with contextlib.suppress(Exception):
                    track.close(max(self._last, track.flushed_at))
            self._drop(handle)

    def _drop(self, handle: CallAudio) -> None:
        track = handle.track
        handle.track = None
        self._open.discard(handle)
        if track is not None:
            with contextlib.suppress(Exception):
                track.file.close()

    def _handle(self, item: Item) -> None:
        handle, op, now, since, data = item
        self._last = now
        if op == "open":
            self._drop(handle)
            handle.track = WavTrack(data, now)
            self._open.add(handle)
            return
        track = handle.track
        if track is None:
            return
        if op == "caller":
            track.caller_audio(since, data)
        elif op == "agent":
            payload = json.loads(data)["media"]["payload"]
            track.agent_audio(now, b64decode(payload))
        elif op == "clear":
            track.clear(now)
        elif op == "end":
            track.close(now)
            handle.track = None
            self._open.discard(handle)
            return
        track.advance(now)
