"""The Server: listening sockets, the registry of calls, graceful shutdown, and worker processes.

``run(options)`` is what the command line calls. It serves until SIGTERM or SIGINT, then stops
accepting, lets calls finish for ``--shutdown-grace`` seconds, ends the rest with the reason
``shutdown`` (both legs closed with a reason), waits for their legs to close (bounded) and
returns 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import multiprocessing
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from server.metrics import Metrics
from server.recording import AudioRecorder
from server.records.store import RecordsError, open_store
from server.records.webhook import Deliverer
from server.settings import ServerOptions, StartupError
from server.tools import ToolRegistry

if TYPE_CHECKING:
    from server.call import CallDriver
    from server.http import HttpProtocol
    from server.peers.agent import LocalAgent

log = logging.getLogger("server")


class Server:
    def __init__(self, options: ServerOptions, tools: ToolRegistry | None = None) -> None:
        self.options = options
        self.loop = asyncio.get_running_loop()
        self.calls: set[CallDriver] = set()
        self.connections: set[HttpProtocol] = set()
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
        self._local_agent: LocalAgent | None = None
        try:
            self.records = open_store(options.records, options.records_retention_days)
        except RecordsError as exc:
            raise StartupError(str(exc)) from None
        self.webhook: Deliverer | None = None
        if options.webhook is not None and self.records is not None:
            self.records.outbox = True
            deliverer = self.webhook = Deliverer(self.records.spec, options.webhook, self.metrics)
            self.records.on_finished.append(lambda record: deliverer.wake())
        self.recordings = AudioRecorder(options.record_audio) if options.record_audio else None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, sock: socket.socket | None = None) -> None:
        """Start listening (on ``sock`` if given). Raises StartupError if the port is taken."""
        from server.http import HttpProtocol

        if self.options.local_agent:
            await self._start_local_agent()

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
        from server.peers.agent import LocalAgent  # only --agent-url local needs it

        agent = LocalAgent(host="127.0.0.1", port=0)
        await agent.start()
        self._local_agent = agent
        self.agent_url = agent.url
        log.info("local agent listening at %s (no Deepgram key needed)", agent.url)

    def at_capacity(self) -> bool:
        limit = self.options.max_calls
        return limit is not None and len(self.calls) >= limit

    def call_started(self, call: CallDriver) -> None:
        self.calls.add(call)
        self._calls_empty.clear()

    def call_finished(self, call: CallDriver) -> None:
        self.calls.discard(call)
        if not self.calls:
            self._calls_empty.set()

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting; let calls end within ``grace``; then end the rest and close."""
        grace = self.options.shutdown_grace if grace is None else grace
        self.draining = True
        for srv in self._servers:
            srv.close()
        for conn in list(self.connections):
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
            conn._close()
        for srv in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(srv.wait_closed(), 1.0)
        if self._local_agent is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._local_agent.stop(), 2.0)
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


def run(
    options: ServerOptions, tools: ToolRegistry | None = None, argv: list[str] | None = None
) -> int:
    """Serve until a signal; with ``--workers N`` also run N-1 worker processes."""
    if options.workers <= 1:
        return run_loop(lambda: serve(options, tools=tools), options.loop)
    return _run_workers(options, tools, argv or [])


def _bind_reuseport(options: ServerOptions) -> socket.socket:
    infos = socket.getaddrinfo(
        options.host, options.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        where = f"{options.host}:{options.port}"
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"cannot listen on {where}: address already in use", 1) from None
        raise StartupError(f"cannot listen on {where}: {exc.strerror or exc}", 1) from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _worker_main(argv: list[str], index: int) -> None:
    """Entry point of a worker process (spawned): parse the same flags and serve."""
    from server import cli

    code = cli.main([*argv, "--workers", "1", "--reuse-port"], worker=index)
    sys.exit(code)


def _run_workers(options: ServerOptions, tools: ToolRegistry | None, argv: list[str]) -> int:
    if not hasattr(socket, "SO_REUSEPORT"):
        raise StartupError("--workers needs SO_REUSEPORT, which this platform lacks")
    sock = _bind_reuseport(options)  # fails here, in the parent, if the port is taken
    context = multiprocessing.get_context("spawn")
    children = []
    for index in range(1, options.workers):
        child = context.Process(
            target=_worker_main, args=(argv, index), name=f"worker-{index}", daemon=False
        )
        child.start()
        children.append(child)
    log.info("started %d worker process(es) sharing port %d", len(children), options.port)

    def forward() -> None:
        for child in children:
            if child.pid is not None and child.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        code = await serve(options, tools=tools, sock=sock, on_signal=forward)
        forward()
        deadline = loop.time() + options.shutdown_grace + options.bridge.close_timeout + 5
        for child in children:
            while child.is_alive() and loop.time() < deadline:
                await asyncio.sleep(0.05)
        return code

    code = run_loop(main, options.loop)
    worst = code
    for child in children:
        child.join(timeout=1.0)
        if child.is_alive():
            child.kill()
            child.join()
            worst = worst or 1
        elif child.exitcode:
            worst = worst or child.exitcode
    return worst
