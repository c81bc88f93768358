"""TwilioCaller: Twilio's side of a bidirectional ``<Connect><Stream>`` Media Stream.

It connects to any bridge WebSocket URL and behaves as Twilio does: ``connected`` then ``start``,
then a 20 ms mu-law ``media`` frame every 20 ms for the whole call (silence when the script is not
speaking), ``dtmf`` and ``stop`` on request, all with string counters. What the bridge sends back is
played on a real-time clock like Twilio's buffer: ``mark`` is echoed when the audio before it has
played (at once if nothing is buffered), ``clear`` drops the buffer and echoes pending marks. Every
message Twilio would reject (31950/31951) is recorded in ``violations`` instead of raising, and the
audio the caller heard can be saved as a WAV. It imports nothing from the bridge under test.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import math
import os
import random
import secrets
import sys
import time
import urllib.request
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from types import TracebackType
from typing import Any, Literal, Protocol, get_args
from urllib.parse import urlencode, urlsplit, urlunsplit
from xml.etree import ElementTree

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from . import twilio_messages
from .audio import FRAME_BYTES, SILENCE_FRAME, load_clip, silence, write_wav

FRAME_MS = 20
DTMF_DIGITS = frozenset("0123456789*#ABCD")
MAX_VIOLATIONS = 200
"""Distinct violations kept; a broken bridge repeats the same mistake 50 times a second."""

MediaHook = Callable[[bytes, float], None]
"""``on_media(payload, t)``: every media payload received, ``t = time.perf_counter()``."""
FrameHook = Callable[[int, bytes], bytes]
"""``frame_hook(chunk, payload) -> payload``: rewrites each outgoing frame right before sending."""
MarkHook = Callable[[str, float], None]
"""``on_mark(name, t)``: a mark is echoed (it has played out), ``t = time.perf_counter()``."""


class StreamRegistry(Protocol):
    """Where a simulated Twilio keeps live streams (e.g. ``peers.twilio_api.TwilioApiPeer``), so
    that a REST call update can end this call's stream as Twilio does: ``stop``, then close."""

    def register(self, call_sid: str, stop: Callable[[], Awaitable[None]]) -> None: ...

    def unregister(self, call_sid: str) -> None: ...


_MEDIA_KEYS = frozenset({"event", "streamSid", "media"})
_MARK_KEYS = frozenset({"event", "streamSid", "mark"})
_CLEAR_KEYS = frozenset({"event", "streamSid"})
_PAYLOAD_KEYS = frozenset({"payload"})
_NAME_KEYS = frozenset({"name"})


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str] | None = None) -> str:
    """``X-Twilio-Signature``: base64 HMAC-SHA1 of the URL followed by the sorted parameters.

    For a Media Stream upgrade Twilio signs the ``wss://`` URL from the TwiML with no parameters.
    """
    fields = params or {}
    data = url + "".join(name + fields[name] for name in sorted(fields))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


SignVariant = Literal["exact", "trailing_slash", "port"]
"""How Twilio spelled the URL it signed: as configured, with a trailing ``/``, or with the
scheme's port written out (``:443``); a bridge must accept all three."""


def signed_url_variant(url: str, variant: SignVariant) -> str:
    """``url`` as Twilio may have signed it (see :data:`SignVariant`)."""
    if variant == "trailing_slash":
        return url if url.endswith("/") else url + "/"
    if variant == "port":
        parts = urlsplit(url)
        if parts.port is not None:
            return url
        port = 443 if parts.scheme in ("wss", "https") else 80
        return urlunsplit(parts._replace(netloc=f"{parts.hostname}:{port}"))
    return url


def add_irregular_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line flags of the caller's irregular modes (see :class:`TwilioCaller`)."""
    parser.add_argument(
        "--speak-first", action="store_true", help="say hello from the very first frame"
    )
    parser.add_argument("--bunch", type=int, default=1, metavar="N", help="frames per burst")
    parser.add_argument("--jitter-ms", type=int, default=0, help="random delay of each burst")
    parser.add_argument(
        "--timestamp-jump-every", type=int, default=0, metavar="N", help="timestamp gap every N"
    )
    parser.add_argument("--seed", type=int, help="seed of the jitter and the timestamp gaps")
    parser.add_argument(
        "--sign-variant", choices=get_args(SignVariant), default="exact", help="URL spelling"
    )


def irregular_options(args: argparse.Namespace) -> dict[str, Any]:
    """:class:`TwilioCaller` keyword arguments for the flags of :func:`add_irregular_arguments`."""
    return {
        "opening": load_clip("caller-hello") if args.speak_first else None,
        "bunch": args.bunch,
        "jitter_ms": args.jitter_ms,
        "timestamp_jump_every": args.timestamp_jump_every,
        "seed": args.seed,
        "sign_variant": args.sign_variant,
    }


def _random_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


@dataclass(frozen=True)
class Twiml:
    """What a bridge's webhook answered: the ``<Stream>`` URL and its ``<Parameter>``s."""

    stream_url: str
    parameters: dict[str, str]


def fetch_twiml(
    webhook_url: str,
    form: Mapping[str, str],
    *,
    auth_token: str | None = None,
    signed_url: str | None = None,
    timeout: float = 10.0,
) -> Twiml:
    """POST Twilio's call parameters to a bridge's webhook, as Twilio does when a call comes in,
    and read the ``<Connect><Stream>`` back. ``auth_token`` signs the request over
    ``signed_url`` (default ``webhook_url``): the public URL configured in Twilio's console.
    Blocking (urllib); call it through ``asyncio.to_thread`` from async code."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if auth_token is not None:
        headers["X-Twilio-Signature"] = twilio_signature(
            auth_token, signed_url or webhook_url, form
        )
    request = urllib.request.Request(
        webhook_url, data=urlencode(form).encode(), headers=headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read()
    stream = ElementTree.fromstring(body).find("Connect/Stream")
    if stream is None or not stream.get("url"):
        raise ValueError("the webhook's TwiML has no <Connect><Stream url=...>")
    parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return Twiml(stream.get("url", ""), parameters)


def _fields_problem(where: str, value: object, expected: frozenset[str]) -> str | None:
    if not isinstance(value, dict):
        return f"{where} must be an object"
    missing, extra = sorted(expected - value.keys()), sorted(value.keys() - expected)
    if missing or extra:
        return f"{where}: missing fields {missing}, unexpected fields {extra}"
    return None


def _message_problem(event: object, message: dict[str, Any], stream_sid: str) -> str | None:
    """Why Twilio would reject a message from the bridge (31951), or None if it is valid.

    Only media, mark and clear exist, with exactly the documented fields: extra fields are
    rejected like missing ones, and the streamSid must be the current stream's.
    """
    if event == "media":
        problem = _fields_problem("media message", message, _MEDIA_KEYS)
        problem = problem or _fields_problem("media.media", message["media"], _PAYLOAD_KEYS)
        if problem is None and not isinstance(message["media"]["payload"], str):
            problem = "media.payload must be a base64 string"
        if problem is None and len(message["media"]["payload"]) % 4:
            problem = "media.payload is not a whole number of bytes of base64"
    elif event == "mark":
        problem = _fields_problem("mark message", message, _MARK_KEYS)
        problem = problem or _fields_problem("mark.mark", message["mark"], _NAME_KEYS)
        if problem is None and not isinstance(message["mark"]["name"], str):
            problem = "mark.name must be a string"
    elif event == "clear":
        problem = _fields_problem("clear message", message, _CLEAR_KEYS)
    else:
        return f"unsupported event {event!r}: only media, mark and clear may be sent"
    if problem is None and message["streamSid"] != stream_sid:
        problem = f"{event}: streamSid does not match the stream"
    return problem


@dataclass
class Utterance:
    """One scripted ``play``: when its first frame and its last frame went out."""

    label: str
    duration: float
    """Seconds of audio (call time)."""
    started: float | None = None
    finished: float | None = None


@dataclass
class _Outgoing:
    data: bytes
    done: asyncio.Future[None]
    utterance: Utterance | None
    offset: int = 0


@dataclass(frozen=True)
class CallFigures:
    """What a call measured. Times are seconds of wall clock after ``start`` was sent."""

    time_to_first_audio: float | None
    barge_in_latencies: tuple[tuple[str, float], ...]
    """(utterance label, time from its first frame to the first ``clear`` during it)."""
    clear_times: tuple[float, ...]
    bytes_sent: int
    bytes_received: int
    marks_received: int
    marks_echoed: int
    close_code: int | None
    close_reason: str | None
    closed_by: str | None
    """"bridge" if the bridge closed first, "caller" after ``hangup``, "dropped" without a closing
    handshake, None while the call is open."""
    violations: tuple[str, ...] = field(default=())

    def summary(self) -> str:
        """Human-readable lines, as the CLI prints them."""

        def seconds(value: float | None) -> str:
            return "-" if value is None else f"{value * 1000:.0f} ms"

        lines = [
            f"time to first agent audio: {seconds(self.time_to_first_audio)}",
            *(f"clear latency ({label}): {seconds(v)}" for label, v in self.barge_in_latencies),
            f"clears: {len(self.clear_times)} at {[round(t, 3) for t in self.clear_times]} s",
            f"audio bytes sent/received: {self.bytes_sent}/{self.bytes_received}",
            f"marks received/echoed: {self.marks_received}/{self.marks_echoed}",
            f"closed by: {self.closed_by}, code {self.close_code}, reason {self.close_reason!r}",
            f"violations: {len(self.violations)}",
            *(f"  - {violation}" for violation in self.violations),
        ]
        return "\n".join(lines)


class TwilioCaller:
    """One simulated phone call through a bridge.

    Use ``async with TwilioCaller(url) as caller:`` and script it with :meth:`play`,
    :meth:`silence`, :meth:`dtmf`, :meth:`wait_agent_speaking`, :meth:`wait_agent_silent`,
    :meth:`wait_closed` and :meth:`hangup`. ``speed`` runs the media clock that many times faster
    than real time (frames, playback and mark echoes alike) to keep tests short; timeouts are
    always wall-clock seconds. ``registry`` is told when the stream is live (with :meth:`hangup`
    to end it) and when it has ended. ``auth_token`` signs the upgrade for ``signed_url`` (default
    ``url``), the public ``wss://`` URL Twilio would have used. ``start_delay`` separates
    ``connected`` from ``start``, to catch bridges that talk before ``start``. ``record=False``
    skips keeping the heard audio (long benchmarks).

    Irregular modes, as real Twilio shows them: ``opening`` (audio spoken from the very first
    frame, before any agent could have applied its settings); ``bunch`` (frames go out in bursts
    of that many, each burst when its last frame is due); ``jitter_ms`` (each burst is up to that
    much late, without drift); ``timestamp_jump_every`` (every Nth frame the ``timestamp`` jumps
    20-200 ms ahead, as after lost packets; ``chunk`` still counts one by one); ``seed`` for both;
    ``sign_variant`` (sign the URL with a trailing slash or an explicit port, see
    :func:`signed_url_variant`).
    """

    def __init__(
        self,
        url: str,
        *,
        auth_token: str | None = None,
        signed_url: str | None = None,
        custom_parameters: Mapping[str, str] | None = None,
        speed: float = 1.0,
        account_sid: str | None = None,
        call_sid: str | None = None,
        stream_sid: str | None = None,
        start_delay: float = 0.0,
        record: bool = True,
        on_media: MediaHook | None = None,
        on_mark: MarkHook | None = None,
        frame_hook: FrameHook | None = None,
        open_timeout: float = 10.0,
        opening: bytes | None = None,
        bunch: int = 1,
        jitter_ms: int = 0,
        timestamp_jump_every: int = 0,
        seed: int | None = None,
        sign_variant: SignVariant = "exact",
        registry: StreamRegistry | None = None,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        if bunch < 1 or jitter_ms < 0 or timestamp_jump_every < 0:
            raise ValueError("bunch must be >= 1, jitter_ms and timestamp_jump_every >= 0")
        if sign_variant not in get_args(SignVariant):
            raise ValueError(f"sign_variant must be one of {get_args(SignVariant)}")
        self.url = url
        self.auth_token = auth_token
        self.signed_url = signed_url or url
        self.custom_parameters = dict(custom_parameters or {})
        self.speed = speed
        self.account_sid = account_sid or _random_sid("AC")
        self.call_sid = call_sid or _random_sid("CA")
        self.stream_sid = stream_sid or _random_sid("MZ")
        self.start_delay = start_delay
        self.record = record
        self.on_media = on_media
        self.on_mark = on_mark
        self.frame_hook = frame_hook
        self.open_timeout = open_timeout
        self.opening = opening
        self.bunch = bunch
        self.jitter_ms = jitter_ms
        self.timestamp_jump_every = timestamp_jump_every
        self.sign_variant: SignVariant = sign_variant
        self._random = random.Random(seed)
        self._timestamp_skew = 0
        self.registry = registry

        self.violations: list[str] = []
        self.recording = bytearray()
        """What the caller heard, 8 kHz mu-law, silence where nothing played."""
        self.utterances: list[Utterance] = []
        self.clear_times: list[float] = []
        """``time.perf_counter()`` of every ``clear`` received."""
        self.marks_echoed: list[str] = []
        self.marks_received = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.start_time: float | None = None
        """``time.perf_counter()`` when ``start`` was sent."""
        self.first_audio_time: float | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed_by: str | None = None

        self._ws: ClientConnection | None = None
        self._period = FRAME_MS / 1000 / speed
        self._media_parts = tuple(
            part.decode() for part in twilio_messages.media_template(self.stream_sid)
        )
        self._silence_b64 = base64.b64encode(SILENCE_FRAME).decode()
        self._sequence = 0
        self._tick = 0
        self._last_heard_tick = 0
        self._outbox: deque[_Outgoing] = deque()
        self._playback = bytearray()
        self._queued = 0
        """Bytes ever buffered for playback."""
        self._consumed = 0
        """Bytes ever played or cleared; a mark is due once this reaches its position."""
        self._pending_marks: deque[tuple[str, int]] = deque()
        self._violation_set: set[str] = set()
        self._closed = asyncio.Event()
        self._clock: asyncio.Task[None] | None = None
        self._receiver: asyncio.Task[None] | None = None

    # ---- lifecycle ----

    async def connect(self) -> None:
        """Open the WebSocket and send ``connected`` and ``start``; media starts flowing."""
        headers = {}
        if self.auth_token is not None:
            signed = signed_url_variant(self.signed_url, self.sign_variant)
            headers["X-Twilio-Signature"] = twilio_signature(self.auth_token, signed)
        self._ws = await connect(
            self.url,
            additional_headers=headers,
            compression=None,
            open_timeout=self.open_timeout,
        )
        self._receiver = asyncio.create_task(self._receive(self._ws))
        await self._send(twilio_messages.connected())
        if self.start_delay > 0:
            await asyncio.sleep(self.start_delay)
        start = twilio_messages.start(
            self.stream_sid,
            self.call_sid,
            self.account_sid,
            self.custom_parameters,
            sequence=self._next_sequence(),
        )
        if self.opening:
            utterance = Utterance("opening", len(self.opening) / 8000)
            self.utterances.append(utterance)
            done = asyncio.get_running_loop().create_future()
            self._outbox.append(_Outgoing(self.opening, done, utterance))
        self.start_time = time.perf_counter()
        await self._send(start)
        self._clock = asyncio.create_task(self._run_clock(self.start_time))
        if self.registry is not None and not self._closed.is_set():
            self.registry.register(self.call_sid, self.hangup)

    async def hangup(self) -> None:
        """End the call as Twilio does: ``stop``, then close the WebSocket (1000)."""
        ws = self._ws
        if ws is None or self._closed.is_set():
            return
        await self._stop_clock()
        stop = twilio_messages.stop(
            self.stream_sid, self.call_sid, self.account_sid, sequence=self._next_sequence()
        )
        with contextlib.suppress(ConnectionClosed):
            await ws.send(stop)
        await ws.close()
        if self._receiver is not None:
            await self._receiver

    async def close(self) -> None:
        """Hang up if the call is still open and wait for every task to finish."""
        await self.hangup()
        await self._stop_clock()
        if self._receiver is not None:
            await self._receiver

    async def __aenter__(self) -> TwilioCaller:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the connection to end; True if it did."""
        try:
            await asyncio.wait_for(self._closed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # ---- script ----

    async def play(self, audio: bytes, label: str = "") -> Utterance:
        """Speak ``audio`` (mu-law) into the call; return once its last frame was sent."""
        utterance = Utterance(label, len(audio) / 8000)
        self.utterances.append(utterance)
        await self._queue(audio, utterance)
        return utterance

    async def silence(self, seconds: float) -> None:
        """Send ``seconds`` of silence (call time) after anything already queued."""
        await self._queue(silence(round(seconds * 1000)), None)

    async def dtmf(self, digit: str) -> None:
        """Send a ``dtmf`` message, as Twilio does when the caller presses a key."""
        if digit not in DTMF_DIGITS:
            raise ValueError(f"not a DTMF digit: {digit!r}")
        sequence = self._next_sequence()
        await self._send(twilio_messages.dtmf(digit, self.stream_sid, sequence=sequence))

    async def wait_agent_speaking(self, timeout: float) -> bool:
        """Wait until agent audio is playing to the caller; False on timeout or hangup."""
        return await self._wait_until(lambda: bool(self._playback), timeout)

    async def wait_agent_silent(self, timeout: float, quiet: float = 0.5) -> bool:
        """Wait until nothing has played for ``quiet`` seconds of call time."""
        quiet_ticks = math.ceil(quiet * 1000 / FRAME_MS)
        return await self._wait_until(
            lambda: not self._playback and self._tick - self._last_heard_tick >= quiet_ticks,
            timeout,
        )

    # ---- results ----

    def figures(self) -> CallFigures:
        """The call's measurements so far (see :class:`CallFigures`)."""
        origin = self.start_time or 0.0
        latencies: list[tuple[str, float]] = []
        starts = [u.started for u in self.utterances if u.started is not None]
        for utterance in self.utterances:
            if utterance.started is None:
                continue
            later = [s for s in starts if s > utterance.started]
            until = min(later, default=math.inf)
            clears = [t for t in self.clear_times if utterance.started <= t < until]
            if clears:
                latencies.append((utterance.label, clears[0] - utterance.started))
        first_audio = self.first_audio_time
        return CallFigures(
            time_to_first_audio=None if first_audio is None else first_audio - origin,
            barge_in_latencies=tuple(latencies),
            clear_times=tuple(t - origin for t in self.clear_times),
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
            marks_received=self.marks_received,
            marks_echoed=len(self.marks_echoed),
            close_code=self.close_code,
            close_reason=self.close_reason,
            closed_by=self.closed_by,
            violations=tuple(self.violations),
        )

    def record_wav(self, path: str | PathLike[str]) -> None:
        """Save what the caller heard as a 16-bit PCM WAV."""
        write_wav(path, bytes(self.recording))

    # ---- sending ----

    def _next_sequence(self) -> int:
        """Twilio numbers every message after ``connected`` with one shared counter."""
        self._sequence += 1
        return self._sequence

    async def _send(self, text: str) -> None:
        if self._ws is None or self._closed.is_set():
            return
        with contextlib.suppress(ConnectionClosed):
            await self._ws.send(text)

    async def _queue(self, audio: bytes, utterance: Utterance | None) -> None:
        if self._closed.is_set() or not audio:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.append(_Outgoing(audio, done, utterance))
        await done

    async def _wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.perf_counter() + timeout
        while not predicate():
            if self._closed.is_set() or time.perf_counter() >= deadline:
                return False
            await asyncio.sleep(self._period)
        return True

    async def _run_clock(self, origin: float) -> None:
        """Twilio's media clock: each tick plays one frame of the bridge's audio and sends one.

        Ticks follow an absolute schedule from ``start`` so that sleep overshoot never accumulates;
        with ``bunch`` or ``jitter_ms`` a burst waits for its last frame and its random delay.
        """
        with contextlib.suppress(ConnectionClosed):
            while True:
                self._tick += 1
                if (self._tick - 1) % self.bunch == 0:
                    due = origin + (self._tick + self.bunch - 1) * self._period
                    if self.jitter_ms:
                        due += self._random.uniform(0, self.jitter_ms) / 1000 / self.speed
                    await asyncio.sleep(due - time.perf_counter())
                await self._play_frame()
                await self._send_frame()

    async def _stop_clock(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._clock
            self._clock = None

    async def _send_frame(self) -> None:
        assert self._ws is not None
        item = self._outbox[0] if self._outbox else None
        if item is None:
            frame = SILENCE_FRAME
        else:
            frame = item.data[item.offset : item.offset + FRAME_BYTES]
            if len(frame) < FRAME_BYTES:
                frame += SILENCE_FRAME[len(frame) :]
            if item.offset == 0 and item.utterance is not None:
                item.utterance.started = time.perf_counter()
            item.offset += FRAME_BYTES
        chunk = self._tick
        every = self.timestamp_jump_every
        if every and chunk % every == 0:
            self._timestamp_skew += self._random.randrange(FRAME_MS, 10 * FRAME_MS + 1, FRAME_MS)
        if self.frame_hook is not None:
            frame = self.frame_hook(chunk, frame)
        payload = self._silence_b64 if frame is SILENCE_FRAME else base64.b64encode(frame).decode()
        self._sequence += 1
        # Joined by hand from the builder's parts: this runs 50 times a second per call.
        prefix, after_sequence, after_chunk, after_timestamp, suffix = self._media_parts
        await self._ws.send(
            f"{prefix}{self._sequence}{after_sequence}{chunk}{after_chunk}"
            f"{chunk * FRAME_MS + self._timestamp_skew}{after_timestamp}{payload}{suffix}"
        )
        self.bytes_sent += len(frame)
        if item is not None and item.offset >= len(item.data):
            self._outbox.popleft()
            if item.utterance is not None:
                item.utterance.finished = time.perf_counter()
            item.done.set_result(None)

    # ---- playback ----

    async def _play_frame(self) -> None:
        """Play one frame of buffered bridge audio (or silence) and echo the marks now due."""
        buffer = self._playback
        if buffer:
            played = buffer[:FRAME_BYTES]
            del buffer[:FRAME_BYTES]
            self._consumed += len(played)
            self._last_heard_tick = self._tick
            if self.record:
                self.recording += played
                self.recording += SILENCE_FRAME[len(played) :]
            await self._echo_due_marks()
        elif self.record:
            self.recording += SILENCE_FRAME

    async def _echo_due_marks(self) -> None:
        pending = self._pending_marks
        while pending and pending[0][1] <= self._consumed:
            name = pending.popleft()[0]
            self.marks_echoed.append(name)
            if self.on_mark is not None:
                self.on_mark(name, time.perf_counter())
            sequence = self._next_sequence()
            await self._send(twilio_messages.mark(name, self.stream_sid, sequence=sequence))

    # ---- receiving ----

    async def _receive(self, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    self._violate("binary frame: Twilio accepts JSON text only (31950)")
                else:
                    await self._on_text(message)
        except ConnectionClosed:
            pass
        finally:
            await ws.wait_closed()
            self._on_closed(ws)

    def _on_closed(self, ws: ClientConnection) -> None:
        self.close_code = ws.close_code
        self.close_reason = ws.close_reason
        received_first = ws.protocol.close_rcvd_then_sent
        self.closed_by = {True: "bridge", False: "caller", None: "dropped"}[received_first]
        self._closed.set()
        if self.registry is not None:
            self.registry.unregister(self.call_sid)
        if self._clock is not None:
            self._clock.cancel()
        while self._outbox:
            item = self._outbox.popleft()
            if not item.done.done():
                item.done.set_result(None)

    def _violate(self, problem: str) -> None:
        if problem not in self._violation_set and len(self.violations) < MAX_VIOLATIONS:
            self._violation_set.add(problem)
            self.violations.append(problem)

    async def _on_text(self, text: str) -> None:
        now = time.perf_counter()
        try:
            message = json.loads(text)
        except ValueError:
            self._violate("text message is not JSON (31951)")
            return
        if not isinstance(message, dict):
            self._violate("message is not a JSON object (31951)")
            return
        event = message.get("event")
        if self.start_time is None:
            self._violate(f"{event!r} sent before Twilio's start message (31951)")
        problem = _message_problem(event, message, self.stream_sid)
        if problem is not None:
            self._violate(f"{problem} (31951)")
        elif event == "media":
            self._on_media(message["media"]["payload"], now)
        elif event == "mark":
            await self._on_mark(message["mark"]["name"])
        else:
            await self._on_clear(now)

    def _on_media(self, payload: str, now: float) -> None:
        try:
            audio = base64.b64decode(payload, validate=True)
        except binascii.Error:
            self._violate("media.payload is not valid base64 (31951)")
            return
        if self.first_audio_time is None:
            self.first_audio_time = now
        self.bytes_received += len(audio)
        self._playback += audio
        self._queued += len(audio)
        if self.on_media is not None:
            self.on_media(audio, now)

    async def _on_mark(self, name: str) -> None:
        self.marks_received += 1
        self._pending_marks.append((name, self._queued))
        await self._echo_due_marks()

    async def _on_clear(self, now: float) -> None:
        self.clear_times.append(now)
        self._consumed += len(self._playback)
        self._playback.clear()
        await self._echo_due_marks()


async def standard_call(caller: TwilioCaller) -> None:
    """The demo script: hello, a pause, symptoms, a barge-in while the agent talks, goodbye, stop.

    Each step waits for the agent with generous timeouts (scaled by ``speed``), so the script
    also completes against a bridge that never answers; the bridge may end the call after the
    goodbye, otherwise the caller hangs up.
    """

    def wall(seconds: float) -> float:
        return seconds / caller.speed

    async def hear_out() -> None:
        if await caller.wait_agent_speaking(wall(8)):
            await caller.wait_agent_silent(wall(30), quiet=0.6)

    await hear_out()
    await caller.play(load_clip("caller-hello"), "hello")
    await caller.silence(1.0)
    await hear_out()
    await caller.play(load_clip("caller-symptoms"), "symptoms")
    if await caller.wait_agent_speaking(wall(8)):
        await caller.silence(1.0)
        await caller.play(load_clip("caller-interrupt"), "interrupt")
    await hear_out()
    await caller.play(load_clip("caller-goodbye"), "goodbye")
    if not await caller.wait_closed(wall(10)):
        await caller.hangup()


def _parse_params(pairs: Sequence[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--param needs NAME=VALUE, got {pair!r}")
        params[name] = value
    return params


async def _run_cli(caller: TwilioCaller, wav: str | None) -> CallFigures:
    async with caller:
        await standard_call(caller)
    if wav:
        caller.record_wav(wav)
    return caller.figures()


def main(argv: list[str] | None = None) -> int:
    """``python -m peers.caller URL``: one scripted call; exit 1 if Twilio would object."""
    parser = argparse.ArgumentParser(
        prog="python -m peers.caller",
        description="Simulate Twilio's side of a bidirectional Media Stream against a bridge.",
    )
    parser.add_argument("url", help="the bridge's WebSocket URL, e.g. ws://127.0.0.1:8080/media")
    parser.add_argument("--auth-token-env", metavar="NAME", help="sign with the token in $NAME")
    parser.add_argument("--signed-url", help="public wss:// URL Twilio would sign (default: url)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument(
        "--webhook",
        metavar="URL",
        help="first POST the call to this webhook, as Twilio does, and stream with the "
        "<Parameter>s of its TwiML (signed with --auth-token-env; the upgrade is then signed "
        "over the TwiML's Stream URL unless --signed-url says otherwise)",
    )
    parser.add_argument("--signed-webhook-url", help="public URL Twilio would sign the webhook for")
    parser.add_argument("--speed", type=float, default=1.0, help="media clock speed-up")
    parser.add_argument("--wav", help="save what the caller heard to this WAV file")
    add_irregular_arguments(parser)
    args = parser.parse_args(argv)
    auth_token = None
    if args.auth_token_env:
        auth_token = os.environ.get(args.auth_token_env)
        if not auth_token:
            parser.error(f"environment variable {args.auth_token_env} is not set")
    try:
        params = _parse_params(args.param)
    except ValueError as exc:
        parser.error(str(exc))
    call_sid = _random_sid("CA")
    signed_url = args.signed_url
    if args.webhook:
        form = {"CallSid": call_sid, "AccountSid": _random_sid("AC"), "From": "+15550100",
                "To": "+15550199", "Direction": "inbound", "CallStatus": "ringing"}  # fmt: skip
        try:
            twiml = fetch_twiml(
                args.webhook, form, auth_token=auth_token, signed_url=args.signed_webhook_url
            )
        except (OSError, ValueError, ElementTree.ParseError) as exc:
            print(f"webhook failed: {exc}", file=sys.stderr)
            return 2
        params = {**twiml.parameters, **params}
        signed_url = signed_url or twiml.stream_url
        print(f"webhook: stream {twiml.stream_url} with parameters {sorted(twiml.parameters)}")
    caller = TwilioCaller(
        args.url,
        auth_token=auth_token,
        signed_url=signed_url,
        custom_parameters=params,
        speed=args.speed,
        call_sid=call_sid,
        **irregular_options(args),
    )
    try:
        figures = asyncio.run(_run_cli(caller, args.wav))
    except (OSError, TimeoutError, WebSocketException) as exc:
        print(f"call failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(figures.summary())
    return 1 if figures.violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
