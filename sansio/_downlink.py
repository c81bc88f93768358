"""What goes to Twilio: the agent's audio, the marks that track its playback, and ``clear``.

It pairs the pure bookkeeping of :class:`~._playback.AgentPlayback` with the per-stream
:class:`~._twilio.TwilioEncoder`, and appends the encoded messages to the call's queue.
"""

from __future__ import annotations

from ._actions import Action, BargeIn, ClearTwilio, SendTwilioMark, SendTwilioMedia
from ._playback import AgentPlayback, Echo
from ._twilio import TwilioEncoder


class Downlink:
    """The agent-to-caller direction of one stream (created at Twilio's ``start``)."""

    __slots__ = ("_actions", "_encoder", "playback")

    def __init__(self, stream_sid: str, playback: AgentPlayback, actions: list[Action]) -> None:
        self._encoder = TwilioEncoder(stream_sid)
        self.playback = playback
        self._actions = actions

    def audio(self, audio: bytes) -> None:
        """Agent speech: one ``media`` message, then a progress mark when one is due."""
        self._actions.append(SendTwilioMedia(self._encoder.media(audio)))
        mark = self.playback.audio(len(audio))
        if mark is not None:
            self._actions.append(SendTwilioMark(self._encoder.mark(mark)))

    def audio_done(self) -> None:
        """The reply is complete: its last mark tells when the caller has heard it all."""
        self._actions.append(SendTwilioMark(self._encoder.mark(self.playback.audio_done())))

    def end_reply(self) -> None:
        """The agent leg failed mid-reply: end the reply there, so its marks still report."""
        if self.playback.replying:
            self.audio_done()

    def barge_in(self) -> None:
        """Always clear, whatever we believe is playing (reference §2.3)."""
        self._actions.append(ClearTwilio(self._encoder.clear))
        self._actions.extend(self.playback.clear())
        self._actions.append(BargeIn(self.playback.generation))

    def echoed(self, name: str) -> Echo | None:
        """Twilio echoed a mark; reports a reply played to the end."""
        echo = self.playback.echoed(name)
        if echo is not None and echo.played is not None:
            self._actions.append(echo.played)
        return echo
