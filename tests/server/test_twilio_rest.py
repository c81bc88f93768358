"""The Twilio REST client (server.twilio_rest) against the local REST peer (peers.twilio_api).

The client's requests are compared with what twilio-python itself sends to the same peer, and
the peer's signed callbacks are checked with twilio-python's RequestValidator, so neither side
is only checked against the other. Everything runs on 127.0.0.1 with ephemeral ports.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import subprocess
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import escape

import h11
import pytest
from twilio.http.http_client import TwilioHttpClient  # type: ignore[import-untyped]
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]
from twilio.rest import Client  # type: ignore[import-untyped]
from websockets.asyncio.server import ServerConnection, serve

from peers.caller import TwilioCaller
from peers.twilio_api import Fault, SimCall, TwilioApiPeer
from server.twilio_rest import (
    CallResource,
    RetryPolicy,
    TwilioApiError,
    TwilioCredentials,
    TwilioRestClient,
    TwilioTransportError,
)

T = TypeVar("T")

ACCOUNT = "AC" + "a1" * 16
TOKEN = "tok-" + "s3cr3t" * 5
API_KEY = "SK" + "b2" * 16
API_SECRET = "keysecret-" + "x9" * 10
CALL = "CA" + "c3" * 16
TWIML = (
    '<?xml version="1.0" encoding="UTF-8"?><Response><Say>Connecting you &amp; Dr. Müller, '
    'one moment +1 = 2</Say><Dial action="{action}" timeout="20">+15551230000</Dial></Response>'
)


def dial_twiml(action: str) -> str:
    return TWIML.format(action=escape(action, {'"': "&quot;"}))


FAST = RetryPolicy(attempts=3, timeout=2.0, backoff=0.01, max_backoff=0.05, max_retry_after=1.0)


def run(coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def credentials(peer: TwilioApiPeer, **changes: Any) -> TwilioCredentials:
    values: dict[str, Any] = {"account_sid": ACCOUNT, "auth_token": TOKEN, "api_url": peer.url}
    values.update(changes)
    return TwilioCredentials(**values)


def client(peer: TwilioApiPeer, policy: RetryPolicy = FAST, **changes: Any) -> TwilioRestClient:
    return TwilioRestClient(credentials(peer, **changes), policy=policy, trust_env=False)


def make_peer(**options: Any) -> TwilioApiPeer:
    return TwilioApiPeer(account_sid=ACCOUNT, auth_token=TOKEN, **options)


def live_call(peer: TwilioApiPeer, sid: str = CALL) -> list[str]:
    """Register a stand-in stream on ``sid``; the returned list records its stop."""
    stopped: list[str] = []

    async def stop() -> None:
        stopped.append(sid)

    peer.register(sid, stop)
    return stopped


# ---------------------------------------------------------------------- a stand-in bridge


@dataclass
class Hit:
    method: str
    url: str
    headers: dict[str, str]
    form: list[tuple[str, str]]
    at: float = field(default_factory=time.monotonic)


class BridgeStub:
    """An HTTP server standing in for the bridge's action and webhook routes: records each
    request and answers ``answers[path]`` as TwiML (``<Response/>`` by default)."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.answers: dict[str, str] = {}
        self.port = 0
        self._server: asyncio.Server | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def __aenter__(self) -> BridgeStub:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            else:
                break
        assert request is not None
        target = request.target.decode()
        headers = {k.decode(): v.decode() for k, v in request.headers}
        self.hits.append(
            Hit(request.method.decode(), self.url(target), headers, parse_qsl(body.decode()))
        )
        answer = self.answers.get(urlsplit(target).path, "<Response/>").encode()
        writer.write(
            conn.send(
                h11.Response(
                    status_code=200,
                    headers=[("Content-Type", "text/xml"), ("Content-Length", str(len(answer)))],
                )
            )
            or b""
        )
        writer.write(conn.send(h11.Data(data=answer)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()
        writer.close()


def signed_ok(hit: Hit, token: str = TOKEN) -> bool:
    return bool(
        RequestValidator(token).validate(hit.url, dict(hit.form), hit.headers["x-twilio-signature"])
    )


# ------------------------------------------------------------------ the SDK, pointed at the peer


class _PeerHttpClient(TwilioHttpClient):  # type: ignore[misc]
    """twilio-python's own HTTP client, with api.twilio.com swapped for the peer."""

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.base_url = base_url

    def request(self, method: str, uri: str, **kwargs: Any) -> Any:
        return super().request(
            method, uri.replace("https://api.twilio.com", self.base_url), **kwargs
        )


def sdk(peer: TwilioApiPeer, *, api_key: bool = False) -> Any:
    http = _PeerHttpClient(peer.url)
    if api_key:
        return Client(API_KEY, API_SECRET, ACCOUNT, http_client=http)
    return Client(ACCOUNT, TOKEN, http_client=http)


# ---------------------------------------------------------------------- the request itself


@pytest.mark.parametrize("mode", ["auth_token", "api_key"])
def test_update_with_twiml_is_basic_authed_and_shaped_like_the_sdk(mode: str) -> None:
    async def main() -> None:
        peer = make_peer(api_key=API_KEY, api_secret=API_SECRET)
        async with BridgeStub() as bridge, peer:
            live_call(peer)
            twiml = dial_twiml(bridge.url("/dial-action?x=1&y=2"))
            changes = {"api_key": API_KEY, "api_secret": API_SECRET} if mode == "api_key" else {}
            async with client(peer, **changes) as rest:
                result = await rest.update_call(CALL, twiml=twiml)
            ours = peer.requests[-1]
            other = "CA" + "e5" * 16  # the first call may have played its <Dial> out by now
            live_call(peer, other)
            sdk_call = sdk(peer, api_key=mode == "api_key").calls(other)
            await asyncio.to_thread(sdk_call.update, twiml=twiml)
            theirs = peer.requests[-1]
        assert result == CallResource(sid=CALL, account_sid=ACCOUNT, status="in-progress", raw={})
        assert ours.authenticated and theirs.authenticated
        assert ours.username == (API_KEY if mode == "api_key" else ACCOUNT) == theirs.username
        assert ours.method == theirs.method == "POST"
        assert ours.path == f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{CALL}.json"
        assert theirs.path == ours.path.replace(CALL, other)
        assert ours.content_type == theirs.content_type == "application/x-www-form-urlencoded"
        assert ours.form == theirs.form == (("Twiml", twiml),)

    run(main())


def test_create_sends_the_fields_the_sdk_sends() -> None:
    fields: dict[str, Any] = {
        "to": "+15551230000",
        "from_": "+15557654321",
        "url": "https://bridge.example.com/outbound?campaign=1",
        "method": "POST",
        "status_callback": "https://bridge.example.com/status",
        "status_callback_event": ["initiated", "ringing", "answered", "completed"],
        "status_callback_method": "POST",
        "timeout": 25,
        "machine_detection": "DetectMessageEnd",
        "machine_detection_timeout": 30,
        "async_amd_status_callback": "https://bridge.example.com/amd",
        "async_amd_status_callback_method": "POST",
        "time_limit": 600,
    }

    async def main() -> None:
        async with make_peer() as peer:
            async with client(peer) as rest:
                created = await rest.create_call(**fields, async_amd=True)
            ours = peer.requests[-1]
            await asyncio.to_thread(sdk(peer).calls.create, **fields, async_amd="true")
            theirs = peer.requests[-1]
        assert created.status == "queued" and created.sid.startswith("CA")
        assert ours.status == theirs.status == 201
        assert ours.path == theirs.path == f"/2010-04-01/Accounts/{ACCOUNT}/Calls.json"
        assert sorted(ours.form) == sorted(theirs.form)
        assert ours.form.count(("StatusCallbackEvent", "ringing")) == 1

    run(main())


def test_hangup_is_status_completed_and_ends_the_stream() -> None:
    async def main() -> None:
        async with make_peer() as peer:
            stopped = live_call(peer)
            async with client(peer) as rest:
                result = await rest.hangup(CALL)
            assert await peer.wait_until(lambda: stopped == [CALL], 5)
            assert peer.requests[-1].form == (("Status", "completed"),)
            assert result.status == "completed"

    run(main())


def test_an_unset_account_sid_falls_back_to_the_calls_own() -> None:
    async def main() -> None:
        async with make_peer() as peer:
            live_call(peer)
            async with client(peer, account_sid=None) as rest:
                with pytest.raises(ValueError, match="account SID"):
                    await rest.update_call(CALL, status="completed")
                await rest.update_call(CALL, account_sid=ACCOUNT, status="completed")
            assert len(peer.requests) == 1
            assert peer.requests[0].username == ACCOUNT and peer.requests[0].authenticated
            assert ACCOUNT in peer.requests[0].path

    run(main())


def test_credentials_from_the_environment() -> None:
    env = {"TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_AUTH_TOKEN": TOKEN}
    creds = TwilioCredentials.from_env(env)
    assert creds is not None and creds.api_url == "https://api.twilio.com"
    assert creds.basic_auth(ACCOUNT) == (ACCOUNT, TOKEN)
    keyed = TwilioCredentials.from_env(
        {
            **env,
            "TWILIO_API_KEY": API_KEY,
            "TWILIO_API_SECRET": API_SECRET,
            "TWILIO_API_URL": "http://127.0.0.1:9/",
        }
    )
    assert keyed is not None and keyed.api_url == "http://127.0.0.1:9"
    assert keyed.basic_auth(ACCOUNT) == (API_KEY, API_SECRET)
    assert TwilioCredentials.from_env({"TWILIO_ACCOUNT_SID": ACCOUNT}) is None
    with pytest.raises(ValueError, match="TWILIO_API_SECRET"):
        TwilioCredentials.from_env({"TWILIO_API_KEY": API_KEY})
    assert TOKEN not in repr(creds) and API_SECRET not in repr(keyed)


# ---------------------------------------------------------------------- errors and bounds


def test_bad_auth_is_a_typed_401_and_not_retried() -> None:
    async def main() -> None:
        async with make_peer() as peer:
            live_call(peer)
            async with client(peer, auth_token="wrong") as rest:
                with pytest.raises(TwilioApiError) as caught:
                    await rest.update_call(CALL, twiml="<Response/>")
            assert len(peer.requests) == 1 and not peer.requests[0].authenticated
        error = caught.value
        assert (error.status, error.code, error.message) == (401, 20003, "Authenticate")
        assert error.attempts == 1
        assert error.more_info == "https://www.twilio.com/docs/errors/20003"

    run(main())


def test_unknown_call_and_bad_params_are_typed_and_not_retried() -> None:
    async def main() -> None:
        async with make_peer() as peer:
            async with client(peer) as rest:
                with pytest.raises(TwilioApiError) as unknown:
                    await rest.update_call("CA" + "0" * 32, twiml="<Response/>")
                with pytest.raises(TwilioApiError) as no_to:
                    await rest.create_call(to="", from_="+15550100", twiml="<Response/>")
                live_call(peer)
                with pytest.raises(TwilioApiError) as bad_status:
                    await rest.update_call(CALL, status="paused")
            assert len(peer.requests) == 3
        assert (unknown.value.status, unknown.value.code) == (404, 20404)
        assert (no_to.value.status, no_to.value.code) == (400, 21201)
        assert no_to.value.message == "No 'To' number is specified"
        assert bad_status.value.status == 400

    run(main())


def test_an_ended_call_cannot_be_redirected() -> None:
    async def main() -> None:
        async with make_peer() as peer:
            live_call(peer)
            peer.unregister(CALL)  # the stream closed first: Twilio hangs up
            async with client(peer) as rest:
                with pytest.raises(TwilioApiError) as caught:
                    await rest.update_call(CALL, twiml="<Response><Dial>+1555</Dial></Response>")
        assert (caught.value.status, caught.value.code) == (400, 21220)

    run(main())


def test_5xx_and_429_are_retried_honouring_retry_after() -> None:
    async def main() -> None:
        async with make_peer() as peer:
            live_call(peer)
            peer.inject(Fault(503), Fault(429, retry_after="0.3"))
            async with client(peer) as rest:
                began = time.monotonic()
                result = await rest.update_call(CALL, twiml="<Response/>")
                elapsed = time.monotonic() - began
            assert [r.status for r in peer.requests] == [503, 429, 200]
        assert result.status == "in-progress"
        assert elapsed >= 0.25  # Retry-After (0.3 s, less timer slack), not the 10-50 ms backoff

    run(main())


def test_retries_are_bounded_in_count_and_in_waiting() -> None:
    async def main() -> None:
        async with make_peer() as peer:
            live_call(peer)
            peer.inject(*[Fault(500)] * 10)
            async with client(peer) as rest:
                with pytest.raises(TwilioApiError) as caught:
                    await rest.update_call(CALL, twiml="<Response/>")
            assert [r.status for r in peer.requests] == [500, 500, 500]
            assert caught.value.attempts == 3 and caught.value.code == 20500
            peer.faults.clear()
            peer.inject(Fault(429, retry_after="3600"))
            async with client(peer) as rest:
                began = time.monotonic()
                await rest.update_call(CALL, twiml="<Response/>")
            assert time.monotonic() - began < 5  # max_retry_after (1 s) caps the hour

    run(main())


def test_a_stalled_request_times_out_once_and_is_not_repeated() -> None:
    async def main() -> None:
        async with make_peer() as peer:
            live_call(peer)
            peer.inject(Fault(status=0, delay=10), Fault(status=0, delay=10))
            policy = RetryPolicy(attempts=3, timeout=0.3, backoff=0.01)
            async with client(peer, policy=policy) as rest:
                began = time.monotonic()
                with pytest.raises(TwilioTransportError) as caught:
                    await rest.update_call(CALL, twiml="<Response/>")
                elapsed = time.monotonic() - began
            # a read timeout may have been applied by Twilio: a second <Dial> must not follow
            assert len(peer.faults) == 1 and caught.value.attempts == 1
        assert elapsed < 3

    run(main())


def test_the_deadline_bounds_the_whole_request() -> None:
    async def main() -> None:
        async with make_peer() as peer:
            live_call(peer)
            peer.inject(Fault(503, retry_after="0.4"), Fault(503, retry_after="0.4"))
            policy = RetryPolicy(attempts=5, timeout=2.0, max_retry_after=1.0, deadline=0.6)
            async with client(peer, policy=policy) as rest:
                began = time.monotonic()
                with pytest.raises(TwilioApiError) as caught:
                    await rest.update_call(CALL, twiml="<Response/>")
            assert time.monotonic() - began < 1.5
            assert caught.value.attempts == 2  # a third wait would pass the deadline

    run(main())


def test_connection_refused_is_retried_then_typed() -> None:
    async def main() -> None:
        async with make_peer() as peer:
            url = peer.url
        creds = TwilioCredentials(account_sid=ACCOUNT, auth_token=TOKEN, api_url=url)
        async with TwilioRestClient(creds, policy=FAST, trust_env=False) as rest:
            with pytest.raises(TwilioTransportError) as caught:
                await rest.update_call(CALL, twiml="<Response/>")
        assert caught.value.attempts == FAST.attempts

    run(main())


def test_no_credentials_in_logs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    basic = base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()
    key_basic = base64.b64encode(f"{API_KEY}:{API_SECRET}".encode()).decode()
    errors: list[str] = []

    async def main() -> None:
        peer = make_peer(api_key=API_KEY, api_secret=API_SECRET)
        async with peer:
            live_call(peer)
            peer.inject(Fault(503), Fault(429, retry_after="0"))
            async with client(peer) as rest:
                await rest.update_call(CALL, twiml="<Response/>")
            live_call(peer, "CA" + "d4" * 16)
            async with client(peer, api_key=API_KEY, api_secret=API_SECRET) as rest:
                await rest.update_call("CA" + "d4" * 16, twiml="<Response/>")
            for changes in ({"auth_token": "wrong"}, {"api_key": API_KEY, "api_secret": "bad"}):
                async with client(peer, **changes) as rest:
                    try:
                        await rest.update_call(CALL, status="completed")
                    except TwilioApiError as exc:
                        errors.append(f"{exc} {exc!r} {exc.message}")
            errors.append(json.dumps(peer.dump()))

    with contextlib.ExitStack() as stack:
        for name in (None, "httpx", "httpcore", "server.twilio_rest", "peers.twilio_api"):
            stack.enter_context(caplog.at_level(logging.DEBUG, logger=name))
        run(main())
    text = caplog.text + "\n".join(errors)
    assert "HTTP Request: POST" in caplog.text  # httpx's own logger was captured
    assert "send_request_headers" in caplog.text  # and httpcore's
    assert len(errors) == 3
    for secret in (TOKEN, API_SECRET, basic, key_basic):
        assert secret not in text


# ---------------------------------------------------------------------- the peer plays the call out


async def _media_server(received: list[dict[str, Any]]) -> Any:
    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            received.append(json.loads(message))

    return await serve(handler, "127.0.0.1", 0, compression=None)


def test_an_update_ends_the_registered_callers_stream_then_dials() -> None:
    async def main() -> None:
        received: list[dict[str, Any]] = []
        async with BridgeStub() as bridge, make_peer() as peer:
            media = await _media_server(received)
            port = media.sockets[0].getsockname()[1]
            caller = TwilioCaller(
                f"ws://127.0.0.1:{port}/media", call_sid=CALL, account_sid=ACCOUNT, registry=peer
            )
            closed_at_action: list[bool] = []
            bridge.answers["/dial-action"] = "<Response><Hangup/></Response>"
            async with caller:
                await caller.silence(0.1)
                assert peer.calls[CALL].stream_stop is not None
                async with client(peer) as rest:
                    await rest.update_call(CALL, twiml=dial_twiml(bridge.url("/dial-action")))
                assert await caller.wait_closed(5)
                assert await peer.wait_until(lambda: bool(bridge.hits), 5)
                closed_at_action.append(caller.closed)
            media.close()
            await media.wait_closed()
            assert await peer.wait_until(lambda: peer.calls[CALL].status == "completed", 5)
        assert received[-1]["event"] == "stop"
        assert received[-1]["stop"] == {"accountSid": ACCOUNT, "callSid": CALL}
        assert caller.closed_by == "caller" and caller.close_code == 1000
        assert closed_at_action == [True]  # the stream ended before the dial played out
        assert peer.calls[CALL].stream_stop is None

    run(main())


def test_a_stream_that_ends_by_itself_ends_the_call() -> None:
    async def main() -> None:
        received: list[dict[str, Any]] = []
        async with make_peer() as peer:
            media = await _media_server(received)
            port = media.sockets[0].getsockname()[1]
            url = f"ws://127.0.0.1:{port}/media"
            async with TwilioCaller(url, call_sid=CALL, registry=peer):
                assert peer.calls[CALL].status == "in-progress"
            media.close()
            await media.wait_closed()
            assert peer.calls[CALL].status == "completed"

    run(main())


@pytest.mark.parametrize(
    ("outcome", "dial_status", "bridged"),
    [
        ("answered", "completed", "true"),
        ("no-answer", "no-answer", "false"),
        ("busy", "busy", "false"),
        ("failed", "failed", "false"),
    ],
)
def test_dial_play_out_requests_a_signed_action_url(
    outcome: str, dial_status: str, bridged: str
) -> None:
    reconnect = (
        '<Response><Connect><Stream url="wss://bridge.example.com/media-stream">'
        '<Parameter name="resume" value="1"/></Stream></Connect></Response>'
    )
    streams: list[tuple[str, str, dict[str, str]]] = []

    async def connector(call: SimCall, url: str, params: Any) -> None:
        streams.append((call.sid, url, dict(params)))

    async def main() -> None:
        async with BridgeStub() as bridge:
            bridge.answers["/dial-action"] = reconnect
            async with make_peer(dial_outcome=outcome, stream_connector=connector) as peer:
                live_call(peer)
                action = bridge.url("/dial-action?transfer=front_desk")
                async with client(peer) as rest:
                    await rest.update_call(CALL, twiml=dial_twiml(action))
                assert await peer.wait_until(lambda: peer.calls[CALL].status == "completed", 5)
                hit = bridge.hits[-1]
                assert hit.method == "POST" and hit.url == action
                assert signed_ok(hit)
                assert not signed_ok(hit, token="another-token")
                form = dict(hit.form)
                assert form["DialCallStatus"] == dial_status
                assert form["DialBridged"] == bridged
                assert (form["CallSid"], form["AccountSid"]) == (CALL, ACCOUNT)
                assert form["CallStatus"] == "in-progress"
                assert ("DialCallDuration" in form) == (outcome == "answered")
                assert peer.dials[-1].targets == ("+15551230000",)
                assert peer.dials[-1].timeout == 20
                assert peer.callbacks[-1].kind == "dial-action"
                assert peer.callbacks[-1].body == reconnect
                assert peer.calls[CALL].twiml[-1] == reconnect
        assert streams == [(CALL, "wss://bridge.example.com/media-stream", {"resume": "1"})]

    run(main())


def test_a_created_call_is_placed_with_callbacks_and_amd() -> None:
    streams: list[str] = []

    async def connector(call: SimCall, url: str, params: Any) -> None:
        streams.append(url)

    async def main() -> None:
        async with BridgeStub() as bridge:
            bridge.answers["/outbound"] = (
                '<Response><Connect><Stream url="wss://bridge.example.com/media-stream"/>'
                "</Connect></Response>"
            )
            peer = make_peer(
                place_calls=True, answered_by="machine_end_beep", stream_connector=connector
            )
            async with peer, client(peer) as rest:
                created = await rest.create_call(
                    to="+15551230000",
                    from_="+15557654321",
                    url=bridge.url("/outbound"),
                    status_callback=bridge.url("/status"),
                    status_callback_event=["initiated", "answered", "completed"],
                    machine_detection="DetectMessageEnd",
                    async_amd=True,
                    async_amd_status_callback=bridge.url("/amd"),
                )
                assert created.status == "queued"
                done = await peer.wait_until(
                    lambda: (
                        sum(h.url.endswith("/status") for h in bridge.hits) == 3
                        and any(h.url.endswith("/amd") for h in bridge.hits)
                    ),
                    5,
                )
                assert done, [h.url for h in bridge.hits]
            kinds = [(urlsplit(h.url).path, dict(h.form).get("CallStatus")) for h in bridge.hits]
            statuses = [status for path, status in kinds if path == "/status"]
            assert statuses == ["initiated", "in-progress", "completed"]
            amd = next(dict(h.form) for h in bridge.hits if h.url.endswith("/amd"))
            assert amd["AnsweredBy"] == "machine_end_beep" and amd["CallSid"] == created.sid
            assert all(signed_ok(hit) for hit in bridge.hits)
            assert ("/outbound", "in-progress") in kinds
        assert streams == ["wss://bridge.example.com/media-stream"]

    run(main())


def test_the_peer_runs_from_the_command_line(tmp_path: Any) -> None:
    dump = tmp_path / "dump.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "peers.twilio_api", "--port", "0", "--account-sid", ACCOUNT,
         "--auth-token", TOKEN, "--dump", str(dump)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.split()[4]
        assert url.startswith("http://127.0.0.1:")

        async def main() -> None:
            creds = TwilioCredentials(account_sid=ACCOUNT, auth_token=TOKEN, api_url=url)
            async with TwilioRestClient(creds, policy=FAST, trust_env=False) as rest:
                created = await rest.create_call(to="+1555", from_="+1666", twiml="<Response/>")
                assert created.status == "queued"

        run(main())
    finally:
        proc.send_signal(2)  # SIGINT: the peer writes its dump and exits
        assert proc.wait(10) == 0
    recorded = json.loads(dump.read_text())
    assert [r["status"] for r in recorded["requests"]] == [201]
    assert TOKEN not in dump.read_text()


def test_the_peer_imports_nothing_from_the_bridge() -> None:
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "peers"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [alias.name for alias in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )  # fmt: skip
            for name in names:
                assert name.split(".")[0] not in ("server", "sansio"), f"{path.name}: {name}"
