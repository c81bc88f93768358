"""The house rules a reviewer would otherwise check by hand: ``mypy --strict`` (the
``[tool.mypy]`` config) on the core and the server, and ``ruff check`` on the whole tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_the_core_and_the_server_type_check_strictly() -> None:
    result = _run("mypy", "--strict", "--no-incremental", "sansio", "server")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_finds_nothing() -> None:
    result = _run("ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr
