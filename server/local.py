"""The one place the server starts the bundled peers: ``--agent-url local`` and the demo.

Only this module of ``server/`` imports :mod:`peers` (the edge points down: the peers import
nothing of the server), and only the two entry points that need the peers import this module.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from peers import demo
from peers.agent import LocalAgent
from sansio import BridgeConfig
from server.options import ServerOptions, load_settings_file
from server.records.cli import render
from server.records.store import Database

StartBridge = demo.StartBridge
RunningBridge = demo.RunningBridge


async def start_local_agent() -> tuple[str, Callable[[], Awaitable[None]]]:
    """A local agent on 127.0.0.1: its URL, and how to stop it."""
    agent = LocalAgent(host="127.0.0.1", port=0)
    await agent.start()
    return agent.url, agent.stop


def default_settings() -> dict[str, Any]:
    """``./config.json`` if there is one, else the copy shipped with the package."""
    if Path("config.json").is_file():
        return load_settings_file("config.json")
    text = resources.files("server").joinpath("default_config.json").read_text()
    settings: dict[str, Any] = json.loads(text)
    return settings


def demo_options(agent_url: str, records: Path, audio: Path | None) -> ServerOptions:
    """The bridge of ``python -m server demo``: loopback, any port, the local agent."""
    return ServerOptions(
        bridge=BridgeConfig(settings=default_settings()),
        host="127.0.0.1",
        port=0,
        agent_url=agent_url,
        api_key="demo-key-not-a-secret",
        shutdown_grace=2.0,
        log_transcripts=True,  # a simulated call: its timeline shows what was said
        records=str(records),
        record_audio=str(audio) if audio is not None else None,
    )


def show_record(records: Path) -> str:
    """The demo call's record, exactly as ``python -m server calls show`` renders it."""
    db = Database(str(records))
    try:
        calls = db.list_calls()  # oldest first: this call is the last one
        record = db.load(calls[-1].call_sid) if calls else None
    finally:
        db.close()
    if record is None:
        return "(no record of the call)"
    command = f"python -m server calls --records {records} show {record.call_sid}"
    return f"\nthe call record ({command})\n{'-' * 60}\n{render(record)}"


StartServer = Callable[[ServerOptions], Awaitable[RunningBridge]]


def run_demo(argv: list[str], start_server: StartServer) -> int:
    """``python -m server demo``: the peers' demo against a bridge ``start_server`` starts,
    then the call's record (``demo-calls.db``; with ``--record-audio DIR`` the WAV too)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--records", type=Path, default=Path("demo-calls.db"))
    parser.add_argument("--record-audio", type=Path, default=None, metavar="DIR")
    ours, rest = parser.parse_known_args(argv)
    if ours.record_audio is not None:
        ours.record_audio.mkdir(parents=True, exist_ok=True)

    def start_bridge(agent_url: str) -> Awaitable[RunningBridge]:
        return start_server(demo_options(agent_url, ours.records, ours.record_audio))

    code = demo.main(rest, start_bridge, bridge_logger="server")
    if "-h" not in rest and "--help" not in rest:
        print(show_record(ours.records), flush=True)
    return code
