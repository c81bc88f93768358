"""Apply one named mutation to a copy of the tree and check that its killing tests fail.

Each ``*.toml`` file beside this one breaks one promise on purpose::

    promise = "what breaks"
    file = "sansio/_bridge.py"      # relative to the repository root
    old = '''exact text, found exactly once'''
    new = '''the broken text'''
    killed_by = ["tests/test_x.py::test_y"]
    needs_env = "TEST_POSTGRES_URL"  # optional: the killers skip without it, so does the check

A mutation is killed when at least one of ``killed_by`` fails with an assertion, not by a hang
(pytest-timeout) and not by an import or collection error. Usage::

    python -m tests.mutations.run            # check them all
    python -m tests.mutations.run NAME ...   # check some
    python -m tests.mutations.run --diff NAME
"""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
#: Per mutation; far above what its tests take unmutated, far below the suite's pytest timeout.
TEST_TIMEOUT_S = 60


@dataclass(frozen=True, slots=True)
class Mutation:
    name: str
    promise: str
    file: str
    old: str
    new: str
    killed_by: tuple[str, ...]
    needs_env: str | None = None

    def apply(self, root: Path) -> None:
        path = root / self.file
        text = path.read_text()
        count = text.count(self.old)
        if count != 1:
            raise ValueError(f"{self.name}: 'old' occurs {count} times in {self.file}, want 1")
        path.write_text(text.replace(self.old, self.new))

    def diff(self) -> str:
        text = (ROOT / self.file).read_text()
        mutated = text.replace(self.old, self.new)
        return "".join(
            difflib.unified_diff(
                text.splitlines(True), mutated.splitlines(True), f"a/{self.file}", f"b/{self.file}"
            )
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    killed: bool
    why: str


def load(name: str) -> Mutation:
    data = tomllib.loads((HERE / f"{name}.toml").read_text())
    return Mutation(
        name=name,
        promise=data["promise"],
        file=data["file"],
        old=data["old"],
        new=data["new"],
        killed_by=tuple(data["killed_by"]),
        needs_env=data.get("needs_env"),
    )


def names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.toml"))


def copy_tree(dest: Path) -> None:
    """Copy what git tracks, and untracked files it does not ignore, so a dirty tree is checked."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def check(mutation: Mutation) -> Outcome:
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutation.name}-") as tmp:
        root = Path(tmp)
        copy_tree(root)
        mutation.apply(root)
        env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            f"--timeout={TEST_TIMEOUT_S}",
            *mutation.killed_by,
        ]
        result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    out = result.stdout + result.stderr
    if result.returncode == 0:
        return Outcome(False, "survived: every killing test passed")
    if "Timeout" in out and "+++++" in out:
        return Outcome(False, "hung: a killing test only timed out\n" + out[-2000:])
    if result.returncode != 1:
        why = f"pytest exited {result.returncode}, not a test failure\n"
        return Outcome(False, why + out[-2000:])
    return Outcome(True, "killed")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--diff"]:
        for name in argv[1:]:
            print(load(name).diff())
        return 0
    failed = 0
    for name in argv or names():
        mutation = load(name)
        if mutation.needs_env and not os.environ.get(mutation.needs_env):
            print(f"SKIPPED  {name}: needs {mutation.needs_env}")
            continue
        outcome = check(mutation)
        failed += not outcome.killed
        print(f"{'KILLED  ' if outcome.killed else 'SURVIVED'} {name}: {mutation.promise}")
        if not outcome.killed:
            print("   ", outcome.why)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
