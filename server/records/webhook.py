"""The signed end-of-call webhook: an outbox in the records database, a deliverer thread.

When a call's record is finished, the writer thread queues its JSON (the same object as
``calls show --json``, after the redaction hook) in the ``outbox`` table, in the transaction
that finishes the record. A :class:`Deliverer` thread in every server process claims due rows
for a lease (``claimed_until``), POSTs them signed, and marks them delivered, or due again later
with exponential backoff, or given up after ``max_attempts`` or ``max_age``. A row survives a
restart, so a pending webhook is sent by whichever process claims it next.

The signature is ``sha256=`` + hex HMAC-SHA256 under ``BRIDGE_WEBHOOK_SECRET`` of the bytes
``timestamp + "." + body``, where ``timestamp`` is the ``X-Bridge-Timestamp`` header (Unix
seconds, re-stamped on each attempt) and ``body`` the request body as sent. See docs/records.md.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

from server.records.store import Database

log = logging.getLogger("server.records.webhook")


class Metrics(Protocol):
    """The counters the deliverer moves (the server's metrics; a narrow view, so this leaf
    package imports nothing of the server)."""

    webhook_delivered: int
    webhook_gave_up: int

    def webhook_failed(self, reason: str) -> None: ...

SIGNATURE_HEADER = "X-Bridge-Signature"
TIMESTAMP_HEADER = "X-Bridge-Timestamp"
TOLERANCE = 300
"""Seconds a receiver should accept between the timestamp and its clock (replay window)."""
POLL = 1.0  # seconds between looks at the outbox when nothing is due sooner
LEASE_MARGIN = 5.0  # a claim lasts the request timeout plus this
BACKOFF_CAP = 300.0


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Bridge-Signature`` value of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float | None = None,
    tolerance: float = TOLERANCE,
) -> bool:
    """What a receiver checks: a fresh timestamp and a matching signature (constant time)."""
    if not timestamp or not signature or not timestamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """``--webhook-url`` and its bounds; ``secret`` is ``BRIDGE_WEBHOOK_SECRET``."""

    url: str
    secret: str = field(repr=False)
    timeout: float = 10.0
    max_attempts: int = 10
    max_age: float = 86400.0
    backoff: float = 1.0  # the first retry's delay; doubles per attempt, up to BACKOFF_CAP

    def delay(self, attempt: int) -> float:
        """Seconds before the attempt after ``attempt`` (1-based)."""
        return float(min(BACKOFF_CAP, self.backoff * 2 ** (attempt - 1)))

    @property
    def where(self) -> str:
        """The URL for logs: scheme, host and port only (a query may carry a token)."""
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}"


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    """POST ``body``; the response status. No redirects, no proxies from the environment."""
    parts = urlsplit(url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = kind(parts.hostname or "", parts.port, timeout=timeout)
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("POST", target, body=body, headers=headers)
        response = conn.getresponse()
        response.read(65536)
        return int(response.status)
    finally:
        conn.close()


class Deliverer:
    """One thread per server process that sends the outbox's due webhooks, one at a time."""

    def __init__(
        self, spec: str, config: WebhookConfig, metrics: Metrics, *, poll: float = POLL
    ) -> None:
        self.spec = spec
        self.config = config
        self.metrics = metrics
        self.poll = poll
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook-deliverer", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """A record was just queued: look at the outbox now."""
        self._wake.set()

    def close(self, timeout: float | None = None) -> None:
        """Send what is due now (the calls that just ended), then stop; a row that fails or
        is not sent in time stays pending for the next start (its claim expires)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(self.config.timeout + 1.0 if timeout is None else timeout)

    def _run(self) -> None:
        db: Database | None = None
        while True:
            try:
                if db is None:
                    db = Database(self.spec)
                wait = self._step(db)
            except Exception as exc:  # the database went away (or a bug): look again later
                log.error("webhook outbox unavailable (%s): %s", type(exc).__name__, exc)
                if db is not None:
                    db.close()
                db = None
                wait = self.poll
            if wait > 0:  # nothing due now: a good moment to stop
                if self._stop.is_set():
                    break
                self._wake.wait(wait)
                self._wake.clear()
        if db is not None:
            db.close()

    def _step(self, db: Database) -> float:
        """Send one due webhook if there is one; how long to wait before the next look."""
        config = self.config
        now = time.time()
        job = db.claim(now, config.timeout + LEASE_MARGIN)
        if job is None:
            due = db.next_due()
            return self.poll if due is None else max(0.0, min(self.poll, due - now))
        call_sid, body, attempt, created_at = job
        error, reason = self._send(call_sid, body.encode())
        now = time.time()
        if error is None:
            db.delivered(call_sid, now)
            self.metrics.webhook_delivered += 1
            log.info("webhook delivered callSid=%s attempt=%d", call_sid, attempt)
            return 0.0
        self.metrics.webhook_failed(reason)
        if attempt >= config.max_attempts or now - created_at >= config.max_age:
            db.give_up(call_sid, now, error)
            self.metrics.webhook_gave_up += 1
            log.error(
                "webhook given up callSid=%s after %d attempt(s) to %s: %s",
                call_sid,
                attempt,
                config.where,
                error,
            )
            return 0.0
        delay = config.delay(attempt)
        db.retry_later(call_sid, now + delay, error)
        log.warning(
            "webhook attempt %d failed callSid=%s to %s: %s; next in %.1fs",
            attempt,
            call_sid,
            config.where,
            error,
            delay,
        )
        return 0.0

    def _send(self, call_sid: str, body: bytes) -> tuple[str | None, str]:
        """``(None, "")`` on a 2xx; else a one-line error and its kind for the metrics."""
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "twilio-agent-bridge-webhook",
            "Idempotency-Key": call_sid,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(self.config.secret, timestamp, body),
        }
        try:
            status = post(self.config.url, body, headers, self.config.timeout)
        except TimeoutError:
            return f"no answer within {self.config.timeout:g}s", "timeout"
        except (OSError, http.client.HTTPException) as exc:
            return f"{type(exc).__name__}: {exc}", "error"
        if 200 <= status < 300:
            return None, ""
        return f"HTTP {status}", "status"
