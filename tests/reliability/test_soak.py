"""Soak: many short calls, sequentially and 50 at a time, with random faults injected.

Afterwards nothing may have grown: file descriptors, asyncio tasks, memory, agent
connections; and every call that started is counted as ended in ``/metrics``.
CI runs a short form; ``SOAK_FULL=1`` runs 1000 calls each way.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import re
import resource
import tracemalloc
from pathlib import Path

from websockets.exceptions import ConnectionClosed

from peers.agent import AgentSession, LocalAgent
from server.app import Server
from tests.server_support import (
    caller,
    fake_agent,
    frame,
    http,
    run,
    running_server,
    twilio_media,
    twilio_start,
    twilio_stop,
    until,
)

FULL = os.environ.get("SOAK_FULL") == "1"
CALLS = 1000 if FULL else 100
FAULTS = ("hangup", "vanish", "reset", "agent_error", "agent_close", "junk")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() // 1024


class Sessions:
    """Finds the agent leg of a call by the caller number its Settings prompt carries.

    It takes each new session out of the fake agent's list and forgets it once its call is
    over, so the test itself holds no memory per call (the soak measures the server's).
    """

    def __init__(self, agent: LocalAgent) -> None:
        self.agent = agent
        self.by_sid: dict[str, AgentSession] = {}
        self.unread: list[AgentSession] = []

    def find(self, sid: str) -> AgentSession | None:
        self.unread += self.agent.sessions
        self.agent.sessions.clear()
        waiting = []
        for session in self.unread:
            if not session.texts:
                waiting.append(session)
                continue
            found = re.search(r"MZsoak-?\d+(?=\.)", session.texts[0]["agent"]["think"]["prompt"])
            if found:
                self.by_sid[found.group(0)] = session
        self.unread = waiting
        return self.by_sid.get(sid)

    def forget(self, sid: str) -> None:
        self.by_sid.pop(sid, None)

    def open_legs(self) -> int:
        self.find("")
        legs = [*self.by_sid.values(), *self.unread]
        return sum(1 for session in legs if not session.closed.is_set())


async def one_call(server: Server, sessions: Sessions, index: int, fault: str) -> bool:
    """Run one short call with ``fault``; True if it got as far as sending ``start``."""
    sid = f"MZsoak{index}"
    ws = await caller(server)
    try:
        await ws.send(twilio_start(parameters={"From": sid}, stream_sid=sid))
        await until(lambda: sessions.find(sid) is not None, 5, f"the agent leg of {sid}")
        session = sessions.find(sid)
        assert session is not None
        await until(lambda: session.applied_at is not None, 5)
        for seq in range(2, 5):
            await ws.send(twilio_media(frame(seq), seq, stream_sid=sid))
        if fault == "hangup":
            await ws.send(twilio_stop(stream_sid=sid))
        elif fault == "vanish":
            await ws.close()
        elif fault == "reset":
            ws.transport.abort()
        elif fault == "agent_error":
            await session.send({"type": "Error", "description": "soak", "code": "SOAK"})
        elif fault == "agent_close":
            await session.ws.close(1011)
        else:
            await ws.send("junk that is not JSON")
        if fault != "reset":  # the server closes the caller leg itself (a TimeoutError fails)
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 3)
            assert ws.protocol.close_rcvd is not None, f"the server never closed {sid} ({fault})"
        await asyncio.wait_for(session.closed.wait(), 2)
    finally:
        ws.transport.abort()
        sessions.forget(sid)
    return True


async def ended_total(server: Server) -> tuple[int, int]:
    result = await http(
        server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    started = re.search(r"^twilio_bridge_calls_started_total (\d+)", result.text, re.M)
    ended = re.findall(r"^twilio_bridge_calls_ended_total\{[^}]*\} (\d+)", result.text, re.M)
    return int(started.group(1)) if started else 0, sum(int(n) for n in ended)


def test_soak_sequential_and_concurrent_with_random_faults() -> None:
    rng = random.Random(1234)

    async def soak() -> None:
        async with fake_agent() as agent, running_server(agent=agent) as server:
            sessions = Sessions(agent)
            # Warm up (imports, caches, first allocations) before taking the baseline.
            for i in range(5):
                await one_call(server, sessions, -1 - i, "hangup")
            await until(lambda: not server.calls and sessions.open_legs() == 0, 5)
            gc.collect()
            tracemalloc.start()
            fds, tasks, rss = open_fds(), len(asyncio.all_tasks()), rss_kib()
            traced = tracemalloc.get_traced_memory()[0]
            started_calls = 5

            for i in range(CALLS):
                started_calls += await one_call(server, sessions, i, rng.choice(FAULTS))
            for batch in range(CALLS // 50):
                results = await asyncio.gather(
                    *(
                        one_call(server, sessions, 100_000 + batch * 50 + k, rng.choice(FAULTS))
                        for k in range(50)
                    )
                )
                started_calls += sum(results)

            await until(lambda: not server.calls, 10, "every call removed")
            await until(lambda: sessions.open_legs() == 0, 5, "every agent leg closed")
            gc.collect()
            await asyncio.sleep(0.2)
            assert open_fds() <= fds + 2, f"file descriptors grew: {fds} -> {open_fds()}"
            assert len(asyncio.all_tasks()) <= tasks, "asyncio tasks grew"
            # Python objects must not accumulate (a leak of even 100 bytes a call shows here);
            # RSS may grow a little more from allocator fragmentation, so its bound is looser.
            live = (tracemalloc.get_traced_memory()[0] - traced) // 1024
            tracemalloc.stop()
            assert live < 512, f"{live} KiB of Python objects accumulated over {2 * CALLS} calls"
            grown = rss_kib() - rss  # includes tracemalloc's own bookkeeping
            limit = max(20 * 1024, 16 * 2 * CALLS)
            assert grown < limit, f"RSS grew by {grown} KiB over {2 * CALLS} calls"
            started, ended = await ended_total(server)
            assert started == ended == started_calls, (started, ended, started_calls)

    # pytest keeps every captured log record: that is memory per call on the test's side, so
    # the soak runs with logging off (the fault matrix checks the log lines).
    logging.disable(logging.CRITICAL)
    try:
        run(soak(), timeout=600 if FULL else 120)
    finally:
        logging.disable(logging.NOTSET)
