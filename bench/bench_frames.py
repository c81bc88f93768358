"""Microbenchmark of the agent leg's receive side: µs per frame from the agent, through
``AgentLeg.data_received`` with its frame path, against websockets' ``ClientProtocol`` alone
(``receive_data`` + ``events_received``, what the leg did for every frame before).

The stream is what Deepgram sends while it speaks: 800-byte binary audio frames (100 ms of
mu-law) with a small JSON text frame every tenth, read one frame per read (a paced agent)
and in 4 KiB reads that cut frames (an agent sending faster than real time). Both sides
get the same reads in the same run, alternately, and the medians of ``--repeats`` are printed
with their ratio: the machines here are shared, so only the ratio of one run is worth quoting.

    python -m bench.bench_frames             # 20000 frames, 7 repeats
    python -m bench.bench_frames --quick     # a seconds-long smoke run (CI)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from typing import Any

from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from server.agent_leg import AgentLeg

URL = "ws://agent.bench/v1/agent/converse"
LIMIT = 1 << 20  # the bridge's default --max-agent-message-bytes
READS = (0, 4096)  # bytes per read; 0: one frame per read
TEXT = b'{"type":"ConversationText","role":"assistant","content":"One moment, please."}'


def stream(frames: int, read: int) -> list[bytes]:
    """The agent's frames, unmasked as a server sends them, cut into reads."""
    audio = bytes(i % 256 for i in range(800))
    out = []
    for i in range(frames):
        payload, opcode = (TEXT, 0x81) if i % 10 == 9 else (audio, 0x82)
        size = len(payload)
        head = bytes((opcode, size)) if size < 126 else bytes((opcode, 126)) + size.to_bytes(2)
        out.append(head + payload)
    if not read:
        return out
    whole = b"".join(out)
    return [whole[i : i + read] for i in range(0, len(whole), read)]


class Sink:
    def __init__(self) -> None:
        self.count = 0

    def agent_connected(self) -> None:
        pass

    def agent_message(self, message: str | bytes) -> None:
        self.count += 1

    def agent_closed(self, code: int | None, reason: str, failure: tuple[int, str] | None) -> None:
        pass


class Transport(asyncio.Transport):
    """Keeps what was written; never closes, never buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()

    def write(self, data: Any) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def connect_to(transport: asyncio.Transport) -> None:
    """Make the running loop's ``create_connection`` hand out ``transport``."""

    async def connect(
        factory: Any, host: str, port: int, **kw: Any
    ) -> tuple[asyncio.Transport, Any]:
        protocol = factory()
        protocol.connection_made(transport)
        return transport, protocol

    asyncio.get_running_loop().create_connection = connect  # type: ignore[method-assign,assignment]


def accepted(request: bytes) -> bytes:
    """An agent server's answer to the leg's handshake request: 101, accepted."""
    server = ServerProtocol()
    server.receive_data(request)
    [event] = server.events_received()
    server.send_response(server.accept(event))  # type: ignore[arg-type]
    return b"".join(server.data_to_send())


async def open_leg() -> tuple[AgentLeg, Sink]:
    """A leg on a fake transport, through its real handshake."""
    transport = Transport()
    connect_to(transport)
    sink = Sink()
    leg = AgentLeg(sink, URL, "key", connect_timeout=5, max_message_bytes=LIMIT, close_timeout=5)
    while not transport.out:
        await asyncio.sleep(0)
    leg.data_received(accepted(bytes(transport.out)))
    await leg.task
    return leg, sink


def time_leg(reads: list[bytes], frames: int) -> float:
    async def body() -> float:
        leg, sink = await open_leg()
        gc.disable()
        start = time.perf_counter()
        for data in reads:
            leg.data_received(data)
        elapsed = time.perf_counter() - start
        gc.enable()
        assert sink.count == frames
        return elapsed

    return asyncio.run(body()) / frames * 1e6


def time_websockets(reads: list[bytes], frames: int) -> float:
    """What the leg did before: every read to the protocol object, every Frame event out."""
    protocol = ClientProtocol(parse_uri(URL), max_size=LIMIT)
    protocol.state = State.OPEN
    protocol.parser = protocol.parse()
    next(protocol.parser)
    count = 0
    gc.disable()
    start = time.perf_counter()
    for data in reads:
        protocol.receive_data(data)
        for event in protocol.events_received():
            message = event.data if event.opcode.value == 2 else event.data.decode()  # type: ignore[union-attr]
            count += message is not None
        protocol.data_to_send()
    elapsed = time.perf_counter() - start
    gc.enable()
    assert count == frames
    return elapsed / frames * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="µs per agent frame received.")
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    args = parser.parse_args(argv)
    frames, repeats = (2000, 3) if args.quick else (args.frames, args.repeats)
    print(f"{frames} frames from the agent (800 B audio, 1 in 10 JSON text), "
          f"median of {repeats} runs")  # fmt: skip
    for read in READS:
        reads = stream(frames, read)
        slow: list[float] = []
        fast: list[float] = []
        for _ in range(repeats):  # alternately, so both see the same machine load
            slow.append(time_websockets(reads, frames))
            fast.append(time_leg(reads, frames))
        slow_us, fast_us = statistics.median(slow), statistics.median(fast)
        print(f"reads: {f'{read} B' if read else 'one frame each'}")
        for name, us, runs in (("websockets ClientProtocol alone", slow_us, slow),
                               ("agent leg frame path", fast_us, fast)):  # fmt: skip
            print(f"  {name:32} {us:6.2f} µs/frame  (runs: {', '.join(f'{x:.2f}' for x in runs)})")
        print(f"  {'ratio':32} {slow_us / fast_us:6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
