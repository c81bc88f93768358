"""Whole-call benchmark: the real server process under N concurrent real-time calls.

The server under test runs in its own process (``python -m server``), pinned to core 0 when
the machine has two or more; this process (the load) pins itself to core 1. N callers send
Twilio ``media`` frames every 20 ms to a local agent that speaks 60 ms every 60 ms and barges
in every few seconds, so both directions carry load (``bench/loadgen.py``). Before the load, one
call with the project's own peers (``TwilioCaller`` and ``LocalAgent``) checks that the server
under test really bridges a call.

For each chunk size and each N it reports the server's CPU per call-second (from /proc) and the
calls per core that implies, added latency p50/p99 each way, barge-in clear latency, RSS per
call, lost frames, and the load generator's own CPU and clock lateness (if the load lags, its
latency figures are not valid and a warning says so). The server's CPU is split into user and
kernel (sys) time: the kernel's share is the floor set by the syscalls a design makes.

Before each point, the same load runs against a naive bridge (``bench/naive_bridge.py``: the
`websockets` library on both legs, the way simple bridges are written), so that every figure
has a baseline from the same run on the same noisy machine; ``--no-baseline`` skips it.

    python -m bench.bench_calls                        # chunk 20 ms, N = 10, 50, 100
    python -m bench.bench_calls --chunk-ms 20,40,100 --calls 50
    python -m bench.bench_calls --quick                # seconds-long smoke (CI)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.loadgen import Load

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int | str) -> tuple[float, float]:
    """(utime, stime) of a process, from /proc: stime is the kernel's share (the syscalls)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def quantiles(values: list[float]) -> tuple[float | None, float | None]:
    if len(values) < 2:
        return (values[0], values[0]) if values else (None, None)
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return round(cuts[49], 3), round(cuts[98], 3)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def healthz(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result
    except OSError:
        return None


class ServerProcess:
    """A bridge on loopback, pinned to core 0 when there are two or more.

    ``bridge`` is ``server`` (``python -m server``, the server under test) or ``naive`` (the
    baseline in ``bench/naive_bridge.py``), so both are measured under the same load and pinning.
    """

    def __init__(self, agent_port: int, chunk_ms: int, pin: bool, bridge: str = "server") -> None:
        self.port = free_port()
        env = dict(os.environ, DEEPGRAM_API_KEY="bench-not-a-secret")
        env.pop("TWILIO_AUTH_TOKEN", None)
        agent_url = f"ws://127.0.0.1:{agent_port}/v1/agent/converse"
        common = ["--host", "127.0.0.1", "--port", str(self.port),
                  "--config", str(ROOT / "config.json"), "--agent-url", agent_url]  # fmt: skip
        if bridge == "naive":
            command = [sys.executable, "-m", "bench.naive_bridge", *common,
                       "--buffer-ms", str(chunk_ms)]  # fmt: skip
        else:  # the pre-roll is kept so that every frame the bridge did not deliver is "lost"
            command = [sys.executable, "-m", "server", *common,
                       "--chunk-ms", str(chunk_ms), "--log-level", "WARNING",
                       "--idle-timeout", "60", "--shutdown-grace", "1",
                       "--preroll-policy", "keep"]  # fmt: skip
        self.proc = subprocess.Popen(
            command,
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=(lambda: os.sched_setaffinity(0, {0})) if pin else None,
        )

    async def wait_healthy(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()[-500:]}")  # type: ignore[union-attr]
            if await asyncio.to_thread(healthz, self.port) is not None:
                return
            await asyncio.sleep(0.1)
        raise RuntimeError("server did not answer /healthz in time")

    async def wait_calls(self, count: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = await asyncio.to_thread(healthz, self.port)
            if health is not None and health.get("calls") == count:
                return True
            await asyncio.sleep(0.1)
        return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


async def check_with_peers(chunk_ms: int, pin: bool) -> dict[str, Any]:
    """One real call through the server under test with the project's own peers."""
    from server.peers.agent import LocalAgent
    from server.peers.audio import load_clip
    from server.peers.caller import TwilioCaller

    async with LocalAgent(hangup_after_utterances=1) as agent:
        server = ServerProcess(agent.port, chunk_ms, pin)
        try:
            await server.wait_healthy()
            url = f"ws://127.0.0.1:{server.port}/media-stream"
            async with TwilioCaller(url, speed=4.0) as caller:
                await caller.wait_agent_speaking(5)
                await caller.play(load_clip("caller-hello"), "hello")
                await caller.wait_closed(15)
            figures = caller.figures()
        finally:
            server.stop()
    return {
        "time_to_first_audio_ms": None
        if figures.time_to_first_audio is None
        else round(figures.time_to_first_audio * 1000, 1),
        "closed_by": figures.closed_by,
        "close_reason": figures.close_reason,
        "violations": list(figures.violations),
    }


async def measure(
    chunk_ms: int, calls: int, seconds: float, pin: bool, barge_in_every: float, bridge: str
) -> dict[str, Any]:
    load = Load(bridge_port=0, barge_in_every=barge_in_every)
    agent_port = await load.start_agent()
    server = ServerProcess(agent_port, chunk_ms, pin, bridge)
    load.bridge_port = server.port
    try:
        await server.wait_healthy()
        pid = server.proc.pid
        rss_before = rss_bytes(pid)
        load.start_clocks()
        await load.add_callers(calls, over=min(2.0, 0.02 * calls))
        deadline = time.monotonic() + 15
        while load.ready_sessions() < calls and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        ready = load.ready_sessions()
        await asyncio.sleep(2.0)  # settle: greetings, pre-roll flushes, first barge-ins
        load.stats.reset_window()
        load.stats.recording = True
        cpu0, own0, wall0 = cpu_seconds(pid), cpu_seconds("self"), time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, own1, wall1 = cpu_seconds(pid), cpu_seconds("self"), time.monotonic()
        load.stats.recording = False
        rss_during = rss_bytes(pid)
        load.stop_clocks()
        await asyncio.sleep(0.5)  # let the last frames land before counting losses
        stats = load.stats
        lost_in = len(set(stats.caller_sent) - stats.agent_received)
        lost_out = len(set(stats.agent_sent) - stats.caller_received)
        await load.hang_up()
        drained = await server.wait_calls(0)
    finally:
        await load.close()
        server.stop()
    window = wall1 - wall0
    ms_per_call_second = (sum(cpu1) - sum(cpu0)) * 1000 / (calls * window)
    sys_ms_per_call_second = (cpu1[1] - cpu0[1]) * 1000 / (calls * window)
    inbound = quantiles(stats.inbound_ms)
    outbound = quantiles(stats.outbound_ms)
    barge = quantiles(stats.barge_in_ms)
    lateness = quantiles(stats.tick_lateness_ms)
    return {
        "bridge": bridge,
        "chunk_ms": chunk_ms,
        "calls": calls,
        "window_s": round(window, 2),
        "agent_sessions_ready": ready,
        "server_cpu_ms_per_call_s": round(ms_per_call_second, 3),
        "server_sys_ms_per_call_s": round(sys_ms_per_call_second, 3),
        "calls_per_core": round(1000 / ms_per_call_second) if ms_per_call_second > 0 else None,
        "inbound_p50_ms": inbound[0],
        "inbound_p99_ms": inbound[1],
        "outbound_p50_ms": outbound[0],
        "outbound_p99_ms": outbound[1],
        "barge_in_p50_ms": barge[0],
        "barge_in_p99_ms": barge[1],
        "barge_ins": len(stats.barge_in_ms),
        "rss_per_call_kib": round(max(0, rss_during - rss_before) / calls / 1024, 1),
        "frames_lost_in": lost_in,
        "chunks_lost_out": lost_out,
        "load_cpu_ms_per_call_s": round((sum(own1) - sum(own0)) * 1000 / (calls * window), 3),
        "load_tick_lateness_p99_ms": lateness[1],
        "drained": drained,
        "errors": load.errors[:5],
    }


HEADER = (
    "bridge | chunk | calls | server CPU ms/call-s (sys) | calls/core | in p50/p99 ms "
    "| out p50/p99 ms | barge-in p50/p99 ms | RSS KiB/call | lost in/out | load CPU | tick late p99"
)


def print_row(r: dict[str, Any]) -> None:
    print(
        f"{r['bridge']:>6} | {r['chunk_ms']:>5} | {r['calls']:>5} "
        f"| {r['server_cpu_ms_per_call_s']:>17} ({r['server_sys_ms_per_call_s']:>6}) "
        f"| {r['calls_per_core']!s:>10} "
        f"| {r['inbound_p50_ms']!s:>5} / {r['inbound_p99_ms']!s:<6}"
        f"| {r['outbound_p50_ms']!s:>5} / {r['outbound_p99_ms']!s:<7}"
        f"| {r['barge_in_p50_ms']!s:>8} / {r['barge_in_p99_ms']!s:<9}"
        f"| {r['rss_per_call_kib']:>12} | {r['frames_lost_in']:>4} / {r['chunks_lost_out']:<4}"
        f"| {r['load_cpu_ms_per_call_s']:>8} | {r['load_tick_lateness_p99_ms']}"
    )
    late = r["load_tick_lateness_p99_ms"]
    if late is not None and late > 10:
        print(f"      warning: the load generator lagged (p99 {late} ms): latencies are inflated")
    if "cpu_vs_naive" in r:
        print(f"      server CPU = {r['cpu_vs_naive']}x the naive bridge's in this run")


def plot(result: dict[str, Any], out_dir: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plotting skipped: matplotlib is not installed (pip install matplotlib)")
        return []
    rows = [r for r in result["rows"] if r["bridge"] == "server"]
    written = []
    figure, axis = plt.subplots()
    largest = max(r["calls"] for r in rows)
    by_chunk = sorted((r for r in rows if r["calls"] == largest), key=lambda r: r["chunk_ms"])
    for key, label in (
        ("inbound_p50_ms", "in p50"),
        ("inbound_p99_ms", "in p99"),
        ("outbound_p99_ms", "out p99"),
    ):
        axis.plot(
            [r["chunk_ms"] for r in by_chunk], [r[key] for r in by_chunk], marker="o", label=label
        )
    axis.set_xlabel("chunk size (ms)")
    axis.set_ylabel(f"added latency (ms), {largest} calls")
    axis.legend()
    path = out_dir / "latency-vs-chunk.png"
    figure.savefig(path)
    written.append(path)
    figure, axis = plt.subplots()
    every = result["rows"]
    for bridge, chunk in sorted({(r["bridge"], r["chunk_ms"]) for r in every}, reverse=True):
        points = sorted(
            (r for r in every if (r["bridge"], r["chunk_ms"]) == (bridge, chunk)),
            key=lambda r: r["calls"],
        )
        axis.plot(
            [r["calls"] for r in points],
            [r["server_cpu_ms_per_call_s"] for r in points],
            marker="o",
            linestyle="-" if bridge == "server" else ":",
            label=f"{bridge}, {chunk} ms",
        )
    axis.set_xlabel("concurrent calls")
    axis.set_ylabel("bridge CPU (ms per call-second)")
    axis.legend(title="bridge, chunk")
    path = out_dir / "cpu-vs-calls.png"
    figure.savefig(path)
    written.append(path)
    return written


async def run(
    chunks: list[int],
    calls: list[int],
    seconds: float,
    check: bool,
    barge_in_every: float,
    baseline: bool,
) -> dict[str, Any]:
    pin = (os.cpu_count() or 1) >= 2
    if pin:
        os.sched_setaffinity(0, {1})
    result: dict[str, Any] = {
        "bench": "calls",
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "pinned": pin,
        "seconds": seconds,
        "rows": [],
    }
    if check:
        result["peer_check"] = await check_with_peers(chunks[0], pin)
        print(f"peer check (TwilioCaller + LocalAgent through the server): {result['peer_check']}")
    print(HEADER)
    for chunk in chunks:
        for count in calls:
            naive = None
            if baseline:  # the same load on the naive bridge, just before: a ratio, not a guess
                naive = await measure(chunk, count, seconds, pin, barge_in_every, "naive")
                result["rows"].append(naive)
                print_row(naive)
            row = await measure(chunk, count, seconds, pin, barge_in_every, "server")
            if naive is not None and naive["server_cpu_ms_per_call_s"] > 0:
                ratio = row["server_cpu_ms_per_call_s"] / naive["server_cpu_ms_per_call_s"]
                row["cpu_vs_naive"] = round(ratio, 2)
            result["rows"].append(row)
            print_row(row)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark whole calls through the real server.")
    parser.add_argument("--calls", default="10,50,100", help="comma-separated N to sweep")
    parser.add_argument("--chunk-ms", default="20", help="comma-separated chunk sizes")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per point")
    parser.add_argument(
        "--barge-in-every", type=float, default=5.0, help="seconds between barge-ins per call"
    )
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--no-peer-check", action="store_true", help="skip the call with the peers")
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the naive bridge (bench/naive_bridge.py) measured before each point",
    )
    parser.add_argument("--plot", action="store_true", help="write PNGs (needs matplotlib)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "calls.json")
    args = parser.parse_args(argv)
    chunks = [int(x) for x in args.chunk_ms.split(",")]
    calls = [int(x) for x in args.calls.split(",")]
    if args.quick:
        chunks, calls, args.seconds, args.barge_in_every = chunks[:1], [2], 2.0, 0.5
    result = asyncio.run(
        run(
            chunks,
            calls,
            args.seconds,
            not args.no_peer_check,
            args.barge_in_every,
            not args.no_baseline,
        )
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    if args.plot:
        for path in plot(result, args.json.parent):
            print(f"wrote {path}")
    # A server that does not really bridge fails the run, whatever its figures.
    check = result.get("peer_check")
    if check is not None and (check["closed_by"] != "bridge" or check["violations"]):
        print(f"FAILED: the peer check did not end as a bridged call: {check}")
        return 1
    # The naive baseline may lose audio (a partial chunk is never sent, as in the original
    # program); only the server under test fails the run.
    bad = [
        r
        for r in result["rows"]
        if r["bridge"] == "server"
        and (r["frames_lost_in"] or r["chunks_lost_out"] or not r["drained"])
    ]
    return (
        1
        if bad or any(not math.isfinite(r["server_cpu_ms_per_call_s"]) for r in result["rows"])
        else 0
    )


if __name__ == "__main__":
    raise SystemExit(main())
