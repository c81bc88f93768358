"""The counters of one call, kept in one object that every sub-machine adds to."""

from __future__ import annotations

from ._actions import CallStats


class Counters:
    """Mutable twins of :class:`CallStats` fields; :meth:`snapshot` freezes them."""

    __slots__ = (
        "agent_audio_bytes_received",
        "agent_audio_bytes_sent",
        "barge_ins",
        "caller_audio_bytes",
        "ignored_messages",
        "keepalives",
        "preroll_dropped_bytes",
        "replies",
        "undecodable_media",
    )

    def __init__(self) -> None:
        self.caller_audio_bytes = 0
        self.agent_audio_bytes_sent = 0
        self.agent_audio_bytes_received = 0
        self.preroll_dropped_bytes = 0
        self.undecodable_media = 0
        self.ignored_messages = 0
        self.barge_ins = 0
        self.replies = 0
        self.keepalives = 0

    def snapshot(self) -> CallStats:
        return CallStats(
            caller_audio_bytes=self.caller_audio_bytes,
            agent_audio_bytes_sent=self.agent_audio_bytes_sent,
            agent_audio_bytes_received=self.agent_audio_bytes_received,
            preroll_dropped_bytes=self.preroll_dropped_bytes,
            undecodable_media=self.undecodable_media,
            ignored_messages=self.ignored_messages,
            barge_ins=self.barge_ins,
            replies=self.replies,
            keepalives=self.keepalives,
        )
