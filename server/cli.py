"""Command line: ``python -m server`` and the ``twilio-agent-bridge`` script.

``python -m server demo ...`` is handed to :mod:`peers.demo` through :mod:`server.local`,
``python -m server calls ...`` to :mod:`server.records.cli`. Configuration mistakes print
one line (no traceback) and exit with status 2; a port that is already taken exits with
status 1; a clean shutdown on SIGTERM/SIGINT exits with 0. With ``--workers N`` this module
owns the N-1 worker processes (spawned, each serving the shared port).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from server import __version__
from server.app import Server, run_loop, serve
from server.control_uds import setup_control_dir
from server.metrics import setup_multiprocess_metrics
from server.options import (
    DEFAULT_AGENT_URL,
    DEFAULT_COALESCE_MS,
    DEFAULT_VOICEMAIL,
    MAX_COALESCE_MS,
    ServerOptions,
    StartupError,
    make_options,
)
from server.tools import ToolLoadError, ToolRegistry

PROG = "twilio-agent-bridge"
log = logging.getLogger("server")


class _Parser(argparse.ArgumentParser):
    """Errors in one line, without the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _checked(
    convert: Callable[[str], Any], accept: Callable[[Any], bool], expected: str
) -> Callable[[str], Any]:
    """An argparse type: ``convert`` the text, then require ``accept`` of the value."""

    def parse(value: str) -> Any:
        try:
            number = convert(value)
        except ValueError:
            number = None
        if number is None or not accept(number):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {value!r}")
        return number

    return parse


_positive_int = _checked(int, lambda n: n > 0, "a positive integer")
_non_negative_int = _checked(int, lambda n: n >= 0, "an integer >= 0")
_port = _checked(int, lambda n: 0 <= n <= 65535, "a port number (0-65535)")
_seconds = _checked(float, lambda n: 0 < n < math.inf, "a positive number of seconds")
_coalesce_ms = _checked(
    float, lambda n: 0 <= n <= MAX_COALESCE_MS, f"milliseconds from 0 to {MAX_COALESCE_MS:g}"
)
_non_negative_seconds = _checked(float, lambda n: 0 <= n < math.inf, "a number of seconds >= 0")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Bridge Twilio Media Streams phone calls to the Deepgram Voice Agent API.",
        epilog=(
            "Environment: DEEPGRAM_API_KEY (required unless --agent-url local), "
            "TWILIO_AUTH_TOKEN (checks X-Twilio-Signature; strongly recommended), "
            "PUBLIC_URL, DEEPGRAM_AGENT_URL, BRIDGE_RECORDS, BRIDGE_CONTROL_TOKEN (bearer token "
            "of GET /calls/{CallSid}/record; the route is off without it), BRIDGE_WEBHOOK_SECRET "
            "(signs --webhook-url's requests). A .env file is read and never overrides the "
            "environment. 'python -m server demo --help' runs the local demo; "
            "'python -m server dial --help' places an outbound call; "
            "'python -m server calls --help' reads the call records."
        ),
    )
    add = p.add_argument
    add("--version", action="version", version=f"{PROG} {__version__}")
    add("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    add("--port", type=_port, default=5000, help="port to listen on (default 5000)")
    add("--config", default="config.json", help="agent Settings JSON (default ./config.json)")
    add("--route", action="append", metavar="NUMBER=CONFIG",
        help="repeatable: calls to E.164 NUMBER get the agent Settings of file CONFIG (its stem "
        "names the agent for outbound calls; docs/outbound.md)")  # fmt: skip
    add("--max-outbound-per-minute", type=_positive_int, default=10, metavar="N",
        help="POST /calls beyond N in any 60 s of one process get 429 (default 10)")  # fmt: skip
    add("--voicemail-message", default=DEFAULT_VOICEMAIL, metavar="TEXT",
        help="what the agent leaves on an answering machine (outbound calls)")  # fmt: skip
    add("--env-file", default=".env", help="dotenv file to read (default ./.env)")
    add(
        "--agent-url",
        "--agent",
        default=None,
        help=f"agent WebSocket URL (default $DEEPGRAM_AGENT_URL or {DEFAULT_AGENT_URL}); "
        "ws:// is accepted for local peers; 'local' runs the bundled local agent",
    )
    add(
        "--public-url",
        default=None,
        help="externally visible https:// base URL (default $PUBLIC_URL; else derived from "
        "the Host and X-Forwarded-Proto headers)",
    )
    add("--chunk-ms", type=_positive_int, default=20,
        help="caller audio per message to the agent, in ms (default 20)")
    add("--preroll-ms", type=_positive_int, default=5000,
        help="caller audio held until the agent is ready, in ms (default 5000)")
    add("--preroll-policy", choices=("keep", "drop", "last"), default="drop",
        help="what of the audio held before the first SettingsApplied reaches the agent: all, "
        "none (protects the greeting from an early 'Hello?'), or the last 300 ms (default drop)")
    add("--agent-retries", type=_non_negative_int, default=2,
        help="reconnects of the agent leg after a mid-call failure (default 2; 0: end the call)")
    add("--mark-interval-ms", type=_non_negative_int, default=500,
        help="a playback mark every N ms of agent audio; 0: only at reply ends (default 500)")
    add("--require-call-token", action="store_true",
        help="with TWILIO_AUTH_TOKEN: the webhook adds a per-call token to the TwiML and a "
        "stream whose start does not carry it back is refused (stops replayed upgrades)")
    add("--max-calls", type=_non_negative_int, default=0,
        help="calls in progress at most; over it callers hear 'busy' (default 0: no limit)")
    add("--log-level", default="INFO", type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], help="(default INFO)")
    add("--certfile", default=None, help="serve TLS directly with this certificate (PEM)")
    add("--keyfile", default=None, help="private key for --certfile (PEM)")
    add("--max-message-bytes", type=_positive_int, default=65536,
        help="largest WebSocket message accepted from Twilio; larger closes with 1009")
    add("--max-agent-message-bytes", type=_positive_int, default=1 << 20,
        help="largest message accepted from the agent (default 1 MiB)")
    add("--max-header-bytes", type=_positive_int, default=16384,
        help="largest HTTP request head; larger gets 431 (default 16384)")
    add("--max-body-bytes", type=_positive_int, default=65536,
        help="largest webhook body; larger gets 413 (default 65536)")
    add("--control-timeout", type=_seconds, default=3.0,
        help="seconds the control API waits for the worker or instance that has the call "
             "(default 3)")
    add("--request-timeout", type=_seconds, default=10.0,
        help="seconds to receive a whole HTTP request (default 10)")
    add("--max-write-buffer", type=_positive_int, default=262144,
        help="bytes unsent to one peer before its call is ended (default 262144)")
    add("--idle-timeout", type=_seconds, default=15.0,
        help="end a call after this many seconds without a Twilio message (default 15)")
    add("--keepalive", type=_seconds, default=8.0,
        help="send the agent KeepAlive after this many idle seconds (default 8)")
    add("--agent-connect-timeout", type=_seconds, default=10.0,
        help="seconds to open the agent WebSocket (default 10)")
    add("--settings-timeout", type=_seconds, default=10.0,
        help="seconds for the agent to apply the Settings (default 10)")
    add("--close-timeout", type=_seconds, default=1.0,
        help="seconds for a close handshake before the connection is dropped (default 1)")
    add("--welcome-timeout", type=_seconds, default=2.0,
        help="seconds to wait for the agent's Welcome before sending Settings anyway (default 2)")
    add("--hangup-grace", type=_seconds, default=3.0,
        help="after end_call, seconds for the goodbye to start before hanging up (default 3)")
    add("--hangup-timeout", type=_seconds, default=30.0,
        help="after end_call, seconds at most to wait for the goodbye to play (default 30)")
    add("--dtmf-template", default="The caller pressed the {digit} key on the phone keypad.",
        help="what a keypress tells the agent (InjectUserMessage); must contain {digit}")
    add("--shutdown-grace", type=_non_negative_seconds, default=10.0,
        help="on SIGTERM, seconds to let calls finish before ending them (default 10)")
    add("--tools", action="append", default=[], metavar="MODULE[:ATTR]",
        help="import MODULE and register its TOOLS mapping of client-side tool handlers "
        "(repeatable)")
    add("--tool-timeout", type=_seconds, default=10.0,
        help="seconds a tool handler may run (default 10)")
    add("--workers", type=_positive_int, default=1,
        help="processes serving the same port with SO_REUSEPORT (default 1)")
    add("--loop", choices=["auto", "asyncio", "uvloop"], default="auto",
        help="event loop: auto uses uvloop when installed (default auto)")
    add("--coalesce-ms", type=_coalesce_ms, default=DEFAULT_COALESCE_MS, metavar="MS",
        help="after a pass of the loop that served several calls, wait up to MS so the next "
        "pass serves many in one wake-up; adds at most MS of latency, 0 turns it off "
        f"(default {DEFAULT_COALESCE_MS:g})")
    add("--log-transcripts", action="store_true",
        help="log what was said, tool arguments and keypad digits (off: logs stay private)")
    add("--redact", default=None, metavar="MODULE[:FUNC]",
        help="FUNC(kind, text) -> text rewrites private text before logs and records "
        "(default FUNC name: redact)")
    add("--records", default=None, metavar="PATH|URL",
        help="call records: a SQLite path, a postgresql:// URL, or 'none' "
        "(default $BRIDGE_RECORDS or ./calls.db); read them with 'calls'")
    add("--records-retention-days", type=_seconds, default=None, metavar="DAYS",
        help="delete records of calls older than this (default: keep)")
    add("--webhook-url", default=None, metavar="URL",
        help="POST each finished call record here, signed with $BRIDGE_WEBHOOK_SECRET "
        "(X-Bridge-Signature; see docs/records.md)")
    add("--webhook-timeout", type=_seconds, default=10.0,
        help="seconds for the webhook receiver to answer (default 10)")
    add("--webhook-max-attempts", type=_positive_int, default=10,
        help="attempts per webhook before giving up (default 10)")
    add("--webhook-max-age", type=_seconds, default=86400.0,
        help="seconds after the call to keep retrying its webhook (default 86400)")
    add("--webhook-backoff", type=_seconds, default=1.0,
        help="seconds before the first retry; doubled for each next one (default 1)")
    add("--record-audio", default=None, metavar="DIR",
        help="write one stereo WAV per call here (left: caller; right: agent as heard)")
    add("--recording-notice", default=None, metavar="TEXT",
        help="the agent says TEXT first (put before the greeting), e.g. a consent notice")
    _add_call_control(p)
    add("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    return p


def _add_call_control(p: argparse.ArgumentParser) -> None:
    """Transfers, keypad and safety rules, fallback, silence and length (docs/call-control.md)."""
    g = p.add_argument_group("call control (docs/call-control.md)")
    add = g.add_argument
    add("--transfer-target", action="append", default=[], metavar="NAME=NUMBER",
        help="a transfer target the model may pick by NAME (E.164 or sip: URI; repeatable)")
    add("--dial-timeout", type=_positive_int, default=30,
        help="seconds a transfer or fallback <Dial> rings (default 30)")
    add("--keypad", action="append", default=[], metavar="KEY=ACTION",
        help="a key that acts at once, no agent turn: KEY=transfer:NAME or KEY=hangup")
    add("--safety-rules", default=None, metavar="FILE",
        help="phrases that make the agent say a fixed message and transfer (TOML or JSON)")
    add("--fallback-target", default=None, metavar="NAME",
        help="when the agent fails, say a message and dial this --transfer-target")
    add("--fallback-twiml", default=None, metavar="FILE",
        help="when the agent fails, redirect the call to this TwiML (e.g. voicemail)")
    add("--fallback-message", default="I'm sorry, our assistant is not available right now. "
        "Please hold while I connect you.", help="what --fallback-target says first")
    add("--silence-reprompt", type=_seconds, default=None, metavar="SECONDS",
        help="after this much silence on both sides the agent asks if the caller is there")
    add("--silence-hangup", type=_positive_int, default=None, metavar="N",
        help="after N unanswered reprompts, say goodbye and hang up (reason silence)")
    add("--reprompt-text", default="Are you still there?", help="the silence reprompt")
    add("--max-call-duration", type=_seconds, default=None, metavar="SECONDS",
        help="warn one minute before, then end the call (reason max_duration)")
    add("--dtmf-collect", action="store_true",
        help="gather keypad digits into one message to the agent")
    add("--dtmf-terminator", default="#", help="the key that ends a --dtmf-collect entry")
    add("--dtmf-timeout", type=_seconds, default=3.0,
        help="seconds between digits before a --dtmf-collect entry is delivered (default 3)")


class RedactSecrets(logging.Filter):
    """Defense in depth: replace secret values in any log record that carries one."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if len(s) >= 4)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        redacted = message
        for secret in self.secrets:
            if secret in redacted:
                redacted = redacted.replace(secret, "[REDACTED]")
        if redacted is not message and redacted != message:
            record.msg = redacted
            record.args = None
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            for secret in self.secrets:
                text = text.replace(secret, "[REDACTED]")
            record.exc_text = text
        return True


def setup_logging(
    level: str, secrets: Sequence[str] = (), worker: int = 0, transcripts: bool = False
) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    tag = f" [worker {worker}]" if worker else ""
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s %(name)s{tag}: %(message)s")
    )
    handler.addFilter(RedactSecrets(secrets))
    root.addHandler(handler)
    root.setLevel(level)
    # websockets logs handshakes and errors; keep its chatter at WARNING unless debugging. Its
    # DEBUG lines quote frames (transcripts, the filled Settings): only with --log-transcripts
    # and no --redact (``ServerOptions.raw_logs``).
    frames = level == "DEBUG" and transcripts
    logging.getLogger("websockets").setLevel(logging.DEBUG if frames else logging.WARNING)


def _load_env_file(path: str) -> None:
    from dotenv import load_dotenv

    if Path(path).is_file():
        load_dotenv(path, override=False)


def _run_demo(argv: list[str]) -> int:
    from server.local import RunningBridge, run_demo  # loads the peers: only here

    async def start_server(options: ServerOptions, sock: socket.socket | None) -> RunningBridge:
        server = Server(options)
        await server.start(sock)
        return RunningBridge(f"ws://127.0.0.1:{server.port}/media-stream", server.shutdown)

    return run_demo(argv, start_server)


def _prepare(args: argparse.Namespace, worker: int = 0) -> tuple[ServerOptions, ToolRegistry]:
    """Parsed flags to options, logging and tools (raises StartupError or ToolLoadError)."""
    _load_env_file(args.env_file)
    options = make_options(args)
    setup_logging(options.log_level, options.secrets, worker, options.raw_logs)
    return options, ToolRegistry.load(options.tools, timeout=options.tool_timeout)


def _guarded(body: Callable[[], int]) -> int:
    """Run ``body``; a configuration problem prints one line and becomes the exit status."""
    try:
        return body()
    except StartupError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return exc.exit_code
    except ToolLoadError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "demo":
        return _run_demo(args_list[1:])
    if args_list and args_list[0] == "dial":
        from server.dial import main as dial_main

        return dial_main(args_list[1:])
    if args_list and args_list[0] == "calls":
        from server.records.cli import main as calls_main

        return calls_main(args_list[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # --help, --version, usage errors
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2

    def body() -> int:
        options, tools = _prepare(args)
        if not options.auth_token:
            log.warning(
                "TWILIO_AUTH_TOKEN is not set: Twilio signatures are NOT checked, so anyone "
                "who finds this server can open agent sessions billed to your key. "
                "Set it in production."
            )
        if tools.tools:
            log.info("client-side tools: %s", ", ".join(sorted(tools.tools)))
        if options.twilio is None:
            log.warning(
                "no Twilio REST credentials (TWILIO_AUTH_TOKEN or TWILIO_API_KEY/SECRET): "
                "no transfer and no fallback is possible; a failed call is hung up"
            )
        return run(options, tools, args_list)

    return _guarded(body)


# ---------------------------------------------------------------------- processes


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
    """Entry point of a worker process (spawned): the parent's flags, served on the shared
    port. The parent checked them already; a problem found here still prints one line."""
    args = build_parser().parse_args([*argv, "--workers", "1", "--reuse-port"])

    def body() -> int:
        options, tools = _prepare(args, worker=index)
        return run_loop(lambda: serve(options, tools=tools), options.loop)

    sys.exit(_guarded(body))


def _run_workers(options: ServerOptions, tools: ToolRegistry | None, argv: list[str]) -> int:
    if not hasattr(socket, "SO_REUSEPORT"):
        raise StartupError("--workers needs SO_REUSEPORT, which this platform lacks")
    sock = _bind_reuseport(options)  # fails here, in the parent, if the port is taken
    setup_multiprocess_metrics()  # /metrics adds up every worker's counters
    setup_control_dir()  # the control API reaches a call whichever worker has it
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
        # Forward once: a second SIGTERM could reach a worker whose loop has already closed
        # (default handler back), killing it mid-exit and making the parent exit with -15.
        code = await serve(options, tools=tools, sock=sock, on_signal=forward)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
