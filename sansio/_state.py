"""The states of a call's two legs, and the timers' phases derived from them.

The bridge owns the current states and makes every transition; these are the names.
"""

from __future__ import annotations

from enum import Enum


class TwilioState(Enum):
    AWAITING_START = "awaiting_start"
    STREAMING = "streaming"
    CLOSED = "closed"


class AgentState(Enum):
    IDLE = "idle"  # not asked for yet: it is opened on Twilio's ``start``
    CONNECTING = "connecting"
    AWAITING_WELCOME = "awaiting_welcome"
    CONFIGURING = "configuring"  # Settings sent, SettingsApplied not yet received
    READY = "ready"
    RECONNECTING = "reconnecting"  # the leg failed after SettingsApplied; a new one is due
    CLOSED = "closed"


AGENT_OPEN = frozenset({AgentState.AWAITING_WELCOME, AgentState.CONFIGURING, AgentState.READY})
ENDED = "ended"  # the timers' phase once the call has ended; before, it is the agent state
