"""What the core asks its driver to do, and what it reports.

Every output is a frozen, slotted dataclass. Commands (``SendAgentAudio``, ``CloseTwilio``,
...) must be executed by the driver; notices (subclasses of :class:`Notice`) are facts for
logs, metrics and transcripts and may be ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any


class Action:
    """Marker base class of every output."""

    __slots__ = ()


# ---- commands: the driver must carry these out -------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenAgent(Action):
    """Open the agent WebSocket; report ``agent_connected`` or ``agent_closed``."""


@dataclass(frozen=True, slots=True)
class SendAgentAudio(Action):
    """Send ``audio`` (raw mu-law) to the agent as one binary message.

    ``since`` is the ``now`` at which the oldest byte of ``audio`` reached the core, so a
    driver can measure the delay the buffering added.
    """

    audio: bytes
    since: float


@dataclass(frozen=True, slots=True)
class SendAgentText(Action):
    """Send ``text`` (encoded JSON) to the agent as one text message."""

    text: str


@dataclass(frozen=True, slots=True)
class SendTwilioText(Action):
    """Send ``text`` (encoded JSON) to Twilio as one unfragmented text frame."""

    text: str


@dataclass(frozen=True, slots=True)
class SendTwilioMedia(SendTwilioText):
    """A Twilio ``media`` message carrying agent audio."""


@dataclass(frozen=True, slots=True)
class SendTwilioMark(SendTwilioText):
    """A Twilio ``mark`` message; its echo tells that the audio before it played or cleared."""


@dataclass(frozen=True, slots=True)
class ClearTwilio(SendTwilioText):
    """A Twilio ``clear`` message: drop the audio Twilio has buffered (barge-in)."""


@dataclass(frozen=True, slots=True)
class RunTool(Action):
    """Run the client-side tool ``name``; answer with ``CallBridge.tool_result(call_id, ...)``."""

    call_id: str
    name: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class CancelTool(Action):
    """The agent withdrew the tool call ``call_id``; its result is no longer wanted."""

    call_id: str


@dataclass(frozen=True, slots=True)
class CloseTwilio(Action):
    """Close the Twilio WebSocket with ``code``; with ``abort`` drop the connection at once."""

    code: int
    reason: str
    abort: bool = False


@dataclass(frozen=True, slots=True)
class CloseAgent(Action):
    """Close the agent WebSocket (or give up connecting); ``abort`` as for CloseTwilio."""

    code: int
    reason: str
    abort: bool = False


@dataclass(frozen=True, slots=True)
class TransferCall(Action):
    """Hand the caller to ``number`` (the configured target ``target``): update the call with
    a ``<Dial>``, then report with ``CallBridge.redirected``. The announcement has played."""

    target: str
    number: str
    reason: str


@dataclass(frozen=True, slots=True)
class FallbackCall(Action):
    """The call cannot go on with the agent (``reason``): redirect it to the fallback rather
    than hang up, then report with ``CallBridge.redirected``."""

    reason: str
    detail: str


# ---- notices: observable facts -----------------------------------------------------------


class Notice(Action):
    """Base class of the observable events (nothing to execute)."""

    __slots__ = ()


class EndReason(Enum):
    """Why a call ended; exactly one per call."""

    HANGUP = "hangup"
    AGENT_ERROR = "agent_error"
    AGENT_UNREACHABLE = "agent_unreachable"
    TIMEOUT = "timeout"
    PROTOCOL_ERROR = "protocol_error"
    TOOL = "tool"
    SHUTDOWN = "shutdown"
    TRANSFER = "transfer"
    SILENCE = "silence"
    MAX_DURATION = "max_duration"


class Playback(Enum):
    """What became of a reply's audio at Twilio."""

    PLAYED = "played"
    CLEARED = "cleared"


@dataclass(frozen=True, slots=True)
class CallStats:
    """Counters of one call, as they stood when it ended."""

    caller_audio_bytes: int = 0
    agent_audio_bytes_sent: int = 0
    agent_audio_bytes_received: int = 0
    preroll_dropped_bytes: int = 0
    undecodable_media: int = 0
    ignored_messages: int = 0
    barge_ins: int = 0
    replies: int = 0
    keepalives: int = 0
    injections_dropped: int = 0
    agent_reconnects: int = 0


@dataclass(frozen=True, slots=True)
class CallStarted(Notice):
    """Twilio's ``start``: the stream is known and the agent leg is being opened."""

    stream_sid: str
    call_sid: str
    account_sid: str
    custom_parameters: Mapping[str, str]
    resumed: bool = False  # a signed stream that resumes the call after a failed transfer


@dataclass(frozen=True, slots=True)
class AgentReady(Notice):
    """``SettingsApplied``: caller audio now flows to the agent."""

    request_id: str
    preroll_bytes: int


@dataclass(frozen=True, slots=True)
class Transcript(Notice):
    """``ConversationText``: one line of the conversation."""

    role: str
    content: str


@dataclass(frozen=True, slots=True)
class AgentThinking(Notice):
    content: str


@dataclass(frozen=True, slots=True)
class AgentStartedSpeaking(Notice):
    total_latency: float | None
    tts_latency: float | None
    ttt_latency: float | None


@dataclass(frozen=True, slots=True)
class LatencyReport(Notice):
    latencies: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class History(Notice):
    entry: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class AgentWarning(Notice):
    code: str
    description: str


@dataclass(frozen=True, slots=True)
class AgentNotice(Notice):
    """Any other agent message (acknowledgements, server-side tools, unknown types)."""

    type: str
    message: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class BargeIn(Notice):
    """``UserStartedSpeaking``: ``clear`` was sent; ``generation`` is the new playback epoch."""

    generation: int


@dataclass(frozen=True, slots=True)
class ReplyPlayback(Notice):
    """The fate of one agent reply: how much was sent, and how much the caller heard.

    ``heard_bytes`` counts audio acknowledged by mark echoes before any ``clear``.
    """

    reply: int
    outcome: Playback
    sent_bytes: int
    heard_bytes: int


@dataclass(frozen=True, slots=True)
class Dtmf(Notice):
    digit: str


@dataclass(frozen=True, slots=True)
class KeypadEntry(Notice):
    """``--dtmf-collect`` delivered ``digits`` keys to the agent as one message (no digits
    here: they stay out of logs)."""

    digits: int


@dataclass(frozen=True, slots=True)
class TransferCancelled(Notice):
    """A transfer that was waiting for its announcement did not happen (``why``)."""

    target: str
    why: str


@dataclass(frozen=True, slots=True)
class PeerIgnored(Notice):
    """A tolerated oddity from a peer (unknown event, media before start, bad base64...)."""

    peer: str
    detail: str


@dataclass(frozen=True, slots=True)
class CallEnded(Notice):
    """The call is over; emitted exactly once, before the close commands."""

    reason: EndReason
    detail: str
    stats: CallStats
