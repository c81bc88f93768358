"""Wake-up coalescing (``--coalesce-ms``): fewer wake-ups for many calls, at a bounded latency.

Without it, the loop sleeps in ``epoll_wait`` until the next socket is readable and so wakes up
about once per frame, or per few frames that happen to arrive together (1,000-1,400 times a
second at 100 calls not in step, in ``bench_calls``). With it, a pass of the loop that served
two or more calls ends with a nap until ``window`` seconds after the previous nap ended, so busy
passes start at most once per window; the frames that arrive meanwhile wait in the kernel and
the next pass serves them all in one wake-up. A frame waits at most ``window`` longer (half of it
on average); a pass that served one call (a light load) naps not at all. It works the same under
asyncio and uvloop: the nap is a callback. Off by default: ``docs/benchmarks.md`` has why.
"""

from __future__ import annotations

import asyncio
import time


class Coalescer:
    """One per event loop; every call's pump reports to :meth:`served`."""

    __slots__ = ("_loop", "_served", "_woke", "window")

    def __init__(self, loop: asyncio.AbstractEventLoop, window: float) -> None:
        self._loop = loop
        self.window = window
        self._served = 0  # pumps since the check was scheduled (0: none scheduled)
        self._woke = 0.0  # when the last nap ended (time.monotonic)

    def served(self) -> None:
        """A call was served in this pass: the first one schedules the end-of-pass check."""
        self._served += 1
        if self._served == 1:
            self._loop.call_soon(self._check)

    def _check(self) -> None:
        """Runs once the pass's ready callbacks are done: nap if the pass served several."""
        busy = self._served >= 2
        self._served = 0
        if busy:
            rest = self._woke + self.window - time.monotonic()
            if rest > 0:
                time.sleep(rest)
            self._woke = time.monotonic()
