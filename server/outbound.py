"""Outbound calls: ``POST /calls`` (and ``python -m server dial``) creates a call through
Twilio's Calls resource whose TwiML connects it to this bridge, with asynchronous answering
machine detection; the AMD and status callbacks (signed routes) act on it and record it.

On ``machine_end_beep``/``_silence``/``_other`` the agent leaves ``--voicemail-message``
(``InjectAgentMessage`` through the core, reached through the control relay whichever worker
has the stream), then the call hangs up once it has played. ``human`` and ``unknown`` go on
talking; ``fax`` is hung up. See docs/outbound.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from server import handoff
from server.control_api import Answer, ControlApi
from server.options import ServerOptions
from server.records.recorder import Write
from server.records.store import RecordStore
from server.routing import DEFAULT_AGENT
from server.twilio_rest import TwilioRestClient, TwilioRestError
from server.twiml import twiml_stream

log = logging.getLogger("server.outbound")

AMD_PATH = "/outbound/amd"
STATUS_PATH = "/outbound/status"
MACHINE = frozenset({"machine_end_beep", "machine_end_silence", "machine_end_other"})
NEVER_ANSWERED = frozenset({"no-answer", "busy", "failed", "canceled"})
EVENTS = ("initiated", "ringing", "answered", "completed")
WINDOW = 60.0  # seconds of --max-outbound-per-minute
VOICEMAIL_WAIT = 20.0  # seconds an AMD result waits for its stream to be ready
_RETRY_EVERY = 0.25
_TO = re.compile(r"^(\+[1-9][0-9]{1,14}|client:[A-Za-z0-9_.\-]{1,64})$")
_FROM = re.compile(r"^\+[1-9][0-9]{1,14}$")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
_RESERVED = frozenset({"From", "To", "CallSid", "bridgeAgent", "bridgeToken"})
MAX_PARAMETERS, MAX_VALUE = 16, 256


class RateLimit:
    """At most ``limit`` in any ``window`` seconds, per process (a sliding window)."""

    def __init__(self, limit: int, window: float = WINDOW) -> None:
        self.limit, self.window = limit, window
        self._times: deque[float] = deque()

    def allow(self, now: float) -> bool:
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()
        if len(self._times) >= self.limit:
            return False
        self._times.append(now)
        return True


def check_request(body: object, agents: list[str]) -> str | None:
    """What is wrong with a ``POST /calls`` body, or None."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    unknown = set(body) - {"to", "from", "parameters", "agent"}
    if unknown:
        return f"unknown field(s): {', '.join(sorted(unknown))[:100]}"
    to, from_ = body.get("to"), body.get("from")
    if not isinstance(to, str) or not _TO.match(to):
        return '"to" must be an E.164 number (+15551234567) or client:NAME'
    if not isinstance(from_, str) or not _FROM.match(from_):
        return '"from" must be an E.164 number of your Twilio account'
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict) or len(parameters) > MAX_PARAMETERS:
        return f'"parameters" must be an object of at most {MAX_PARAMETERS} strings'
    for name, value in parameters.items():
        if not _NAME.match(name) or name in _RESERVED:
            return f"parameter name {name[:40]!r} is not allowed"
        if not isinstance(value, str) or len(value) > MAX_VALUE:
            return f"parameter {name} must be a string of at most {MAX_VALUE} characters"
    agent = body.get("agent", DEFAULT_AGENT)
    if agent not in agents:
        return f'unknown "agent": one of {", ".join(agents)}'
    return None


class Outbound:
    """The outbound calls of one process (one REST client, one rate limit)."""

    def __init__(
        self,
        options: ServerOptions,
        twilio: TwilioRestClient,
        control: ControlApi,
        records: RecordStore | None,
    ) -> None:
        self.options, self.twilio, self.control, self.records = options, twilio, control, records
        self.limit = RateLimit(options.max_outbound_per_minute)
        self._tasks: set[asyncio.Task[None]] = set()

    async def create(self, raw: bytes) -> Answer:
        """``POST /calls`` (its token checked): 201 with the call's SID, or why not."""
        options = self.options
        public = options.public_url
        if public is None:
            return 409, {"error": "outbound calls need --public-url (Twilio must reach us)"}
        if options.require_call_token:
            return 409, {"error": "outbound calls do not work with --require-call-token"}
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return 400, {"error": "the body is not JSON"}
        problem = check_request(body, options.routing.names())
        if problem is not None:
            return 400, {"error": problem}
        if not self.limit.allow(time.monotonic()):
            return 429, {"error": f"more than {self.limit.limit} outbound calls in a minute"}
        agent = body.get("agent", DEFAULT_AGENT)
        parameters = [("From", body["from"]), ("To", body["to"])]
        parameters += [*body.get("parameters", {}).items(), options.routing.agent_parameter(agent)]
        stream_status = public.request_url(handoff.STREAM_STATUS_PATH)
        try:
            call = await self.twilio.create_call(
                to=body["to"],
                from_=body["from"],
                twiml=twiml_stream(public.stream_url, parameters, stream_status),
                machine_detection="DetectMessageEnd",
                async_amd=True,
                async_amd_status_callback=public.request_url(AMD_PATH),
                async_amd_status_callback_method="POST",
                status_callback=public.request_url(STATUS_PATH),
                status_callback_event=EVENTS,
                status_callback_method="POST",
            )
        except TwilioRestError as exc:
            log.warning("outbound call not created: %s", exc)
            return 502, {"error": f"Twilio refused or did not answer: {exc}"[:300]}
        self._record(call.sid, to_number=body["to"], from_number=body["from"], agent=agent,
                     created_at=time.time(), status=call.status)  # fmt: skip
        log.info("outbound call created callSid=%s agent=%s", call.sid, agent)
        return 201, {"call_sid": call.sid, "status": call.status, "agent": agent}

    def amd(self, values: Mapping[str, str]) -> None:
        """The AsyncAmd result: record it; a machine gets the voicemail, a fax the hangup."""
        sid, answered_by = values.get("CallSid", ""), values.get("AnsweredBy", "")
        if not sid:
            return
        log.info("answering machine detection callSid=%s AnsweredBy=%s", sid, answered_by[:40])
        self._record(sid, answered_by=answered_by[:40])
        if answered_by in MACHINE:
            self._spawn(self._act(sid, "voicemail", {"text": self.options.voicemail_message}))
        elif answered_by == "fax":
            self._spawn(self._act(sid, "hangup", {}))

    def status(self, values: Mapping[str, str]) -> None:
        """A status callback: the call's status, and its end when it was never answered."""
        sid, status = values.get("CallSid", ""), values.get("CallStatus", "")[:40]
        if not sid:
            return
        fields: dict[str, Any] = {"status": status}
        if status in NEVER_ANSWERED:
            fields["outcome"] = status
        self._record(sid, **fields)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _act(self, sid: str, op: str, payload: dict[str, Any]) -> None:
        """``op`` on the call once its stream is up and its agent ready (the result may come
        before either), retried for at most ``VOICEMAIL_WAIT`` seconds."""
        deadline = time.monotonic() + VOICEMAIL_WAIT
        while True:
            status, _ = await self.control.act(op, sid, payload)
            if status == 200 or time.monotonic() >= deadline:
                break
            await asyncio.sleep(_RETRY_EVERY)
        outcome = "voicemail" if op == "voicemail" else "fax"
        if status != 200:
            outcome += " not left" if op == "voicemail" else " not hung up"
        log.info("outbound callSid=%s: %s", sid, outcome)
        self._record(sid, outcome=outcome)

    def _record(self, sid: str, **fields: Any) -> None:
        if self.records is not None:
            self.records.submit([Write("outbound", sid, outbound=fields)])

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
