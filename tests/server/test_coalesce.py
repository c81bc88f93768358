"""Wake-up coalescing (``--coalesce-ms``): a pass that served several calls ends with a nap
until one window after the previous nap; a pass that served one call, or none, does not nap."""

from __future__ import annotations

import asyncio

import pytest

from server import coalesce
from server.cli import build_parser
from server.coalesce import Coalescer
from server.options import DEFAULT_COALESCE_MS, MAX_COALESCE_MS


class Clock:
    """The coalescer's clock: ``sleep`` records each nap and moves the clock by it."""

    def __init__(self) -> None:
        self.now = 100.0
        self.naps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.naps.append(round(seconds, 6))
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(coalesce.time, "monotonic", fake.monotonic)
    monkeypatch.setattr(coalesce.time, "sleep", fake.sleep)
    return fake


def passes(clock: Clock, *passes: tuple[int, float]) -> None:
    """Run one loop pass per (calls served, ms the pass took), then let its check run."""
    asyncio.run(_passes(clock, passes))


async def _passes(clock: Clock, passes: tuple[tuple[int, float], ...]) -> None:
    loop = asyncio.get_running_loop()
    coalescer = Coalescer(loop, 0.004)
    for count, took_ms in passes:
        done = loop.create_future()

        def serve(
            count: int = count, took_ms: float = took_ms, done: asyncio.Future[None] = done
        ) -> None:
            for _ in range(count):
                coalescer.served()
            clock.now += took_ms / 1000
            loop.call_soon(loop.call_soon, done.set_result, None)  # after the check

        loop.call_soon(serve)
        await done


def test_busy_passes_start_at_most_once_per_window(clock: Clock) -> None:
    """The first busy pass sets the pace; each later one naps for what is left of the window
    since the last nap ended, so a frame waits at most one window, less the pass's own work."""
    passes(clock, (5, 1.0), (5, 1.0), (3, 3.0), (2, 5.0), (4, 0.5))
    assert clock.naps == [0.003, 0.001, 0.0035]


def test_a_pass_that_served_one_call_does_not_nap(clock: Clock) -> None:
    """Light load, one call per pass, pass after pass: never a nap, however short the passes."""
    passes(clock, (1, 0.1), (1, 0.1), (1, 0.1), (1, 0.1))
    assert clock.naps == []


def test_each_pass_is_counted_on_its_own(clock: Clock) -> None:
    """Single-call passes do not add up to a busy one; busy passes among them still nap."""
    passes(clock, (1, 0.1), (2, 0.1), (1, 0.1), (3, 0.1))
    assert clock.naps == [0.0038]  # the window counts from the end of the first busy pass


def test_the_flag_is_bounded_by_one_frame_period() -> None:
    parser = build_parser()
    assert parser.parse_args([]).coalesce_ms == DEFAULT_COALESCE_MS
    assert parser.parse_args(["--coalesce-ms", "0"]).coalesce_ms == 0
    assert parser.parse_args(["--coalesce-ms", str(MAX_COALESCE_MS)]).coalesce_ms == MAX_COALESCE_MS
    for bad in ("-1", str(MAX_COALESCE_MS + 0.5), "nan", "soon"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--coalesce-ms", bad])
