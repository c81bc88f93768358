"""Reading a peer's WebSocket in the peers' tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection


async def collect(
    ws: ClientConnection, until: Callable[[dict[str, Any]], bool], timeout: float = 5.0
) -> tuple[list[dict[str, Any]], bytes]:
    """JSON messages up to and including the first one matching ``until``, and the audio."""
    messages: list[dict[str, Any]] = []
    audio = bytearray()
    async with asyncio.timeout(timeout):
        async for message in ws:
            if isinstance(message, bytes):
                audio += message
                continue
            messages.append(json.loads(message))
            if until(messages[-1]):
                break
    return messages, bytes(audio)


def of_type(kind: str) -> Callable[[dict[str, Any]], bool]:
    return lambda message: message.get("type") == kind
