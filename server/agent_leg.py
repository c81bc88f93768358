"""The agent leg of one call: a ``websockets`` client to the Deepgram Voice Agent API.

It reports ``connected`` / each message / ``closed`` to its :class:`~server.call.CallDriver`,
which feeds the core. The bytes queued here plus those in the transport's buffer are exposed as
:attr:`AgentLeg.buffered` so the driver can end a call whose agent stopped reading instead of
growing memory.

Hot path, both ways, without a task switch per message:

* Sending: while the connection is open and its transport buffer is under the write limit,
  :meth:`AgentLeg.send` frames the message at once with the connection's Sans-I/O protocol
  object (``ws.protocol.send_binary``), and :meth:`AgentLeg.flush`, called once at the end of
  the driver's pump, writes everything framed in that pump with one ``transport.write``.
  Otherwise messages are queued, and one writer task drains the whole queue per wake-up
  with ``await ws.send()`` (which waits for the transport to drain).
* Receiving: a ``ClientConnection`` subclass hands each complete text or binary message to
  the driver from ``data_received`` (``process_event``) instead of queueing it for a reader
  task. A fragmented message (never seen from Deepgram) switches the connection back to the
  stock path for good, so order is kept. A reader task still runs ``async for`` to see the
  close and any fragmented messages.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from server import __version__
from server.options import is_loopback

if TYPE_CHECKING:
    from server.call import CallDriver

log = logging.getLogger("server.agent")

USER_AGENT = f"twilio-agent-bridge/{__version__}"
WRITE_LIMIT = 65536
_TEXT = Opcode.TEXT
_BINARY = Opcode.BINARY
_OPEN = State.OPEN


class _AgentConnection(ClientConnection):
    """Delivers whole data messages synchronously to ``sink`` (see the module docstring)."""

    sink: Callable[[str | bytes], None] | None = None

    def process_event(self, event: Any) -> None:
        sink = self.sink
        if sink is not None and type(event) is Frame and self.response is not None:
            opcode = event.opcode
            if opcode is _BINARY or opcode is _TEXT:
                if not event.fin:  # fragmented: the stock assembler keeps the order from now
                    self.sink = None
                else:
                    data: bytes = event.data  # type: ignore[assignment]  # bytes when received
                    if opcode is _BINARY:
                        sink(data)
                        return
                    try:
                        text = data.decode("utf-8")
                    except UnicodeDecodeError:
                        self.sink = None  # the stock path reports it and closes with 1007
                    else:
                        sink(text)
                        return
        super().process_event(event)


class AgentLeg:
    __slots__ = (
        "_close_request",
        "_closer",
        "_connected",
        "_dirty",
        "_driver",
        "_early",
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
            "write_limit": WRITE_LIMIT,
            "proxy": None if is_loopback(host) else True,
            "create_connection": self._make_connection,
        }
        self.ws: ClientConnection | None = None
        self.queue: deque[str | bytes] = deque()
        self.queued = 0
        self._waiter: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._close_request: tuple[int, str] | None = None
        self._connected = False  # the driver was told; messages go straight to it
        self._early: list[str | bytes] = []  # messages that came with the handshake
        self._dirty = False  # frames were made by send() and await flush()
        self.task = self._loop.create_task(self._run())

    def _make_connection(self, *args: Any, **kwargs: Any) -> ClientConnection:
        connection = _AgentConnection(*args, **kwargs)
        connection.sink = self._deliver
        return connection

    def _deliver(self, message: str | bytes) -> None:
        if not self._connected:
            self._early.append(message)
            return
        try:
            self._driver.agent_message(message)
        except Exception:  # never let a driver bug break the websockets protocol
            log.exception("error while handling an agent message; dropping the agent leg")
            self.abort()

    # ------------------------------------------------------------------ driver side

    def send(self, message: str | bytes) -> None:
        """Send one message (str: text frame, bytes: binary frame); see :meth:`flush`."""
        ws = self.ws
        if (
            ws is not None
            and not self.queue
            and ws.protocol.state is _OPEN
            and ws.transport.get_write_buffer_size() <= WRITE_LIMIT
        ):
            if type(message) is bytes:
                ws.protocol.send_binary(message)
            else:
                ws.protocol.send_text(message.encode("utf-8"))  # type: ignore[union-attr]
            self._dirty = True
            return
        self.queue.append(message)
        self.queued += len(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def flush(self) -> None:
        """Write what :meth:`send` framed since the last flush, with one write."""
        if not self._dirty:
            return
        self._dirty = False
        ws = self.ws
        if ws is None:  # pragma: no cover
            return
        chunks = ws.protocol.data_to_send()
        if not chunks:
            return
        if all(chunks):
            if not ws.transport.is_closing():
                ws.transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            return
        # An end-of-stream marker among them (the protocol failed): let websockets act on it.
        for chunk in chunks:  # pragma: no cover - only when the protocol fails mid-send
            if chunk:
                ws.transport.write(chunk)
            elif ws.transport.can_write_eof():
                ws.transport.write_eof()
            else:
                ws.transport.close()

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
        failure: tuple[int, str] | None = None
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
            self._connected = True
            driver.agent_connected()
            early, self._early = self._early, []
            for message in early:
                self._deliver(message)
            self._writer = self._loop.create_task(self._write(ws))
            try:
                async for message in ws:
                    driver.agent_message(message)
            except ConnectionClosed:
                pass
            code = ws.close_code
            reason = ws.close_reason or ""
            protocol = ws.protocol
            sent = protocol.close_sent
            if (
                sent is not None
                and sent.code != 1000
                and not protocol.close_rcvd_then_sent  # not the echo of the agent's close
                and self._close_request is None  # nor a close the call asked for
            ):
                failure = (sent.code, sent.reason)  # websockets failed it: say why, not "1006"
        except asyncio.CancelledError:
            reason = reason or "cancelled"
            if self.ws is not None:
                self.ws.transport.abort()
        finally:
            if self._writer is not None:
                self._writer.cancel()
            self.queue.clear()
            self.queued = 0
            driver.agent_closed(None if code == 1006 else code, reason, failure)

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
