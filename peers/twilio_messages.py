"""The messages Twilio sends on a bidirectional media stream, as JSON text.

One builder for every fake Twilio in the project: the caller simulator, the load generator,
the core's benchmark and the tests. Field order and types follow Twilio's docs
(https://www.twilio.com/docs/voice/media-streams/websocket-messages): every number is a
string, ``media.payload`` is base64 mu-law, and the JSON is compact.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

MULAW_8K = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
FRAME_MS = 20


def _dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))  # compact, as on the wire


def connected() -> str:
    return _dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def start(
    stream_sid: str,
    call_sid: str,
    account_sid: str,
    parameters: Mapping[str, str],
    *,
    sequence: int = 1,
    media_format: Mapping[str, Any] | None = None,
) -> str:
    return _dumps(
        {
            "event": "start",
            "sequenceNumber": str(sequence),
            "start": {
                "accountSid": account_sid,
                "streamSid": stream_sid,
                "callSid": call_sid,
                "tracks": ["inbound"],
                "mediaFormat": dict(media_format or MULAW_8K),
                "customParameters": dict(parameters),
            },
            "streamSid": stream_sid,
        }
    )


def media(
    audio: bytes,
    stream_sid: str,
    *,
    sequence: int,
    chunk: int,
    timestamp: int | None = None,
    track: str = "inbound",
) -> str:
    """One ``media`` message; ``timestamp`` defaults to ``chunk`` frames of 20 ms."""
    stamp = chunk * FRAME_MS if timestamp is None else timestamp
    return _dumps(
        {
            "event": "media",
            "sequenceNumber": str(sequence),
            "media": {
                "track": track,
                "chunk": str(chunk),
                "timestamp": str(stamp),
                "payload": base64.b64encode(audio).decode(),
            },
            "streamSid": stream_sid,
        }
    )


def media_template(stream_sid: str) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """The constant parts of :func:`media`, for senders that join 50 messages a second per
    call by hand: ``prefix + sequence + a + chunk + b + timestamp + c + payload + suffix``
    (values as ASCII digits and base64). Derived from :func:`media`, so the two never differ."""
    text = media(b"", stream_sid, sequence=101, chunk=202, timestamp=303).encode()
    prefix, rest = text.split(b"101", 1)
    a, rest = rest.split(b"202", 1)
    b, rest = rest.split(b"303", 1)
    c, suffix = rest.split(b'""', 1)
    return prefix, a, b, c + b'"', b'"' + suffix


def mark(name: str, stream_sid: str, *, sequence: int) -> str:
    return _dumps(
        {
            "event": "mark",
            "sequenceNumber": str(sequence),
            "streamSid": stream_sid,
            "mark": {"name": name},
        }
    )


def dtmf(digit: str, stream_sid: str, *, sequence: int) -> str:
    return _dumps(
        {
            "event": "dtmf",
            "streamSid": stream_sid,
            "sequenceNumber": str(sequence),
            "dtmf": {"track": "inbound_track", "digit": digit},
        }
    )


def stop(stream_sid: str, call_sid: str, account_sid: str, *, sequence: int) -> str:
    return _dumps(
        {
            "event": "stop",
            "sequenceNumber": str(sequence),
            "stop": {"accountSid": account_sid, "callSid": call_sid},
            "streamSid": stream_sid,
        }
    )
