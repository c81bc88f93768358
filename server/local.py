"""The one place the server starts the bundled peers: ``--agent-url local`` and the demo.

Only this module of ``server/`` imports :mod:`peers` (the edge points down: the peers import
nothing of the server), and only the two entry points that need the peers import this module.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from peers import demo
from peers.agent import LocalAgent
from sansio import BridgeConfig
from server.options import ServerOptions, load_settings_file

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


def demo_options(agent_url: str) -> ServerOptions:
    """The bridge of ``python -m server demo``: loopback, any port, the local agent."""
    return ServerOptions(
        bridge=BridgeConfig(settings=default_settings()),
        host="127.0.0.1",
        port=0,
        agent_url=agent_url,
        api_key="demo-key-not-a-secret",
        shutdown_grace=2.0,
        log_transcripts=True,  # a simulated call: its timeline shows what was said
    )


def run_demo(argv: list[str], start_bridge: StartBridge) -> int:
    """``python -m server demo``: the peers' demo against the bridge ``start_bridge`` starts."""
    return demo.main(argv, start_bridge, bridge_logger="server")
