"""Encoders for what the core sends: Twilio messages with exact fields, agent messages.

Twilio warns (31951) on any extra or missing field, so each Twilio message is built from a
per-call template holding exactly ``event``, ``streamSid`` and the event's own object.
"""

from __future__ import annotations

import json
from binascii import b2a_base64

KEEPALIVE = '{"type":"KeepAlive"}'


class TwilioEncoder:
    """Pre-built Twilio ``media``/``mark``/``clear`` messages for one stream."""

    __slots__ = ("_mark_prefix", "_media_prefix", "clear")

    def __init__(self, stream_sid: str) -> None:
        sid = json.dumps(stream_sid)  # quoted and escaped once, not per frame
        self._media_prefix = '{"event":"media","streamSid":' + sid + ',"media":{"payload":"'
        self._mark_prefix = '{"event":"mark","streamSid":' + sid + ',"mark":{"name":'
        self.clear = '{"event":"clear","streamSid":' + sid + "}"

    def media(self, audio: bytes) -> str:
        # base64 never needs JSON escaping, so the payload is spliced in as is.
        return self._media_prefix + b2a_base64(audio, newline=False).decode("ascii") + '"}}'

    def mark(self, name: str) -> str:
        return self._mark_prefix + json.dumps(name) + "}}"


def inject_user_message(content: str) -> str:
    return json.dumps({"type": "InjectUserMessage", "content": content})


def function_call_response(call_id: str, name: str, content: str) -> str:
    return json.dumps(
        {"type": "FunctionCallResponse", "id": call_id, "name": name, "content": content}
    )
