"""Seconds-long smoke runs of the benchmarks: the output is well formed. Timings are never
asserted here (they belong to the benchmarks, on a quiet machine)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench import bench_calls, bench_core, bench_driver, bench_frames
from bench.bench_calls import Step, search_capacity, verdict


def _finite_non_negative(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value >= 0


def test_core_bench_quick_writes_well_formed_results(tmp_path: Path) -> None:
    out = tmp_path / "core.json"
    assert bench_core.main(["--quick", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [row["chunk_ms"] for row in result["inbound"]] == list(bench_core.CHUNK_SIZES_MS)
    for row in result["inbound"]:
        for key in (
            "floor_us",
            "core_in_us",
            "naive_us",
            "retained_blocks_per_frame",
            "added_p50_ms",
            "added_p99_ms",
        ):
            assert _finite_non_negative(row[key]), (key, row)
        # Virtual time is exact: a chunk of C ms adds at most C - 20 ms to a 20 ms frame.
        assert row["added_p99_ms"] <= row["chunk_ms"] - 20 + 1e-6
    assert _finite_non_negative(result["outbound"]["core_out_us"])


def test_frames_bench_quick_prints_both_parsers_and_the_ratio(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert bench_frames.main(["--quick"]) == 0  # it asserts every frame was delivered
    out = capsys.readouterr().out
    assert out.count("websockets ClientProtocol alone") == out.count("ratio") == 2


def _assert_row_is_sane(row: dict[str, Any], calls: int) -> None:
    assert row["calls"] == calls and row["agent_sessions_ready"] == calls and row["drained"], row
    assert row["frames_lost_in"] == 0 and row["chunks_lost_out"] == 0, row
    for key in (
        "server_cpu_ms_per_call_s",
        "server_user_ms_per_call_s",
        "server_sys_ms_per_call_s",
        "inbound_p50_ms",
        "inbound_p99_ms",
        "inbound_p999_ms",
        "outbound_p50_ms",
        "outbound_p99_ms",
        "outbound_p999_ms",
        "barge_in_p50_ms",
        "barge_in_p99_ms",
        "rss_per_call_kib",
        "load_cpu_ms_per_call_s",
        "load_core_share",
        "server_core_share",
    ):
        assert _finite_non_negative(row[key]), (key, row)
    total = row["server_user_ms_per_call_s"] + row["server_sys_ms_per_call_s"]
    assert math.isclose(row["server_cpu_ms_per_call_s"], total, abs_tol=0.002), row
    for way in ("inbound", "outbound"):
        assert row[f"{way}_p50_ms"] <= row[f"{way}_p99_ms"] <= row[f"{way}_p999_ms"], row
    # Every call's frames wake the server up: a count of zero means the count is broken.
    assert row["wakeups_per_s"] > 0, row
    perf = row["perf_context_switches_per_s"]
    assert perf is None or perf > 0, row
    # Each clear the callers saw answers a UserStartedSpeaking the agents sent.
    assert 0 < row["barge_ins"] <= row["barge_ins_sent"], row
    assert row["idle_rss_mib"] > 1, row  # a Python process holds megabytes before any call
    shares = row["process_cpu_shares"]
    assert len(shares) >= row["workers"] and math.isclose(sum(shares), 1, abs_tol=0.01), row
    assert row["load_saturated"] is False, row


def test_driver_bench_quick_runs_a_call_and_prints_its_python_cost(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert bench_driver.main(["--quick"]) == 0  # it asserts the audio reached the agent
    out = capsys.readouterr().out
    ms = float(out.split("Python CPU of one call-second: ")[1].split()[0])
    assert 0 < ms < 50, out  # one call-second of Python, far below a second
    assert "caller frame" in out and "agent chunk" in out


def test_calls_bench_quick_runs_real_calls_and_writes_well_formed_results(tmp_path: Path) -> None:
    out = tmp_path / "calls.json"
    assert bench_calls.main(["--quick", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    check = result["peer_check"]
    assert check["closed_by"] == "bridge" and check["violations"] == []
    assert "load average" in result["load_before"]["uptime"] and result["load_after"]["uptime"]
    naive, server = result["rows"]  # the baseline is measured first, under the same load
    assert (naive["bridge"], server["bridge"]) == ("naive", "server")
    for row in (naive, server):
        _assert_row_is_sane(row, 2)
    assert _finite_non_negative(server["cpu_vs_naive"])


def test_floor_relay_and_coalesce_sweep_carry_every_frame(tmp_path: Path) -> None:
    """The floor relay is a real relay (every frame and clear delivered), and the sweep runs the
    server once per --coalesce-ms value, each compared with the naive bridge and the floor."""
    out = tmp_path / "calls.json"
    argv = ["--quick", "--no-peer-check", "--floor", "--phases", "2", "--coalesce-sweep", "0,1"]
    assert bench_calls.main([*argv, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["bridge"], r.get("coalesce_ms")) for r in rows] == [
        ("naive", None),
        ("floor", None),
        ("server", 0.0),
        ("server", 1.0),
    ]
    for row in rows:
        _assert_row_is_sane(row, 2)
        assert row["phases"] == 2, row
    assert all(_finite_non_negative(r["cpu_vs_floor"]) for r in rows[2:])


def test_capacity_search_with_tiny_bounds_returns_a_number(tmp_path: Path) -> None:
    out = tmp_path / "capacity.json"
    argv = ["--capacity", "--capacity-max", "4", "--step-seconds", "1", "--no-peer-check"]
    assert bench_calls.main([*argv, "--json", str(out)]) == 0
    found = json.loads(out.read_text())["capacity"]
    for bridge in ("server", "naive"):
        search = found[bridge]
        assert isinstance(search["capacity"], int) and 0 <= search["capacity"] <= 4, search
        assert search["steps"] and all(1 <= s["calls"] <= 4 for s in search["steps"]), search
        assert search["stopped"] in {"max calls", "converged", "load generator saturated"}
    rows = json.loads(out.read_text())["rows"]
    assert {r["bridge"] for r in rows} == {"server", "naive"} and all(
        r["capacity_step"] for r in rows
    )


def test_workers_scaling_reports_calls_per_core_for_each_worker_count(tmp_path: Path) -> None:
    out = tmp_path / "scaling.json"
    argv = ["--workers-scaling", "1,2", "--scaling-calls", "4", "--seconds", "1"]
    assert bench_calls.main([*argv, "--no-peer-check", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    one, two = result["workers_scaling"]
    assert (one["workers"], two["workers"]) == (1, 2)
    for entry in (one, two):
        assert entry["calls_per_core"] > 0 and entry["lost"] == 0, entry
    # Two workers are two processes (plus multiprocessing's resource tracker), each measured.
    assert len(one["process_cpu_shares"]) == 1 and len(two["process_cpu_shares"]) >= 2


# ---------------------------------------------------------------- the search and its verdict


def _threshold_probe(limit: int, saturates_at: int | None = None) -> Any:
    async def probe(calls: int) -> Step:
        if saturates_at is not None and calls >= saturates_at:
            return Step(calls, False, "load", load_bound=True)
        return Step(calls, calls <= limit, "fake")

    return probe


def _search(probe: Any, start: int = 5, cap: int = 1000, budget: float = 60.0) -> dict[str, Any]:
    return asyncio.run(search_capacity(probe, start, cap, budget))


def test_capacity_search_doubles_then_bisects_to_the_largest_passing_count() -> None:
    found = _search(_threshold_probe(37))
    assert (found["capacity"], found["first_failure"], found["stopped"]) == (37, 38, "converged")
    calls = [s["calls"] for s in found["steps"]]
    assert calls[:4] == [5, 10, 20, 40]  # exponential until the first failure
    assert len(calls) <= 10


def test_capacity_search_stops_at_the_cap_and_when_nothing_passes() -> None:
    assert _search(_threshold_probe(10_000), cap=100)["capacity"] == 100
    assert _search(_threshold_probe(10_000), cap=100)["stopped"] == "max calls"
    assert _search(_threshold_probe(0))["capacity"] == 0


def test_capacity_search_stops_when_the_load_generator_saturates() -> None:
    found = _search(_threshold_probe(10_000, saturates_at=40))
    assert (found["capacity"], found["stopped"]) == (20, "load generator saturated")


def test_capacity_search_keeps_to_its_time_budget() -> None:
    ticks = iter(range(100))
    found = asyncio.run(
        search_capacity(_threshold_probe(10_000), 1, 10**6, 3.0, clock=lambda: next(ticks))
    )
    assert found["stopped"] == "time budget" and len(found["steps"]) == 3


def _row(**changes: Any) -> dict[str, Any]:
    row = {
        "calls": 50,
        "agent_sessions_ready": 50,
        "errors": [],
        "inbound_p99_ms": 3.0,
        "outbound_p99_ms": 4.0,
        "frames_lost_in": 0,
        "chunks_lost_out": 0,
        "load_saturated": False,
        "load_core_share": 0.3,
        "server_cpu_ms_per_call_s": 1.5,
    }
    return row | changes


@pytest.mark.parametrize(
    "changes",
    [
        {"inbound_p99_ms": 10.0},
        {"outbound_p99_ms": 12.5},
        {"outbound_p99_ms": None},
        {"frames_lost_in": 1},
        {"chunks_lost_out": 2},
        {"agent_sessions_ready": 49},
    ],
)
def test_a_step_fails_on_a_slow_tail_a_lost_frame_or_a_missing_call(
    changes: dict[str, Any],
) -> None:
    assert verdict(_row(), 10.0).passed
    assert not verdict(_row(**changes), 10.0).passed


def test_a_saturated_load_generator_makes_the_step_load_bound_not_a_failure() -> None:
    step = verdict(_row(load_saturated=True, load_core_share=0.97), 10.0)
    assert step.load_bound and not step.passed and "97%" in step.why


# ---------------------------------------------------------------- what /proc is read for


def test_wakeups_count_every_thread_and_the_tree_finds_children() -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time, threading\n"
            "t = threading.Thread(target=lambda: [time.sleep(0.001) for _ in range(3000)])\n"
            "t.start(); t.join()",
        ]
    )
    try:
        time.sleep(0.5)
        assert child.pid in bench_calls.process_tree(os.getpid())
        status = Path(f"/proc/{child.pid}/status").read_text().splitlines()
        main_thread = sum(int(line.split()[1]) for line in status if "ctxt_switches" in line)
        assert bench_calls.context_switches(child.pid) > main_thread + 50
    finally:
        child.kill()
        child.wait()
