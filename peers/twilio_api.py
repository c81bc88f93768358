"""A local Twilio REST peer: the Calls resource, and what Twilio does with a call after it.

It serves ``/2010-04-01/Accounts/{AccountSid}/Calls.json`` (create) and
``.../Calls/{CallSid}.json`` (fetch, update) on 127.0.0.1 over h11, answering as Twilio does:
JSON call resources, ``401`` with Twilio's error JSON on bad Basic auth (account SID + auth
token, or API key + secret), ``404`` for an unknown call, ``400`` for bad parameters. Every
request is recorded (``requests``, ``dump()``), secrets left out.

Calls are simulated. A caller simulator registers its stream (``register(call_sid, stop)``);
an update with ``Twiml`` or ``Url`` ends that stream (the stop callback sends ``stop`` and
closes, as Twilio does) and then plays the new TwiML out: ``<Dial>`` ends as answered,
no-answer, busy or failed (``dial_outcome``), then its ``action`` URL is requested with
Twilio's form fields, signed with ``X-Twilio-Signature``, and the TwiML the bridge answers is
recorded and played out in turn. A created call can be placed (``place_calls``): status
callbacks, answering-machine detection (``AnsweredBy``), the ``Url``'s TwiML, and a
``<Connect><Stream>`` handed to ``stream_connector``. It imports nothing from the bridge.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit
from xml.etree import ElementTree

import h11
import httpx

log = logging.getLogger("peers.twilio_api")

API_VERSION = "2010-04-01"
DIAL_OUTCOMES = {
    "answered": "completed",
    "no-answer": "no-answer",
    "busy": "busy",
    "failed": "failed",
}
"""``--dial-outcome`` -> the ``DialCallStatus`` Twilio posts to the ``<Dial action>`` URL."""
CALL_OUTCOMES = ("answered", "no-answer", "busy", "failed")
ANSWERED_BY = ("human", "machine_start", "machine_end_beep", "machine_end_silence",
               "machine_end_other", "fax", "unknown")  # fmt: skip
LIVE_STATUSES = frozenset({"queued", "ringing", "in-progress"})
MAX_BODY = 1 << 20
MAX_TWIML_HOPS = 10
"""Action URLs followed per call: a bridge that answers every action with another <Dial>
must not keep the peer busy forever."""

Form = tuple[tuple[str, str], ...]
StopCallback = Callable[[], Awaitable[None]]
StreamConnector = Callable[["SimCall", str, Mapping[str, str]], Awaitable[None]]
"""``connector(call, stream_url, parameters)``: run a media stream for ``call`` until it ends
(typically a caller simulator that registers itself with this peer)."""


def sign(auth_token: str, url: str, params: Iterable[tuple[str, str]] = ()) -> str:
    """``X-Twilio-Signature``: HMAC-SHA1 over the URL then each parameter name and value,
    names sorted (a repeated name's values sorted), base64."""
    grouped: dict[str, set[str]] = {}
    for name, value in params:
        grouped.setdefault(name, set()).add(value)
    data = url + "".join(
        name + value for name in sorted(grouped) for value in sorted(grouped[name])
    )
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _now() -> str:
    return formatdate(usegmt=False).replace("-0000", "+0000")


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request to the REST API. The password is never kept, only whether it matched."""

    method: str
    path: str
    form: Form
    content_type: str | None
    username: str | None
    authenticated: bool
    status: int
    user_agent: str | None
    at: float = 0.0
    """``time.perf_counter()`` when the request had arrived whole."""

    def field(self, name: str) -> str | None:
        """The last value of a form field, or None."""
        values = [value for key, value in self.form if key == name]
        return values[-1] if values else None


@dataclass(frozen=True, slots=True)
class Callback:
    """One request the peer made to the bridge, as Twilio would, and what came back."""

    kind: str
    """``dial-action``, ``connect-action``, ``twiml-url``, ``redirect``, ``status-callback``
    or ``amd-status-callback``."""
    call_sid: str
    method: str
    url: str
    form: Form
    signature: str
    status: int | None
    body: str
    error: str | None = None

    def field(self, name: str) -> str | None:
        values = [value for key, value in self.form if key == name]
        return values[-1] if values else None


@dataclass(frozen=True, slots=True)
class DialAttempt:
    call_sid: str
    targets: tuple[str, ...]
    action: str | None
    timeout: int
    dial_call_status: str


@dataclass(frozen=True, slots=True)
class Fault:
    """A canned answer for the next API request: an error ``status`` (with ``Retry-After``),
    or ``status=0`` to answer normally after ``delay`` seconds."""

    status: int = 503
    retry_after: str | None = None
    delay: float = 0.0


@dataclass(eq=False)
class SimCall:
    """A simulated call's state."""

    sid: str
    account_sid: str
    to: str
    from_: str
    direction: str
    status: str
    date_created: str = field(default_factory=_now)
    date_updated: str = field(default_factory=_now)
    start_time: str | None = None
    end_time: str | None = None
    answered_by: str | None = None
    status_callback: str | None = None
    events: frozenset[str] = frozenset({"completed"})
    """``StatusCallbackEvent``s asked for at create."""
    twiml: list[str] = field(default_factory=list)
    """Every TwiML document the call ran, in order (updates and action answers)."""
    stream_stop: StopCallback | None = field(default=None, repr=False)
    flow: asyncio.Task[None] | None = field(default=None, repr=False)
    started: float = field(default_factory=time.monotonic)

    def resource(self) -> dict[str, Any]:
        """The JSON body Twilio returns for a call (the fields of twilio-python's CallInstance)."""
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{self.sid}"
        ended = self.status not in LIVE_STATUSES
        return {
            "sid": self.sid,
            "date_created": self.date_created,
            "date_updated": self.date_updated,
            "parent_call_sid": None,
            "account_sid": self.account_sid,
            "to": self.to,
            "to_formatted": self.to,
            "from": self.from_,
            "from_formatted": self.from_,
            "phone_number_sid": None,
            "status": self.status,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "duration": str(round(time.monotonic() - self.started)) if ended else None,
            "price": None,
            "price_unit": "USD",
            "direction": self.direction,
            "answered_by": self.answered_by,
            "api_version": API_VERSION,
            "forwarded_from": None,
            "group_sid": None,
            "caller_name": None,
            "queue_time": "0",
            "trunk_sid": None,
            "uri": f"{uri}.json",
            "subresource_uris": {
                name: f"{uri}/{name.replace('_', '')}.json"
                for name in (
                    "notifications",
                    "recordings",
                    "payments",
                    "events",
                    "siprec",
                    "streams",
                    "transcriptions",
                    "user_defined_messages",
                )
            },
        }

    def callback_form(self) -> list[tuple[str, str]]:
        """The parameters Twilio sends with every request about a call."""
        return [
            ("AccountSid", self.account_sid),
            ("ApiVersion", API_VERSION),
            ("CallSid", self.sid),
            ("CallStatus", self.status),
            ("Called", self.to),
            ("Caller", self.from_),
            ("Direction", self.direction),
            ("From", self.from_),
            ("To", self.to),
        ]


class _HttpError(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class TwilioApiPeer:
    """The peer. ``async with TwilioApiPeer(account_sid=..., auth_token=...) as peer:`` serves
    on ``peer.url``; point ``TWILIO_API_URL`` at it."""

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        api_key: str | None = None,
        api_secret: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        dial_outcome: str = "answered",
        dial_delay: float = 0.05,
        place_calls: bool = False,
        call_outcome: str = "answered",
        answered_by: str = "human",
        stream_connector: StreamConnector | None = None,
        callback_timeout: float = 5.0,
        stop_timeout: float = 5.0,
    ) -> None:
        if dial_outcome not in DIAL_OUTCOMES:
            raise ValueError(f"dial_outcome must be one of {sorted(DIAL_OUTCOMES)}")
        if call_outcome not in CALL_OUTCOMES or answered_by not in ANSWERED_BY:
            raise ValueError("bad call_outcome or answered_by")
        self.account_sid = account_sid
        self._auth_token = auth_token
        self._api_key = api_key
        self._api_secret = api_secret
        self.host, self.port = host, port
        self.dial_outcome = dial_outcome
        self.dial_delay = dial_delay
        self.place_calls = place_calls
        self.call_outcome = call_outcome
        self.answered_by = answered_by
        self.stream_connector = stream_connector
        self.callback_timeout = callback_timeout
        self.stop_timeout = stop_timeout

        self.calls: dict[str, SimCall] = {}
        self.requests: list[RecordedRequest] = []
        self.callbacks: list[Callback] = []
        self.dials: list[DialAttempt] = []
        self.faults: deque[Fault] = deque()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._http: httpx.AsyncClient | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:43210`` (``TWILIO_API_URL``)."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._http = httpx.AsyncClient(timeout=self.callback_timeout, trust_env=False)
        self._server = await asyncio.start_server(self._connection, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()

    async def __aenter__(self) -> TwilioApiPeer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _spawn(self, coro: Awaitable[object]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ test hooks

    def register(
        self, call_sid: str, stop: StopCallback, *, from_: str = "+15550100", to: str = "+15550199"
    ) -> None:
        """A simulated caller's stream is live on ``call_sid``; ``stop()`` ends it (``stop``
        message, then close). An unknown call becomes a live inbound call."""
        call = self.calls.get(call_sid)
        if call is None:
            call = SimCall(call_sid, self.account_sid, to, from_, "inbound", "in-progress")
            call.start_time = _now()
            self.calls[call_sid] = call
        call.stream_stop = stop

    def unregister(self, call_sid: str) -> None:
        """The stream on ``call_sid`` has ended. With no TwiML left to run, so has the call:
        Twilio hangs up when ``<Connect>`` ends and nothing follows."""
        call = self.calls.get(call_sid)
        if call is None:
            return
        call.stream_stop = None
        if call.flow is None and call.status in LIVE_STATUSES:
            self._finish(call, "completed")

    def inject(self, *faults: Fault) -> None:
        """Answer the next API requests with these faults, one each."""
        self.faults.extend(faults)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Poll ``predicate`` until true or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def dump(self) -> dict[str, Any]:
        """Everything recorded, as JSON-ready data (no secrets: they are never stored)."""
        return {
            "requests": [asdict(r) for r in self.requests],
            "callbacks": [asdict(c) for c in self.callbacks],
            "dials": [asdict(d) for d in self.dials],
            "calls": {sid: {**c.resource(), "twiml": c.twiml} for sid, c in self.calls.items()},
        }

    # ------------------------------------------------------------------ HTTP server

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await self._read(conn, reader)
                if request is None:
                    break
                status, headers, payload = await self._respond(request, body)
                reason = HTTPStatus(status).phrase.encode()
                response = h11.Response(status_code=status, headers=headers, reason=reason)
                writer.write(conn.send(response) or b"")
                writer.write(conn.send(h11.Data(data=payload)) or b"")
                writer.write(conn.send(h11.EndOfMessage()) or b"")
                await writer.drain()
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except (h11.ProtocolError, ConnectionError):
            pass
        except asyncio.CancelledError:  # the peer is stopping; end the handler quietly
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _read(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise h11.RemoteProtocolError("body too large")
            elif isinstance(event, h11.EndOfMessage):
                return request, bytes(body)
            else:  # ConnectionClosed, or PAUSED
                return None, b""

    async def _respond(
        self, request: h11.Request, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        arrived = time.perf_counter()
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in request.headers}
        method = request.method.decode()
        path = request.target.decode("latin-1").split("?", 1)[0]
        content_type = headers.get("content-type")
        form: Form = ()
        if (
            content_type
            and content_type.split(";")[0].strip() == "application/x-www-form-urlencoded"
        ):
            form = tuple(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        username, authenticated = self._check_auth(headers.get("authorization"))
        status, extra, payload = 500, [], b""
        try:
            fault = self.faults.popleft() if self.faults else None
            if fault is not None and fault.delay:
                await asyncio.sleep(fault.delay)
            if fault is not None and fault.status:
                if fault.retry_after is not None:
                    extra.append(("Retry-After", fault.retry_after))
                code = 20429 if fault.status == 429 else 20500
                raise _HttpError(fault.status, code, "Too Many Requests" if code == 20429
                                 else "An internal server error has occurred")  # fmt: skip
            if not authenticated:
                extra.append(("WWW-Authenticate", 'Basic realm="Twilio API"'))
                raise _HttpError(401, 20003, "Authenticate")
            status, result = self._route(method, path, form)
            payload = json.dumps(result).encode()
        except _HttpError as exc:
            status = exc.status
            payload = json.dumps({
                "code": exc.code,
                "message": exc.message,
                "more_info": f"https://www.twilio.com/docs/errors/{exc.code}",
                "status": exc.status,
            }).encode()  # fmt: skip
        user_agent = headers.get("user-agent")
        record = RecordedRequest(
            method, path, form, content_type, username, authenticated, status, user_agent, arrived
        )
        self.requests.append(record)
        log.info("%s %s -> %d", method, path, status)
        response_headers = [("Content-Type", "application/json; charset=utf-8"),
                            ("Content-Length", str(len(payload))), *extra]  # fmt: skip
        return status, response_headers, payload

    def _check_auth(self, header: str | None) -> tuple[str | None, bool]:
        """(the Basic username, whether the pair is one this account accepts)."""
        if not header or not header.lower().startswith("basic "):
            return None, False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return None, False
        username, sep, _ = decoded.partition(":")
        if not sep:
            return username, False
        pairs = [(self.account_sid, self._auth_token)]
        if self._api_key and self._api_secret:
            pairs.append((self._api_key, self._api_secret))
        given = decoded.encode()
        ok = any(hmac.compare_digest(given, f"{u}:{p}".encode()) for u, p in pairs)
        return username, ok

    def _route(self, method: str, path: str, form: Form) -> tuple[int, dict[str, Any]]:
        prefix = f"/{API_VERSION}/Accounts/"
        parts = path[len(prefix) :].split("/") if path.startswith(prefix) else []
        not_found = _HttpError(404, 20404, f"The requested resource {path} was not found")
        if len(parts) not in (2, 3) or parts[0] != self.account_sid or parts[1] == "":
            raise not_found
        if len(parts) == 2 and parts[1] == "Calls.json":
            if method != "POST":
                raise _HttpError(405, 20004, "Method not allowed")
            return 201, self._create(form).resource()
        if len(parts) == 3 and parts[1] == "Calls" and parts[2].endswith(".json"):
            call = self.calls.get(parts[2][: -len(".json")])
            if call is None:
                raise not_found
            if method == "GET":
                return 200, call.resource()
            if method == "POST":
                return 200, self._update(call, form).resource()
            raise _HttpError(405, 20004, "Method not allowed")
        raise not_found

    # ------------------------------------------------------------------ the Calls resource

    def _create(self, form: Form) -> SimCall:
        fields = dict(form)
        if not fields.get("To"):
            raise _HttpError(400, 21201, "No 'To' number is specified")
        if not fields.get("From"):
            raise _HttpError(400, 21213, "No 'From' number is specified")
        if not (fields.get("Url") or fields.get("Twiml") or fields.get("ApplicationSid")):
            raise _HttpError(400, 21205, "Url parameter is required.")
        if "Twiml" in fields:
            _parse_twiml(fields["Twiml"])
        call = SimCall(_sid("CA"), self.account_sid, fields["To"], fields["From"],
                       "outbound-api", "queued")  # fmt: skip
        self.calls[call.sid] = call
        if self.place_calls:
            call.flow = self._spawn(self._place(call, form))
        return call

    def _update(self, call: SimCall, form: Form) -> SimCall:
        fields = dict(form)
        status = fields.get("Status")
        if status is not None and status not in ("completed", "canceled"):
            raise _HttpError(400, 20001, f"Status {status!r} is not valid: completed or canceled")
        twiml, url = fields.get("Twiml"), fields.get("Url")
        if twiml is not None:
            _parse_twiml(twiml)
        if call.status not in LIVE_STATUSES:
            raise _HttpError(400, 21220, "Call is not in-progress. Cannot redirect.")
        call.date_updated = _now()
        if status == "completed" or (status == "canceled" and call.status != "in-progress"):
            self._cancel_flow(call)
            self._spawn(self._end_stream(call))
            self._finish(call, status)
        elif twiml is not None or url:
            self._cancel_flow(call)
            method = fields.get("Method", "POST").upper()
            call.flow = self._spawn(self._redirect(call, twiml, url, method))
        return call

    def _cancel_flow(self, call: SimCall) -> None:
        if call.flow is not None and call.flow is not asyncio.current_task():
            call.flow.cancel()
        call.flow = None

    def _finish(self, call: SimCall, status: str) -> None:
        if call.status not in LIVE_STATUSES:
            return
        call.status = status
        call.end_time = call.date_updated = _now()
        if call.status_callback is not None:
            self._spawn(self._status_callback(call, "completed"))

    # ------------------------------------------------------------------ call play-out

    async def _end_stream(self, call: SimCall) -> None:
        stop, call.stream_stop = call.stream_stop, None
        if stop is not None:
            try:
                await asyncio.wait_for(stop(), self.stop_timeout)
            except (TimeoutError, OSError) as exc:
                log.warning("stopping the stream of %s failed: %r", call.sid, exc)

    async def _redirect(
        self, call: SimCall, twiml: str | None, url: str | None, method: str
    ) -> None:
        """An update with new TwiML: the current TwiML (the media stream) ends, the new runs."""
        await self._end_stream(call)
        if twiml is None:
            assert url is not None
            twiml = await self._fetch_twiml(call, "twiml-url", url, method, [])
        await self._play(call, twiml, base_url=url)

    async def _play(self, call: SimCall, twiml: str | None, *, base_url: str | None) -> None:
        """Run TwiML documents as Twilio does, following action URLs, then end the call."""
        try:
            for _ in range(MAX_TWIML_HOPS):
                if twiml is None:
                    break
                call.twiml.append(twiml)
                next_url = await self._run(call, _parse_twiml(twiml), base_url)
                if next_url is None:
                    break
                kind, url, method, extra = next_url
                twiml = await self._fetch_twiml(call, kind, url, method, extra)
                base_url = url
        except _HttpError as exc:  # an unparseable answer: Twilio's 12100, then hang up
            log.warning("call %s: %s", call.sid, exc.message)
        finally:
            if call.flow is asyncio.current_task():
                call.flow = None
            self._finish(call, "completed")

    async def _run(
        self, call: SimCall, root: ElementTree.Element, base_url: str | None
    ) -> tuple[str, str, str, list[tuple[str, str]]] | None:
        """Run one document's verbs; return the next request to make, if any."""
        for verb in root:
            if verb.tag == "Hangup":
                return None
            if verb.tag == "Redirect" and (verb.text or "").strip():
                url = _absolute(verb.text.strip() if verb.text else "", base_url)
                return "redirect", url, verb.get("method", "POST").upper(), []
            if verb.tag == "Dial":
                extra = await self._dial(call, verb)
                action = verb.get("action")
                if action:
                    url = _absolute(action, base_url)
                    return "dial-action", url, verb.get("method", "POST").upper(), extra
            elif verb.tag == "Connect":
                stream = verb.find("Stream")
                if stream is not None and stream.get("url") and self.stream_connector:
                    params = {
                        p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")
                    }
                    await self.stream_connector(call, stream.get("url", ""), params)
                action = verb.get("action")
                if action:
                    return "connect-action", _absolute(action, base_url), "POST", []
        return None

    async def _dial(self, call: SimCall, verb: ElementTree.Element) -> list[tuple[str, str]]:
        """Play out ``<Dial>`` with the configured outcome; the action URL's extra fields."""
        targets = tuple(t for t in [(verb.text or "").strip()]
                        + [(n.text or "").strip() for n in verb] if t)  # fmt: skip
        try:
            timeout = int(verb.get("timeout", "30"))
        except ValueError:
            timeout = 30
        dial_status = DIAL_OUTCOMES[self.dial_outcome]
        self.dials.append(DialAttempt(call.sid, targets, verb.get("action"), timeout, dial_status))
        await asyncio.sleep(min(self.dial_delay, timeout))
        extra = [("DialCallStatus", dial_status)]
        if dial_status != "failed":
            extra.append(("DialCallSid", _sid("CA")))
        if dial_status == "completed":
            extra.append(("DialCallDuration", "1"))
        extra.append(("DialBridged", "true" if dial_status == "completed" else "false"))
        return extra

    async def _place(self, call: SimCall, form: Form) -> None:
        """Place a created call: ring, answer (or not), detect a machine, run the TwiML."""
        fields = dict(form)
        call.status_callback = fields.get("StatusCallback")
        events = frozenset(v for name, v in form if name == "StatusCallbackEvent") or call.events
        call.events = events
        if "initiated" in events:
            await self._status_callback(call, "initiated")
        call.status = "ringing"
        if "ringing" in events:
            await self._status_callback(call, "ringing")
        await asyncio.sleep(self.dial_delay)
        if self.call_outcome != "answered":
            call.flow = None
            self._finish(call, self.call_outcome)
            return
        call.status, call.start_time = "in-progress", _now()
        if "answered" in events:
            await self._status_callback(call, "answered")
        extra: list[tuple[str, str]] = []
        if fields.get("MachineDetection"):
            call.answered_by = self.answered_by
            amd = [("AnsweredBy", self.answered_by), ("MachineDetectionDuration", "1200")]
            if fields.get("AsyncAmd", "").lower() == "true":
                if fields.get("AsyncAmdStatusCallback"):
                    self._spawn(self._request(call, "amd-status-callback",
                                              fields["AsyncAmdStatusCallback"],
                                              fields.get("AsyncAmdStatusCallbackMethod", "POST"),
                                              amd))  # fmt: skip
            else:
                extra = amd[:1]
        twiml = fields.get("Twiml")
        url = fields.get("Url")
        if twiml is None and url:
            twiml = await self._fetch_twiml(
                call, "twiml-url", url, fields.get("Method", "POST"), extra
            )
        await self._play(call, twiml, base_url=url)

    async def _status_callback(self, call: SimCall, event: str) -> None:
        url = call.status_callback
        if not url or event not in call.events:
            return
        extra = [("CallbackSource", "call-progress-events"), ("Timestamp", _now())]
        if event == "completed":
            extra.append(("CallDuration", str(round(time.monotonic() - call.started))))
        status = "initiated" if event == "initiated" else None  # the resource still says queued
        await self._request(call, "status-callback", url, "POST", extra, call_status=status)

    async def _fetch_twiml(
        self, call: SimCall, kind: str, url: str, method: str, extra: Sequence[tuple[str, str]]
    ) -> str | None:
        result = await self._request(call, kind, url, method, extra)
        if result is None or result.status != 200:
            return None
        return result.body

    async def _request(
        self,
        call: SimCall,
        kind: str,
        url: str,
        method: str,
        extra: Sequence[tuple[str, str]],
        *,
        call_status: str | None = None,
    ) -> Callback | None:
        """Request a bridge URL as Twilio does, signed over the URL and the form."""
        assert self._http is not None
        form = [*call.callback_form(), *extra]
        if call_status is not None:
            form = [(k, call_status if k == "CallStatus" else v) for k, v in form]
        method = method.upper()
        if method == "GET":
            sep = "&" if urlsplit(url).query else "?"
            url, body_form = f"{url}{sep}{urlencode(form)}", []
        else:
            body_form = form
        signature = sign(self._auth_token, url, body_form)
        headers = {"X-Twilio-Signature": signature, "User-Agent": "TwilioProxy/1.1",
                   "Content-Type": "application/x-www-form-urlencoded"}  # fmt: skip
        status: int | None = None
        body, error = "", None
        try:
            response = await self._http.request(
                method, url, headers=headers, content=urlencode(body_form) if body_form else None
            )
            status, body = response.status_code, response.text
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        record = Callback(kind, call.sid, method, url, tuple(form), signature, status, body, error)
        self.callbacks.append(record)
        log.info("%s %s %s -> %s", kind, method, url, status if error is None else error)
        return record


def caller_connector(
    peer: TwilioApiPeer, *, max_seconds: float = 300.0, says: bytes | None = None
) -> StreamConnector:
    """Put peers/caller.py's simulated caller on a placed call's ``<Stream>`` (a ``wss://``
    URL is dialled as ``ws://``: a local bridge without TLS), signed with the peer's token and
    registered so that an update or a hangup ends it, for at most ``max_seconds``. With
    ``says`` (mu-law audio) the caller speaks it once the agent's greeting has played."""

    async def connect(call: SimCall, url: str, parameters: Mapping[str, str]) -> None:
        from peers.caller import TwilioCaller  # the caller's audio stack: only when placing

        caller = TwilioCaller(
            url.replace("wss://", "ws://", 1), auth_token=peer._auth_token, signed_url=url,
            custom_parameters=parameters, account_sid=call.account_sid, call_sid=call.sid,
            record=False, registry=peer,
        )  # fmt: skip
        async with caller:
            if says is not None and await caller.wait_agent_speaking(10):
                await caller.wait_agent_silent(30, quiet=0.6)
                await caller.play(says, "says")
            await caller.wait_closed(max_seconds)

    return connect


def _parse_twiml(text: str) -> ElementTree.Element:
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise _HttpError(400, 12100, f"Document parse failure: {exc}") from None
    if root.tag != "Response":
        raise _HttpError(400, 12100, "Document parse failure: the root element is not <Response>")
    return root


def _absolute(url: str, base: str | None) -> str:
    return urljoin(base, url) if base else url


# ---------------------------------------------------------------------- command line


async def _serve(peer: TwilioApiPeer, dump: str | None) -> None:
    async with peer:
        print(f"Twilio REST peer on {peer.url} (TWILIO_API_URL={peer.url})", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            if dump:
                with open(dump, "w", encoding="utf-8") as out:
                    json.dump(peer.dump(), out, indent=2)


def main(argv: list[str] | None = None) -> int:
    """``python -m peers.twilio_api --port N --account-sid AC... --auth-token ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m peers.twilio_api", description="A local stand-in for Twilio's Calls API."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--account-sid", required=True)
    parser.add_argument("--auth-token", help="default: $TWILIO_AUTH_TOKEN")
    parser.add_argument("--api-key", help="also accept this API key SID ...")
    parser.add_argument("--api-secret", help="... with this secret (default: $TWILIO_API_SECRET)")
    parser.add_argument("--dial-outcome", choices=sorted(DIAL_OUTCOMES), default="answered")
    parser.add_argument("--dial-delay", type=float, default=1.0, help="seconds a <Dial> rings")
    parser.add_argument(
        "--place-calls",
        action="store_true",
        help="play created calls out: status callbacks, AMD, the Url's TwiML",
    )
    parser.add_argument("--call-outcome", choices=CALL_OUTCOMES, default="answered")
    parser.add_argument("--answered-by", choices=ANSWERED_BY, default="human")
    parser.add_argument("--connect-streams", action="store_true",
                        help="with --place-calls: a simulated caller (peers/caller.py) on each "
                        "call's <Connect><Stream>")  # fmt: skip
    parser.add_argument("--caller-says", metavar="CLIP",
                        help="with --connect-streams: the caller speaks this shipped clip (e.g. "
                        "caller-hello) after the agent's greeting")  # fmt: skip
    parser.add_argument("--dump", metavar="FILE", help="write every recorded request here at exit")
    args = parser.parse_args(argv)
    auth_token = args.auth_token or os.environ.get("TWILIO_AUTH_TOKEN")
    if not auth_token:
        parser.error("--auth-token or $TWILIO_AUTH_TOKEN is required")
    api_secret = args.api_secret or os.environ.get("TWILIO_API_SECRET")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    peer = TwilioApiPeer(
        account_sid=args.account_sid,
        auth_token=auth_token,
        api_key=args.api_key,
        api_secret=api_secret,
        host=args.host,
        port=args.port,
        dial_outcome=args.dial_outcome,
        dial_delay=args.dial_delay,
        place_calls=args.place_calls,
        call_outcome=args.call_outcome,
        answered_by=args.answered_by,
    )
    if args.caller_says and not args.connect_streams:
        parser.error("--caller-says needs --connect-streams")
    if args.connect_streams:
        says = None
        if args.caller_says:
            from peers.audio import load_clip  # the caller's audio stack: only when placing

            try:
                says = load_clip(args.caller_says)
            except FileNotFoundError as exc:
                parser.error(str(exc))
        peer.stream_connector = caller_connector(peer, says=says)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(peer, args.dump))
    return 0


if __name__ == "__main__":
    sys.exit(main())
