"""The one builder of Twilio's media-stream messages (peers/twilio_messages.py)."""

from __future__ import annotations

import base64
import json

from peers import twilio_messages as messages


def test_the_hand_joined_media_message_is_the_builders_own() -> None:
    sid = "MZ101202303" + "0" * 23  # holds the template's sentinel digits on purpose
    prefix, after_sequence, after_chunk, after_timestamp, suffix = messages.media_template(sid)
    audio = bytes(range(160))
    joined = b"".join(
        (
            prefix,
            b"17",
            after_sequence,
            b"16",
            after_chunk,
            b"340",
            after_timestamp,
            base64.b64encode(audio),
            suffix,
        )
    )
    built = messages.media(audio, sid, sequence=17, chunk=16, timestamp=340)
    assert joined == built.encode()
    assert json.loads(built) == {
        "event": "media",
        "sequenceNumber": "17",
        "media": {
            "track": "inbound",
            "chunk": "16",
            "timestamp": "340",
            "payload": base64.b64encode(audio).decode(),
        },
        "streamSid": sid,
    }


def test_every_message_has_twilios_fields_as_strings() -> None:
    sid, call, account = "MZ" + "1" * 32, "CA" + "2" * 32, "AC" + "3" * 32
    start = json.loads(messages.start(sid, call, account, {"From": "+15550100"}, sequence=1))
    assert start["start"] == {
        "accountSid": account,
        "streamSid": sid,
        "callSid": call,
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"From": "+15550100"},
    }
    assert json.loads(messages.mark("m1", sid, sequence=4)) == {
        "event": "mark",
        "sequenceNumber": "4",
        "streamSid": sid,
        "mark": {"name": "m1"},
    }
    assert json.loads(messages.dtmf("7", sid, sequence=5))["dtmf"] == {
        "track": "inbound_track",
        "digit": "7",
    }
    assert json.loads(messages.stop(sid, call, account, sequence=6))["stop"] == {
        "accountSid": account,
        "callSid": call,
    }
    assert json.loads(messages.connected()) == {
        "event": "connected",
        "protocol": "Call",
        "version": "1.0.0",
    }
