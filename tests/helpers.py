"""Message builders and a tiny driver for testing the core in virtual time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peers import twilio_messages as messages
from sansio import (
    Action,
    BridgeConfig,
    CallBridge,
    OpenAgent,
    SendAgentAudio,
    SendAgentText,
    SendTwilioText,
)

ROOT = Path(__file__).resolve().parent.parent
SETTINGS: dict[str, Any] = json.loads((ROOT / "config.json").read_text())
STREAM_SID = "MZ" + "0123456789abcdef" * 2
CALL_SID = "CA" + "fedcba9876543210" * 2
ACCOUNT_SID = "AC" + "00112233445566778899aabbccddeeff"
#: Bound on the timers one advance_to may fire (a 20 ms chunk timer over ten minutes is 30000).
MAX_TIMER_FIRINGS = 100_000


def config(**overrides: Any) -> BridgeConfig:
    return BridgeConfig(settings=overrides.pop("settings", SETTINGS), **overrides)


def twilio_connected() -> str:
    return messages.connected()


def twilio_start(
    parameters: dict[str, str] | None = None,
    stream_sid: str = STREAM_SID,
    media_format: dict[str, Any] | None = None,
) -> str:
    parameters = parameters if parameters is not None else {"From": "+15550001"}
    return messages.start(stream_sid, CALL_SID, ACCOUNT_SID, parameters, media_format=media_format)


def twilio_media(
    audio: bytes, seq: int = 2, track: str = "inbound", stream_sid: str = STREAM_SID
) -> str:
    return messages.media(
        audio, stream_sid, sequence=seq, chunk=seq - 1, timestamp=20 * seq, track=track
    )


def twilio_mark(name: str, stream_sid: str = STREAM_SID) -> str:
    return messages.mark(name, stream_sid, sequence=9)


def twilio_dtmf(digit: str) -> str:
    return messages.dtmf(digit, STREAM_SID, sequence=5)


def twilio_stop(stream_sid: str = STREAM_SID) -> str:
    return messages.stop(stream_sid, CALL_SID, ACCOUNT_SID, sequence=99)


def agent(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields})


def function_call(call_id: str, name: str, arguments: Any = "{}", client_side: bool = True) -> str:
    return agent(
        "FunctionCallRequest",
        functions=[
            {"id": call_id, "name": name, "arguments": arguments, "client_side": client_side}
        ],
    )


class Call:
    """A CallBridge plus a virtual clock and a log of every action, for scenario tests."""

    def __init__(self, cfg: BridgeConfig | None = None, now: float = 0.0) -> None:
        self.now = now
        self.core = CallBridge(cfg or config(), now=now)
        self.log: list[Action] = []

    def at(self, now: float) -> Call:
        assert now >= self.now
        self.now = now
        return self

    def drain(self) -> list[Action]:
        actions = self.core.actions()
        self.log.extend(actions)
        return actions

    def twilio(self, text: str) -> list[Action]:
        self.core.twilio_text(text, self.now)
        return self.drain()

    def agent(self, text: str) -> list[Action]:
        self.core.agent_text(text, self.now)
        return self.drain()

    def agent_audio(self, audio: bytes) -> list[Action]:
        self.core.agent_audio(audio, self.now)
        return self.drain()

    def advance_to(self, now: float) -> list[Action]:
        """Fire every deadline up to ``now``, as a driver's timer would.

        A deadline still due after ``handle_timeout`` ran for it is a bug a real driver would
        spin on, so it fails here at once instead of hanging the test.
        """
        out: list[Action] = []
        for _ in range(MAX_TIMER_FIRINGS):
            deadline = self.core.next_deadline()
            if deadline is None or deadline > now:
                break
            self.now = max(self.now, deadline)
            self.core.handle_timeout(self.now)
            out += self.drain()
            after = self.core.next_deadline()
            assert after is None or after > self.now, (
                f"handle_timeout({self.now}) left the deadline {after} due"
            )
        else:
            raise AssertionError(f"more than {MAX_TIMER_FIRINGS} timer firings before {now}")
        self.now = max(self.now, now)
        return out

    def start(self, **kwargs: Any) -> list[Action]:
        self.twilio(twilio_connected())
        return self.twilio(twilio_start(**kwargs))

    def ready(self) -> list[Action]:
        """Take the call from nothing to SettingsApplied."""
        out = self.start()
        assert OpenAgent() in out
        self.core.agent_connected(self.now)
        out += self.drain()
        out += self.agent(agent("Welcome", request_id="req-1"))
        out += self.agent(agent("SettingsApplied"))
        return out


def agent_audio_of(actions: list[Action]) -> bytes:
    return b"".join(a.audio for a in actions if isinstance(a, SendAgentAudio))


def agent_texts(actions: list[Action]) -> list[dict[str, Any]]:
    return [json.loads(a.text) for a in actions if isinstance(a, SendAgentText)]


def twilio_messages(actions: list[Action]) -> list[dict[str, Any]]:
    return [json.loads(a.text) for a in actions if isinstance(a, SendTwilioText)]
