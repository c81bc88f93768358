"""Microbenchmark of one call's whole per-frame path in Python, without sockets or the kernel.

A real :class:`~server.call.CallDriver` (Twilio leg, WsPeer, core, agent leg, recorder,
metrics) on fake transports: each Twilio ``media`` read goes through
``TwilioLeg.data_received`` to the agent leg's write, each agent audio frame through
``AgentLeg.data_received`` to the Twilio leg's write, and each mark the bridge sends is echoed.
It prints µs per caller frame and per agent chunk, and the Python CPU of one call-second at
the bench's traffic (50 caller frames, 16.7 agent chunks and their marks): the part of
``bench_calls``' CPU per call-second that this project's code decides, without the event
loop's and the kernel's share. Time is the minimum of ``--repeats``; ``--profile`` prints
cProfile's top functions instead.

    python -m bench.bench_driver              # 5000 frames, 5 repeats
    python -m bench.bench_driver --profile    # where the time goes
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import pstats
import time

from bench.bench_frames import Transport, accepted, connect_to
from peers import twilio_messages
from peers.frames import BINARY, ZERO_MASK, FrameReader, client_frame, server_frame
from server.call import CallContext, CallDriver
from server.cli import build_parser
from server.metrics import Metrics
from server.options import make_options
from server.records.store import RecordStore, open_store
from server.tools import ToolRegistry

STREAM_SID = "MZ" + "0" * 32
CALL_SID = "CA" + "0" * 32
CALLER_FRAMES_PER_S = 50.0  # 20 ms frames
AGENT_CHUNKS_PER_S = 1 / 0.06  # the load's 60 ms chunks


class Call:
    """One call on fake transports, up to READY."""

    def __init__(self, store: RecordStore | None) -> None:
        self.store = store
        self.twilio_out = Transport()
        self.agent_out = Transport()
        self.marks = FrameReader()
        self.sequence = 1

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        connect_to(self.agent_out)
        argv = ["--agent-url", "ws://127.0.0.1:9/v1/agent/converse"]
        options = make_options(build_parser().parse_args(argv), environ={"DEEPGRAM_API_KEY": "k"})
        context = CallContext(
            loop, options, Metrics(), ToolRegistry(), options.agent_url, self.store, None
        )
        self.driver = driver = CallDriver(
            context, self.twilio_out, b"", "127.0.0.1:1", lambda _: None
        )
        start = twilio_messages.start(STREAM_SID, CALL_SID, "AC" + "0" * 32, {})
        self.twilio(twilio_messages.connected())
        self.twilio(start)
        while not self.agent_out.out:  # the handshake request
            await asyncio.sleep(0)
        leg = driver.agent
        assert leg is not None
        leg.data_received(accepted(bytes(self.agent_out.out)))
        await leg.task
        self.leg = leg
        leg.data_received(server_frame(b'{"type":"Welcome","request_id":"bench"}'))
        leg.data_received(server_frame(b'{"type":"SettingsApplied"}'))
        assert driver.core.accepts_agent_input and driver.core.ended is None

    def twilio(self, text: str) -> None:
        self.driver.twilio.data_received(client_frame(text.encode(), mask=ZERO_MASK))  # type: ignore[attr-defined]

    def echo_marks(self) -> int:
        """Echo every mark the bridge sent since the last call, as Twilio does."""
        echoed = 0
        for _, payload in self.marks.feed(bytes(self.twilio_out.out)):
            if b'"event":"mark"' in payload:
                name = json.loads(payload)["mark"]["name"]
                self.sequence += 1
                self.twilio(twilio_messages.mark(name, STREAM_SID, sequence=self.sequence))
                echoed += 1
        self.twilio_out.out.clear()
        return echoed


def media_frames(count: int) -> list[bytes]:
    audio = bytes(range(160))
    return [
        client_frame(
            twilio_messages.media(
                audio, STREAM_SID, sequence=i + 3, chunk=i + 1, timestamp=20 * i
            ).encode(),
            mask=ZERO_MASK,
        )
        for i in range(count)
    ]


def run_once(frames: int, records: str = "none", calls: int = 1) -> dict[str, float]:
    """``frames`` caller frames and their share of agent chunks, spread round-robin over
    ``calls`` calls (more calls: a working set that no longer stays in the CPU's caches)."""

    async def body() -> dict[str, float]:
        store = open_store(records)
        legs = []
        for _ in range(calls):
            call = Call(store)
            await call.open()
            legs.append(call)
        per_call = max(1, frames // calls)
        inbound = [
            (call.driver.twilio, data)
            for batch in zip(*(media_frames(per_call) for _ in legs), strict=True)
            for call, data in zip(legs, batch, strict=True)
        ]
        chunks = max(1, round(per_call * AGENT_CHUNKS_PER_S / CALLER_FRAMES_PER_S))
        chunk = server_frame(bytes(480), BINARY)
        outbound = [call.leg for _ in range(chunks) for call in legs]
        gc.disable()
        t0 = time.perf_counter()
        for twilio_leg, data in inbound:
            twilio_leg.data_received(data)  # type: ignore[attr-defined]
        t1 = time.perf_counter()
        for agent_leg in outbound:
            agent_leg.data_received(chunk)
        t2 = time.perf_counter()
        marks = sum(call.echo_marks() for call in legs)
        t3 = time.perf_counter()
        gc.enable()
        for call in legs:
            assert call.driver.core.ended is None, call.driver.core.ended
            assert len(call.agent_out.out) > per_call * 160, "caller audio missed the agent"
        if store is not None:
            store.close()
        return {
            "caller_frame_us": (t1 - t0) / len(inbound) * 1e6,
            "agent_chunk_us": (t2 - t1) / len(outbound) * 1e6,
            "mark_echo_us": (t3 - t2) / max(1, marks) * 1e6,
            "marks_per_chunk": marks / len(outbound),
        }

    return asyncio.run(body())


def call_second_ms(row: dict[str, float]) -> float:
    """Python CPU of one call-second at the bench's traffic, in ms."""
    chunk = row["agent_chunk_us"] + row["marks_per_chunk"] * row["mark_echo_us"]
    return (CALLER_FRAMES_PER_S * row["caller_frame_us"] + AGENT_CHUNKS_PER_S * chunk) / 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run (CI)")
    parser.add_argument("--profile", action="store_true", help="cProfile's top functions")
    parser.add_argument(
        "--records",
        default="none",
        metavar="PATH",
        help="call records, as the server's flag (default none: the recorder is off)",
    )
    parser.add_argument("--calls", type=int, default=1, help="calls the frames are spread over")
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.repeats = 300, 1
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(run_once, args.frames, args.records, args.calls)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return 0
    rows = [run_once(args.frames, args.records, args.calls) for _ in range(args.repeats)]
    best = {key: min(row[key] for row in rows) for key in rows[0]}
    best["marks_per_chunk"] = rows[0]["marks_per_chunk"]
    print(
        f"caller frame {best['caller_frame_us']:.2f} µs, agent chunk {best['agent_chunk_us']:.2f}"
        f" µs, mark echo {best['mark_echo_us']:.2f} µs ({best['marks_per_chunk']:.2f} per chunk)"
    )
    print(f"Python CPU of one call-second: {call_second_ms(best):.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
