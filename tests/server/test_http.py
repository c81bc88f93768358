"""HTTP routes and errors, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import re
import xml.etree.ElementTree as ET
from urllib.parse import urlencode

from tests.server_support import (
    caller,
    fake_agent,
    get,
    http,
    post_form,
    run,
    running_server,
    twilio_start,
    until,
)

UPGRADE = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


def test_healthz() -> None:
    async def body() -> None:
        async with running_server() as server:
            result = await http(server.port, get("/healthz"))
            assert result.status == 200
            assert result.headers["content-type"].startswith("application/json")
            data = json.loads(result.body)
            assert data["status"] == "ok" and data["calls"] == 0 and data["uptime_seconds"] >= 0

    run(body())


def test_metrics_format() -> None:
    async def body() -> None:
        async with running_server() as server:
            result = await http(server.port, get("/metrics"))
            assert result.status == 200
            assert result.headers["content-type"].startswith("text/plain; version=0.0.4")
            text = result.text
            sample = re.compile(
                r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? \S+$'
            )
            for line in text.splitlines():
                if line.startswith("#"):
                    assert re.match(r"^# (HELP|TYPE) twilio_bridge_\w+ .+$", line), line
                else:
                    assert sample.match(line), line
                    float(line.rsplit(" ", 1)[1])
            for name in (
                "calls_started_total",
                "calls_active",
                "calls_ended_total",
                "audio_bytes_total",
                "barge_ins_total",
                "agent_errors_total",
                "added_latency_seconds_bucket",
                "added_latency_seconds_count",
            ):
                assert f"twilio_bridge_{name}" in text, name
            assert 'twilio_bridge_added_latency_seconds_bucket{le="+Inf"} 0' in text

    run(body())


def _twiml(text: str) -> ET.Element:
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    return ET.fromstring(text.encode())


def test_webhook_twiml_post_and_get() -> None:
    async def body() -> None:
        async with running_server() as server:
            form = urlencode(
                {"CallSid": "CA123", "From": "+1555 <&\"'>", "To": "+1666", "Other": "x"}
            )
            result = await http(server.port, post_form("/incoming-call", form, host="h.example"))
            assert result.status == 200
            assert result.headers["content-type"].startswith("text/xml")
            root = _twiml(result.text)
            assert root.tag == "Response"
            stream = root.find("./Connect/Stream")
            assert stream is not None
            assert stream.get("url") == "wss://h.example/media-stream"
            params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
            assert params == {"From": "+1555 <&\"'>", "To": "+1666", "CallSid": "CA123"}

            raw = get("/incoming-call?From=%2B1777", host="g.example:8080")
            result = await http(server.port, raw)
            stream = _twiml(result.text).find("./Connect/Stream")
            assert stream is not None
            assert stream.get("url") == "wss://g.example:8080/media-stream"
            assert [(p.get("name"), p.get("value")) for p in stream] == [("From", "+1777")]

    run(body())


def test_webhook_uses_public_url() -> None:
    async def body() -> None:
        async with running_server("--public-url", "https://pub.example.com/bridge/") as server:
            result = await http(server.port, post_form("/incoming-call", "From=1", host="internal"))
            stream = _twiml(result.text).find("./Connect/Stream")
            assert stream is not None
            assert stream.get("url") == "wss://pub.example.com/bridge/media-stream"

    run(body())


def test_keep_alive_serves_several_requests() -> None:
    async def body() -> None:
        async with running_server() as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(get("/healthz") + get("/metrics"))
            await writer.drain()
            data = b""
            while data.count(b"HTTP/1.1 200") < 2:
                data += await asyncio.wait_for(reader.read(65536), 2)
            writer.close()

    run(body())


def test_unknown_path_404() -> None:
    async def body() -> None:
        async with running_server() as server:
            assert (await http(server.port, get("/nope"))).status == 404
            assert (await http(server.port, get("/"))).status == 404

    run(body())


def test_wrong_method_405() -> None:
    async def body() -> None:
        async with running_server() as server:
            result = await http(server.port, post_form("/healthz", "a=b"))
            assert result.status == 405 and result.headers["allow"] == "GET"
            result = await http(server.port, b"DELETE /incoming-call HTTP/1.1\r\nHost: x\r\n\r\n")
            assert result.status == 405 and result.headers["allow"] == "GET, POST"
            result = await http(server.port, post_form("/media-stream", "a=b"))
            assert result.status == 405

    run(body())


def test_malformed_request_400() -> None:
    async def body() -> None:
        async with running_server() as server:
            assert (await http(server.port, b"GARBAGE\r\n\r\n")).status == 400
            assert (await http(server.port, b"GET / HTTP/1.1\r\nbad header\r\n\r\n")).status == 400
            # HTTP/1.1 without Host
            assert (await http(server.port, b"GET /healthz HTTP/1.1\r\n\r\n")).status == 400

    run(body())


def test_oversized_headers_431() -> None:
    async def body() -> None:
        async with running_server("--max-header-bytes", "4096") as server:
            raw = get("/healthz", extra="X-Big: " + "a" * 8000 + "\r\n")
            assert (await http(server.port, raw)).status == 431

    run(body())


def test_oversized_body_413() -> None:
    async def body() -> None:
        async with running_server("--max-body-bytes", "1000") as server:
            raw = post_form("/incoming-call", "From=" + "1" * 2000)
            assert (await http(server.port, raw)).status == 413

    run(body())


def test_stalled_and_partial_requests_time_out() -> None:
    async def body() -> None:
        async with running_server("--request-timeout", "0.3") as server:
            # partial request: 408 then close
            result = await http(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", timeout=3)
            assert result.status == 408
            # partial body
            raw = post_form("/incoming-call", "From=123")[:-3]
            assert (await http(server.port, raw, timeout=3)).status == 408
            # nothing at all: closed without a response
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            data = await asyncio.wait_for(reader.read(), 3)
            assert data == b""
            writer.close()
            await until(lambda: not server.connections)

    run(body())


def test_upgrade_errors() -> None:
    async def body() -> None:
        async with running_server() as server:
            # a plain GET on the stream route
            assert (await http(server.port, get("/media-stream"))).status == 426
            # wrong version
            extra = UPGRADE.replace("Version: 13", "Version: 8")
            result = await http(server.port, get("/media-stream", extra=extra))
            assert result.status == 426 and result.headers["sec-websocket-version"] == "13"
            # bad key
            extra = UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "short")
            assert (await http(server.port, get("/media-stream", extra=extra))).status == 400

    run(body())


def test_max_calls_busy_twiml_and_503() -> None:
    async def body() -> None:
        async with fake_agent() as agent, running_server("--max-calls", "1", agent=agent) as server:
            ws = await caller(server)
            await ws.send(twilio_start())
            await until(lambda: len(server.calls) == 1)
            result = await http(server.port, post_form("/incoming-call", "From=1"))
            root = _twiml(result.text)
            assert root.find("Say") is not None and root.find("Hangup") is not None
            assert root.find("Connect") is None
            result = await http(server.port, get("/media-stream", extra=UPGRADE))
            assert result.status == 503
            assert len(agent.sessions) == 1
            assert server.metrics.calls_rejected == {"busy": 2}
            await ws.close()
            await until(lambda: not server.calls)
            result = await http(server.port, post_form("/incoming-call", "From=1"))
            assert _twiml(result.text).find("Connect/Stream") is not None

    run(body())
