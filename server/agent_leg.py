"""The agent leg of one call: a ``websockets`` client to the Deepgram Voice Agent API.

It reports ``connected`` / each message / ``closed`` to its :class:`~server.call.CallDriver`,
which feeds the core. Outgoing messages are queued synchronously by the driver's pump and
written by one writer task that drains the whole queue per wake-up. The bytes queued here plus
those in the transport's buffer are exposed as :attr:`AgentLeg.buffered` so the driver can end
a call whose agent stopped reading instead of growing memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from server import __version__
from server.settings import is_loopback

if TYPE_CHECKING:
    from server.call import CallDriver

log = logging.getLogger("server.agent")

USER_AGENT = f"twilio-agent-bridge/{__version__}"


class AgentLeg:
    __slots__ = (
        "_close_request",
        "_closer",
        "_driver",
        "_loop",
        "_options",
        "_url",
        "_waiter",
        "_writer",
        "queue",
        "queued",
        "task",
        "ws",
    )

    def __init__(
        self,
        driver: CallDriver,
        url: str,
        api_key: str,
        *,
        connect_timeout: float,
        max_message_bytes: int,
        close_timeout: float,
    ) -> None:
        self._driver = driver
        self._loop = asyncio.get_running_loop()
        self._url = url
        host = urlsplit(url).hostname
        self._options: dict[str, Any] = {
            "additional_headers": [("Authorization", f"Token {api_key}")],
            "user_agent_header": USER_AGENT,
            "open_timeout": connect_timeout,
            "close_timeout": close_timeout,
            "max_size": max_message_bytes,
            "compression": None,  # audio does not compress, and deflate costs CPU per frame
            "ping_interval": 20,  # notices a dead TCP path; the core sends KeepAlive too
            "ping_timeout": 20,
            "max_queue": 64,
            "write_limit": 65536,
            "proxy": None if is_loopback(host) else True,
        }
        self.ws: ClientConnection | None = None
        self.queue: deque[str | bytes] = deque()
        self.queued = 0
        self._waiter: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._close_request: tuple[int, str] | None = None
        self.task = self._loop.create_task(self._run())

    # ------------------------------------------------------------------ driver side

    def send(self, message: str | bytes) -> None:
        """Queue one message (str: text frame, bytes: binary frame)."""
        self.queue.append(message)
        self.queued += len(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def buffered(self) -> int:
        """Bytes queued here plus bytes waiting in the transport."""
        ws = self.ws
        if ws is None:
            return self.queued
        return self.queued + ws.transport.get_write_buffer_size()

    def close(self, code: int, reason: str, abort: bool = False) -> None:
        """Close the leg (or give up connecting); ``closed`` is reported when it is gone."""
        if self._close_request is None:
            self._close_request = (code, reason)
        ws = self.ws
        if ws is None:
            if not self.task.done():
                self.task.cancel()
        elif abort:
            ws.transport.abort()
        elif self._closer is None:
            self._closer = self._loop.create_task(ws.close(code, reason))

    def abort(self) -> None:
        ws = self.ws
        if ws is not None:
            ws.transport.abort()
        elif not self.task.done():
            self.task.cancel()

    # ------------------------------------------------------------------ tasks

    async def _run(self) -> None:
        driver = self._driver
        code: int | None = None
        reason = ""
        try:
            try:
                ws = await connect(self._url, **self._options)
            except asyncio.CancelledError:
                reason = "connection attempt abandoned"
                return
            except Exception as exc:
                reason = describe_connect_error(exc)
                log.warning("agent connection failed: %s", reason)
                return
            self.ws = ws
            if self._close_request is not None:  # the call ended while we were connecting
                await ws.close(*self._close_request)
                code = ws.close_code
                return
            driver.agent_connected()
            self._writer = self._loop.create_task(self._write(ws))
            try:
                async for message in ws:
                    driver.agent_message(message)
            except ConnectionClosed:
                pass
            code = ws.close_code
            reason = ws.close_reason or ""
        except asyncio.CancelledError:
            reason = reason or "cancelled"
            if self.ws is not None:
                self.ws.transport.abort()
        finally:
            if self._writer is not None:
                self._writer.cancel()
            self.queue.clear()
            self.queued = 0
            driver.agent_closed(None if code == 1006 else code, reason)

    async def _write(self, ws: ClientConnection) -> None:
        queue = self.queue
        try:
            while True:
                while queue:
                    message = queue.popleft()
                    self.queued -= len(message)
                    await ws.send(message)
                self._waiter = self._loop.create_future()
                await self._waiter
                self._waiter = None
        except ConnectionClosed:
            pass  # the reader sees the close too and reports it


def describe_connect_error(exc: BaseException) -> str:
    """A short, secret-free description of why the agent could not be reached."""
    if isinstance(exc, InvalidStatus):
        return f"the agent refused the connection with HTTP {exc.response.status_code}"
    if isinstance(exc, TimeoutError):
        return "timed out while connecting"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, InvalidURI):
        return "invalid agent URL"
    if isinstance(exc, InvalidHandshake):
        return f"WebSocket handshake failed: {exc}"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"
