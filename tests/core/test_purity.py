"""The core does no I/O: importing it pulls in no I/O module, and it never reads a clock."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SANSIO = Path(__file__).resolve().parents[2] / "sansio"
FORBIDDEN = ("asyncio", "socket", "selectors", "ssl", "threading", "subprocess")


def test_importing_sansio_loads_no_io_module() -> None:
    code = (
        "import sys; import sansio; "
        f"loaded = sorted(m for m in {FORBIDDEN!r} if m in sys.modules); print(loaded)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_sansio_sources_import_no_io_and_no_clock() -> None:
    for path in SANSIO.glob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [(node.module or "").split(".")[0]]
            else:
                continue
            for name in names:
                assert name not in (*FORBIDDEN, "time", "datetime", "os", "io"), (
                    f"{path.name} imports {name}"
                )
