"""Write the flag table of docs/configuration.md from ``server.cli.build_parser()``.

The parser is the one source of truth for flags; the table is regenerated from it, never edited
by hand, and ``tests/test_docs.py`` fails when the two differ. Run from the repository root:

    python docs/gen_flags.py          # rewrite the table between the markers
    python docs/gen_flags.py --check  # exit 1 if the table is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = ROOT / "docs" / "configuration.md"
BEGIN = "<!-- flags:begin -->"
END = "<!-- flags:end -->"


def _default(action: argparse.Action) -> str:
    """The default as a user would type it; flags without a value show ``off`` or nothing."""
    if isinstance(action, argparse._StoreTrueAction):
        return "off"
    if action.default in (None, [], argparse.SUPPRESS):
        return "—"
    return f"`{action.default}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def flag_table(parser: argparse.ArgumentParser) -> str:
    """Every visible flag of ``parser`` (name, default, help) as a Markdown table."""
    rows = ["| flag | default | what it does |", "|---|---|---|"]
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        names = ", ".join(f"`{name}`" for name in action.option_strings)
        if action.metavar is not None:
            names += f" `{action.metavar}`"
        text = action.help or ""
        if action.choices is not None:
            text += " (one of " + ", ".join(f"`{c}`" for c in action.choices) + ")"
        rows.append(f"| {_cell(names)} | {_cell(_default(action))} | {_cell(text.strip())} |")
    return "\n".join(rows)


def splice(document: str, table: str) -> str:
    """``document`` with the text between the markers replaced by ``table``."""
    head, begin, rest = document.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"{CONFIGURATION.name} lacks the {BEGIN} / {END} markers")
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    from server.cli import build_parser

    document = CONFIGURATION.read_text(encoding="utf-8")
    updated = splice(document, flag_table(build_parser()))
    if "--check" in argv:
        if updated != document:
            print(f"{CONFIGURATION} is stale: run python docs/gen_flags.py", file=sys.stderr)
            return 1
        return 0
    CONFIGURATION.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
