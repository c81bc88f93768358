"""Security edge cases over the wire: signature variants on both routes (twilio's
RequestValidator as the oracle), --max-calls under a burst, and TLS serving wss://."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
import subprocess
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.server_support import (
    caller,
    fake_agent,
    http,
    post_form,
    run,
    running_server,
    start,
    stop,
    until,
)

TOKEN = "tok-edge-0123456789abcdef0123456789ab"
PUBLIC = "https://bridge.example.com"
ENV = {"TWILIO_AUTH_TOKEN": TOKEN, "PUBLIC_URL": PUBLIC}
ORACLE = RequestValidator(TOKEN)
STREAM = "wss://bridge.example.com/media-stream"


@pytest.mark.parametrize(
    ("signed_url", "header", "accepted"),
    [
        (STREAM, "X-Twilio-Signature", True),
        (STREAM, "x-twilio-signature", True),  # Twilio sends it lowercase on upgrades
        (STREAM, "X-TWILIO-SIGNATURE", True),
        (STREAM + "/", "x-twilio-signature", True),  # the docs' trailing-slash tip
        ("wss://bridge.example.com:443/media-stream", "x-twilio-signature", True),
        ("https://bridge.example.com/media-stream", "x-twilio-signature", False),  # not wss
        ("wss://bridge.example.com:8443/media-stream", "x-twilio-signature", False),
        ("wss://evil.example.com/media-stream", "x-twilio-signature", False),
        (None, "x-twilio-signature", False),  # no header at all
    ],
)
def test_upgrade_signature_variants(signed_url: str | None, header: str, accepted: bool) -> None:
    async def body() -> None:
        async with fake_agent() as agent, running_server(agent=agent, env=ENV) as server:
            headers = {header: ORACLE.compute_signature(signed_url, {})} if signed_url else {}
            if accepted:
                ws = await caller(server, headers)
                await ws.send(start())
                await agent.session(0)
                await ws.send(stop())
                await asyncio.wait_for(agent.sessions[0].closed.wait(), 2)
                await ws.close()
            else:
                with pytest.raises(InvalidStatus) as info:
                    await caller(server, headers)
                assert info.value.response.status_code == 403
                await asyncio.sleep(0.2)
                assert agent.sessions == [], "a refused upgrade must not open an agent leg"

    run(body())


FORM = [("CallSid", "CA1"), ("From", "+15550001"), ("To", "+15550002"), ("AccountSid", "AC1")]


@pytest.mark.parametrize(
    ("form", "signed_url", "accepted"),
    [
        (FORM, PUBLIC + "/incoming-call", True),
        (list(reversed(FORM)), PUBLIC + "/incoming-call", True),  # parameter order is irrelevant
        ([*FORM, ("Digits", "1"), ("Digits", "2")], PUBLIC + "/incoming-call", True),  # repeated
        (FORM, "https://bridge.example.com:443/incoming-call", True),  # port variant
        (FORM, PUBLIC + "/incoming-call/", False),  # another URL
        (FORM, "http://bridge.example.com/incoming-call", False),  # another scheme
    ],
)
def test_webhook_signature_variants(
    form: list[tuple[str, str]], signed_url: str, accepted: bool
) -> None:
    class MultiDict(dict[str, str]):  # the oracle's interface for repeated names
        def getall(self, name: str) -> list[str]:
            return [v for k, v in form if k == name]

    sig = ORACLE.compute_signature(signed_url, MultiDict(form))

    async def body() -> None:
        async with running_server(env=ENV) as server:
            raw = post_form(
                "/incoming-call", urlencode(form), extra=f"X-Twilio-Signature: {sig}\r\n"
            )
            result = await http(server.port, raw)
            assert result.status == (200 if accepted else 403), result.text
            if accepted:
                assert "<Connect><Stream" in result.text

    run(body())


def test_max_calls_holds_under_a_burst() -> None:
    async def body() -> None:
        async with fake_agent() as agent, running_server("--max-calls", "3", agent=agent) as server:

            async def try_call() -> object:
                try:
                    ws = await caller(server)
                except InvalidStatus as exc:
                    return exc.response.status_code
                await ws.send(start())
                return ws

            results = await asyncio.gather(*(try_call() for _ in range(25)))
            calls = [r for r in results if not isinstance(r, int)]
            refused = [r for r in results if isinstance(r, int)]
            assert len(calls) == 3 and refused == [503] * 22
            await until(lambda: len(agent.sessions) == 3, what="three agent legs")
            await asyncio.sleep(0.2)
            assert len(agent.sessions) == 3, "no agent leg beyond --max-calls"
            for ws in calls:
                await ws.send(stop())  # type: ignore[attr-defined]
                await ws.close()  # type: ignore[attr-defined]

    run(body())


def test_tls_mode_serves_wss(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        # .ci/run installs openssl: under CI a missing one is a broken setup, not a skip.
        if os.environ.get("CI"):
            pytest.fail("the openssl command is missing, so TLS mode is untested (CI is set)")
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    trust = ssl.create_default_context(cafile=str(cert))

    async def body() -> None:
        flags = ("--certfile", str(cert), "--keyfile", str(key), "--request-timeout", "1")
        async with fake_agent() as agent, running_server(*flags, agent=agent) as server:
            # A client that never finishes the TLS handshake is cut off at --request-timeout.
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"\x16\x03\x01")  # the first bytes of a ClientHello, then nothing
            t0 = time.monotonic()
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(), 5) == b""
            assert time.monotonic() - t0 < 3, "a stalled TLS handshake was held open"
            writer.close()
            url = f"wss://127.0.0.1:{server.port}/media-stream"
            async with connect(url, ssl=trust, compression=None) as ws:
                await ws.send(start())
                session = await agent.session(0)
                await until(lambda: session.applied_at is not None)
                await ws.send(stop())
                await asyncio.wait_for(session.closed.wait(), 2)
            # A client that does not trust the certificate is refused by TLS itself.
            with pytest.raises(ssl.SSLCertVerificationError):
                await connect(url, ssl=ssl.create_default_context(), open_timeout=3)

    run(body())
