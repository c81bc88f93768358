"""The HTTP server's limits and the calls' write cap, each pinned at its bound.

The HTTP tests run a real server on 127.0.0.1 and read its exact bytes; the write cap tests
drive a :class:`CallDriver` with fake legs, since no socket can be held at an exact count of
unsent bytes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import pytest

from sansio import EndReason, SendAgentAudio, SendAgentText
from server.call import CallContext, CallDriver
from server.cli import build_parser
from server.http import SERVER_HEADER, HttpProtocol
from server.metrics import Metrics
from server.options import make_options
from server.tools import ToolRegistry
from tests.server_support import (
    closed_within,
    exchange,
    fake_agent,
    get,
    post_form,
    ready_call,
    run,
    running_server,
    twilio_stop,
    until,
)

HEADER_CAP = 1024
BODY_CAP = 1000


def error_response(status: str, detail: str) -> bytes:
    """The exact bytes of an error answered by ``HttpProtocol._error``."""
    body = f"{detail}\n".encode()
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\nserver: ".encode()
        + SERVER_HEADER
        + b"\r\n\r\n"
        + body
    )


HEADERS_431 = error_response(
    "431 Request Header Fields Too Large", "request header fields too large"
)
BODY_413 = error_response("413 Content Too Large", "request body too large")


def head_of(size: int) -> bytes:
    """A GET /healthz whose head counts ``size`` bytes as the server counts it: the target,
    then each header's name and value plus 4 (": " and CRLF)."""
    counted = len(b"/healthz") + (4 + 1 + 4) + (5 + 4)  # "host: x", "x-pad: ..."
    pad = "a" * (size - counted)
    return f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {pad}\r\nConnection: close\r\n\r\n".encode()


# ---------------------------------------------------------------------- the header cap


def test_a_head_of_exactly_the_header_cap_is_served_one_byte_more_is_431() -> None:
    """--max-header-bytes bounds the head as counted (target + name + value + 4 per header):
    at the cap the request is served, one byte over it the answer is 431 with its reason."""

    async def body() -> None:
        async with running_server("--max-header-bytes", str(HEADER_CAP)) as server:
            # "connection: close" counts too: 10 + 5 + 4 more
            at_cap = head_of(HEADER_CAP - 19)
            data = await exchange(server.port, at_cap)
            assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data[:80]
            data = await exchange(server.port, head_of(HEADER_CAP - 19 + 1))
            assert data == HEADERS_431
            assert server.metrics.http_responses == {200: 1, 431: 1}

    run(body())


def test_a_head_still_arriving_past_the_header_cap_is_refused_at_once() -> None:
    """h11's max_incomplete_event_size is --max-header-bytes: an unfinished head of the cap
    waits (and times out with 408), one byte more is refused with 431 without waiting."""

    async def body() -> None:
        async with running_server(
            "--max-header-bytes", str(HEADER_CAP), "--request-timeout", "0.5"
        ) as server:
            start = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: "
            partial = start + b"a" * (HEADER_CAP - len(start))
            assert len(partial) == HEADER_CAP
            t0 = time.monotonic()
            data = await exchange(server.port, partial)
            assert time.monotonic() - t0 >= 0.4
            assert data == error_response("408 Request Timeout", "request timed out")
            t0 = time.monotonic()
            data = await exchange(server.port, partial + b"a")
            assert time.monotonic() - t0 < 0.3
            assert data == error_response(
                "431 Request Header Fields Too Large", "Receive buffer too long"
            )

    run(body())


# ---------------------------------------------------------------------- the body caps


def test_a_body_of_exactly_the_body_cap_is_served_one_byte_more_is_413() -> None:
    """--max-body-bytes: a Content-Length of the cap (and its body) is served; one more is
    refused with 413 as soon as the head is read, before any of the body arrives."""

    async def body() -> None:
        async with running_server(
            "--max-body-bytes", str(BODY_CAP), "--request-timeout", "10"
        ) as server:
            form = "From=" + "1" * (BODY_CAP - 5)
            raw = post_form("/incoming-call", form, extra="Connection: close\r\n")
            data = await exchange(server.port, raw)
            assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data[:80]
            head = post_form("/incoming-call", form + "1")
            head = head[: head.index(b"\r\n\r\n") + 4]  # the head only: the cap is on it
            assert b"Content-Length: 1001\r\n" in head
            assert await exchange(server.port, head) == BODY_413

    run(body())


def test_a_content_length_in_capitals_is_the_same_header() -> None:
    """A CONTENT-LENGTH over the cap is refused from the head alone, like content-length."""

    async def body() -> None:
        async with running_server(
            "--max-body-bytes", str(BODY_CAP), "--request-timeout", "10"
        ) as server:
            head = (
                b"POST /incoming-call HTTP/1.1\r\nHost: x\r\n"
                b"CONTENT-TYPE: application/x-www-form-urlencoded\r\nCONTENT-LENGTH: 1001\r\n\r\n"
            )
            assert await exchange(server.port, head) == BODY_413
            at_cap = head.replace(b"1001", b"1000").replace(
                b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"
            )
            result = await exchange(server.port, at_cap + b"From=" + b"1" * 995)
            assert result.startswith(b"HTTP/1.1 200 OK\r\n"), result[:80]

    run(body())


def chunked(form: bytes, pieces: int) -> bytes:
    """A chunked POST of ``form`` to the webhook, in ``pieces`` chunks."""
    size = -(-len(form) // pieces)
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(form[i : i + size]), form[i : i + size])
        for i in range(0, len(form), size)
    )
    return (
        b"POST /incoming-call HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunks
        + b"0\r\n\r\n"
    )


def test_a_chunked_body_is_capped_at_its_bytes() -> None:
    """A chunked body (no Content-Length to check) of exactly the cap is served; one byte
    more, counted over the chunks, is refused with 413 and its reason."""

    async def body() -> None:
        async with running_server("--max-body-bytes", str(BODY_CAP)) as server:
            form = b"From=" + b"1" * (BODY_CAP - 5)
            data = await exchange(server.port, chunked(form, 3))
            assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data[:80]
            assert await exchange(server.port, chunked(form + b"1", 3)) == BODY_413
            assert server.metrics.http_responses == {200: 1, 413: 1}

    run(body())


# ---------------------------------------------------------------------- a route that raises


def test_a_route_that_raises_is_answered_500_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception in a route costs that request only: 500 with its reason, and the log
    line names the target (its first 100 bytes) with the traceback."""

    async def body() -> None:
        async with running_server() as server:

            def broken() -> str:
                raise RuntimeError("boom")

            server.metrics.render = broken  # type: ignore[method-assign]
            target = "/metrics?" + "q" * 200
            data = await exchange(server.port, get(target))
            assert data == error_response("500 Internal Server Error", "internal error")

    with caplog.at_level(logging.ERROR, logger="server.http"):
        run(body())
    lines = [r for r in caplog.records if r.name == "server.http"]
    assert [r.getMessage() for r in lines] == [
        "error while handling " + repr(("/metrics?" + "q" * 200).encode()[:100])
    ]
    assert lines[0].exc_info is not None and lines[0].exc_info[0] is RuntimeError


def test_a_route_that_raises_after_answering_only_closes() -> None:
    """An exception after the response went out adds no second response: the connection is
    closed, even though the request kept it alive."""

    async def body() -> None:
        async with running_server() as server:
            counted = server.metrics.http_response

            def broken(status: int) -> None:
                counted(status)
                if status == 200:
                    raise RuntimeError("boom")

            server.metrics.http_response = broken  # type: ignore[method-assign]
            data = await exchange(server.port, get("/healthz") + get("/healthz"))
            assert data.count(b"HTTP/1.1") == 1
            assert data.startswith(b"HTTP/1.1 200 OK\r\n")
            assert server.metrics.http_responses == {200: 1}

    run(body())


def test_an_error_answer_closes_a_kept_alive_connection_at_once() -> None:
    """A 4xx is sent with ``connection: close``: the server closes as soon as it is written,
    though the client asked for nothing of the kind (not after --request-timeout)."""

    async def body() -> None:
        async with running_server("--request-timeout", "10") as server:
            t0 = time.monotonic()
            data = await exchange(server.port, get("/nope"), timeout=2.0)
            assert time.monotonic() - t0 < 1.0
            assert data.startswith(b"HTTP/1.1 404 Not Found\r\n") and data.endswith(b"not found\n")
            assert b"connection: close\r\n" in data

    run(body())


# ---------------------------------------------------------------------- closing


def test_a_closing_connection_whose_peer_never_reads_is_aborted() -> None:
    """A connection closed with bytes still unsent (its peer does not read) is aborted after
    --request-timeout instead of lingering until the peer reads."""

    async def body() -> None:
        async with running_server("--request-timeout", "0.5") as server:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", server.port))
            sock.setblocking(False)
            _reader, writer = await asyncio.open_connection(sock=sock)
            await until(lambda: len(server.connections) == 1)
            conn: Any = next(iter(server.connections))
            transport: Any = conn.transport
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            writer.write(get("/metrics") * 100 + get("/healthz", extra="Connection: close\r\n"))
            await until(lambda: conn._closing, what="the server closing")
            assert transport.get_write_buffer_size() > 0
            assert conn in server.connections
            waited = await until(lambda: conn not in server.connections, timeout=3)
            assert 0.3 <= waited <= 1.5, waited
            writer.close()

    run(body())


def test_a_request_timing_out_gets_408_and_its_reason() -> None:
    """A request head still unfinished after --request-timeout: 408 Request Timeout."""

    async def body() -> None:
        async with running_server("--request-timeout", "0.3") as server:
            data = await exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            assert data == error_response("408 Request Timeout", "request timed out")
            assert server.metrics.http_responses == {408: 1}

    run(body())


def test_idle_connections_are_closed_when_the_shutdown_starts() -> None:
    """A connection with no request yet, and one kept alive after its request was served, are
    idle: the shutdown closes both at once, while a call in progress still has its grace."""

    async def body() -> None:
        async with fake_agent() as agent, running_server(agent=agent) as server:
            ws, _ = await ready_call(server, agent)
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            served, kept = await asyncio.open_connection("127.0.0.1", server.port)
            kept.write(get("/healthz"))
            answer = await asyncio.wait_for(served.readuntil(b"}\n"), 2)
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
            await until(lambda: sum(isinstance(c, HttpProtocol) for c in server.connections) == 2)
            shutdown = asyncio.create_task(server.shutdown(grace=20.0))
            assert await asyncio.wait_for(reader.read(), 1.0) == b""
            assert await asyncio.wait_for(served.read(), 1.0) == b""
            assert not shutdown.done() and len(server.calls) == 1
            writer.close()
            kept.close()
            await ws.send(twilio_stop())
            assert await closed_within(ws, 3) < 3
            await asyncio.wait_for(shutdown, 5)

    run(body())


# ---------------------------------------------------------------------- the write cap

WRITE_CAP = 1000


class FakeLink:
    """The Twilio leg: ``flush`` reports ``unsent`` bytes still unsent."""

    def __init__(self) -> None:
        self.unsent = 0

    def flush(self) -> int:
        return self.unsent

    def close(self) -> None:
        pass

    def abort(self) -> None:  # pragma: no cover
        pass


class FakeAgent:
    """The agent leg: what was sent, and ``buffered`` as the test sets it."""

    def __init__(self) -> None:
        self.sent: list[str | bytes] = []
        self.buffered = 0

    def send(self, message: str | bytes) -> None:
        self.sent.append(message)


def make_driver() -> tuple[CallDriver, FakeLink, FakeAgent]:
    loop = asyncio.get_running_loop()
    args = build_parser().parse_args(["--agent-url", "local", "--max-write-buffer", str(WRITE_CAP)])
    context = CallContext(
        loop,
        make_options(args, environ={}),
        Metrics(),
        ToolRegistry(),
        "ws://127.0.0.1:9/agent",
        None,
        None,
    )
    driver = CallDriver(context, None, b"", "127.0.0.1:1", lambda _: None)  # type: ignore[arg-type]
    link, agent = FakeLink(), FakeAgent()
    driver.twilio = link
    driver.agent = agent  # type: ignore[assignment]
    return driver, link, agent


def test_caller_write_cap_is_inclusive() -> None:
    """--max-write-buffer unsent bytes to the caller keep the call; one more ends it as a
    caller not reading, at the time of the flush, and a later flush keeps that end."""

    async def body() -> None:
        driver, link, _ = make_driver()
        link.unsent = WRITE_CAP
        driver._flush_twilio()
        assert driver.core.ended is None
        link.unsent = WRITE_CAP + 1
        before = driver.loop.time()
        driver._flush_twilio()
        after = driver.loop.time()
        ended = driver.core.ended
        assert ended is not None and ended.reason is EndReason.TIMEOUT
        assert ended.detail == "caller not reading: 1001 bytes unsent"
        assert before <= driver.core._clock.ended <= after
        link.unsent = WRITE_CAP * 5
        driver._flush_twilio()
        assert driver.core.ended is ended

    asyncio.run(body())


def test_agent_write_cap_is_inclusive_for_audio() -> None:
    """Audio to an agent with the cap unsent keeps the call; one byte more ends it as an
    agent not reading; caller_audio_bytes sums every message sent."""

    async def body() -> None:
        driver, _, agent = make_driver()
        now = driver.loop.time()
        agent.buffered = WRITE_CAP
        for size in (160, 320, 7):
            driver._send_agent_audio(SendAgentAudio(b"\xff" * size, now - 0.05))
        assert driver.core.ended is None
        assert agent.sent == [b"\xff" * 160, b"\xff" * 320, b"\xff" * 7]
        assert driver.metrics.caller_audio_bytes == 487
        latency = driver.metrics.added_latency
        assert latency.count == 3 and 0.15 <= latency.sum < 0.2
        agent.buffered = WRITE_CAP + 1
        before = driver.loop.time()
        driver._send_agent_audio(SendAgentAudio(b"\xff" * 13, now))
        ended = driver.core.ended
        assert ended is not None and ended.reason is EndReason.AGENT_ERROR
        assert ended.detail == "agent not reading: 1001 bytes unsent"
        assert before <= driver.core._clock.ended <= driver.loop.time()
        assert driver.metrics.caller_audio_bytes == 500
        agent.buffered = WRITE_CAP * 5
        driver._send_agent_audio(SendAgentAudio(b"\xff", now))
        assert driver.core.ended is ended

    asyncio.run(body())


def test_agent_write_cap_is_inclusive_for_text() -> None:
    """The same bound for text to the agent."""

    async def body() -> None:
        driver, _, agent = make_driver()
        agent.buffered = WRITE_CAP
        driver._send_agent_text(SendAgentText('{"type":"KeepAlive"}'))
        assert driver.core.ended is None
        assert agent.sent == ['{"type":"KeepAlive"}']
        agent.buffered = WRITE_CAP + 1
        driver._send_agent_text(SendAgentText("{}"))
        ended = driver.core.ended
        assert ended is not None and ended.reason is EndReason.AGENT_ERROR
        assert ended.detail == "agent not reading: 1001 bytes unsent"
        assert agent.sent == ['{"type":"KeepAlive"}', "{}"]

    asyncio.run(body())
