"""The agent leg over ``wss://``: TLS with the default context checks the certificate and the
host name, and the handshake carries ``Authorization: Token <key>`` and our User-Agent.

The agent is a ``websockets`` TLS server on 127.0.0.1 with a throwaway certificate, trusted
(or not) through ``SSL_CERT_FILE``, which the default context reads.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from server import agent_leg
from server.agent_leg import USER_AGENT, AgentLeg
from tests.server_support import run

if shutil.which("openssl") is None and os.environ.get("CI"):
    # .ci/run installs openssl: under CI a missing one is a broken setup, not a skip.
    raise RuntimeError("the openssl command is missing, so wss:// to the agent is untested")
pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


class Recorder:
    """The call's side of the leg: what it was told, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []
        self.closed = asyncio.Event()

    def agent_connected(self) -> None:
        self.events.append(("connected",))

    def agent_message(self, message: str | bytes) -> None:
        self.events.append(("message", message))

    def agent_closed(self, code: int | None, reason: str, failure: tuple[int, str] | None) -> None:
        self.events.append(("closed", code, reason, failure))
        self.closed.set()


def _certificate(folder: Path, san: str) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=agent",
         "-addext", f"subjectAltName={san}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def trust(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """Set SSL_CERT_FILE (or not) before the leg builds its once-per-process context."""

    def use(cafile: Path | None) -> None:
        if cafile is None:
            monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        else:
            monkeypatch.setenv("SSL_CERT_FILE", str(cafile))
        agent_leg._tls_context.cache_clear()

    yield use
    agent_leg._tls_context.cache_clear()


async def _call(cert: Path, key: Path) -> tuple[Recorder, list[dict[str, str]]]:
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    heads: list[dict[str, str]] = []

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        heads.append(dict(ws.request.headers.raw_items()))
        await ws.send("hello")
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, ssl=server_tls) as agent:
        port = agent.sockets[0].getsockname()[1]
        call = Recorder()
        leg = AgentLeg(
            call,
            f"wss://127.0.0.1:{port}/v1/agent/converse",
            "key-0123456789",
            connect_timeout=5,
            max_message_bytes=1 << 20,
            close_timeout=1,
        )
        for _ in range(200):
            if len(call.events) >= 2 or call.closed.is_set():
                break
            await asyncio.sleep(0.01)
        leg.close(1000, "done")
        await asyncio.wait_for(call.closed.wait(), 5)
    return call, heads


def test_a_trusted_agent_gets_the_token_and_user_agent(tmp_path: Path, trust: object) -> None:
    cert, key = _certificate(tmp_path, "IP:127.0.0.1")
    trust(cert)  # type: ignore[operator]
    call, heads = run(_call(cert, key))
    assert call.events == [("connected",), ("message", "hello"), ("closed", 1000, "done", None)]
    [head] = heads
    assert head["Authorization"] == "Token key-0123456789"
    assert head["User-Agent"] == USER_AGENT


def test_an_untrusted_certificate_is_refused(tmp_path: Path, trust: object) -> None:
    cert, key = _certificate(tmp_path, "IP:127.0.0.1")
    trust(None)  # type: ignore[operator]
    call, heads = run(_call(cert, key))
    [(what, code, reason, failure)] = call.events
    assert (what, code, failure) == ("closed", None, None)
    assert "certificate" in reason.lower(), reason
    assert heads == []  # the token never left this process


def test_a_certificate_for_another_host_is_refused(tmp_path: Path, trust: object) -> None:
    cert, key = _certificate(tmp_path, "DNS:agent.example.com")
    trust(cert)  # type: ignore[operator]
    call, heads = run(_call(cert, key))
    [(what, code, reason, failure)] = call.events
    assert (what, code, failure) == ("closed", None, None)
    assert "certificate" in reason.lower() or "match" in reason.lower(), reason
    assert heads == []
