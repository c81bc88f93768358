"""The core does no I/O: it imports only pure modules, names no escape hatch to others, and a
whole call runs with every clock and entropy source made to raise."""

from __future__ import annotations

import ast
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from sansio import CallEnded, EndReason
from tests.helpers import Call, agent, config, function_call, twilio_mark, twilio_media, twilio_stop

SANSIO = Path(__file__).resolve().parents[2] / "sansio"
#: The only modules the core may import (besides its own, relatively).
ALLOWED_IMPORTS = frozenset(
    {"__future__", "binascii", "collections", "dataclasses", "enum", "json", "re", "typing"}
)
#: Modules the core must not reach by any route: imported, or named as a string for
#: ``importlib.import_module``, ``__import__`` or ``getattr``.
FORBIDDEN_MODULES = frozenset(
    {
        "asyncio", "builtins", "datetime", "importlib", "io", "logging", "os", "random",
        "secrets", "selectors", "signal", "socket", "ssl", "subprocess", "sys", "threading",
        "time", "uuid",
    }
)  # fmt: skip
#: Names that reach other modules or the outside world without an import statement.
FORBIDDEN_NAMES = frozenset(
    {
        "__builtins__", "__import__", "__loader__", "__spec__", "compile", "eval", "exec",
        "globals", "import_module", "input", "locals", "open", "print", "vars",
    }
)  # fmt: skip
#: ``re.compile`` is the one attribute of that list the core may use.
FORBIDDEN_ATTRIBUTES = FORBIDDEN_NAMES - {"compile"}
#: Strings that can only serve to reach a module by name (``"input"`` is a settings key).
FORBIDDEN_STRINGS = FORBIDDEN_MODULES | {"__builtins__", "__import__", "import_module"}


def sources() -> list[Path]:
    paths = sorted(SANSIO.rglob("*.py"))
    assert len(paths) >= 5, paths  # the package was found
    return paths


def violations(tree: ast.AST) -> list[str]:
    """Every import, name and string constant of ``tree`` that breaks the rules above."""
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [] if node.level else [(node.module or "").split(".")[0]]
        else:
            modules = []
        found += [f"line {node.lineno}: imports {m}" for m in modules if m not in ALLOWED_IMPORTS]
        if isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            found.append(f"line {node.lineno}: uses {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRIBUTES:
            found.append(f"line {node.lineno}: uses .{node.attr}")
        elif isinstance(node, ast.Constant) and node.value in FORBIDDEN_STRINGS:
            found.append(f"line {node.lineno}: names {node.value!r}")
    return found


def test_importing_sansio_loads_no_io_module() -> None:
    io_modules = ("asyncio", "socket", "selectors", "ssl", "threading", "subprocess", "logging")
    code = (
        "import sys; import sansio; "
        f"loaded = sorted(m for m in {io_modules!r} if m in sys.modules); print(loaded)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_sansio_sources_reach_no_io_no_clock_and_no_entropy() -> None:
    for path in sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        assert violations(tree) == [], path.name


@pytest.mark.parametrize(
    "source",
    [
        "import time",
        "from os import environ",
        "import importlib\nclock = importlib.import_module('time').monotonic",
        "clock = __import__('time').monotonic",
        "clock = getattr(__builtins__, '__import__')('time')",
        "import_module = vars()['__builtins__']",
        "from datetime import datetime",
        "print('hello')",
    ],
)
def test_the_purity_rules_catch_each_route_to_the_outside(source: str) -> None:
    assert violations(ast.parse(source))


def test_a_whole_call_runs_with_clocks_and_entropy_that_raise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Behavioural: a call from start to finished, with audio, marks, a barge-in, a tool, every
    timer and the close timeout, never reads a clock or asks for randomness."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the core read a clock or asked for entropy")

    for name in ("time", "monotonic", "perf_counter", "process_time", "time_ns", "monotonic_ns",
                 "perf_counter_ns", "sleep", "localtime", "gmtime"):  # fmt: skip
        monkeypatch.setattr(time, name, forbidden)
    for name in ("random", "randint", "randrange", "getrandbits", "choice", "shuffle"):
        monkeypatch.setattr(random, name, forbidden)
    monkeypatch.setattr(os, "urandom", forbidden)
    monkeypatch.setattr(os, "getpid", forbidden)
    monkeypatch.setattr(uuid, "uuid4", forbidden)
    monkeypatch.setattr(uuid, "uuid1", forbidden)

    call = Call(config(chunk_ms=60, keepalive_interval=0.5, mark_interval_ms=100))
    call.ready()
    for i in range(10):
        call.at(call.now + 0.02).twilio(twilio_media(bytes([i]) * 160))
    call.advance_to(call.now + 1.0)  # the partial chunk's deadline and keepalives
    call.agent_audio(b"\x01" * 1600)
    call.agent(agent("AgentAudioDone"))
    call.twilio(twilio_mark("0.1.800"))
    call.agent(agent("UserStartedSpeaking"))
    call.agent(function_call("fc_1", "lookup"))
    call.core.tool_result("fc_1", "{}", call.now)
    call.drain()
    call.twilio(twilio_stop())
    call.advance_to(call.now + 5.0)  # the agent never closes: the close timeout aborts it
    ended = [a for a in call.log if isinstance(a, CallEnded)]
    assert [e.reason for e in ended] == [EndReason.HANGUP]
    assert call.core.finished
