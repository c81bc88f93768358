"""The agent leg of one call: websockets' Sans-I/O ``ClientProtocol`` under an ``asyncio.Protocol``.

It mirrors the Twilio leg. The connection is opened with ``loop.create_connection`` (TLS
with the default context, so certificates and the host name are checked, for ``wss://``),
and the handshake carries ``Authorization: Token <key>`` and our ``User-Agent``. Each read
goes through the frame path (:meth:`AgentLeg.data_received`): whole unmasked FIN text and
binary frames are decoded there, and every other frame goes to the protocol object, in stream
order. The events come back in order: the handshake response becomes
``agent_connected``, and every whole text or binary message becomes ``agent_message``, in
the same callback, through the narrow :class:`AgentEvents` interface. Each
:meth:`AgentLeg.send` frames and writes at once. :attr:`AgentLeg.buffered` is what the
transport holds unsent, so the call can end a call whose agent stopped reading instead of
growing memory.

Bounds: ``connect_timeout`` covers TCP, TLS and the handshake; ``close_timeout`` covers the
close handshake, after which the TCP connection is dropped; a message over
``max_message_bytes`` fails the connection with 1009. HTTP proxies (``HTTPS_PROXY``) are not
used.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from typing import Protocol

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from server import __version__
from server.ws import MASKS, encode_client_frame

log = logging.getLogger("server.agent")

USER_AGENT = f"twilio-agent-bridge/{__version__}"


class AgentEvents(Protocol):
    """What an agent leg reports to the call it belongs to."""

    def agent_connected(self) -> None:
        """The handshake succeeded: messages may be sent."""

    def agent_message(self, message: str | bytes) -> None:
        """One whole message (str: text, bytes: binary)."""

    def agent_closed(self, code: int | None, reason: str, failure: tuple[int, str] | None) -> None:
        """The leg is gone (reported once). ``code`` is None without a close frame;
        ``failure`` is the close this client sent when the agent broke the protocol."""


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One default client context per process: loading the CA store costs milliseconds."""
    return ssl.create_default_context()


class AgentLeg(asyncio.Protocol):
    __slots__ = (
        "_close_request",
        "_close_timeout",
        "_closer",
        "_fast",
        "_handshake",
        "_head_tail",
        "_held",
        "_limit",
        "_need",
        "_owed",
        "_parts",
        "_reported",
        "call",
        "connected",
        "loop",
        "protocol",
        "task",
        "transport",
    )

    def __init__(
        self,
        call: AgentEvents,
        url: str,
        api_key: str,
        *,
        connect_timeout: float,
        max_message_bytes: int,
        close_timeout: float,
    ) -> None:
        self.call = call
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.protocol: ClientProtocol | None = None
        self.connected = False  # the handshake succeeded and the call was told
        self._handshake: asyncio.Future[BaseException | None] = self.loop.create_future()
        self._parts: list[bytes] = []  # a fragmented message (never seen from Deepgram)
        self._limit = max_message_bytes
        self._fast = False  # the frame path may decode frames (set once the handshake is done)
        self._held = bytearray()  # the start of a frame the protocol object was not given
        self._need = 0  # the bytes _held must reach before the frame path looks again
        self._owed = 0  # bytes still due to the protocol object for the frame it has begun
        self._head_tail = b""  # the last bytes of the handshake response seen so far
        self._close_request: tuple[int, str] | None = None
        self._close_timeout = close_timeout
        self._closer: asyncio.TimerHandle | None = None
        self._reported = False
        self.task = self.loop.create_task(
            self._open(url, api_key, connect_timeout, max_message_bytes)
        )

    # ------------------------------------------------------------------ opening

    async def _open(
        self, url: str, api_key: str, connect_timeout: float, max_message_bytes: int
    ) -> None:
        try:
            uri = parse_uri(url)
            protocol = ClientProtocol(uri, max_size=max_message_bytes)
            request = protocol.connect()
            request.headers["User-Agent"] = USER_AGENT
            request.headers["Authorization"] = f"Token {api_key}"
            protocol.send_request(request)
            self.protocol = protocol
            tls = _tls_context() if uri.secure else None
            host = uri.host if tls is not None else None  # the name the certificate must carry
            async with asyncio.timeout(connect_timeout):
                await self.loop.create_connection(
                    lambda: self, uri.host, uri.port, ssl=tls, server_hostname=host
                )
                failed = await self._handshake
            if failed is not None:
                raise failed
        except asyncio.CancelledError:  # the call ended while we were connecting
            self._gone("connection attempt abandoned")
        except Exception as exc:
            reason = describe_connect_error(exc)
            log.warning("agent connection failed: %s", reason)
            self._gone(reason)

    def _gone(self, reason: str) -> None:
        """Opening failed or was abandoned: drop what there is and report it once."""
        if self.transport is not None:
            self.transport.abort()
        self._report(None, reason, None)

    def _report(self, code: int | None, reason: str, failure: tuple[int, str] | None) -> None:
        if not self._reported:
            self._reported = True
            self.call.agent_closed(code, reason, failure)

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self._write()  # the handshake request

    def data_received(self, data: bytes) -> None:
        """The frame path: whole unmasked FIN text/binary frames within the size limit are
        decoded here, inline because it runs for every frame; every other frame (control
        frames, fragments, masked, RSV bits, oversized) is handed to the protocol object at
        its own offset, so both see the stream in order and it stays the authority."""
        protocol = self.protocol
        assert protocol is not None
        if protocol.state is State.CONNECTING:
            data = self._opening(protocol, data)
        held = self._held
        if held:  # the start of a frame: appended to, joined once it can be complete
            held += data
            if len(held) < self._need and protocol.state is State.OPEN:
                return
            data = bytes(held)
            self._held = bytearray()
        if not self._fast or protocol.state is not State.OPEN:
            if data:
                self._to_protocol(protocol, data)
            return
        size = len(data)
        pos = 0
        limit = self._limit
        open_ = State.OPEN
        while pos < size and protocol.state is open_:
            owed = self._owed
            if owed:  # the rest of a frame the protocol object has begun
                end = pos + owed if owed < size - pos else size
                self._owed = owed - (end - pos)
                self._to_protocol(protocol, data[pos:end])
                pos = end
                continue
            if size - pos < 2:
                self._need = 2
                break
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            if length < 126:
                start = pos + 2
            elif length == 126:
                if size - pos < 4:
                    self._need = 4
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 4
            else:
                if size - pos < 10:
                    self._need = 10
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if (
                (b0 == 0x82 or b0 == 0x81)  # FIN, no RSV bit, binary or text
                and b1 < 0x80  # not masked
                and length <= limit
                and protocol.current_size is None  # no fragmented message in progress
            ):
                if end > size:
                    self._need = end - pos  # not all here yet: held until it is
                    break
                payload = data[start:end]
                if b0 == 0x82:
                    self._message(payload)
                    pos = end
                    continue
                try:
                    text = payload.decode("utf-8")
                except UnicodeDecodeError:
                    pass  # the protocol object's path fails the connection (1007)
                else:
                    self._message(text)
                    pos = end
                    continue
            # Masked frames too: the protocol object refuses them at the header, whatever
            # their end, and takes everything after that (its state is no longer OPEN).
            stop = end if end < size else size
            self._owed = end - stop
            self._to_protocol(protocol, data[pos:stop])
            pos = stop
        if pos < size:
            if protocol.state is open_:
                self._held = bytearray(memoryview(data)[pos:])  # a header, or one frame
            else:
                self._to_protocol(protocol, data[pos:])

    def _opening(self, protocol: ClientProtocol, data: bytes) -> bytes:
        """Give the protocol object the handshake response and no byte past it; return
        the bytes after it, so the frame path knows the protocol holds no partial frame."""
        seen = self._head_tail + data
        end = seen.find(b"\r\n\r\n")  # a response head ends there (every line ends in CRLF)
        if end < 0:
            self._head_tail = seen[-3:]
            self._to_protocol(protocol, data)
            return b""
        cut = end + 4 - len(self._head_tail)
        self._head_tail = b""
        self._to_protocol(protocol, data[:cut])
        if protocol.state is State.OPEN:
            # Not connected: a close was asked for while connecting. websockets accepts no
            # extension unless it offered one, and it offers none; a compressed stream
            # (RSV1) would need its decoder, so no frame path then.
            self._fast = self.connected and not protocol.extensions
        return data[cut:]

    def _to_protocol(self, protocol: ClientProtocol, data: bytes) -> None:
        protocol.receive_data(data)
        events = protocol.events_received()
        self._write()
        if protocol.close_expected():
            self._arm_closer()
        for event in events:
            if type(event) is Frame:
                if self.connected:
                    self._frame(event)
            elif type(event) is Response:
                self._handshake_done(protocol)

    def eof_received(self) -> bool | None:
        protocol = self.protocol
        assert protocol is not None
        protocol.receive_eof()  # a frame cut short in _held ends the stream just the same
        self._write()
        return None  # the transport closes; connection_lost reports

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closer is not None:
            self._closer.cancel()
        protocol = self.protocol
        assert protocol is not None
        protocol.receive_eof()  # idempotent: the state is CLOSED from here
        if not self.connected:
            if not self._handshake.done():
                error = protocol.handshake_exc or exc or ConnectionError("connection lost")
                self._handshake.set_result(error)
            return  # _open reports
        sent = protocol.close_sent
        failure = None
        if (
            sent is not None
            and sent.code != 1000
            and not protocol.close_rcvd_then_sent  # not the echo of the agent's close
            and self._close_request is None  # nor a close the call asked for
        ):
            failure = (sent.code, sent.reason)  # we failed it: say why, not "1006"
        code = protocol.close_code
        self._report(None if code == 1006 else code, protocol.close_reason or "", failure)

    def _handshake_done(self, protocol: ClientProtocol) -> None:
        if self._handshake.done():  # pragma: no cover - timed out in the same pass
            return
        failed = protocol.handshake_exc
        self._handshake.set_result(failed)
        if failed is not None or self._close_request is not None:
            return  # _open reports it (a close while connecting cancelled it)
        self.connected = True
        self.call.agent_connected()

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.BINARY or opcode is Opcode.TEXT or opcode is Opcode.CONT:
            data: bytes = frame.data  # type: ignore[assignment]  # bytes when received
            if opcode is Opcode.CONT or not frame.fin:  # a fragmented message: assemble it
                if opcode is not Opcode.CONT:
                    self._parts = [bytes((opcode.value,))]
                self._parts.append(data)
                if not frame.fin:
                    return
                first, *rest = self._parts
                self._parts = []
                opcode = Opcode(first[0])
                data = b"".join(rest)
            if opcode is Opcode.BINARY:
                self._message(data)
            else:
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    self._fail(1007, "invalid UTF-8")
                    return
                self._message(text)
        # Ping, pong and close: the protocol object answers them itself.

    def _message(self, message: str | bytes) -> None:
        try:
            self.call.agent_message(message)
        except Exception:  # a driver bug must cost this leg, never the server
            log.exception("error while handling an agent message; dropping the agent leg")
            self.abort()

    # ------------------------------------------------------------------ the call's side

    def send(self, message: str | bytes) -> None:
        """Send one message (str: text frame, bytes: binary frame); dropped once closing."""
        protocol = self.protocol
        if protocol is None or protocol.state is not State.OPEN:
            return
        # Framed here rather than by the protocol object (which would read a fresh mask
        # from the kernel and queue the frame in a list): a data frame changes none of its
        # state, and this runs 50 times a second per call.
        if type(message) is bytes:
            frame = encode_client_frame(0x2, message, MASKS.take())
        else:
            frame = encode_client_frame(0x1, message.encode("utf-8"), MASKS.take())  # type: ignore[union-attr]
        transport = self.transport
        assert transport is not None
        transport.write(frame)

    @property
    def buffered(self) -> int:
        """Bytes waiting in the transport."""
        transport = self.transport
        return 0 if transport is None else transport.get_write_buffer_size()

    def close(self, code: int, reason: str, abort: bool = False) -> None:
        """Close the leg (or give up connecting); ``closed`` is reported when it is gone."""
        if self._close_request is None:
            self._close_request = (code, reason)
        if not self.connected:
            if not self._handshake.done():
                self.task.cancel()
        elif abort:
            self.abort()
        else:
            self._send_close(code, reason)

    def abort(self) -> None:
        if self.connected and self.transport is not None:
            self.transport.abort()
        elif not self.task.done():
            self.task.cancel()

    # ------------------------------------------------------------------ writing

    def _send_close(self, code: int, reason: str) -> None:
        protocol = self.protocol
        assert protocol is not None
        if protocol.state is State.OPEN:
            protocol.send_close(code, reason)
            self._write()
        self._arm_closer()

    def _fail(self, code: int, reason: str) -> None:
        protocol = self.protocol
        assert protocol is not None
        protocol.fail(code, reason)
        self._write()
        self._arm_closer()

    def _arm_closer(self) -> None:
        """The TCP connection should close soon: drop it if it has not after close_timeout."""
        if self._closer is None and self.transport is not None:
            self._closer = self.loop.call_later(self._close_timeout, self.transport.abort)

    def _write(self) -> None:
        protocol = self.protocol
        transport = self.transport
        assert protocol is not None and transport is not None
        for data in protocol.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():  # the end of the stream: half-close (no TLS)
                transport.write_eof()
            else:
                transport.close()


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
