"""The lean load peers (peers/load.py) carry and time a real call through the server."""

from __future__ import annotations

import asyncio
import time

from peers.load import LeanAgent, LeanCaller, Stats
from tests.server_support import run, running_server, until


def test_lean_peers_tag_and_time_both_directions_and_the_barge_in() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        stats = Stats(recording=True)
        sessions: set[LeanAgent] = set()
        agent_server = await loop.create_server(lambda: LeanAgent(stats, sessions), "127.0.0.1", 0)
        agent_port = agent_server.sockets[0].getsockname()[1]
        try:
            async with running_server("--agent-url", f"ws://127.0.0.1:{agent_port}/") as server:
                _, caller = await loop.create_connection(
                    lambda: LeanCaller(stats, 7, "/media-stream"), "127.0.0.1", server.port
                )
                await until(lambda: any(s.ready for s in sessions), what="SettingsApplied")
                (session,) = sessions
                assert session.caller == 7  # read from the caller's bench-7 in Settings
                for frame_id in range(1, 11):
                    caller.send_frame(frame_id, time.perf_counter())
                    await asyncio.sleep(0.02)
                await until(lambda: stats.agent_received >= set(range(1, 11)), what="frames")
                assert len(stats.inbound_ms) >= 10 and min(stats.inbound_ms) >= 0
                for chunk_id in (1001, 1002, 1003):
                    session.speak(chunk_id, time.perf_counter())
                await until(lambda: 1001 in stats.caller_received, what="agent audio")
                assert stats.outbound_ms and min(stats.outbound_ms) >= 0
                session.barge_in(time.perf_counter())
                assert stats.barge_ins_sent == 1
                await until(lambda: stats.barge_in_ms != [], what="clear")
                caller.hang_up()
                await asyncio.wait_for(caller.closed, 5)
                assert stats.errors == []
        finally:
            agent_server.close()
            await agent_server.wait_closed()

    run(body())
