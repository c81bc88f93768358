"""X-Twilio-Signature on both routes, checked against twilio's RequestValidator as an oracle;
its variants, the per-call token, secrets kept out of logs, --max-calls under a burst, and TLS
serving wss://."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlencode
from xml.etree import ElementTree

import pytest
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from server import signature
from server.options import StartupError
from tests.server_support import (
    API_KEY,
    CALL_SID,
    caller,
    fake_agent,
    get,
    http,
    options,
    post_form,
    ready_call,
    run,
    running_server,
    twilio_start,
    twilio_stop,
    until,
)

TOKEN = "tok-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
PUBLIC = "https://bridge.example.com"
ENV = {"TWILIO_AUTH_TOKEN": TOKEN, "PUBLIC_URL": PUBLIC}
ORACLE = RequestValidator(TOKEN)
FORM = {"CallSid": "CA1", "From": "+15550001", "To": "+15550002", "AccountSid": "AC1"}
STREAM = "wss://bridge.example.com/media-stream"


def test_signature_module_agrees_with_the_oracle() -> None:
    url = "https://example.com/myapp.php?foo=1&bar=2"
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+14158675310",
        "Digits": "1234",
        "From": "+14158675310",
        "To": "+18005551212",
    }
    expected = RequestValidator("12345").compute_signature(url, params)
    assert expected == "L/OH5YylLD5NRKLltdqwSvS0BnU="  # the worked example in Twilio's docs
    assert signature.compute_signature("12345", url, list(params.items())) == expected
    # repeated names: values de-duplicated and sorted, as the oracle does
    repeated = [("B", "2"), ("A", "z"), ("A", "y"), ("A", "z")]

    class MultiDict(dict[str, str]):  # the getall() interface the oracle supports
        def getall(self, name: str) -> list[str]:
            return [v for k, v in repeated if k == name]

    oracle = ORACLE.compute_signature(url, MultiDict(repeated))
    assert signature.compute_signature(TOKEN, url, repeated) == oracle
    wss = "wss://bridge.example.com/media-stream"
    sig = ORACLE.compute_signature(wss, {})
    assert signature.validate(TOKEN, signature.url_variants(wss, trailing_slash=True), [], sig)
    # Twilio may have signed with the port, or with a trailing slash
    for signed in ("wss://bridge.example.com:443/media-stream", wss + "/"):
        sig = ORACLE.compute_signature(signed, {})
        assert signature.validate(TOKEN, signature.url_variants(wss, trailing_slash=True), [], sig)
    assert not signature.validate(TOKEN, [wss], [], "bm9wZQ==")
    assert not signature.validate(TOKEN, [wss], [], None)


def test_webhook_refuses_unsigned_and_wrongly_signed() -> None:
    async def body() -> None:
        async with running_server(env=ENV) as server:
            form = urlencode(FORM)
            assert (await http(server.port, post_form("/incoming-call", form))).status == 403
            bad = ORACLE.compute_signature(PUBLIC + "/incoming-call", {**FORM, "From": "+1999"})
            raw = post_form("/incoming-call", form, extra=f"X-Twilio-Signature: {bad}\r\n")
            assert (await http(server.port, raw)).status == 403
            other = RequestValidator("another-token").compute_signature(
                PUBLIC + "/incoming-call", FORM
            )
            raw = post_form("/incoming-call", form, extra=f"X-Twilio-Signature: {other}\r\n")
            assert (await http(server.port, raw)).status == 403
            assert server.metrics.calls_rejected == {"bad_signature": 3}

    run(body())


def test_webhook_accepts_correct_signatures() -> None:
    async def body() -> None:
        async with running_server(env=ENV) as server:
            form = urlencode(FORM)
            sig = ORACLE.compute_signature(PUBLIC + "/incoming-call", dict(parse_qsl(form)))
            raw = post_form("/incoming-call", form, extra=f"x-twilio-signature: {sig}\r\n")
            result = await http(server.port, raw)
            assert result.status == 200 and "<Connect><Stream" in result.text
            # a GET is signed over the URL with its query string
            target = "/incoming-call?" + form
            sig = ORACLE.compute_signature(PUBLIC + target, {})
            raw = get(target, extra=f"X-Twilio-Signature: {sig}\r\n")
            assert (await http(server.port, raw)).status == 200

    run(body())


def test_webhook_signature_without_public_url_uses_host_and_forwarded_proto() -> None:
    async def body() -> None:
        async with running_server(env={"TWILIO_AUTH_TOKEN": TOKEN}) as server:
            form = urlencode(FORM)
            sig = ORACLE.compute_signature("https://proxy.example.net/incoming-call", FORM)
            extra = f"X-Forwarded-Proto: https\r\nX-Twilio-Signature: {sig}\r\n"
            raw = post_form("/incoming-call", form, host="proxy.example.net", extra=extra)
            result = await http(server.port, raw)
            assert result.status == 200
            assert 'url="wss://proxy.example.net/media-stream"' in result.text
            # the same signature over http:// does not match
            raw = post_form(
                "/incoming-call",
                form,
                host="proxy.example.net",
                extra=f"X-Twilio-Signature: {sig}\r\n",
            )
            assert (await http(server.port, raw)).status == 403

    run(body())


def test_upgrade_refused_without_valid_signature_and_no_agent_opened() -> None:
    async def body() -> None:
        async with fake_agent() as agent, running_server(agent=agent, env=ENV) as server:
            for headers in (
                {},
                {"X-Twilio-Signature": "bm9wZQ=="},
                {
                    "X-Twilio-Signature": ORACLE.compute_signature(
                        "wss://elsewhere.example.com/media-stream", {}
                    )
                },
                {"X-Twilio-Signature": ORACLE.compute_signature(PUBLIC + "/media-stream", {})},
            ):
                with pytest.raises(InvalidStatus) as info:
                    await caller(server, headers=headers)
                assert info.value.response.status_code == 403
            await asyncio.sleep(0.1)
            assert agent.sessions == []
            assert not server.calls

    run(body())


def test_upgrade_accepted_with_correct_signature() -> None:
    async def body() -> None:
        async with fake_agent() as agent, running_server(agent=agent, env=ENV) as server:
            sig = ORACLE.compute_signature("wss://bridge.example.com/media-stream", {})
            ws, session = await ready_call(server, agent, headers={"X-Twilio-Signature": sig})
            await ws.send(twilio_stop())
            await asyncio.wait_for(session.closed.wait(), 1)

    run(body())


def test_call_token_binds_the_stream_to_the_webhook_that_issued_it() -> None:
    """--require-call-token: the signed upgrade is the same for every call, so replaying it
    must not open an agent leg unless the start carries the token this call's webhook issued."""
    form = {**FORM, "CallSid": CALL_SID}
    name = signature.CALL_TOKEN_PARAMETER

    async def body() -> None:
        async with (
            fake_agent() as agent,
            running_server("--require-call-token", agent=agent, env=ENV) as server,
        ):
            sig = ORACLE.compute_signature(PUBLIC + "/incoming-call", form)
            extra = f"X-Twilio-Signature: {sig}\r\n"
            raw = post_form("/incoming-call", urlencode(form), extra=extra)
            stream = ElementTree.fromstring((await http(server.port, raw)).text).find(
                "Connect/Stream"
            )
            assert stream is not None
            issued = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
            token = issued[name]
            upgrade = {"X-Twilio-Signature": ORACLE.compute_signature(
                "wss://bridge.example.com/media-stream", {})}  # fmt: skip
            forged = token[:-1] + ("1" if token.endswith("0") else "0")
            other_call = signature.issue_call_token(TOKEN, "CAother", time.time())
            stale = signature.issue_call_token(TOKEN, CALL_SID, time.time() - 3600)
            for parameters, why in (
                ({}, "no bridgeToken parameter"),
                ({name: forged}, "not issued for this call"),
                ({name: other_call}, "not issued for this call"),
                ({name: stale}, "expired"),
                ({name: "junk"}, "malformed"),
            ):
                ws = await caller(server, headers=upgrade)
                await ws.send(twilio_start(parameters))
                await asyncio.wait_for(ws.wait_closed(), 2)
                assert ws.close_code == 1008 and why in (ws.close_reason or ""), ws.close_reason
            assert agent.sessions == [], "a refused call opened an agent leg"
            assert server.metrics.calls_rejected == {"no_start": 5}  # none became a call
            assert server.metrics.calls_started == 0 and server.metrics.calls_ended == {}
            ws = await caller(server, headers=upgrade)
            await ws.send(twilio_start(issued))  # Twilio sends every <Parameter> back in start
            session = await agent.session()
            await until(lambda: session.applied_at is not None, what="the admitted call's agent")
            await ws.send(twilio_stop())
            await asyncio.wait_for(session.closed.wait(), 1)

    run(body())


def test_simulator_follows_the_webhook_like_twilio_and_passes_the_call_token() -> None:
    """The caller CLI with --webhook: signed POST, TwiML parsed, its parameters sent back."""

    async def body() -> None:
        async with (
            fake_agent() as agent,
            running_server("--require-call-token", agent=agent, env=ENV) as server,
        ):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "peers.caller",
                f"ws://127.0.0.1:{server.port}/media-stream", "--speed", "50",
                "--auth-token-env", "SIMULATOR_TOKEN",
                "--webhook", f"http://127.0.0.1:{server.port}/incoming-call",
                "--signed-webhook-url", PUBLIC + "/incoming-call",
                env={**os.environ, "SIMULATOR_TOKEN": TOKEN},
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0, err.decode()[-500:]
            assert "webhook: stream wss://bridge.example.com/media-stream" in out.decode()
            assert "bridgeToken" in out.decode()
            [session] = agent.sessions
            assert session.applied_at is not None and len(session.audio) > 0
            await until(lambda: not server.calls, what="the call ended")
            assert server.metrics.calls_ended == {"hangup": 1}

    run(body(), timeout=40)


def test_call_token_checks() -> None:
    now = time.time()
    token = signature.issue_call_token(TOKEN, CALL_SID, now)
    assert signature.check_call_token(TOKEN, CALL_SID, token, now + 299) is None
    assert signature.check_call_token(TOKEN, CALL_SID, token, now + 301) == "bridgeToken expired"
    assert signature.check_call_token("other-token", CALL_SID, token, now) is not None
    unbound = signature.issue_call_token(TOKEN, "", now)  # a webhook without CallSid
    assert signature.check_call_token(TOKEN, "", unbound, now) is not None


def test_call_token_needs_the_auth_token() -> None:
    with pytest.raises(StartupError, match="--require-call-token needs TWILIO_AUTH_TOKEN"):
        options("--require-call-token")


def test_secrets_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def body() -> None:
        async with fake_agent() as agent, running_server(agent=agent, env=ENV) as server:
            sig = ORACLE.compute_signature("wss://bridge.example.com/media-stream", {})
            ws, session = await ready_call(server, agent, headers={"X-Twilio-Signature": sig})
            await ws.send(twilio_stop())
            await asyncio.wait_for(session.closed.wait(), 1)
            await http(
                server.port,
                post_form("/incoming-call", "From=1", extra=f"X-Twilio-Signature: {sig}\r\n"),
            )

    run(body())
    # our own log lines (the test peers' websockets loggers print their own headers)
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("server"))
    assert "call started" in text
    assert API_KEY not in text and TOKEN not in text
    sig = ORACLE.compute_signature("wss://bridge.example.com/media-stream", {})
    assert sig not in text


def test_redaction_filter() -> None:
    from server.cli import RedactSecrets

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "key is %s", (API_KEY,), None)
    RedactSecrets([API_KEY]).filter(record)
    assert record.getMessage() == "key is [REDACTED]"


def test_public_url_with_prefix_kept_or_stripped_by_the_proxy() -> None:
    async def body() -> None:
        env = {"TWILIO_AUTH_TOKEN": TOKEN, "PUBLIC_URL": "https://pub.example.com/voice"}
        async with running_server(env=env) as server:
            signed = "https://pub.example.com/voice/incoming-call"
            sig = ORACLE.compute_signature(signed, FORM)
            form = urlencode(FORM)
            for path in ("/incoming-call", "/voice/incoming-call"):
                raw = post_form(path, form, extra=f"X-Twilio-Signature: {sig}\r\n")
                result = await http(server.port, raw)
                assert result.status == 200, path
                assert 'url="wss://pub.example.com/voice/media-stream"' in result.text

    run(body())


# ---------------------------------------------------------------------- edge cases


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
                await ws.send(twilio_start())
                await agent.session(0)
                await ws.send(twilio_stop())
                await asyncio.wait_for(agent.sessions[0].closed.wait(), 2)
                await ws.close()
            else:
                with pytest.raises(InvalidStatus) as info:
                    await caller(server, headers)
                assert info.value.response.status_code == 403
                await asyncio.sleep(0.2)
                assert agent.sessions == [], "a refused upgrade must not open an agent leg"

    run(body())


PAIRS = [("CallSid", "CA1"), ("From", "+15550001"), ("To", "+15550002"), ("AccountSid", "AC1")]


@pytest.mark.parametrize(
    ("form", "signed_url", "accepted"),
    [
        (PAIRS, PUBLIC + "/incoming-call", True),
        (list(reversed(PAIRS)), PUBLIC + "/incoming-call", True),  # parameter order is irrelevant
        ([*PAIRS, ("Digits", "1"), ("Digits", "2")], PUBLIC + "/incoming-call", True),  # repeated
        (PAIRS, "https://bridge.example.com:443/incoming-call", True),  # port variant
        (PAIRS, PUBLIC + "/incoming-call/", False),  # another URL
        (PAIRS, "http://bridge.example.com/incoming-call", False),  # another scheme
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
                await ws.send(twilio_start())
                return ws

            results = await asyncio.gather(*(try_call() for _ in range(25)))
            calls = [r for r in results if not isinstance(r, int)]
            refused = [r for r in results if isinstance(r, int)]
            assert len(calls) == 3 and refused == [503] * 22
            await until(lambda: len(agent.sessions) == 3, what="three agent legs")
            await asyncio.sleep(0.2)
            assert len(agent.sessions) == 3, "no agent leg beyond --max-calls"
            for ws in calls:
                await ws.send(twilio_stop())  # type: ignore[attr-defined]
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
                await ws.send(twilio_start())
                session = await agent.session(0)
                await until(lambda: session.applied_at is not None)
                await ws.send(twilio_stop())
                await asyncio.wait_for(session.closed.wait(), 2)
            # A client that does not trust the certificate is refused by TLS itself.
            with pytest.raises(ssl.SSLCertVerificationError):
                await connect(url, ssl=ssl.create_default_context(), open_timeout=3)

    run(body())
