"""What goes to the agent: caller audio (pre-roll, then whole chunks) and text, with the
keepalive that covers silence.

Before ``SettingsApplied`` (``ready`` false) caller audio is held, dropping the oldest bytes
beyond the pre-roll cap, and DTMF keys are held up to a bound; :meth:`Uplink.release` sends
both. Afterwards audio leaves in whole chunks, a partial chunk when its deadline passes.
"""

from __future__ import annotations

from ._actions import Action, Dtmf, SendAgentAudio, SendAgentText
from ._agent import KEEPALIVE, inject_user_message
from ._config import BridgeConfig
from ._counters import Counters
from ._errors import Peer

MAX_HELD_DTMF = 32


class Uplink:
    """The caller-to-agent direction of one call; appends its actions to the call's queue."""

    __slots__ = (
        "_actions",
        "_chunk",
        "_chunk_s",
        "_counters",
        "_dtmf_template",
        "_held_texts",
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
        self._dtmf_template = config.dtmf_template
        self._pending = bytearray()
        self._since = now  # when the oldest pending byte arrived
        self._tx = now  # when the agent was last sent anything
        self._held_texts: list[str] = []

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

    def key(self, digit: str, now: float, ready: bool) -> None:
        """A key the caller pressed, told to the agent as it is pressed."""
        self._actions.append(Dtmf(digit))
        self.tell(inject_user_message(self._dtmf_template.replace("{digit}", digit)), now, ready)

    def tell(self, text: str, now: float, ready: bool) -> None:
        """A keypad message for the agent, held until ``ready`` (up to a bound)."""
        if ready:
            self.send_text(text, now)
        elif len(self._held_texts) < MAX_HELD_DTMF:
            self._held_texts.append(text)
        else:
            self._counters.ignore(Peer.TWILIO, "dtmf beyond what is held before the agent is ready")

    def release(self, now: float) -> None:
        """``SettingsApplied``: send the whole chunks of pre-roll, then the held texts."""
        if self._pending:
            self._send_full_chunks(now)
        for text in self._held_texts:
            self.send_text(text, now)
        self._held_texts.clear()

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
