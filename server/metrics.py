"""Process metrics as plain integers, rendered in the Prometheus text format 0.0.4.

Updates on the hot path are attribute increments; the histogram of added latency uses
``bisect`` over fixed bucket bounds. Nothing here allocates per frame.

With ``--workers N`` every process publishes a snapshot of its values into its own file in a
directory the parent creates (:func:`setup_multiprocess_metrics`), on each call event and once a
second, and ``/metrics`` adds up all of them, so whichever process answers shows the whole
server. docs/design.md ("Metrics") says why this is not ``prometheus-client``, with figures.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import mmap
import os
import shutil
import struct
import tempfile
import time
from bisect import bisect_left
from collections.abc import Callable
from pathlib import Path
from typing import Any

PREFIX = "twilio_bridge"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROCESS_ENV = "TWILIO_BRIDGE_METRICS_DIR"
PUBLISH_INTERVAL = 1.0  # seconds at most that another worker's audio counters lag behind

# Added latency is a few milliseconds when the bridge is healthy; the upper buckets show trouble.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.25, 0.5, 1.0)
# What the caller waits for after they stop talking: under a second is good, over three is bad.
TURN_LATENCY_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0)
TURN_STAGES = ("first_audio", "first_mark")

# Counters kept as plain attributes (``metrics.name += n`` on the hot path), in render order.
_COUNTERS = (
    "caller_audio_bytes",
    "agent_audio_bytes",
    "barge_ins",
    "agent_errors",
    "agent_warnings",
    "agent_reconnects",
    "tool_calls",
    "preroll_dropped_bytes",
    "undecodable_media",
    "ignored_messages",
    "tool_errors",
    "webhook_delivered",
    "webhook_gave_up",
    "transfers",
    "fallbacks",
    "redirect_failures",
    "stream_errors",
)
_LABELLED = ("calls_ended", "calls_rejected", "http_responses", "webhook_failures")


class Histogram:
    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf only
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding quantile ``q`` (inf if beyond the last bound)."""
        if not self.count:
            return 0.0
        rank = q * self.count
        seen = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            seen += n
            if seen >= rank:
                return bound
        return float("inf")

    def snapshot(self) -> list[float]:
        """Bucket counts, then sum and count: the form snapshots add up."""
        return [*self.counts, self.sum, self.count]


class Metrics:
    """Counters of one server process; with a shared directory, also the whole server's."""

    def __init__(self, active_calls: Callable[[], int] = lambda: 0) -> None:
        self.started_at = time.monotonic()
        self.started_wall = time.time()
        self.active_calls = active_calls
        self._calls_started = 0
        self.calls_ended: dict[str, int] = {}
        self.calls_rejected: dict[str, int] = {}
        self.caller_audio_bytes = 0  # caller -> agent
        self.agent_audio_bytes = 0  # agent -> caller
        self.barge_ins = 0
        self.agent_errors = 0
        self.agent_warnings = 0
        self.agent_reconnects = 0
        self.tool_calls = 0
        self.preroll_dropped_bytes = 0
        self.undecodable_media = 0
        self.ignored_messages = 0
        self.tool_errors = 0
        self.transfers = 0  # call control (docs/call-control.md)
        self.fallbacks = 0
        self.redirect_failures = 0
        self.stream_errors = 0
        self.http_responses: dict[int, int] = {}
        self.webhook_delivered = 0  # written by the webhook deliverer thread only
        self.webhook_failures: dict[str, int] = {}
        self.webhook_gave_up = 0
        self.added_latency = Histogram(LATENCY_BUCKETS)
        self.turn_latency = {stage: Histogram(TURN_LATENCY_BUCKETS) for stage in TURN_STAGES}
        directory = os.environ.get(MULTIPROCESS_ENV)
        self._shared = _SharedFile(Path(directory)) if directory else None
        if self._shared is not None:
            self.publish()
            with contextlib.suppress(RuntimeError):  # no loop: publish on call events only
                asyncio.get_running_loop().call_later(PUBLISH_INTERVAL, self._tick)

    @property
    def calls_started(self) -> int:
        return self._calls_started

    @calls_started.setter
    def calls_started(self, value: int) -> None:
        self._calls_started = value
        self.publish()

    def uptime(self) -> float:
        return time.monotonic() - self.started_at

    def call_ended(self, reason: str) -> None:
        self.calls_ended[reason] = self.calls_ended.get(reason, 0) + 1
        self.publish()

    def call_rejected(self, reason: str) -> None:
        self.calls_rejected[reason] = self.calls_rejected.get(reason, 0) + 1
        self.publish()

    def webhook_failed(self, reason: str) -> None:
        self.webhook_failures[reason] = self.webhook_failures.get(reason, 0) + 1

    def http_response(self, status: int) -> None:
        self.http_responses[status] = self.http_responses.get(status, 0) + 1
        self.publish()

    def observe_turn(self, stage: str, seconds: float) -> None:
        """One caller turn, at the caller's ear: from the end of their speech to the first
        agent audio sent (``first_audio``) or to its first echoed mark (``first_mark``)."""
        self.turn_latency[stage].observe(seconds)

    # ------------------------------------------------------------------ across workers

    def snapshot(self) -> dict[str, Any]:
        """Every rendered value of this process, as JSON-ready data."""
        return {
            "started_wall": self.started_wall,
            "calls_active": self.active_calls(),
            "calls_started": self._calls_started,
            **{name: getattr(self, name) for name in _COUNTERS},
            "calls_ended": dict(self.calls_ended),
            "calls_rejected": dict(self.calls_rejected),
            "http_responses": {str(code): n for code, n in self.http_responses.items()},
            "webhook_failures": dict(self.webhook_failures),
            "added_latency": self.added_latency.snapshot(),
            **{f"turn_latency:{s}": h.snapshot() for s, h in self.turn_latency.items()},
        }

    def publish(self) -> None:
        """Write this process's snapshot where the other workers read it (about 20 µs)."""
        if self._shared is not None:
            self._shared.write(self.snapshot())

    def _tick(self) -> None:
        self.publish()
        asyncio.get_running_loop().call_later(PUBLISH_INTERVAL, self._tick)

    def server_snapshot(self) -> dict[str, Any]:
        """This process's values plus every other worker's last snapshot.

        Counters of a worker that has exited still count (those calls happened); its
        ``calls_active`` does not (Prometheus's ``livesum``).
        """
        total = self.snapshot()
        if self._shared is None:
            return total
        for other, alive in self._shared.read_others():
            for name, value in other.items():
                if name == "started_wall":
                    total[name] = min(total[name], value)
                elif name == "calls_active":
                    total[name] += value if alive else 0
                elif isinstance(value, dict):
                    into = total.setdefault(name, {})
                    for key, n in value.items():
                        into[key] = into.get(key, 0) + n
                elif isinstance(value, list):
                    total[name] = [a + b for a, b in zip(total[name], value, strict=True)]
                else:
                    total[name] += value
        return total

    # ------------------------------------------------------------------ rendering

    def render(self) -> str:
        v = self.server_snapshot()
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            full = f"{PREFIX}_{name}"
            out.append(f"# HELP {full} {help_}")
            out.append(f"# TYPE {full} {kind}")
            for labels, value in samples:
                out.append(f"{full}{labels} {_number(value)}")

        def by(label: str, counts: dict[str, int], key: Callable[[str], Any] = str) -> list[Any]:
            return [(f'{{{label}="{_label(k)}"}}', counts[k]) for k in sorted(counts, key=key)]

        uptime = max(self.uptime(), time.time() - v["started_wall"])
        # A table, one metric per statement: clearer than the formatter's layout.
        # fmt: off
        metric("uptime_seconds", "gauge", "Seconds since the server started.",
               [("", round(uptime, 3))])
        metric("calls_started_total", "counter", "Calls whose Twilio stream started.",
               [("", v["calls_started"])])
        metric("calls_active", "gauge", "Calls started and not yet ended.",
               [("", v["calls_active"])])
        metric("calls_ended_total", "counter", "Calls that ended, by end reason.",
               by("reason", v["calls_ended"]))
        metric("calls_rejected_total", "counter",
               "Requests and streams that never became a call, by reason (no_start: the "
               "media stream ended before a valid start).",
               by("reason", v["calls_rejected"]))
        metric("audio_bytes_total", "counter", "Mu-law audio bytes bridged, by direction.",
               [('{direction="caller_to_agent"}', v["caller_audio_bytes"]),
                ('{direction="agent_to_caller"}', v["agent_audio_bytes"])])
        metric("barge_ins_total", "counter", "Times the caller interrupted the agent (clear sent).",
               [("", v["barge_ins"])])
        metric("agent_errors_total", "counter",
               "Calls ended by the agent: an Error message, a dropped or unreachable agent.",
               [("", v["agent_errors"])])
        metric("agent_warnings_total", "counter", "Warning messages from the agent.",
               [("", v["agent_warnings"])])
        metric("agent_reconnects_total", "counter",
               "Agent legs that failed mid-call and were replaced by a new session.",
               [("", v["agent_reconnects"])])
        metric("preroll_dropped_bytes_total", "counter",
               "Caller audio dropped, oldest first, from the pre-roll held until SettingsApplied.",
               [("", v["preroll_dropped_bytes"])])
        metric("undecodable_media_total", "counter",
               "Twilio media messages dropped because their payload was not valid base64.",
               [("", v["undecodable_media"])])
        metric("ignored_messages_total", "counter",
               "Peer messages tolerated and dropped (unknown events, media before start, ...).",
               [("", v["ignored_messages"])])
        metric("tool_calls_total", "counter", "Client-side tool calls run by the server.",
               [("", v["tool_calls"])])
        metric("tool_errors_total", "counter", "Tool calls that failed, timed out or were unknown.",
               [("", v["tool_errors"])])
        metric("transfers_total", "counter", "Transfers placed (call updated with a <Dial>).",
               [("", v["transfers"])])
        metric("fallbacks_total", "counter", "Calls redirected to the fallback.",
               [("", v["fallbacks"])])
        metric("redirect_failures_total", "counter", "Transfer or fallback updates that failed.",
               [("", v["redirect_failures"])])
        metric("stream_errors_total", "counter", "stream-error events of stream status callbacks.",
               [("", v["stream_errors"])])
        metric("http_responses_total", "counter", "HTTP responses sent, by status code.",
               by("code", v["http_responses"], int))

        metric("webhook_deliveries_total", "counter", "End-of-call webhooks delivered (2xx).",
               [("", v["webhook_delivered"])])
        metric("webhook_failures_total", "counter",
               "Failed webhook attempts, by kind: status (non-2xx), timeout, error.",
               by("reason", v["webhook_failures"]))
        metric("webhook_gave_up_total", "counter",
               "Webhooks abandoned after --webhook-max-attempts or --webhook-max-age.",
               [("", v["webhook_gave_up"])])
        _histogram(out, "added_latency_seconds",
                   "Delay the bridge added to caller audio on its way to the agent.",
                   [("", LATENCY_BUCKETS, v["added_latency"])])
        _histogram(out, "turn_latency_seconds",
                   "Per caller turn, at the caller's ear: from the end of the caller's speech to "
                   "the first agent audio sent (first_audio) and to its first echoed mark "
                   "(first_mark).",
                   [(f'stage="{s}",', TURN_LATENCY_BUCKETS, v[f"turn_latency:{s}"])
                    for s in TURN_STAGES])
        # fmt: on
        return "\n".join(out) + "\n"


def _histogram(
    out: list[str], name: str, help_: str, series: list[tuple[str, tuple[float, ...], list[Any]]]
) -> None:
    """Render histogram ``series``: (labels with a trailing comma, bounds, snapshot) each."""
    full = f"{PREFIX}_{name}"
    out.append(f"# HELP {full} {help_}")
    out.append(f"# TYPE {full} histogram")
    for labels, bounds, values in series:
        *counts, total, count = values
        cumulative = 0
        for bound, n in zip(bounds, counts, strict=False):
            cumulative += n
            out.append(f'{full}_bucket{{{labels}le="{_number(bound)}"}} {cumulative}')
        out.append(f'{full}_bucket{{{labels}le="+Inf"}} {count}')
        plain = f"{{{labels.rstrip(',')}}}" if labels else ""
        out.append(f"{full}_sum{plain} {_number(total)}")
        out.append(f"{full}_count{plain} {count}")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


# ---------------------------------------------------------------------- shared across workers

_HEADER = struct.Struct("=QQ")  # sequence (odd while a write is under way), body length


class _SharedFile:
    """This process's snapshot file in the shared directory, and the reading of the others'.

    The writer holds an exclusive ``flock`` on its file for as long as it lives, so a reader
    tells a live worker from an exited one (even one not yet reaped) without asking the parent.
    A sequence number around each write lets a reader retry a snapshot read mid-write.
    """

    def __init__(self, directory: Path) -> None:
        import fcntl  # only here: --workers needs SO_REUSEPORT, so a platform with fcntl

        self._fcntl = fcntl
        self.directory = directory
        fd, name = tempfile.mkstemp(dir=directory, prefix=f"{os.getpid()}-", suffix=".metrics")
        self.path = Path(name)
        self._fd = fd
        fcntl.flock(fd, fcntl.LOCK_EX)  # held until this process exits
        self._size = 1 << 16
        os.ftruncate(fd, self._size)
        self._map = mmap.mmap(fd, self._size)
        self._seq = 0

    def write(self, snapshot: dict[str, Any]) -> None:
        body = json.dumps(snapshot, separators=(",", ":")).encode()
        need = _HEADER.size + len(body)
        if need > self._size:  # more labels than ever expected: grow, never truncate
            self._size = max(need, 2 * self._size)
            self._map.close()
            os.ftruncate(self._fd, self._size)
            self._map = mmap.mmap(self._fd, self._size)
        mapped = self._map
        self._seq += 1
        _HEADER.pack_into(mapped, 0, self._seq, 0)
        mapped[_HEADER.size : need] = body
        self._seq += 1
        _HEADER.pack_into(mapped, 0, self._seq, len(body))

    def read_others(self) -> list[tuple[dict[str, Any], bool]]:
        """Each other process's last snapshot, and whether that process is still alive."""
        found = []
        for path in sorted(self.directory.glob("*.metrics")):
            if path == self.path:
                continue
            with contextlib.suppress(FileNotFoundError), open(path, "rb") as file:
                snapshot = _read_snapshot(file.fileno())
                if snapshot is not None:
                    found.append((snapshot, self._held(file.fileno())))
        return found

    def _held(self, fd: int) -> bool:
        fcntl = self._fcntl
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False


def _read_snapshot(fd: int, attempts: int = 100) -> dict[str, Any] | None:
    """The snapshot in ``fd``, or None if the file is still empty or is rewritten too often."""
    for _ in range(attempts):
        head = os.pread(fd, _HEADER.size, 0)
        if len(head) < _HEADER.size:
            return None
        seq, length = _HEADER.unpack(head)
        if seq == 0:
            return None
        if seq % 2 == 0:
            body = os.pread(fd, length, _HEADER.size)
            if _HEADER.unpack(os.pread(fd, _HEADER.size, 0))[0] == seq:
                data: dict[str, Any] = json.loads(body)
                return data
        time.sleep(0)
    return None


def setup_multiprocess_metrics() -> Path:
    """In the parent, before spawning workers: make the directory every process publishes its
    snapshot into, hand it to the workers through the environment, and remove it at exit."""
    directory = Path(tempfile.mkdtemp(prefix="twilio-bridge-metrics-"))
    os.environ[MULTIPROCESS_ENV] = str(directory)

    def cleanup() -> None:
        os.environ.pop(MULTIPROCESS_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)

    atexit.register(cleanup)
    return directory
