"""Audio helpers for the local peers: G.711 mu-law, shipped clips, WAV output and a tiny VAD.

Everything here is pure Python on purpose: ``audioop`` is gone in Python 3.13, and the peers
must run anywhere the bridge runs. Audio is always 8 kHz mono mu-law, the format Twilio Media
Streams carries and the one the bridge asks the Deepgram agent for, so no resampling exists.
"""

from __future__ import annotations

import math
import sys
import wave
from array import array
from importlib import resources
from os import PathLike
from typing import Literal, NamedTuple

SAMPLE_RATE = 8000
"""Samples (and mu-law bytes) per second."""
BYTES_PER_MS = SAMPLE_RATE // 1000
FRAME_BYTES = 160
"""One 20 ms frame, the size Twilio sends."""
SILENCE_BYTE = 0xFF
"""Mu-law code of a zero sample: what digital silence looks like on the wire."""
SILENCE_FRAME = bytes([SILENCE_BYTE]) * FRAME_BYTES

_BIAS = 0x84
_CLIP = 32635
_BIG_ENDIAN = sys.byteorder == "big"
_PACKAGE = __name__.rpartition(".")[0]


def _decode_sample(code: int) -> int:
    """G.711 mu-law expansion of one code (bits are stored inverted on the wire)."""
    code = ~code & 0xFF
    magnitude = (((code & 0x0F) << 3) + _BIAS) << ((code >> 4) & 0x07)
    return _BIAS - magnitude if code & 0x80 else magnitude - _BIAS


DECODE_TABLE: tuple[int, ...] = tuple(_decode_sample(code) for code in range(256))
"""Mu-law code -> 16-bit linear sample. A table is the fastest decoder pure Python has."""
_SQUARES: tuple[int, ...] = tuple(sample * sample for sample in DECODE_TABLE)


def encode_sample(sample: int) -> int:
    """G.711 mu-law compression of one 16-bit linear sample (clipped like the reference code)."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(-sample if sign else sample, _CLIP) + _BIAS
    exponent = magnitude.bit_length() - 8
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def mulaw_to_pcm(mulaw: bytes) -> bytes:
    """Decode mu-law bytes to 16-bit little-endian PCM (what WAV files hold)."""
    samples = array("h", [DECODE_TABLE[code] for code in mulaw])
    if _BIG_ENDIAN:
        samples.byteswap()
    return samples.tobytes()


def pcm_to_mulaw(pcm: bytes) -> bytes:
    """Encode 16-bit little-endian PCM to mu-law bytes."""
    if len(pcm) % 2:
        raise ValueError("16-bit PCM must have an even number of bytes")
    samples = array("h")
    samples.frombytes(pcm)
    if _BIG_ENDIAN:
        samples.byteswap()
    return bytes(encode_sample(sample) for sample in samples)


def rms(mulaw: bytes) -> float:
    """Root-mean-square level of mu-law audio on the 16-bit scale (0 for empty input)."""
    if not mulaw:
        return 0.0
    return math.sqrt(sum(map(_SQUARES.__getitem__, mulaw)) / len(mulaw))


def silence(ms: int) -> bytes:
    """``ms`` milliseconds of mu-law digital silence."""
    return bytes([SILENCE_BYTE]) * (ms * BYTES_PER_MS)


def tone(frequency: float, ms: int, amplitude: float = 0.25) -> bytes:
    """A sine tone in mu-law, with 5 ms fades so joined tones do not click.

    The local agent cannot synthesize speech, so tones stand in for speech it has no clip for.
    """
    count = ms * BYTES_PER_MS
    fade = min(5 * BYTES_PER_MS, count // 2)
    step = 2 * math.pi * frequency / SAMPLE_RATE
    peak = amplitude * 32767
    out = bytearray(count)
    for n in range(count):
        gain = min(1.0, (n + 1) / fade, (count - n) / fade) if fade else 1.0
        out[n] = encode_sample(round(peak * gain * math.sin(step * n)))
    return bytes(out)


def load_clip(name: str) -> bytes:
    """Raw mu-law bytes of a shipped clip, e.g. ``load_clip("caller-hello")``.

    Loaded through importlib.resources so it works from a wheel or a zip as well as a checkout.
    """
    resource = resources.files(_PACKAGE).joinpath("audio", f"{name}.ulaw")
    if not resource.is_file():
        raise FileNotFoundError(f"no shipped clip named {name!r}")
    return resource.read_bytes()


def write_wav(path: str | PathLike[str], mulaw: bytes) -> None:
    """Write mu-law audio as a 16-bit PCM mono 8 kHz WAV file that any player opens."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(mulaw_to_pcm(mulaw))


class VadEvent(NamedTuple):
    """A change of speech state, located in the stream fed to the :class:`Vad`."""

    kind: Literal["start", "end"]
    offset: int
    """Byte offset into everything fed so far: the first voiced frame for ``start``, the end
    of the last voiced frame for ``end``. Bytes equal samples, so ``offset / 8000`` is seconds."""


class Vad:
    """Energy-based voice-activity detector over 20 ms mu-law frames.

    Speech starts after ``start_ms`` of consecutive frames above ``threshold`` (RMS on the
    16-bit scale) and ends after ``end_ms`` of consecutive frames below it. That is crude but
    deterministic: it never fires on digital silence and always fires on the shipped clips, which
    is what the local agent needs to behave like a turn-taking voice agent in tests.
    """

    def __init__(
        self, threshold: float = 300.0, start_ms: int = 60, end_ms: int = 600, frame_ms: int = 20
    ) -> None:
        self.frame_bytes = frame_ms * BYTES_PER_MS
        self._energy_limit = threshold * threshold * self.frame_bytes
        self._start_frames = max(1, start_ms // frame_ms)
        self._end_frames = max(1, end_ms // frame_ms)
        self._pending = b""
        self._offset = 0
        self._run = 0
        self._run_start = 0
        self._last_voiced_end = 0
        self.speaking = False

    def feed(self, mulaw: bytes) -> list[VadEvent]:
        """Consume audio of any length; return the speech starts and ends it completed."""
        data = self._pending + mulaw if self._pending else mulaw
        size = self.frame_bytes
        whole = len(data) - len(data) % size
        self._pending = data[whole:]
        events: list[VadEvent] = []
        for start in range(0, whole, size):
            event = self._frame(data[start : start + size])
            if event is not None:
                events.append(event)
        return events

    def _frame(self, frame: bytes) -> VadEvent | None:
        voiced = sum(map(_SQUARES.__getitem__, frame)) > self._energy_limit
        frame_start = self._offset
        self._offset += len(frame)
        if voiced:
            self._last_voiced_end = self._offset
        if voiced != self.speaking:
            if self._run == 0:
                self._run_start = frame_start
            self._run += 1
        else:
            self._run = 0
        if self.speaking and self._run >= self._end_frames:
            self.speaking, self._run = False, 0
            return VadEvent("end", self._last_voiced_end)
        if not self.speaking and self._run >= self._start_frames:
            self.speaking, self._run = True, 0
            return VadEvent("start", self._run_start)
        return None
