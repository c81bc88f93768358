"""The Server: the composition root. Listening sockets, the registries of connections and
calls, and graceful shutdown.

``serve(options)`` serves until SIGTERM or SIGINT, then stops accepting, lets calls finish
for ``--shutdown-grace`` seconds, ends the rest with the reason ``shutdown`` (both legs closed
with a reason), waits for their legs to close (bounded) and returns 0. Worker processes are
the command line's (:mod:`server.cli`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from server.call import CallContext, CallDriver
from server.call_handle import CallHandle
from server.coalesce import Coalescer
from server.control_api import ControlApi, Relay
from server.control_uds import CONTROL_DIR_ENV, UnixRelay
from server.http import HttpProtocol
from server.metrics import Metrics
from server.options import ServerOptions, StartupError
from server.outbound import Outbound
from server.recording import AudioRecorder
from server.records.store import RecordsError, is_postgres, open_store
from server.records.webhook import Deliverer
from server.tools import ToolRegistry
from server.twilio_leg import TwilioLeg, TwilioLink
from server.twilio_rest import TwilioRestClient

log = logging.getLogger("server")


class Server:
    def __init__(self, options: ServerOptions, tools: ToolRegistry | None = None) -> None:
        self.options = options
        self.loop = asyncio.get_running_loop()
        self.calls: set[CallDriver] = set()
        # HTTP connections, then the media streams they became (until their call finishes).
        self.connections: set[HttpProtocol | TwilioLink] = set()
        self.metrics = Metrics(lambda: sum(1 for call in self.calls if call.stream_sid))
        self.tools = tools if tools is not None else ToolRegistry(timeout=options.tool_timeout)
        self.draining = False
        self.debug = log.isEnabledFor(logging.DEBUG)
        self.agent_url = options.agent_url
        self.tls = bool(options.certfile)
        self._ssl: ssl.SSLContext | None = None
        if options.certfile:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(options.certfile, options.keyfile)
            self._ssl = context
        self._servers: list[asyncio.Server] = []
        self._calls_empty = asyncio.Event()
        self._calls_empty.set()
        self._stop_local_agent: Callable[[], Awaitable[None]] | None = None
        try:
            self.records = open_store(options.records, options.records_retention_days)
        except RecordsError as exc:
            raise StartupError(str(exc)) from None
        # One Twilio REST client (a connection pool) for every call: transfers and fallbacks.
        self.twilio = TwilioRestClient(options.twilio) if options.twilio is not None else None
        self.webhook: Deliverer | None = None
        if options.webhook is not None and self.records is not None:
            self.records.outbox = True
            deliverer = self.webhook = Deliverer(self.records.spec, options.webhook, self.metrics)
            self.records.on_finished.append(lambda record: deliverer.wake())
        self.recordings = AudioRecorder(options.record_audio) if options.record_audio else None
        self._call_context = CallContext(
            self.loop,
            options,
            self.metrics,
            self.tools,
            self.agent_url,
            self.records,
            self.recordings,
            self.twilio,
            self._live,
            Coalescer(self.loop, options.coalesce_ms / 1000) if options.coalesce_ms > 0 else None,
        )
        self.control = ControlApi(lambda: (call.handle for call in self.calls))
        self.outbound = (
            Outbound(options, self.twilio, self.control, self.records) if self.twilio else None
        )
        self._relay: Relay | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, sock: socket.socket | None = None) -> None:
        """Start listening (on ``sock`` if given). Raises StartupError if the port is taken."""
        if self.options.local_agent:
            await self._start_local_agent()
        await self._start_relay()

        def factory() -> HttpProtocol:
            return HttpProtocol(self)

        options = self.options
        # A TLS handshake that stalls is cut off like a slow request (asyncio's default is 60 s).
        tls: dict[str, Any] = (
            {"ssl": self._ssl, "ssl_handshake_timeout": options.request_timeout}
            if self._ssl is not None
            else {}
        )
        try:
            if sock is not None:
                srv = await self.loop.create_server(factory, sock=sock, backlog=1024, **tls)
            else:
                srv = await self.loop.create_server(
                    factory,
                    options.host,
                    options.port,
                    backlog=1024,
                    reuse_port=options.reuse_port or options.workers > 1 or None,
                    **tls,
                )
        except OSError as exc:
            where = f"{options.host}:{options.port}"
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(f"cannot listen on {where}: address already in use", 1) from None
            raise StartupError(f"cannot listen on {where}: {exc.strerror or exc}", 1) from None
        self._servers.append(srv)

    @property
    def port(self) -> int:
        for sock in self.sockets:
            return int(sock.getsockname()[1])
        return 0

    @property
    def sockets(self) -> list[socket.socket]:
        return [s for srv in self._servers for s in getattr(srv, "sockets", ())]

    async def _start_local_agent(self) -> None:
        from server.local import start_local_agent  # loads the peers: only --agent-url local

        url, self._stop_local_agent = await start_local_agent()
        self.agent_url = url
        self._call_context = dataclasses.replace(self._call_context, agent_url=url)
        log.info("local agent listening at %s (no Deepgram key needed)", url)

    async def _start_relay(self) -> None:
        """How the control API reaches the calls of other processes: the instances sharing
        PostgreSQL records, else this instance's other workers (docs/deployment.md)."""
        options = self.options
        if not options.control_token:
            return
        timeout = options.control_timeout
        directory = os.environ.get(CONTROL_DIR_ENV)
        if options.records is not None and is_postgres(options.records):
            from server.control_pg import PostgresRelay  # psycopg: only with PostgreSQL records

            relay: Relay = PostgresRelay(self.control, options.records, timeout)
        elif directory:
            relay = UnixRelay(self.control, Path(directory), timeout)
        else:
            return
        try:
            await relay.start()
        except Exception as exc:
            raise StartupError(f"cannot start the control relay: {exc}") from None
        self._relay = self.control.relay = relay

    def _live(self, handle: CallHandle, up: bool) -> None:
        if self._relay is not None:
            self._relay.live(handle, up)

    def at_capacity(self) -> bool:
        limit = self.options.max_calls
        return limit is not None and len(self.calls) >= limit

    def on_upgrade(
        self, transport: asyncio.Transport, trailing_data: bytes, peer: str
    ) -> TwilioLeg:
        """A media stream was accepted: it becomes a call, and its Twilio leg gets the reads."""
        call = CallDriver(self._call_context, transport, trailing_data, peer, self._call_finished)
        self.add_call(call)
        assert isinstance(call.twilio, TwilioLeg)
        return call.twilio

    def add_call(self, call: CallDriver) -> None:
        """Register and start a new call (the embeddings build theirs: :mod:`server.asgi`)."""
        self.calls.add(call)
        self.connections.add(call.twilio)
        self._calls_empty.clear()
        call.start()

    def _call_finished(self, call: CallDriver) -> None:
        self.calls.discard(call)
        self.connections.discard(call.twilio)
        if not self.calls:
            self._calls_empty.set()

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting; let calls end within ``grace``; then end the rest and close."""
        grace = self.options.shutdown_grace if grace is None else grace
        self.draining = True
        for srv in self._servers:
            srv.close()
        for conn in list(self.connections):
            if isinstance(conn, HttpProtocol):
                conn.close_idle()
        if self.calls:
            log.info("shutting down: waiting up to %ss for %d call(s)", grace, len(self.calls))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._calls_empty.wait(), grace)
        if self.calls:
            log.info("shutting down: ending %d call(s)", len(self.calls))
            for call in list(self.calls):
                call.shutdown()
            # The core aborts legs that do not finish closing after close_timeout.
            bound = self.options.bridge.close_timeout + 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._calls_empty.wait(), bound)
            for call in list(self.calls):
                call.abort()
            if self.calls:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._calls_empty.wait(), 1.0)
        for conn in list(self.connections):
            conn.close()
        for srv in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(srv.wait_closed(), 1.0)
        if self._stop_local_agent is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._stop_local_agent(), 2.0)
        if self._relay is not None:
            await self._relay.stop()
        if self.outbound is not None:
            await self.outbound.aclose()
        if self.twilio is not None:
            await self.twilio.aclose()
        if self.recordings is not None:
            await asyncio.to_thread(self.recordings.close)
        if self.records is not None:  # what the calls queued is written before we return
            await asyncio.to_thread(self.records.close)
        if self.webhook is not None:  # after the last finish is queued; pending rows persist
            await asyncio.to_thread(self.webhook.close)


# ---------------------------------------------------------------------- running


def _signal_event(loop: asyncio.AbstractEventLoop) -> asyncio.Event:
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


async def serve(
    options: ServerOptions,
    *,
    tools: ToolRegistry | None = None,
    sock: socket.socket | None = None,
    on_started: Callable[[Server], None] | None = None,
    on_signal: Callable[[], None] | None = None,
    quiet: bool = False,
) -> int:
    loop = asyncio.get_running_loop()
    stop = _signal_event(loop)
    server = Server(options, tools)
    await server.start(sock)
    if not quiet:
        scheme = "https" if server.tls else "http"
        log.info(
            "listening on %s://%s:%d (pid %d; agent %s; public URL %s)",
            scheme,
            options.host,
            server.port,
            os.getpid(),
            "local" if options.local_agent else server.agent_url,
            options.public_url.request_url("") if options.public_url else "from Host header",
        )
    if on_started is not None:
        on_started(server)
    await stop.wait()
    log.info("signal received: shutting down (pid %d)", os.getpid())
    if on_signal is not None:
        on_signal()
    await server.shutdown()
    log.info("stopped (pid %d)", os.getpid())
    return 0


def use_uvloop(choice: str) -> bool:
    """``auto`` uses uvloop when installed (the optional ``fast`` extra)."""
    if choice == "asyncio":
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if choice == "uvloop":
            raise StartupError("--loop uvloop: uvloop is not installed") from None
        return False
    return True


def run_loop(main: Callable[[], Coroutine[Any, Any, int]], loop_choice: str) -> int:
    if use_uvloop(loop_choice):
        import uvloop

        return uvloop.run(main())
    return asyncio.run(main())
