"""The bridge inside an ASGI application (FastAPI, Starlette, or any ASGI server)::

    bridge = BridgeASGI.from_flags(["--agent", "local"])
    app = FastAPI(lifespan=bridge.lifespan)
    app.mount("/", bridge)

Nothing is re-implemented: each HTTP request and each WebSocket handshake is handed, as
HTTP/1.1, to the bundled server's own :class:`~server.http.HttpProtocol` over an in-memory
transport (:class:`_Exchange`), so the routes, Host and signature checks, body and header
limits, capacity and drain answers and metrics are the bundled server's. An accepted media
stream becomes a :class:`~server.call.CallDriver` whose Twilio leg is an
:class:`~server.asgi_leg.AsgiLeg`. Calls, records, metrics and tools belong to one
:class:`~server.app.Server`, built at startup (the lifespan, or the first request). See
docs/asgi.md for what differs from the bundled server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import h11

from server.app import Server
from server.asgi_leg import AsgiLeg, AsgiStream, Message, Receive, Send
from server.call import CallDriver
from server.cli import _load_env_file, build_parser
from server.http import HttpProtocol
from server.options import ServerOptions, make_options
from server.tools import ToolRegistry
from server.twilio_leg import TwilioEvents, TwilioLink, TwilioStream

# Hop-by-hop and framing headers: the ASGI server consumed them; the exchange sets its own.
_HOP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade", b"content-length"}
)


class EmbeddedServer(Server):
    """A :class:`Server` without listening sockets: the ASGI server accepts the connections."""

    async def start(self, sock: Any = None) -> None:
        if self.options.local_agent:
            await self._start_local_agent()
        await self._start_relay()  # the control API across instances sharing PostgreSQL

    def on_upgrade(self, transport: Any, trailing_data: bytes, peer: str) -> Any:
        assert isinstance(transport, _Exchange)
        call = CallDriver(
            self._call_context, transport, b"", peer, self._call_finished, transport.open_stream
        )
        self.add_call(call)
        return call.twilio


class _Exchange(asyncio.Transport):
    """One request through the HTTP layer: what it writes is parsed back into one response."""

    def __init__(self, scope: Mapping[str, Any], receive: Receive, send: Send, limit: int):
        super().__init__()
        client = scope.get("client")
        self.peername = tuple(client) if client else None
        self.receive, self.send, self.max_message = receive, send, limit
        self.parser = h11.Connection(h11.CLIENT)
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.complete = asyncio.Event()  # the response is whole, or the connection closed
        self.closing = False
        self.leg: AsgiLeg | None = None

    async def serve(self, server: Server, request: h11.Request, body: bytes) -> None:
        """Feed the request to a fresh HttpProtocol; wait for its answer (it bounds the wait
        with --request-timeout, as for any connection)."""
        try:
            wire = self.parser.send(request) or b""
            wire += (self.parser.send(h11.Data(data=body)) if body else b"") or b""
            wire += self.parser.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:  # e.g. no Host: the bundled server's h11 says 400 too
            self.status, self.headers, self.body = 400, [], bytearray(b"bad request\n")
            server.metrics.http_response(400)
            return
        protocol = HttpProtocol(server)
        protocol.connection_made(self)
        try:
            protocol.data_received(wire)
            await self.complete.wait()
        finally:
            if self.leg is None:
                protocol.connection_lost(None)

    def open_stream(self, call: TwilioEvents) -> tuple[TwilioStream, TwilioLink]:
        """The call's Twilio leg: this request's ASGI WebSocket (CallDriver's ``stream``)."""
        stream = AsgiStream(self.max_message)
        peer = f"{self.peername[0]}:{self.peername[1]}" if self.peername else ""
        self.leg = AsgiLeg(stream, call, self.receive, self.send, peer)
        return stream, self.leg

    # ------------------------------------------------------------------ asyncio.Transport

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peername if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        parser = self.parser
        try:
            parser.receive_data(bytes(data))
            while True:
                event = parser.next_event()
                if isinstance(event, h11.Response | h11.InformationalResponse):
                    self.status, self.headers = event.status_code, list(event.headers)
                    if event.status_code == 101:
                        self.complete.set()
                        return
                elif isinstance(event, h11.Data):
                    self.body += event.data
                elif event is h11.NEED_DATA or event is h11.PAUSED:
                    return
                else:  # EndOfMessage, ConnectionClosed
                    self.complete.set()
                    return
        except h11.RemoteProtocolError:  # pragma: no cover - the HTTP layer writes valid HTTP
            self.complete.set()

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True
        self.complete.set()

    def abort(self) -> None:
        self.close()

    def get_write_buffer_size(self) -> int:
        return 0

    def set_protocol(self, protocol: Any) -> None:
        """The upgraded stream's reads come from the ASGI server, through :attr:`leg`."""


def _request(
    scope: Mapping[str, Any], headers: list[tuple[bytes, bytes]], method: bytes = b"GET"
) -> h11.Request:
    target = scope.get("raw_path") or scope["path"].encode("utf-8")
    query = scope.get("query_string") or b""
    if query:
        target += b"?" + query
    kept = [(k.lower(), v) for k, v in scope.get("headers", ()) if k.lower() not in _HOP]
    if scope.get("scheme") in ("https", "wss") and not any(
        k == b"x-forwarded-proto" for k, _ in kept
    ):  # the ASGI server terminated TLS; the HTTP layer reads the scheme from this header
        kept.append((b"x-forwarded-proto", b"https"))
    return h11.Request(method=method, target=target, headers=kept + headers)


class BridgeASGI:
    """The webhook routes and the media stream as one ASGI application."""

    def __init__(self, options: ServerOptions, tools: ToolRegistry | None = None) -> None:
        self.options = options
        self.tools = tools
        self.server: EmbeddedServer | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_flags(
        cls, flags: Sequence[str] = (), environ: Mapping[str, str] | None = None
    ) -> BridgeASGI:
        """Options from the command line's flags and the environment (and ``--env-file``);
        ``--host``, ``--port`` and ``--workers`` are the ASGI server's business."""
        args = build_parser().parse_args(list(flags))
        if environ is None:
            _load_env_file(args.env_file)
        options = make_options(args, environ)
        return cls(options, ToolRegistry.load(options.tools, timeout=options.tool_timeout))

    async def startup(self) -> EmbeddedServer:
        async with self._lock:
            if self.server is None:
                server = EmbeddedServer(self.options, self.tools)
                await server.start()
                self.server = server
            return self.server

    async def shutdown(self) -> None:
        """Let calls end within --shutdown-grace, end the rest, close the records."""
        async with self._lock:
            server, self.server = self.server, None
        if server is not None:
            await server.shutdown()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """For ``FastAPI(lifespan=bridge.lifespan)``: a mounted app gets no lifespan events."""
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()

    async def __call__(self, scope: Mapping[str, Any], receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        server = await self.startup()
        if kind == "http":
            await self._http(server, scope, receive, send)
        elif kind == "websocket":
            await self._websocket(server, scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(
        self, server: Server, scope: Mapping[str, Any], receive: Receive, send: Send
    ) -> None:
        limit = server.options.max_body_bytes
        body = bytearray()
        more = True
        while more and len(body) <= limit:  # one byte over is enough for the 413
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = bool(message.get("more_body"))
        framing = [(b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        exchange = _Exchange(scope, receive, send, server.options.max_message_bytes)
        method = scope.get("method", "GET").encode("ascii", "replace")
        await exchange.serve(server, _request(scope, framing, method), bytes(body))
        status = exchange.status or 500
        headers = [(k, v) for k, v in exchange.headers if k != b"connection"]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": bytes(exchange.body)})

    async def _websocket(
        self, server: Server, scope: Mapping[str, Any], receive: Receive, send: Send
    ) -> None:
        message = await receive()
        if message.get("type") != "websocket.connect":
            return
        # The ASGI server checked the handshake; the HTTP layer sees a canonical one.
        key = base64.b64encode(os.urandom(16))
        upgrade = [
            (b"connection", b"Upgrade"),
            (b"upgrade", b"websocket"),
            (b"sec-websocket-version", b"13"),
            (b"sec-websocket-key", key),
        ]
        kept = [(k, v) for k, v in scope.get("headers", ()) if not k.startswith(b"sec-websocket")]
        scope = {**scope, "headers": kept}
        exchange = _Exchange(scope, receive, send, server.options.max_message_bytes)
        await exchange.serve(server, _request(scope, upgrade), b"")
        if exchange.status == 101 and exchange.leg is not None:
            await exchange.leg.run({"type": "websocket.accept"})
            return
        await self._refuse(scope, send, exchange)

    @staticmethod
    async def _refuse(scope: Mapping[str, Any], send: Send, exchange: _Exchange) -> None:
        """The HTTP layer's answer (403, 503, ...) as an HTTP response where the server offers
        the extension; otherwise a close before accepting, which servers answer with 403."""
        if "websocket.http.response" not in (scope.get("extensions") or {}):
            await send({"type": "websocket.close", "code": 1008})
            return
        headers = [(k, v) for k, v in exchange.headers if k != b"connection"]
        start: Message = {"type": "websocket.http.response.start", "headers": headers}
        await send({**start, "status": exchange.status or 500})
        await send({"type": "websocket.http.response.body", "body": bytes(exchange.body)})
