"""What a transfer carries from one stream to the next, signed, so that any instance can
resume the call: the ``<Dial action>`` URL and the ``<Parameter>``s of the resumed stream.

The action URL names the target and, when no records store can give the turns back, a bounded
summary of the conversation; the dial-action route turns that (or the stored turns) into the
``bridgeResume`` parameter of a new ``<Stream>``, and the core's ``resume`` hook checks it at
Twilio's ``start``. Everything is HMAC-SHA256 under the auth token (or the API secret), as the
call token is (:mod:`server.signature`), so a forged parameter is a plain new call.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlencode

from sansio import Resume

DIAL_ACTION_PATH = "/dial-action"
STREAM_STATUS_PATH = "/stream-status"
RESUME_PARAMETER = "bridgeResume"
RESUME_SIGNATURE = "bridgeResumeSig"
RESUME_MAX_AGE = 1800.0  # seconds from the dial's end to the new stream's start
MAX_TURNS = 16
MAX_TURN_CHARS = 300
MAX_HISTORY_CHARS = 1500  # Twilio takes a Twiml update of 4000 characters at most
FAILED_DIALS = {
    "no-answer": "didn't answer",
    "busy": "is busy",
    "failed": "couldn't be reached",
    "canceled": "couldn't be reached",
}


def _mac(key: str, *parts: str) -> str:
    data = "\n".join(parts).encode()
    return hmac.new(key.encode(), data, hashlib.sha256).hexdigest()[:32]


def _encode(value: object) -> str:
    text = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(text).decode().rstrip("=")


def _decode(text: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError):
        return None


def bounded_history(turns: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    """The newest user and assistant turns, each cut short, within ``MAX_HISTORY_CHARS``
    (``agent.context.messages`` entries)."""
    kept: list[dict[str, str]] = []
    size = 0
    for role, content in reversed(list(turns)):
        if role not in ("user", "assistant") or not content:
            continue
        entry = {"type": "History", "role": role, "content": content[:MAX_TURN_CHARS]}
        size += len(json.dumps(entry))
        if size > MAX_HISTORY_CHARS or len(kept) >= MAX_TURNS:
            break
        kept.append(entry)
    return kept[::-1]


def action_url(
    base: str, key: str, call_sid: str, target: str, history: list[dict[str, str]] | None
) -> str:
    """The signed ``<Dial action>`` URL; ``history`` None: the records store has the turns."""
    context = _encode(history) if history is not None else ""
    query = {"target": target, "ctx": context, "sig": _mac(key, "dial", call_sid, target, context)}
    return f"{base}{DIAL_ACTION_PATH}?{urlencode(query)}"


def check_action(
    key: str, call_sid: str, query: Mapping[str, str]
) -> tuple[str, list[dict[str, str]] | None] | None:
    """``(target, history or None)`` from a signed action URL's query, or None if forged."""
    target, context = query.get("target", ""), query.get("ctx", "")
    expected = _mac(key, "dial", call_sid, target, context)
    if not target or not hmac.compare_digest(expected, query.get("sig", "")):
        return None
    history = _decode(context) if context else None
    return target, history if isinstance(history, list) else None


def resume_parameters(
    key: str, call_sid: str, target: str, status: str, history: list[dict[str, str]]
) -> list[tuple[str, str]]:
    """The ``<Parameter>``s that resume ``call_sid`` after the dial to ``target`` ended so."""
    blob = _encode({"t": target, "s": status, "h": history, "at": int(time.time())})
    return [(RESUME_PARAMETER, blob), (RESUME_SIGNATURE, _mac(key, "resume", call_sid, blob))]


def resume_hook(key: str) -> Any:
    """The core's ``CallControl.resume``: a :class:`Resume` for a stream that carries valid
    resume parameters for its own CallSid, else None (a plain call)."""

    def resume(call_sid: str, parameters: Mapping[str, str]) -> Resume | None:
        blob = parameters.get(RESUME_PARAMETER)
        if not blob or not call_sid:
            return None
        expected = _mac(key, "resume", call_sid, blob)
        if not hmac.compare_digest(expected, parameters.get(RESUME_SIGNATURE, "")):
            return None
        data = _decode(blob)
        if not isinstance(data, dict) or not isinstance(data.get("at"), int):
            return None
        if not 0 <= time.time() - data["at"] <= RESUME_MAX_AGE:
            return None
        history = data.get("h")
        history = history if isinstance(history, list) else []
        target = str(data.get("t", "")).replace("_", " ")
        outcome = FAILED_DIALS.get(str(data.get("s")), "couldn't be reached")
        greeting = (
            f"I'm sorry, the transfer did not go through: {target} {outcome}. "
            "I'm still here with you. How else can I help?"
        )
        return Resume(tuple(h for h in history if isinstance(h, dict)), greeting)

    return resume
