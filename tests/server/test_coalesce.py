"""Wake-up coalescing (``--coalesce-ms``): a pass that served several calls ends with one nap
of the window; a pass that served one call, or none, does not nap."""

from __future__ import annotations

import asyncio

import pytest

from server import coalesce
from server.cli import build_parser
from server.coalesce import Coalescer
from server.options import DEFAULT_COALESCE_MS, MAX_COALESCE_MS


@pytest.fixture
def naps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The naps taken, instead of sleeping them."""
    taken: list[float] = []
    monkeypatch.setattr(coalesce.time, "sleep", taken.append)
    return taken


def passes(*served_per_pass: int) -> Coalescer:
    """Run one loop pass per figure, serving that many calls in it, then let the checks run."""
    return asyncio.run(_passes(served_per_pass))


async def _passes(served_per_pass: tuple[int, ...]) -> Coalescer:
    loop = asyncio.get_running_loop()
    coalescer = Coalescer(loop, 0.004)
    for count in served_per_pass:
        done = loop.create_future()

        def serve(count: int = count, done: asyncio.Future[None] = done) -> None:
            for _ in range(count):
                coalescer.served()
            loop.call_soon(loop.call_soon, done.set_result, None)  # after the check

        loop.call_soon(serve)
        await done
    return coalescer


def test_a_pass_that_served_several_calls_naps_once_for_the_window(
    naps: list[float],
) -> None:
    coalescer = passes(5)
    assert naps == [0.004]
    assert coalescer.naps == 1


def test_a_pass_that_served_one_call_does_not_nap(naps: list[float]) -> None:
    coalescer = passes(1)
    assert naps == []
    assert coalescer.naps == 0


def test_each_pass_is_counted_on_its_own(naps: list[float]) -> None:
    """Light load, one call per pass, pass after pass: never a nap, however many passes."""
    passes(1, 1, 1, 1)
    assert naps == []
    passes(1, 2, 1, 3)
    assert naps == [0.004, 0.004]


def test_the_flag_is_bounded_by_one_frame_period() -> None:
    parser = build_parser()
    assert parser.parse_args([]).coalesce_ms == DEFAULT_COALESCE_MS
    assert parser.parse_args(["--coalesce-ms", "0"]).coalesce_ms == 0
    assert parser.parse_args(["--coalesce-ms", str(MAX_COALESCE_MS)]).coalesce_ms == MAX_COALESCE_MS
    for bad in ("-1", str(MAX_COALESCE_MS + 0.5), "nan", "soon"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--coalesce-ms", bad])
