"""HTTP side of the server: one ``asyncio.Protocol`` per TCP connection, parsed with h11.

Routes: the Twilio webhook (``/incoming-call``, TwiML), ``/healthz``, ``/metrics``,
``/calls`` and ``/calls/{CallSid}/...`` (only with ``BRIDGE_CONTROL_TOKEN``: the call records
and server/control_api.py) and the
``/media-stream`` WebSocket upgrade, which this module performs by hand (header checks,
signature, capacity, ``101`` with the accept token) before handing the socket, with any bytes
that came behind the request, to the ``on_upgrade`` factory of its :class:`Site`. The protocol
that factory returns becomes the transport's protocol (``transport.set_protocol``), so this
module leaves the path of the call's frames; it knows nothing of calls.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import time
from collections.abc import Collection, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qsl

import h11
from wsproto.utilities import generate_accept_token

from server import __version__, control_auth, handoff, outbound, signature
from server.control_api import ControlApi
from server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from server.metrics import Metrics
from server.options import MEDIA_STREAM_PATH, WEBHOOK_PATH, ServerOptions
from server.outbound import Outbound
from server.records.store import RecordStore
from server.twiml import twiml_busy, twiml_hangup, twiml_stream

log = logging.getLogger("server.http")

SERVER_HEADER = f"twilio-agent-bridge/{__version__}".encode()
TWIML_PARAMETERS = ("From", "To", "CallSid")

_REASONS = {
    101: b"Switching Protocols",
    200: b"OK",
    201: b"Created",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    426: b"Upgrade Required",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
}
_HOST_RE = re.compile(r"^[A-Za-z0-9.\-_]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")
_ROUTES_METHODS = {
    WEBHOOK_PATH: (b"GET", b"POST"),
    "/healthz": (b"GET",),
    "/metrics": (b"GET",),
    MEDIA_STREAM_PATH: (b"GET",),
    handoff.DIAL_ACTION_PATH: (b"GET", b"POST"),
    handoff.STREAM_STATUS_PATH: (b"POST",),
    outbound.AMD_PATH: (b"POST",),
    outbound.STATUS_PATH: (b"POST",),
}
_DIAL_DONE = frozenset({"completed", "answered"})


class Site(Protocol):
    """What the HTTP layer needs from the server it serves."""

    loop: asyncio.AbstractEventLoop
    options: ServerOptions
    metrics: Metrics
    connections: set[Any]  # open connections; each adds itself and leaves when closed
    draining: bool
    tls: bool
    debug: bool
    records: RecordStore | None
    control: ControlApi
    outbound: Outbound | None

    @property
    def calls(self) -> Collection[object]: ...

    def at_capacity(self) -> bool: ...

    def on_upgrade(
        self, transport: asyncio.Transport, trailing_data: bytes, peer: str
    ) -> asyncio.Protocol:
        """Take over an upgraded media stream; the protocol returned gets its reads."""
        ...


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str | None:
    """A header's value (repeated headers joined with ", "), or None if absent."""
    values = [value for key, value in headers if key == name]
    if not values:
        return None
    return b", ".join(values).decode("latin-1")


def _tokens(value: str | None) -> set[str]:
    return {t.strip().lower() for t in value.split(",")} if value else set()


class HttpProtocol(asyncio.Protocol):
    """One TCP connection: HTTP/1.1 requests until it becomes a call (or closes)."""

    def __init__(self, server: Site) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.h11 = h11.Connection(
            h11.SERVER, max_incomplete_event_size=server.options.max_header_bytes
        )
        self.peer = ""
        self._request: h11.Request | None = None
        self._body = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"{peer[0]}:{peer[1]}"
        self.server.connections.add(self)
        self._arm_request_timer()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self.h11.receive_data(data)
        self._process()

    def eof_received(self) -> bool | None:
        if not self._closing:
            self.h11.receive_data(b"")
            self._process()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self._cancel_request_timer()
        self._closing = True

    # ------------------------------------------------------------------ timers

    def _arm_request_timer(self) -> None:
        self._cancel_request_timer()
        self._timer = self.loop.call_later(
            self.server.options.request_timeout, self._on_request_timeout
        )

    def _cancel_request_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_request_timeout(self) -> None:
        self._timer = None
        if self._closing or self.transport is None:
            return
        conn = self.h11
        partial = conn.their_state is not h11.IDLE or bool(conn.trailing_data[0])
        if partial and conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self._error(408, "request timed out")
        else:
            self.close()

    def close_idle(self) -> None:
        """Close the connection if it is between requests (used when shutting down)."""
        if self.h11.their_state is h11.IDLE and self._request is None:
            self.close()

    # ------------------------------------------------------------------ request handling

    def _process(self) -> None:
        conn = self.h11
        while not self._closing:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._error(exc.error_status_hint, str(exc))
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            cls = type(event)
            if cls is h11.Request:
                assert isinstance(event, h11.Request)
                self._request = event
                self._body.clear()
                # h11 caps only a head that is still incomplete; cap a complete one too.
                head = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
                if head > self.server.options.max_header_bytes:
                    self._error(431, "request header fields too large")
                    return
                length = _header(event.headers, b"content-length")
                if length is not None and length.isdigit() and (
                    int(length) > self.server.options.max_body_bytes
                ):
                    self._error(413, "request body too large")
                    return
            elif cls is h11.Data:
                assert isinstance(event, h11.Data)
                self._body += event.data
                if len(self._body) > self.server.options.max_body_bytes:
                    self._error(413, "request body too large")
                    return
            elif cls is h11.EndOfMessage:
                request = self._request
                assert request is not None
                self._request = None
                try:
                    self._route(request)
                except Exception:
                    log.exception("error while handling %s", request.target[:100])
                    if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                        self._error(500, "internal error")
                    else:
                        self.close()
                    return
                if self._closing or conn.our_state is h11.SEND_RESPONSE:
                    return  # closed, or answered later (by a thread or a task)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    self.close()
                    return
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                    self._arm_request_timer()
            elif cls is h11.ConnectionClosed:
                self.close()
                return

    def _route(self, request: h11.Request) -> None:
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        public = self.server.options.public_url
        if public is not None and public.prefix and path.startswith(public.prefix + "/"):
            path = path[len(public.prefix) :]  # a proxy that keeps the public prefix
        if (path == "/calls" or path.startswith("/calls/")) and self.server.options.control_token:
            self._calls(request, path)
            return
        methods = _ROUTES_METHODS.get(path)
        if methods is None:
            self._respond(404, b"not found\n")
            return
        if request.method not in methods:
            allow = ", ".join(m.decode() for m in methods)
            self._respond(405, b"method not allowed\n", headers=[(b"allow", allow.encode())])
            return
        if path == WEBHOOK_PATH:
            self._webhook(request, target, query)
        elif path == handoff.DIAL_ACTION_PATH:
            self._dial_action(request, target, query)
        elif path == handoff.STREAM_STATUS_PATH:
            self._stream_status(request, target, query)
        elif path in (outbound.AMD_PATH, outbound.STATUS_PATH):
            self._outbound_callback(request, target, query, path)
        elif path == MEDIA_STREAM_PATH:
            self._upgrade(request)
        elif path == "/healthz":
            server = self.server
            body = {
                "status": "draining" if server.draining else "ok",
                "calls": len(server.calls),
                "uptime_seconds": round(server.metrics.uptime(), 3),
            }
            self._respond(200, json.dumps(body).encode() + b"\n", "application/json")
        else:  # /metrics
            text = self.server.metrics.render()
            self._respond(200, text.encode(), METRICS_CONTENT_TYPE)

    # ------------------------------------------------------------------ call records

    def _calls(self, request: h11.Request, path: str) -> None:
        """The routes behind ``Authorization: Bearer $BRIDGE_CONTROL_TOKEN``: a call's record,
        or the control API (server/control_api.py), answered when its coroutine is done."""
        if not control_auth.authorized(request.headers, self.server.options.control_token):
            self._json(401, control_auth.UNAUTHORIZED, [control_auth.CHALLENGE])
            return
        if path.endswith("/record"):
            self._call_record(request, path)
            return
        if path == "/calls" and request.method == b"POST":
            outbound = self.server.outbound
            if outbound is None:
                self._json(409, {"error": "outbound calls need Twilio REST credentials"})
                return
            answer = self.loop.create_task(outbound.create(bytes(self._body)))
        else:
            answer = self.loop.create_task(
                self.server.control.handle(request.method, path, bytes(self._body))
            )
        answer.add_done_callback(self._control_answered)

    def _control_answered(self, done: asyncio.Task[tuple[int, dict[str, Any]]]) -> None:
        if self._closing or self.transport is None or self.transport.is_closing():
            return
        try:
            status, body = done.result()
        except Exception:
            log.exception("control API request failed")
            status, body = 500, {"error": "internal error"}
        self._json(status, body)
        self._next_request()

    def _call_record(self, request: h11.Request, path: str) -> None:
        """``GET /calls/{CallSid}/record``: the record is read in a thread, so a slow database
        never stalls the calls."""
        sid = path[len("/calls/") : -len("/record")]
        store = self.server.records
        if not sid or "/" in sid or store is None or request.method != b"GET":
            self._json(404, {"error": "not found"})
            return
        future = self.loop.run_in_executor(None, store.load, sid)
        future.add_done_callback(lambda done: self._record_loaded(done, sid))

    def _record_loaded(self, done: asyncio.Future[Any], sid: str) -> None:
        if self._closing or self.transport is None or self.transport.is_closing():
            return
        try:
            record = done.result()
        except Exception as exc:
            log.error("reading the record of %s failed: %s", sid, type(exc).__name__)
            self._json(500, {"error": "the records cannot be read"})
        else:
            if record is None:
                self._json(404, {"error": f"no record of call {sid}"})
            else:
                self._json(200, record.to_json())
        self._next_request()

    def _next_request(self) -> None:
        """After a response given later (a thread's or a task's): serve what came behind."""
        conn = self.h11
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            self.close()
        elif conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self._arm_request_timer()
            self._process()  # a request pipelined behind this one

    def _json(self, status: int, body: object, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        self._respond(status, json.dumps(body).encode() + b"\n", "application/json", headers)

    # ------------------------------------------------------------------ the webhook

    def _host(self, request: h11.Request) -> str | None:
        host = _header(request.headers, b"host")
        if host is None or not _HOST_RE.match(host):
            return None
        return host

    def _twilio_form(
        self, request: h11.Request, target: str, query: str, what: str
    ) -> list[tuple[str, str]] | None:
        """The parameters of a request from Twilio, its signature checked (with
        TWILIO_AUTH_TOKEN); None when it was answered already (400, 403)."""
        options = self.server.options
        public = options.public_url
        host = self._host(request)
        if public is None and host is None:
            self._respond(400, b"missing or invalid Host header\n")
            return None
        if request.method == b"POST":
            content_type = (_header(request.headers, b"content-type") or "").lower()
            if content_type.startswith("application/x-www-form-urlencoded"):
                try:
                    form = parse_qsl(
                        self._body.decode("utf-8"), keep_blank_values=True, strict_parsing=False
                    )
                except UnicodeDecodeError:
                    self._respond(400, b"form body is not UTF-8\n")
                    return None
            else:
                form = []
            params = form  # a POST is signed over the URL plus its form parameters
        else:
            form = parse_qsl(query, keep_blank_values=True)
            params = []  # a GET is signed over the URL alone (its query string included)

        if options.auth_token:
            if public is not None:
                if public.prefix and target.startswith(public.prefix + "/"):
                    url = f"{public.scheme}://{public.netloc}{target}"
                else:
                    url = public.request_url(target)
            else:
                url = f"{self._forwarded_scheme(request)}://{host}{target}"
            if not self._signed(request.headers, signature.url_variants(url), params, what):
                return None
        return form

    def _base_urls(self, request: h11.Request) -> tuple[str, str]:
        """The media stream's wss:// URL and the https:// base of this server's routes."""
        public = self.server.options.public_url
        if public is not None:
            return public.stream_url, public.request_url("")
        host = self._host(request)
        return f"wss://{host}{MEDIA_STREAM_PATH}", f"{self._forwarded_scheme(request)}://{host}"

    def _webhook(self, request: h11.Request, target: str, query: str) -> None:
        form = self._twilio_form(request, target, query, "webhook")
        if form is None:
            return

        if self._refused_for_capacity("webhook answered busy"):
            self._respond(200, twiml_busy().encode(), "text/xml; charset=utf-8")
            return

        values = dict(form)
        parameters = [(name, values[name]) for name in TWIML_PARAMETERS if name in values]
        self._connect_stream(request, values.get("CallSid", ""), parameters)

    def _connect_stream(
        self, request: h11.Request, call_sid: str, parameters: list[tuple[str, str]]
    ) -> None:
        """Answer with TwiML connecting the call to a media stream (with status callbacks)."""
        options = self.server.options
        if options.require_call_token and options.auth_token:
            token = signature.issue_call_token(options.auth_token, call_sid, time.time())
            parameters.append((signature.CALL_TOKEN_PARAMETER, token))
        stream_url, base = self._base_urls(request)
        status_callback = base + handoff.STREAM_STATUS_PATH
        body = twiml_stream(stream_url, parameters, status_callback).encode("utf-8")
        self._respond(200, body, "text/xml; charset=utf-8")

    # ------------------------------------------------------------------ call control

    def _dial_action(self, request: h11.Request, target: str, query: str) -> None:
        """A transfer's ``<Dial action>``: hang up after a bridged call; after no-answer, busy
        or failed, reconnect the caller to a new stream that resumes the conversation."""
        form = self._twilio_form(request, target, query, "dial action")
        if form is None:
            return
        values = dict(form)
        status = values.get("DialCallStatus", "")
        call_sid = values.get("CallSid", "")
        log.info("dial action callSid=%s DialCallStatus=%s", call_sid or "-", status or "-")
        if status in _DIAL_DONE:
            self._respond(200, twiml_hangup().encode(), "text/xml; charset=utf-8")
            return
        key = self.server.options.handoff_key
        checked = handoff.check_action(key, call_sid, dict(parse_qsl(query))) if key else None
        if checked is None:
            log.warning("dial action refused: an action URL not signed for call %s", call_sid)
            self._respond(403, b"invalid action URL\n")
            return
        name, history = checked
        store = self.server.records
        if history is not None or store is None:
            self._resume(request, values, name, status, history or [])
            return
        future = self.loop.run_in_executor(None, store.load, call_sid)  # a thread, as records
        future.add_done_callback(
            lambda done: self._resume_loaded(done, request, values, name, status)
        )

    def _resume_loaded(
        self,
        done: asyncio.Future[Any],
        request: h11.Request,
        values: dict[str, str],
        name: str,
        status: str,
    ) -> None:
        if self._closing or self.transport is None or self.transport.is_closing():
            return
        try:
            record = done.result()
        except Exception as exc:
            kind = type(exc).__name__
            log.error("reading the record of %s failed: %s", values.get("CallSid"), kind)
            record = None
        turns = [(t.role, t.text) for t in record.turns] if record is not None else []
        self._resume(request, values, name, status, handoff.bounded_history(turns))
        self._next_request()

    def _resume(
        self,
        request: h11.Request,
        values: dict[str, str],
        name: str,
        status: str,
        history: list[dict[str, str]],
    ) -> None:
        key = self.server.options.handoff_key
        assert key is not None
        call_sid = values.get("CallSid", "")
        parameters = [(p, values[p]) for p in TWIML_PARAMETERS if p in values]
        parameters += handoff.resume_parameters(key, call_sid, name, status or "failed", history)
        self._connect_stream(request, call_sid, parameters)

    def _stream_status(self, request: h11.Request, target: str, query: str) -> None:
        """``<Stream statusCallback>``: a ``stream-error`` is where Twilio reports a failed
        handshake with this server."""
        form = self._twilio_form(request, target, query, "stream status")
        if form is None:
            return
        values = dict(form)
        event = values.get("StreamEvent", "")
        if event == "stream-error":
            self.server.metrics.stream_errors += 1
            log.warning(
                "stream error callSid=%s streamSid=%s: %s",
                values.get("CallSid", "-"),
                values.get("StreamSid", "-"),
                values.get("StreamError", "")[:200] or "(no detail)",
            )
        elif self.server.debug:
            log.debug("stream status callSid=%s %s", values.get("CallSid", "-"), event[:40])
        self._respond(200, b"", "text/plain; charset=utf-8")

    def _outbound_callback(self, request: h11.Request, target: str, query: str, path: str) -> None:
        """An outbound call's AsyncAmd result or status callback (server/outbound.py)."""
        form = self._twilio_form(request, target, query, "outbound callback")
        if form is None:
            return
        calls = self.server.outbound
        if calls is not None:
            (calls.amd if path == outbound.AMD_PATH else calls.status)(dict(form))
        self._respond(200, b"", "text/plain; charset=utf-8")

    def _forwarded_scheme(self, request: h11.Request) -> str:
        proto = _header(request.headers, b"x-forwarded-proto")
        if proto:
            first = proto.split(",")[0].strip().lower()
            if first in ("http", "https"):
                return first
        return "https" if self.server.tls else "http"

    # ------------------------------------------------------------------ the upgrade

    def _upgrade(self, request: h11.Request) -> None:
        server = self.server
        options = server.options
        headers = request.headers
        if "websocket" not in _tokens(_header(headers, b"upgrade")):
            self._respond(
                426, b"this route takes a WebSocket upgrade\n",
                headers=[(b"upgrade", b"websocket"), (b"connection", b"Upgrade")],
            )
            return
        if "upgrade" not in _tokens(_header(headers, b"connection")):
            self._respond(400, b"Connection header must contain Upgrade\n")
            return
        if _header(headers, b"sec-websocket-version") != "13":
            self._respond(
                426, b"unsupported WebSocket version\n",
                headers=[(b"sec-websocket-version", b"13")],
            )
            return
        key = _header(headers, b"sec-websocket-key")
        try:
            valid_key = key is not None and len(base64.b64decode(key, validate=True)) == 16
        except (binascii.Error, ValueError):
            valid_key = False
        if not valid_key or key is None:
            self._respond(400, b"invalid Sec-WebSocket-Key\n")
            return

        if options.auth_token:
            public = options.public_url
            host = self._host(request)
            if public is not None:
                url = public.stream_url
            elif host is not None:
                url = f"wss://{host}{MEDIA_STREAM_PATH}"
            else:
                url = ""
            variants = signature.url_variants(url, trailing_slash=True) if url else []
            if not self._signed(headers, variants, [], "media stream"):
                return

        if self._refused_for_capacity("media stream refused"):
            self._respond(503, b"busy\n", headers=[(b"retry-after", b"5")])
            return

        response = h11.InformationalResponse(
            status_code=101,
            headers=[
                (b"upgrade", b"websocket"),
                (b"connection", b"Upgrade"),
                (b"sec-websocket-accept", generate_accept_token(key.encode("ascii"))),
                (b"server", SERVER_HEADER),
            ],
            reason=_REASONS[101],
        )
        data = self.h11.send(response)
        trailing, _closed = self.h11.trailing_data
        self._cancel_request_timer()
        transport = self.transport
        assert transport is not None and data is not None
        transport.write(data)
        server.metrics.http_response(101)
        # From here the connection is the media stream's: this object handles nothing more.
        self._closing = True
        server.connections.discard(self)
        transport.set_protocol(server.on_upgrade(transport, trailing, self.peer))

    # ------------------------------------------------------------------ responses

    def _signed(
        self,
        headers: Sequence[tuple[bytes, bytes]],
        urls: Sequence[str],
        params: Sequence[tuple[str, str]],
        what: str,
    ) -> bool:
        """Check X-Twilio-Signature against each URL Twilio may have signed; 403 if none."""
        sig = _header(headers, b"x-twilio-signature")
        token = self.server.options.auth_token
        if token and urls and signature.validate(token, urls, params, sig):
            return True
        self.server.metrics.call_rejected("bad_signature")
        log.warning(
            "%s refused: %s X-Twilio-Signature (peer %s)",
            what,
            "missing" if not sig else "invalid",
            self.peer,
        )
        self._respond(403, b"invalid signature\n")
        return False

    def _refused_for_capacity(self, what: str) -> bool:
        """Count and log a request turned away by --max-calls or a shutdown in progress."""
        server = self.server
        if not (server.draining or server.at_capacity()):
            return False
        server.metrics.call_rejected("draining" if server.draining else "busy")
        log.warning("%s (%d calls in progress)", what, len(server.calls))
        return True

    def _respond(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        conn = self.h11
        all_headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"server", SERVER_HEADER),
            *headers,
        ]
        if self.server.draining or status >= 400:
            all_headers.append((b"connection", b"close"))
        data = conn.send(
            h11.Response(status_code=status, headers=all_headers, reason=_REASONS.get(status, b""))
        )
        data = (data or b"") + (conn.send(h11.Data(data=body)) or b"")
        data += conn.send(h11.EndOfMessage()) or b""
        assert self.transport is not None
        self.transport.write(data)
        self.server.metrics.http_response(status)

    def _error(self, status: int, detail: str) -> None:
        """Answer a request that cannot be served normally, then close the connection."""
        body = f"{detail}\n".encode()
        reason = _REASONS.get(status, b"Error")
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\nserver: %s\r\n\r\n"
            % (status, reason, len(body), SERVER_HEADER)
        )
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(head + body)
        self.server.metrics.http_response(status)
        if self.server.debug:
            log.debug("HTTP %d to %s: %s", status, self.peer, detail)
        self.close()

    def close(self) -> None:
        self._closing = True
        self._cancel_request_timer()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()
            if transport.get_write_buffer_size():  # a client that does not read: don't linger
                self._timer = self.loop.call_later(
                    self.server.options.request_timeout, transport.abort
                )
