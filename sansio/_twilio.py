"""Twilio Media Streams on the wire: parsing what Twilio sends, encoding what it is sent.

Parsers take a decoded JSON object and return a value, or a :class:`Fault` (fail the call) or
an :class:`Oddity` (ignore the message): deciding what to do with either is the bridge's job.
Twilio warns (31951) on any extra or missing field, so each outgoing message is built from a
per-call template holding exactly ``event``, ``streamSid`` and the event's own object.
"""

from __future__ import annotations

import binascii
import json
from binascii import a2b_base64, b2a_base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_DTMF_DIGITS = frozenset("0123456789*#ABCDabcd")


@dataclass(frozen=True, slots=True)
class Fault:
    """Twilio broke the protocol: end the call, closing Twilio's leg with ``close_code``."""

    detail: str
    close_code: int


@dataclass(frozen=True, slots=True)
class Oddity:
    """A message to tolerate and ignore; ``undecodable`` if it was media without audio."""

    detail: str
    undecodable: bool = False


@dataclass(frozen=True, slots=True)
class Start:
    """What the call needs from Twilio's ``start``."""

    stream_sid: str
    call_sid: str
    account_sid: str
    parameters: Mapping[str, str]


_NO_MEDIA_OBJECT = Oddity("media without a media object", undecodable=True)
_NOT_BASE64 = Oddity("media payload that is not base64", undecodable=True)
_NO_MARK = Oddity("echo of a mark never sent")
_NO_DIGIT = Oddity("dtmf without a valid digit")


def media_audio(message: dict[str, Any]) -> bytes | Oddity:
    """The caller audio of a ``media`` message (maybe empty)."""
    media = message.get("media")
    if type(media) is not dict:
        return _NO_MEDIA_OBJECT
    track = media.get("track", "inbound")
    if track != "inbound":
        return Oddity(f"media on track {str(track)[:20]!r}")
    try:
        return a2b_base64(media.get("payload"), strict_mode=True)  # type: ignore[arg-type]
    except (binascii.Error, TypeError, ValueError):
        return _NOT_BASE64


def parse_start(message: dict[str, Any]) -> Start | Fault:
    start = message.get("start")
    if type(start) is not dict:
        return Fault("start without a start object", 1008)
    stream_sid = start.get("streamSid") or message.get("streamSid")
    if type(stream_sid) is not str or not stream_sid:
        return Fault("start without a streamSid", 1008)
    media_format = start.get("mediaFormat")
    if media_format is not None and not (
        type(media_format) is dict
        and media_format.get("encoding") == "audio/x-mulaw"
        and media_format.get("sampleRate") == 8000
        and media_format.get("channels") == 1
    ):
        shown = json.dumps(media_format)[:60]
        return Fault(f"unsupported media format {shown}; need mu-law/8000/1", 1003)
    raw = start.get("customParameters")
    parameters = {str(k): str(v) for k, v in raw.items()} if type(raw) is dict else {}
    call_sid = start.get("callSid")
    account_sid = start.get("accountSid")
    return Start(
        stream_sid,
        call_sid if type(call_sid) is str else "",
        account_sid if type(account_sid) is str else "",
        parameters,
    )


def mark_name(message: dict[str, Any]) -> str | Oddity:
    mark = message.get("mark")
    name = mark.get("name") if type(mark) is dict else None
    return name if type(name) is str else _NO_MARK


def dtmf_digit(message: dict[str, Any]) -> str | Oddity:
    dtmf = message.get("dtmf")
    digit = dtmf.get("digit") if type(dtmf) is dict else None
    return digit if type(digit) is str and digit in _DTMF_DIGITS else _NO_DIGIT


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
