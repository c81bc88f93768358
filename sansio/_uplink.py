"""What goes to the agent: caller audio (pre-roll, then whole chunks) and text, with the
keepalive that covers silence.

Before ``SettingsApplied`` (``ready`` false) caller audio is held, dropping the oldest bytes
beyond the pre-roll cap; :meth:`Uplink.release` sends what the pre-roll policy keeps of it.
Afterwards audio leaves in whole chunks, a partial chunk when its deadline passes. DTMF keys
become injections (see :mod:`._injections`).
"""

from __future__ import annotations

from ._actions import Action, SendAgentAudio, SendAgentText
from ._agent import KEEPALIVE
from ._config import BridgeConfig
from ._counters import Counters


class Uplink:
    """The caller-to-agent direction of one call; appends its actions to the call's queue."""

    __slots__ = (
        "_actions",
        "_chunk",
        "_chunk_s",
        "_counters",
        "_keepalive_s",
        "_pending",
        "_preroll_cap",
        "_since",
        "_tx",
    )

    def __init__(
        self, config: BridgeConfig, actions: list[Action], counters: Counters, now: float
    ) -> None:
        self._actions = actions
        self._counters = counters
        self._chunk = config.chunk_bytes
        self._chunk_s = config.chunk_ms / 1000
        self._preroll_cap = config.preroll_bytes
        self._keepalive_s = config.keepalive_interval
        self._pending = bytearray()
        self._since = now  # when the oldest pending byte arrived
        self._tx = now  # when the agent was last sent anything

    @property
    def held_bytes(self) -> int:
        return len(self._pending)

    def push(self, audio: bytes, now: float, ready: bool) -> None:
        """Caller audio: sent in whole chunks once ``ready``, held as pre-roll before."""
        pending = self._pending
        if ready:
            if not pending:
                size = len(audio)
                if size == self._chunk:  # the steady state: one frame is one chunk
                    self._counters.agent_audio_bytes_sent += size
                    self._tx = now
                    self._actions.append(SendAgentAudio(audio, now))
                    return
                self._since = now
            pending += audio
            if len(pending) >= self._chunk:
                self._send_full_chunks(now)
            return
        # Pre-roll: hold audio until SettingsApplied, dropping the oldest beyond the cap.
        if not pending:
            self._since = now
        pending += audio
        excess = len(pending) - self._preroll_cap
        if excess > 0:
            del pending[:excess]
            self._counters.preroll_dropped_bytes += excess

    def release(self, now: float, keep_bytes: int | None = None) -> None:
        """``SettingsApplied``: send the whole chunks of the newest ``keep_bytes`` of pre-roll
        (None: all of it); what is cut counts as dropped pre-roll."""
        pending = self._pending
        excess = len(pending) - keep_bytes if keep_bytes is not None else 0
        if excess > 0:
            del pending[:excess]
            self._counters.preroll_dropped_bytes += excess
            self._since = now
        if pending:
            self._send_full_chunks(now)

    def chunk_due(self) -> float | None:
        """When the held partial chunk must go, if there is one."""
        return self._since + self._chunk_s if self._pending else None

    def flush(self) -> None:
        """Send the partial chunk: its deadline passed, or the caller is gone."""
        if self._pending:
            self._counters.agent_audio_bytes_sent += len(self._pending)
            self._actions.append(SendAgentAudio(bytes(self._pending), self._since))
            self._pending.clear()

    def send_text(self, text: str, now: float) -> None:
        self._tx = now
        self._actions.append(SendAgentText(text))

    def connected(self, now: float) -> None:
        """The agent leg opened: its silence is counted from now."""
        self._tx = now

    def keepalive_due(self) -> float:
        return self._tx + self._keepalive_s

    def keepalive(self, now: float) -> None:
        self._counters.keepalives += 1
        self.send_text(KEEPALIVE, now)

    def _send_full_chunks(self, now: float) -> None:
        """Send every whole chunk held in the buffer; keep the remainder for its deadline."""
        pending = self._pending
        chunk = self._chunk
        full = len(pending) - len(pending) % chunk
        if full:
            since = self._since
            append = self._actions.append
            with memoryview(pending) as view:
                for start in range(0, full, chunk):
                    append(SendAgentAudio(bytes(view[start : start + chunk]), since))
            del pending[:full]
            self._counters.agent_audio_bytes_sent += full
            self._tx = now
        # The remainder (if any) came with the newest frame, so its clock starts now.
        self._since = now
