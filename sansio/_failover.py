"""Agent failover: after the first ``SettingsApplied``, a failed agent leg is replaced.

A failure is an ``Error``, a close the bridge did not ask for (any code, or none: Deepgram's
session cap closes normally), a connect or Settings timeout of a new leg. The bridge closes what
is left of the failed leg, waits for it to be gone, then waits the backoff (doubling from
``agent_retry_backoff``) and opens a new one. A call reconnects at most ``agent_retries`` times;
the failure after that ends it, with that failure's reason.
"""

from __future__ import annotations

from ._actions import EndReason
from ._config import BridgeConfig
from ._notices import AgentReconnecting


class Failover:
    """The reconnects of one call, and the one in progress."""

    __slots__ = ("_backoff", "_close_timeout", "_limit", "aborted", "attempts", "leg_gone", "since")

    def __init__(self, config: BridgeConfig) -> None:
        self._limit = config.agent_retries
        self._backoff = config.agent_retry_backoff
        self._close_timeout = config.close_timeout
        self.attempts = 0
        self.since = 0.0  # when the failed leg failed, then when it was gone
        self.leg_gone = True
        self.aborted = False

    @property
    def exhausted(self) -> bool:
        return self.attempts >= self._limit

    def begin(
        self, reason: EndReason, detail: str, now: float, *, leg_gone: bool
    ) -> AgentReconnecting:
        self.attempts += 1
        self.since = now
        self.leg_gone = leg_gone
        self.aborted = False
        return AgentReconnecting(self.attempts, reason, detail)

    def gone(self, now: float) -> None:
        """The failed leg reported its close: the backoff counts from now."""
        self.leg_gone = True
        self.since = now

    def due(self) -> float | None:
        """The backoff's end; while the failed leg closes, when to stop waiting for it."""
        if self.leg_gone:
            return self.since + self._backoff * 2.0 ** (self.attempts - 1)
        return None if self.aborted else self.since + self._close_timeout
