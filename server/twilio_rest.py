"""A small async client for Twilio's REST Calls resource (update a live call, create a call).

It speaks the real resource, with the form field names twilio-python 9 sends:
``POST {base}/2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`` to update and
``POST .../Calls.json`` to create, HTTP Basic auth with the account SID and auth token or an
API key SID and secret. Every request is bounded: a per-attempt timeout, a few attempts with
capped exponential backoff on 429 and 5xx (``Retry-After`` honoured up to a cap), none on other
4xx, and an overall deadline. It runs on httpx's asyncio transport, so it never blocks the event
loop, and it never puts the credentials in a log line, an exception or a ``repr``.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

log = logging.getLogger("server.twilio_rest")

DEFAULT_API_URL = "https://api.twilio.com"
API_VERSION = "2010-04-01"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
"""Retried: Twilio's rate limit and server errors. Any other 4xx is the request's own fault."""

Form = list[tuple[str, str]]


class TwilioRestError(Exception):
    """A Calls request that did not succeed (after any retries)."""

    def __init__(self, message: str, *, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


class TwilioApiError(TwilioRestError):
    """Twilio answered with an error status; ``code`` and ``message`` come from its JSON body
    (``{"code": 20003, "message": "Authenticate", "more_info": ..., "status": 401}``)."""

    def __init__(
        self,
        status: int,
        code: int | None,
        message: str,
        *,
        more_info: str | None = None,
        attempts: int = 1,
    ) -> None:
        text = f"Twilio API error {status}" + (f" (code {code})" if code is not None else "")
        super().__init__(f"{text}: {message}", attempts=attempts)
        self.status = status
        self.code = code
        self.message = message
        self.more_info = more_info


class TwilioTransportError(TwilioRestError):
    """No answer from Twilio: connection refused or reset, or a timeout."""


@dataclass(frozen=True, slots=True)
class TwilioCredentials:
    """Who the bridge is to Twilio. Secrets are kept out of ``repr``.

    ``account_sid`` may be None: each request then names the account (Twilio's ``start`` carries
    ``accountSid``). With an API key, Basic auth is the key SID and secret; otherwise it is the
    account SID and auth token.
    """

    account_sid: str | None
    auth_token: str | None = field(default=None, repr=False)
    api_key: str | None = None
    api_secret: str | None = field(default=None, repr=False)
    api_url: str = DEFAULT_API_URL

    def __post_init__(self) -> None:
        if self.api_key and not self.api_secret:
            raise ValueError("TWILIO_API_KEY is set without TWILIO_API_SECRET")
        if not self.api_key and not self.auth_token:
            raise ValueError("Twilio REST needs TWILIO_AUTH_TOKEN or TWILIO_API_KEY/SECRET")
        if not self.api_url.startswith(("https://", "http://")):
            raise ValueError(f"TWILIO_API_URL must be an http(s) URL, got {self.api_url!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> TwilioCredentials | None:
        """Read ``TWILIO_ACCOUNT_SID``, ``TWILIO_AUTH_TOKEN``, ``TWILIO_API_KEY``,
        ``TWILIO_API_SECRET`` and ``TWILIO_API_URL``; None if no secret is set at all."""

        def get(name: str) -> str | None:
            return environ.get(name, "").strip() or None

        auth_token, api_key, api_secret = (
            get("TWILIO_AUTH_TOKEN"),
            get("TWILIO_API_KEY"),
            get("TWILIO_API_SECRET"),
        )
        if not (auth_token or api_key or api_secret):
            return None
        return cls(
            account_sid=get("TWILIO_ACCOUNT_SID"),
            auth_token=auth_token,
            api_key=api_key,
            api_secret=api_secret,
            api_url=(get("TWILIO_API_URL") or DEFAULT_API_URL).rstrip("/"),
        )

    def basic_auth(self, account_sid: str) -> tuple[str, str]:
        """The Basic auth pair for a request on ``account_sid``'s resources."""
        if self.api_key:
            assert self.api_secret is not None
            return self.api_key, self.api_secret
        assert self.auth_token is not None
        return self.account_sid or account_sid, self.auth_token


@dataclass(frozen=True, slots=True)
class CallResource:
    """The parts of Twilio's call resource the bridge reads; ``raw`` is the whole JSON body."""

    sid: str
    account_sid: str
    status: str
    raw: Mapping[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard one request tries. The worst case is bounded by ``deadline`` seconds."""

    attempts: int = 3
    timeout: float = 5.0
    """Per attempt, for connect, write, read and pool alike."""
    backoff: float = 0.25
    """First delay; doubled per retry, capped at ``max_backoff``, with jitter."""
    max_backoff: float = 2.0
    max_retry_after: float = 5.0
    """A longer ``Retry-After`` is cut to this."""
    deadline: float = 12.0
    """Overall bound across attempts and waits."""


class TwilioRestClient:
    """Async client for the Calls resource. Create it once (it holds a connection pool), use it
    from the event loop, and ``aclose()`` it at shutdown (or ``async with``)."""

    def __init__(
        self,
        credentials: TwilioCredentials,
        *,
        policy: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        trust_env: bool = True,
    ) -> None:
        self.credentials = credentials
        self.policy = policy or RetryPolicy()
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(self.policy.timeout),
            transport=transport,
            trust_env=trust_env,
            follow_redirects=False,
            headers={"Accept": "application/json"},
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> TwilioRestClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ the Calls resource

    async def update_call(
        self,
        call_sid: str,
        *,
        account_sid: str | None = None,
        twiml: str | None = None,
        url: str | None = None,
        method: str | None = None,
        status: str | None = None,
        fallback_url: str | None = None,
        fallback_method: str | None = None,
        status_callback: str | None = None,
        status_callback_method: str | None = None,
        time_limit: int | None = None,
    ) -> CallResource:
        """Redirect a live call to new TwiML (``twiml`` or ``url``) or end it
        (``status="completed"``, or ``"canceled"`` before it is answered).

        ``account_sid`` is the call's account (Twilio's ``start.accountSid``); without it the
        configured one is used.
        """
        form = _form(
            ("Url", url),
            ("Method", method),
            ("Status", status),
            ("FallbackUrl", fallback_url),
            ("FallbackMethod", fallback_method),
            ("StatusCallback", status_callback),
            ("StatusCallbackMethod", status_callback_method),
            ("Twiml", twiml),
            ("TimeLimit", time_limit),
        )
        if not form:
            raise ValueError("update_call needs at least one of twiml, url, status, ...")
        account = self._account(account_sid)
        path = f"Accounts/{_segment(account)}/Calls/{_segment(call_sid)}.json"
        return await self._post(account, path, form, "update call")

    async def hangup(self, call_sid: str, *, account_sid: str | None = None) -> CallResource:
        """End a call now: ``Status=completed``, the authoritative hangup."""
        return await self.update_call(call_sid, account_sid=account_sid, status="completed")

    async def create_call(
        self,
        *,
        to: str,
        from_: str,
        account_sid: str | None = None,
        twiml: str | None = None,
        url: str | None = None,
        method: str | None = None,
        status_callback: str | None = None,
        status_callback_event: Sequence[str] = (),
        status_callback_method: str | None = None,
        timeout: int | None = None,
        machine_detection: str | None = None,
        machine_detection_timeout: int | None = None,
        async_amd: bool | None = None,
        async_amd_status_callback: str | None = None,
        async_amd_status_callback_method: str | None = None,
        time_limit: int | None = None,
    ) -> CallResource:
        """Place an outbound call that runs ``twiml`` or the TwiML at ``url`` when answered.

        ``machine_detection`` is ``"Enable"`` or ``"DetectMessageEnd"``; with ``async_amd``
        the result (``AnsweredBy``) is posted to ``async_amd_status_callback``.
        """
        if (twiml is None) == (url is None):
            raise ValueError("create_call needs exactly one of twiml or url")
        form = _form(
            ("To", to),
            ("From", from_),
            ("Method", method),
            ("StatusCallback", status_callback),
            *(("StatusCallbackEvent", event) for event in status_callback_event),
            ("StatusCallbackMethod", status_callback_method),
            ("Timeout", timeout),
            ("MachineDetection", machine_detection),
            ("MachineDetectionTimeout", machine_detection_timeout),
            ("AsyncAmd", None if async_amd is None else str(async_amd).lower()),
            ("AsyncAmdStatusCallback", async_amd_status_callback),
            ("AsyncAmdStatusCallbackMethod", async_amd_status_callback_method),
            ("TimeLimit", time_limit),
            ("Url", url),
            ("Twiml", twiml),
        )
        account = self._account(account_sid)
        return await self._post(
            account, f"Accounts/{_segment(account)}/Calls.json", form, "create call"
        )

    # ------------------------------------------------------------------ plumbing

    def _account(self, account_sid: str | None) -> str:
        account = account_sid or self.credentials.account_sid
        if not account:
            raise ValueError("no account SID: set TWILIO_ACCOUNT_SID or pass the call's accountSid")
        return account

    async def _post(self, account: str, path: str, form: Form, what: str) -> CallResource:
        policy = self.policy
        url = f"{self.credentials.api_url}/{API_VERSION}/{path}"
        auth = self.credentials.basic_auth(account)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + policy.deadline
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - loop.time()
            failure: TwilioRestError
            try:
                async with asyncio.timeout(remaining):
                    response = await self._http.post(url, data=_encode(form), auth=auth)
            except (TimeoutError, httpx.TimeoutException) as exc:
                failure = TwilioTransportError(f"{what}: timed out", attempts=attempt)
                # A connect timeout never reached Twilio, so it is safe to try again; a read
                # timeout may have been applied, and a second <Dial> or call must not follow.
                retry = isinstance(exc, httpx.ConnectTimeout)
                delay = _backoff(policy, attempt)
            except httpx.TransportError as exc:
                failure = TwilioTransportError(f"{what}: {type(exc).__name__}", attempts=attempt)
                retry = isinstance(exc, httpx.ConnectError)
                delay = _backoff(policy, attempt)
            else:
                if response.is_success:
                    log.debug(
                        "%s %s: %d after %d attempt(s)", what, path, response.status_code, attempt
                    )
                    return _call_resource(response)
                failure = _api_error(response, attempt)
                retry = response.status_code in RETRY_STATUSES
                retry_after = _retry_after(response.headers.get("Retry-After"))
                delay = (
                    min(retry_after, policy.max_retry_after)
                    if retry_after is not None
                    else _backoff(policy, attempt)
                )
            if not retry or attempt >= policy.attempts or loop.time() + delay >= deadline:
                log.warning("%s %s failed after %d attempt(s): %s", what, path, attempt, failure)
                raise failure
            log.info("%s %s: %s; retrying in %.2f s", what, path, failure, delay)
            await asyncio.sleep(delay)


def _form(*pairs: tuple[str, object]) -> Form:
    """The set fields, as twilio-python sends them: unset ones left out, values as text."""
    return [(name, str(value)) for name, value in pairs if value is not None]


def _encode(form: Form) -> dict[str, list[str]]:
    """httpx's form data: a repeated name (``StatusCallbackEvent``) becomes repeated fields."""
    data: dict[str, list[str]] = {}
    for name, value in form:
        data.setdefault(name, []).append(value)
    return data


def _segment(value: str) -> str:
    return quote(value, safe="")


def _backoff(policy: RetryPolicy, attempt: int) -> float:
    base = min(policy.max_backoff, policy.backoff * 2.0 ** (attempt - 1))
    return base * random.uniform(0.5, 1.0)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), else None."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _api_error(response: httpx.Response, attempts: int) -> TwilioApiError:
    code: int | None = None
    message = response.reason_phrase or "error"
    more_info: str | None = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        raw_code = body.get("code")
        code = raw_code if isinstance(raw_code, int) else None
        text = body.get("message") or body.get("detail") or body.get("title")
        message = str(text) if text else message
        info = body.get("more_info")
        more_info = str(info) if info else None
    return TwilioApiError(
        response.status_code, code, message, more_info=more_info, attempts=attempts
    )


def _call_resource(response: httpx.Response) -> CallResource:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise TwilioApiError(response.status_code, None, "response is not a JSON object")
    return CallResource(
        sid=str(body.get("sid", "")),
        account_sid=str(body.get("account_sid", "")),
        status=str(body.get("status", "")),
        raw=body,
    )
