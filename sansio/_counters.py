"""The counters of one call, kept in one object that every sub-machine adds to, and the
oddities it tolerated from its peers."""

from __future__ import annotations

from ._actions import Action, CallStats, PeerIgnored
from ._errors import Peer

MAX_ODDITY_KINDS = 64  # kinds of oddity reported per call; all are counted


class Counters:
    """Mutable twins of :class:`CallStats` fields; :meth:`snapshot` freezes them."""

    __slots__ = (
        "_actions",
        "_noticed",
        "agent_audio_bytes_received",
        "agent_audio_bytes_sent",
        "agent_reconnects",
        "barge_ins",
        "caller_audio_bytes",
        "ignored_messages",
        "injections_dropped",
        "keepalives",
        "preroll_dropped_bytes",
        "replies",
        "undecodable_media",
    )

    def __init__(self, actions: list[Action]) -> None:
        self._actions = actions
        self._noticed: set[str] = set()
        self.caller_audio_bytes = 0
        self.agent_audio_bytes_sent = 0
        self.agent_audio_bytes_received = 0
        self.preroll_dropped_bytes = 0
        self.undecodable_media = 0
        self.ignored_messages = 0
        self.barge_ins = 0
        self.replies = 0
        self.keepalives = 0
        self.injections_dropped = 0
        self.agent_reconnects = 0

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
            injections_dropped=self.injections_dropped,
            agent_reconnects=self.agent_reconnects,
        )

    def ignore(self, peer: Peer, detail: str, *, undecodable: bool = False) -> None:
        """Tolerate a peer's oddity: count it, and report each kind once per call."""
        self.ignored_messages += 1
        if undecodable:
            self.undecodable_media += 1
        if detail not in self._noticed and len(self._noticed) < MAX_ODDITY_KINDS:
            self._noticed.add(detail)
            self._actions.append(PeerIgnored(peer.value, detail))
