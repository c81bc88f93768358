"""The Twilio leg of one call over an ASGI server's WebSocket (``websocket.*`` messages).

The ASGI server does the framing, pings and the close handshake; what the call needs is the
message side :class:`~server.twilio_leg.TwilioStream` (:class:`AsgiStream`) and a link that
carries its output (:class:`AsgiLeg`). Both sit behind the same narrow interfaces as the
socket leg, so :class:`~server.call.CallDriver` runs the call unchanged.

Writes are bounded like the bundled server's: :meth:`AsgiLeg.flush` queues the pump's messages
for one sender task and returns the bytes not yet taken by the server's ``send``; over
``--max-write-buffer`` the call ends ("caller not reading"). What differs: the bytes the ASGI
server itself buffers after ``send`` returned are not counted (uvicorn blocks ``send`` once its
transport holds more than its high-water mark, 64 KiB), and an abort can only end the ASGI
application: the server closes the TCP connection afterwards, in its own time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

from server.twilio_leg import TwilioEvents

log = logging.getLogger("server.call")

Message = dict[str, Any]
Receive = Any  # the ASGI callables (typed loosely: every framework has its own aliases)
Send = Any


class AsgiStream:
    """The message side of a media stream: what is queued to send, and how it closed."""

    __slots__ = ("close_code", "closing", "error", "max_message", "out", "remote_closed")

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self.out: list[Message] = []
        self.close_code: int | None = None
        self.remote_closed = False  # websocket.disconnect arrived: nothing more comes or goes
        self.error: tuple[int, str] | None = None
        self.closing = False  # our websocket.close is queued

    @property
    def done(self) -> bool:
        """The ASGI server completes the close handshake itself: done once disconnected."""
        return self.remote_closed

    def feed(self, data: bytes) -> list[str | bytes]:
        """Bytes never arrive here (the ASGI server delivers messages): nothing to parse."""
        return []

    def received(self, message: Message) -> list[str | bytes]:
        """One ``websocket.receive``: its text or bytes, or nothing when over the size limit
        (the stream fails with 1009, as the socket leg does)."""
        if self.remote_closed or self.closing:
            return []
        data = message.get("text")
        if data is None:
            data = message.get("bytes")
            if data is None:
                return []
        limit = self.max_message
        size = len(data)
        if type(data) is str and size * 4 > limit:  # characters can be up to 4 bytes
            size = len(data.encode("utf-8", "surrogatepass"))
        if size > limit:
            self.error = (1009, f"message over {limit} bytes")
            self.close(1009, f"message over {limit} bytes")
            return []
        return [data]

    def send_text(self, text: str) -> None:
        if not (self.closing or self.remote_closed):
            self.out.append({"type": "websocket.send", "text": text})

    def close(self, code: int, reason: str = "") -> None:
        if not (self.closing or self.remote_closed):
            self.closing = True
            self.out.append({"type": "websocket.close", "code": code, "reason": reason})


class AsgiLeg:
    """Carries one stream between the ASGI callables and the call (reader and sender tasks)."""

    __slots__ = (
        "_ended",
        "_queue",
        "_reader",
        "_send",
        "_sender",
        "_wake",
        "call",
        "closed",
        "peer",
        "receive",
        "stream",
        "unsent",
    )

    def __init__(
        self, stream: AsgiStream, call: TwilioEvents, receive: Receive, send: Send, peer: str
    ) -> None:
        self.stream = stream
        self.call = call
        self.receive = receive
        self._send = send
        self.peer = peer
        self._queue: deque[tuple[Message, int]] = deque()
        self.unsent = 0  # bytes queued and not yet taken by the server's send()
        self._wake = asyncio.Event()
        self._ended = asyncio.Event()
        self.closed = False  # close() asked: end once the queue is sent
        self._reader: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None

    async def run(self, accept: Message) -> None:
        """Accept, then serve the stream until the call lets it go (the ASGI application
        returns then)."""
        try:
            await self._send(accept)
        except Exception:  # the client left during the handshake
            self.stream.remote_closed = True
            self.call.twilio_lost()
            return
        self._sender = asyncio.create_task(self._sending())
        self._reader = asyncio.create_task(self._reading())
        try:
            await self._ended.wait()
        finally:
            for task in (self._reader, self._sender):
                task.cancel()
            for task in (self._reader, self._sender):
                with contextlib.suppress(BaseException):
                    await task
            if not self.stream.remote_closed:  # the ASGI application left: the leg is gone
                self.stream.remote_closed = True
                self.call.twilio_lost()

    async def _reading(self) -> None:
        stream, call = self.stream, self.call
        while not stream.remote_closed:
            try:
                message = await self.receive()
            except Exception:  # the server lost the connection its own way
                message = {"type": "websocket.disconnect", "code": 1006}
            try:
                if message.get("type") == "websocket.receive":
                    call.twilio_messages(stream.received(message))
                elif message.get("type") == "websocket.disconnect":
                    stream.remote_closed = True
                    code = message.get("code")
                    stream.close_code = code if isinstance(code, int) else 1005
                    call.twilio_lost()
            except Exception:  # a driver bug must cost one call, never the server
                log.exception("error in the call of media stream %s; dropping it", self.peer)
                call.abort()
                return

    async def _sending(self) -> None:
        queue, wake = self._queue, self._wake
        while True:
            while queue:
                message, size = queue[0]
                try:
                    await self._send(message)
                except Exception:  # the connection is gone: the reader reports it
                    queue.clear()
                    self.unsent = 0
                    break
                queue.popleft()
                self.unsent -= size
            if self.closed:
                self._ended.set()
                return
            wake.clear()
            await wake.wait()

    # ------------------------------------------------------------------ the call's side

    def flush(self) -> int:
        """Queue what the stream holds for the sender task; return the bytes still unsent."""
        stream = self.stream
        out = stream.out
        if out:
            stream.out = []
            if not stream.remote_closed:
                queue = self._queue
                for message in out:
                    size = len(message.get("text", ""))  # the core's JSON is ASCII: bytes
                    queue.append((message, size))
                    self.unsent += size
                self._wake.set()
        return self.unsent

    def close(self) -> None:
        """End the application once what was queued went out (the server closes the TCP)."""
        self.closed = True
        self._wake.set()

    def abort(self) -> None:
        """End the application now, whatever is queued."""
        self.closed = True
        self._queue.clear()
        self.unsent = 0
        self._ended.set()
