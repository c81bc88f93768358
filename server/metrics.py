"""Process metrics as plain integers, rendered in the Prometheus text format 0.0.4.

Updates on the hot path are attribute increments; the histogram of added latency uses
``bisect`` over fixed bucket bounds. Nothing here allocates per frame.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable

PREFIX = "twilio_bridge"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Added latency is a few milliseconds when the bridge is healthy; the upper buckets show trouble.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.25, 0.5, 1.0)


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


class Metrics:
    """Counters of one server process."""

    def __init__(self, active_calls: Callable[[], int] = lambda: 0) -> None:
        self.started_at = time.monotonic()
        self.active_calls = active_calls
        self.calls_started = 0
        self.calls_ended: dict[str, int] = {}
        self.calls_rejected: dict[str, int] = {}
        self.caller_audio_bytes = 0  # caller -> agent
        self.agent_audio_bytes = 0  # agent -> caller
        self.barge_ins = 0
        self.agent_errors = 0
        self.agent_warnings = 0
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
        self.added_latency = Histogram(LATENCY_BUCKETS)

    def uptime(self) -> float:
        return time.monotonic() - self.started_at

    def call_ended(self, reason: str) -> None:
        self.calls_ended[reason] = self.calls_ended.get(reason, 0) + 1

    def call_rejected(self, reason: str) -> None:
        self.calls_rejected[reason] = self.calls_rejected.get(reason, 0) + 1

    def http_response(self, status: int) -> None:
        self.http_responses[status] = self.http_responses.get(status, 0) + 1

    def render(self) -> str:
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            full = f"{PREFIX}_{name}"
            out.append(f"# HELP {full} {help_}")
            out.append(f"# TYPE {full} {kind}")
            for labels, value in samples:
                out.append(f"{full}{labels} {_number(value)}")

        metric("uptime_seconds", "gauge", "Seconds since the server started.",
               [("", round(self.uptime(), 3))])
        metric("calls_started_total", "counter", "Calls whose Twilio stream started.",
               [("", self.calls_started)])
        metric("calls_active", "gauge", "Calls started and not yet ended.",
               [("", self.active_calls())])
        metric("calls_ended_total", "counter", "Calls that ended, by end reason.",
               [(f'{{reason="{_label(r)}"}}', n) for r, n in sorted(self.calls_ended.items())])
        metric("calls_rejected_total", "counter",
               "Requests and streams that never became a call, by reason (no_start: the "
               "media stream ended before a valid start).",
               [(f'{{reason="{_label(r)}"}}', n) for r, n in sorted(self.calls_rejected.items())])
        metric("audio_bytes_total", "counter", "Mu-law audio bytes bridged, by direction.",
               [('{direction="caller_to_agent"}', self.caller_audio_bytes),
                ('{direction="agent_to_caller"}', self.agent_audio_bytes)])
        metric("barge_ins_total", "counter", "Times the caller interrupted the agent (clear sent).",
               [("", self.barge_ins)])
        metric("agent_errors_total", "counter",
               "Calls ended by the agent: an Error message, a dropped or unreachable agent.",
               [("", self.agent_errors)])
        metric("agent_warnings_total", "counter", "Warning messages from the agent.",
               [("", self.agent_warnings)])
        metric("preroll_dropped_bytes_total", "counter",
               "Caller audio dropped, oldest first, from the pre-roll held until SettingsApplied.",
               [("", self.preroll_dropped_bytes)])
        metric("undecodable_media_total", "counter",
               "Twilio media messages dropped because their payload was not valid base64.",
               [("", self.undecodable_media)])
        metric("ignored_messages_total", "counter",
               "Peer messages tolerated and dropped (unknown events, media before start, ...).",
               [("", self.ignored_messages)])
        metric("tool_calls_total", "counter", "Client-side tool calls run by the server.",
               [("", self.tool_calls)])
        metric("tool_errors_total", "counter", "Tool calls that failed, timed out or were unknown.",
               [("", self.tool_errors)])
        metric("transfers_total", "counter", "Transfers placed (call updated with a <Dial>).",
               [("", self.transfers)])
        metric("fallbacks_total", "counter", "Calls redirected to the fallback.",
               [("", self.fallbacks)])
        metric("redirect_failures_total", "counter", "Transfer or fallback updates that failed.",
               [("", self.redirect_failures)])
        metric("stream_errors_total", "counter", "stream-error events of stream status callbacks.",
               [("", self.stream_errors)])
        metric("http_responses_total", "counter", "HTTP responses sent, by status code.",
               [(f'{{code="{c}"}}', n) for c, n in sorted(self.http_responses.items())])

        hist = self.added_latency
        name = f"{PREFIX}_added_latency_seconds"
        out.append(f"# HELP {name} Delay the bridge added to caller audio on its way to the agent.")
        out.append(f"# TYPE {name} histogram")
        cumulative = 0
        for bound, n in zip(hist.bounds, hist.counts, strict=False):
            cumulative += n
            out.append(f'{name}_bucket{{le="{_number(bound)}"}} {cumulative}')
        out.append(f'{name}_bucket{{le="+Inf"}} {hist.count}')
        out.append(f"{name}_sum {_number(hist.sum)}")
        out.append(f"{name}_count {hist.count}")
        return "\n".join(out) + "\n"


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
