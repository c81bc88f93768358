"""The baseline for ``bench_calls``: a bridge built the simple way, measured in the same run.

This is the design of the program the project grew from (``product.md``), minus its bugs that
would spoil a measurement: the `websockets` library on both legs, three tasks per call, every
Twilio frame decoded with ``json.loads`` + base64 and forwarded as it comes (``--buffer-ms``
restores the original 400 ms buffering), every agent chunk wrapped with ``json.dumps``.
No timeouts, no marks bookkeeping, no limits: it only moves audio and events, so its cost is
a floor for "a bridge in Python on this machine", not a product.

    python -m bench.naive_bridge --port 5001 --agent-url ws://127.0.0.1:8765/v1/agent/converse
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
from http import HTTPStatus
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

COMPACT = (",", ":")  # what Twilio sends, and what the load generator matches on


class NaiveBridge:
    def __init__(self, agent_url: str, settings: dict[str, Any], buffer_bytes: int) -> None:
        self.agent_url = agent_url
        self.settings = settings
        self.buffer_bytes = buffer_bytes
        self.calls = 0

    def health(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            return connection.respond(HTTPStatus.OK, json.dumps({"calls": self.calls}) + "\n")
        return None

    async def call(self, twilio: ServerConnection) -> None:
        self.calls += 1
        try:
            async with connect(
                self.agent_url, additional_headers={"Authorization": "Token bench"}
            ) as agent:
                await self._bridge(twilio, agent)
        except (ConnectionClosed, OSError):
            pass
        finally:
            self.calls -= 1

    async def _bridge(self, twilio: ServerConnection, agent: Any) -> None:
        stream_sid: list[str] = []
        started = asyncio.Event()

        async def twilio_to_agent() -> None:
            buffer = bytearray()
            async for text in twilio:
                message = json.loads(text)
                event = message.get("event")
                if event == "start":
                    stream_sid.append(message["start"]["streamSid"])
                    params = message["start"].get("customParameters", {})
                    settings = json.dumps(self.settings)
                    for name, value in params.items():
                        settings = settings.replace("{" + name + "}", value)
                    await agent.send(settings)
                    started.set()
                elif event == "media" and message["media"].get("track", "inbound") == "inbound":
                    buffer += base64.b64decode(message["media"]["payload"])
                    while len(buffer) >= self.buffer_bytes:
                        await agent.send(bytes(buffer[: self.buffer_bytes]))
                        buffer = buffer[self.buffer_bytes :]
                elif event == "stop":
                    break
            await agent.close()

        async def agent_to_twilio() -> None:
            await started.wait()
            sid = stream_sid[0]
            async for message in agent:
                if isinstance(message, bytes):
                    payload = base64.b64encode(message).decode()
                    out = {"event": "media", "streamSid": sid, "media": {"payload": payload}}
                    await twilio.send(json.dumps(out, separators=COMPACT))
                    continue
                kind = json.loads(message).get("type")
                if kind == "UserStartedSpeaking":
                    await twilio.send(
                        json.dumps({"event": "clear", "streamSid": sid}, separators=COMPACT)
                    )
                elif kind == "AgentAudioDone":
                    out = {"event": "mark", "streamSid": sid, "mark": {"name": "done"}}
                    await twilio.send(json.dumps(out, separators=COMPACT))
            await twilio.close()

        tasks = [asyncio.create_task(twilio_to_agent()), asyncio.create_task(agent_to_twilio())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def main_async(args: argparse.Namespace) -> None:
    settings = json.loads(Path(args.config).read_text())
    bridge = NaiveBridge(args.agent_url, settings, max(160, args.buffer_ms * 8))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve(
        bridge.call, args.host, args.port, process_request=bridge.health, compression=None
    ):
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The naive baseline bridge for bench_calls.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--agent-url", required=True)
    parser.add_argument("--config", default="config.json")
    parser.add_argument("--buffer-ms", type=int, default=20, help="audio held before a send")
    args = parser.parse_args(argv)
    try:  # the same event loop the server under test picks
        import uvloop
    except ImportError:
        asyncio.run(main_async(args))
    else:
        uvloop.run(main_async(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
