"""Seconds-long smoke runs of both benchmarks: the output is well formed. Timings are never
asserted here (they belong to the benchmarks, on a quiet machine)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench import bench_calls, bench_core


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


def test_calls_bench_quick_runs_real_calls_and_writes_well_formed_results(tmp_path: Path) -> None:
    out = tmp_path / "calls.json"
    assert bench_calls.main(["--quick", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    check = result["peer_check"]
    assert check["closed_by"] == "bridge" and check["violations"] == []
    naive, server = result["rows"]  # the baseline is measured first, under the same load
    assert (naive["bridge"], server["bridge"]) == ("naive", "server")
    for row in (naive, server):
        assert row["calls"] == 2 and row["agent_sessions_ready"] == 2 and row["drained"], row
        assert row["frames_lost_in"] == 0 and row["chunks_lost_out"] == 0, row
        for key in (
            "server_cpu_ms_per_call_s",
            "server_sys_ms_per_call_s",
            "inbound_p50_ms",
            "inbound_p99_ms",
            "outbound_p50_ms",
            "outbound_p99_ms",
            "rss_per_call_kib",
            "load_cpu_ms_per_call_s",
        ):
            assert _finite_non_negative(row[key]), (key, row)
        assert row["server_sys_ms_per_call_s"] <= row["server_cpu_ms_per_call_s"]
        assert row["barge_ins"] > 0 and _finite_non_negative(row["barge_in_p99_ms"])
    assert _finite_non_negative(server["cpu_vs_naive"])
