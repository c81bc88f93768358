"""The README and ``docs/`` say what the code does: the flag table is the parser's, every
relative link and every file or test they name exists, the README stays short, and its test
command is the one CI runs."""

from __future__ import annotations

import importlib.util
import re
import shlex
import unicodedata
from argparse import SUPPRESS
from pathlib import Path
from types import ModuleType

from server.cli import build_parser

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
README = ROOT / "README.md"
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]
TESTS = ROOT / "tests"

FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE = re.compile(r"`[^`\n]+`")
INLINE_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.M)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
NAMED_PY = re.compile(r"`((?:[\w.-]+/)+[\w.-]+\.py)(?:::(\w+))?`")
NAMED_TEST = re.compile(r"`(?:[\w./-]*/)?(test_\w+\.py)(?:::(\w+))?`|`::(test_\w+)`")


def _gen_flags() -> ModuleType:
    """``docs/gen_flags.py``, which is a script, not a module of a package."""
    spec = importlib.util.spec_from_file_location("gen_flags", ROOT / "docs" / "gen_flags.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _prose(text: str) -> str:
    """The text with code blocks and code spans removed: links inside them are not links."""
    return CODE.sub("", FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = heading.strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug, n = _slug(heading), 1
        while slug in found:  # GitHub numbers repeated headings
            slug, n = f"{_slug(heading)}-{n}", n + 1
        found.add(slug)
    return found


def _links(path: Path) -> list[str]:
    prose = _prose(path.read_text(encoding="utf-8"))
    return INLINE_LINK.findall(prose) + REFERENCE_LINK.findall(prose)


def test_flag_table_is_the_parsers() -> None:
    gen = _gen_flags()
    document = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert gen.BEGIN in document and gen.END in document, "the flag table's markers are gone"
    written = document.split(gen.BEGIN, 1)[1].split(gen.END, 1)[0].strip()
    expected = gen.flag_table(build_parser())
    assert written == expected, "docs/configuration.md is stale: run python docs/gen_flags.py"


def test_flag_table_has_one_row_per_visible_flag() -> None:
    """The renderer itself leaves no flag out (the check above compares it with itself)."""
    visible = [a for a in build_parser()._actions if a.option_strings and a.help != SUPPRESS]
    rows = _gen_flags().flag_table(build_parser()).splitlines()[2:]
    assert len(rows) == len(visible)
    for row, action in zip(rows, visible, strict=True):
        assert all(f"`{name}`" in row.split(" | ")[0] for name in action.option_strings), row


def test_every_relative_link_points_at_a_file_in_the_repository() -> None:
    checked = 0
    for document in DOCUMENTS:
        for link in _links(document):
            if re.match(r"^[a-z][a-z0-9+.-]*:", link):  # https:, mailto:
                continue
            target, _, anchor = link.partition("#")
            path = (document.parent / target).resolve() if target else document
            where = f"{document.relative_to(ROOT)}: {link}"
            assert path.is_relative_to(ROOT), f"{where} leaves the repository"
            assert path.exists(), f"{where} points at nothing"
            if anchor and path.suffix == ".md":
                assert anchor in _anchors(path), f"{where}: no such heading"
            checked += 1
    assert checked >= len(DOCUMENTS), "the link check found almost no links"


def test_every_file_and_test_named_exists() -> None:
    """A moved file or a renamed test leaves no stale name behind in the docs."""
    tests_by_file = {p.name: p for p in TESTS.rglob("test_*.py")}
    every_test = "\n".join(p.read_text(encoding="utf-8") for p in tests_by_file.values())
    named = 0
    for document in DOCUMENTS:
        text = FENCE.sub("", document.read_text(encoding="utf-8"))
        where = document.relative_to(ROOT)
        for path, name in NAMED_PY.findall(text):
            assert (ROOT / path).is_file(), f"{where} names {path}, which does not exist"
            if name:
                assert f"def {name}(" in (ROOT / path).read_text(encoding="utf-8"), (
                    f"{where} names {path}::{name}, which does not exist"
                )
            named += 1
        for file, name, bare in NAMED_TEST.findall(text):
            if file:
                assert file in tests_by_file, f"{where} names {file}, which does not exist"
            if name:
                source = tests_by_file[file].read_text(encoding="utf-8")
                assert f"def {name}(" in source, f"{where} names {file}::{name}: no such test"
            if bare:
                assert f"def {bare}(" in every_test, f"{where} names ::{bare}: no such test"
            named += 1
    assert named > 10, "the name check found almost no names"


def test_readme_is_under_200_lines() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines < 200, f"README.md has {lines} lines; move detail into docs/"


def _readme_commands() -> list[list[str]]:
    """The README's first code block: one newcomer's command a line, split at ``&&``."""
    block = re.search(r"```sh\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert block, "the README lost its two commands"
    return [line.split(" && ") for line in block.group(1).splitlines() if line.strip()]


def test_readme_leads_with_the_demo_and_the_test_command() -> None:
    text = README.read_text(encoding="utf-8")
    assert text.startswith("# "), "the README starts with its title"
    assert text.index("```sh") < text.index("\n## "), "the two commands come before any section"
    demo, tests = _readme_commands()
    assert demo[-1] == ".venv/bin/python -m server demo"
    assert tests[-1] == ".venv/bin/python -m pytest"
    assert demo[:-1] == tests[:-1], "both commands set up the same fresh venv"
    assert demo[0] == "python3 -m venv .venv"


def test_readme_test_command_is_what_ci_runs() -> None:
    """``.ci/run`` runs the README's test command, step by step, in order and with nothing
    added but ``--quiet`` for pip (which it runs as ``python -m pip``)."""
    ci: list[list[str]] = []
    for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines():
        line = line.replace(".venv/bin/python -m pip", ".venv/bin/pip")
        ci.append([w for w in shlex.split(line, comments=True) if w != "--quiet"])
    at = 0
    for step in _readme_commands()[1]:
        wanted = shlex.split(step)
        found = [
            i
            for i, words in enumerate(ci)
            if i >= at
            and words[: len(wanted)] == wanted
            and words[len(wanted) : len(wanted) + 1] in ([], ["||"], ["&&"])
        ]
        assert found, f".ci/run does not run the README's {step!r} (after line {at})"
        at = found[0] + 1
