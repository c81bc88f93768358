"""The one place the server starts the bundled peers: ``--agent-url local`` and the demo.

Only this module of ``server/`` imports :mod:`peers` (the edge points down: the peers import
nothing of the server), and only the two entry points that need the peers import this module.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from peers import demo
from peers.agent import LocalAgent
from sansio import BridgeConfig, CallControl
from server import handoff
from server.options import PublicURL, ServerOptions, load_settings_file
from server.records.cli import render
from server.records.store import Database
from server.twilio_rest import TwilioCredentials

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


def demo_options(
    agent_url: str,
    records: Path,
    audio: Path | None,
    transfer: demo.Transfer | None = None,
    port: int = 0,
) -> ServerOptions:
    """The bridge of ``python -m server demo``: loopback, the local agent; with ``transfer``,
    on ``port`` (its public URL: the bridge itself), with the REST peer's demo credentials,
    which also sign Twilio's requests and the transfer's action URL, as TWILIO_AUTH_TOKEN does."""
    settings = default_settings()
    if transfer is None:
        bridge, twilio, token, public = BridgeConfig(settings=settings), None, None, None
    else:
        token = transfer.auth_token
        control = CallControl(
            targets={transfer.target: transfer.number}, resume=handoff.resume_hook(token)
        )
        bridge = BridgeConfig(settings=settings, control=control)
        twilio = TwilioCredentials(transfer.account_sid, token, api_url=transfer.api_url)
        public = PublicURL("http", f"127.0.0.1:{port}", "")
    return ServerOptions(
        bridge=bridge,
        host="127.0.0.1",
        port=port,
        agent_url=agent_url,
        public_url=public,
        api_key="demo-key-not-a-secret",
        auth_token=token,
        shutdown_grace=2.0,
        log_transcripts=True,  # a simulated call: its timeline shows what was said
        records=str(records),
        record_audio=str(audio) if audio is not None else None,
        twilio=twilio,
    )


def show_records(records: Path, since: float) -> str:
    """The demo calls' records (started at ``since`` or later), exactly as
    ``python -m server calls show`` renders them."""
    db = Database(str(records))
    try:
        calls = db.list_calls(since=since)  # oldest first
        shown = [db.load(call.call_sid) for call in calls]
    finally:
        db.close()
    parts = []
    for record in shown:
        if record is not None:
            command = f"python -m server calls --records {records} show {record.call_sid}"
            parts.append(f"\nthe call record ({command})\n{'-' * 60}\n{render(record)}")
    return "\n".join(parts) or "(no record of the calls)"


StartServer = Callable[[ServerOptions, socket.socket | None], Awaitable[RunningBridge]]
"""``start(options, sock)``: start a bridge (listening on ``sock`` if given)."""


def run_demo(argv: list[str], start_server: StartServer) -> int:
    """``python -m server demo``: the peers' demo against a bridge ``start_server`` starts,
    then the call's record (``demo-calls.db``; with ``--record-audio DIR`` the WAV too)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--records", type=Path, default=Path("demo-calls.db"))
    parser.add_argument("--record-audio", type=Path, default=None, metavar="DIR")
    ours, rest = parser.parse_known_args(argv)
    if ours.record_audio is not None:
        ours.record_audio.mkdir(parents=True, exist_ok=True)

    async def start_bridge(agent_url: str, transfer: demo.Transfer | None) -> RunningBridge:
        if transfer is None:
            options = demo_options(agent_url, ours.records, ours.record_audio)
            return await start_server(options, None)
        # The public URL names the port, so the socket is bound before the options are made.
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
        options = demo_options(agent_url, ours.records, ours.record_audio, transfer, port)
        bridge = await start_server(options, sock)
        assert options.public_url is not None
        return bridge._replace(signed_url=options.public_url.stream_url)

    since = time.time()
    code = demo.main(rest, start_bridge, bridge_logger="server")
    if "-h" not in rest and "--help" not in rest:
        print(show_records(ours.records, since), flush=True)
    return code
