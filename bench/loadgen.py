"""The load of a whole-call benchmark: N Twilio callers and one agent server on two clocks.

The callers and agent sessions are :mod:`peers.load`'s lean peers; this module shapes their
traffic the way real calls arrive. Each caller sends a 20 ms frame every 20 ms and each agent
session a 60 ms chunk every 60 ms, spread over :data:`PHASES` phases of the period, and every
``barge_in_every`` seconds a session sends ``UserStartedSpeaking`` while its audio still plays.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial

from peers.load import LeanAgent, LeanCaller, Stats

PHASES = 10  # callers (and agent sessions) are spread over this many phases of a period (default)


class Load:
    """The callers, the agent server and their two shared clocks."""

    def __init__(self, bridge_port: int, barge_in_every: float = 5.0, phases: int = PHASES) -> None:
        """``phases``: how many instants of each period the calls' frames are spread over. Few
        phases send many calls' frames at once, which the server serves in one wake-up; real
        calls are not in step at all (as many phases as calls)."""
        self.loop = asyncio.get_running_loop()
        self.phases = phases
        self.bridge_port = bridge_port
        self.barge_in_every = barge_in_every
        self.stats = Stats()
        self.callers: list[LeanCaller] = []
        self.agent_sessions: set[LeanAgent] = set()
        self.server: asyncio.Server | None = None
        self._next_frame_id = 0
        self._next_chunk_id = 1 << 30
        self._caller_tick: asyncio.TimerHandle | None = None
        self._agent_tick: asyncio.TimerHandle | None = None
        self._running = False

    async def start_agent(self) -> int:
        self.server = await self.loop.create_server(
            lambda: LeanAgent(self.stats, self.agent_sessions), "127.0.0.1", 0
        )
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def add_callers(self, count: int, over: float) -> None:
        for _ in range(count):
            index = len(self.callers)
            _, caller = await self.loop.create_connection(
                partial(LeanCaller, self.stats, index, "/media-stream"),
                "127.0.0.1",
                self.bridge_port,
            )
            self.callers.append(caller)
            await asyncio.sleep(over / max(1, count))

    def start_clocks(self) -> None:
        self._running = True
        origin = self.loop.time()
        self._tick_callers(origin, 0)
        self._tick_agent(origin, 0)

    def stop_clocks(self) -> None:
        self._running = False
        for handle in (self._caller_tick, self._agent_tick):
            if handle is not None:
                handle.cancel()

    def _tick_callers(self, origin: float, n: int) -> None:
        """Every 20 ms / phases, one phase group of callers sends its 20 ms frame.

        Real calls are not in phase; sending every frame of every call at the same instant
        would measure the burst, not the bridge.
        """
        if not self._running:
            return
        phases = self.phases
        step = 0.02 / phases
        if self.stats.recording:
            self.stats.tick_lateness_ms.append((self.loop.time() - (origin + n * step)) * 1000)
        now = time.perf_counter()
        for caller in self.callers[n % phases :: phases]:
            self._next_frame_id += 1
            caller.send_frame(self._next_frame_id, now)
        self._caller_tick = self.loop.call_at(
            origin + (n + 1) * step, self._tick_callers, origin, n + 1
        )

    def _tick_agent(self, origin: float, n: int) -> None:
        """Every 60 ms / phases, one phase group of agent sessions sends its 60 ms chunk."""
        if not self._running:
            return
        now = time.perf_counter()
        phases = self.phases
        phase = n % phases
        period_ticks = max(1, round(self.barge_in_every / 0.06))
        for session in list(self.agent_sessions):
            if not session.ready or session.caller is None or session.caller % phases != phase:
                continue
            self._next_chunk_id += 1
            session.speak(self._next_chunk_id, now)
            if (n // phases + session.caller * 7) % period_ticks == 0:
                session.barge_in(now)
        self._agent_tick = self.loop.call_at(
            origin + (n + 1) * 0.06 / phases, self._tick_agent, origin, n + 1
        )

    def ready_sessions(self) -> int:
        return sum(1 for s in self.agent_sessions if s.ready)

    async def hang_up(self, timeout: float = 5.0) -> None:
        for caller in self.callers:
            caller.hang_up()
        waits = [c.closed for c in self.callers]
        if waits:
            await asyncio.wait(waits, timeout=timeout)
        for caller in self.callers:
            if caller.transport is not None and not caller.transport.is_closing():
                caller.transport.close()
        self.callers.clear()

    async def close(self) -> None:
        self.stop_clocks()
        for session in list(self.agent_sessions):
            if session.transport is not None:
                session.transport.abort()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
