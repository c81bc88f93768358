"""``python -m server calls list|show|export``: read the call records.

``--records`` names the store as the server's flag does (default ``$BRIDGE_RECORDS`` or
``./calls.db``). Times are printed and parsed in UTC (ISO 8601; a bare date means midnight).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import NoReturn, TextIO

from server.records.model import CallRecord, Turn
from server.records.store import DEFAULT_RECORDS, Database, RecordsError, describe

PROG = "twilio-agent-bridge calls"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _when(value: str) -> float:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an ISO 8601 date or time, got {value!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def iso(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Read the call records the server keeps.")
    p.add_argument(
        "--records",
        default=None,
        help=f"SQLite path or postgresql:// URL (default $BRIDGE_RECORDS or {DEFAULT_RECORDS})",
    )
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="one line per call, oldest first")
    ls.add_argument("--since", type=_when, help="calls that started at or after this time")
    ls.add_argument("--until", type=_when, help="calls that started before this time")
    ls.add_argument("--reason", help="end reason: hangup, tool, timeout, agent_error, ...")
    ls.add_argument("--number", help="calls from or to this number")
    show = sub.add_parser("show", help="one call: its turns, what was heard, its events")
    show.add_argument("call_sid")
    show.add_argument("--json", action="store_true", help="the record as JSON")
    export = sub.add_parser("export", help="every record, one JSON object per line")
    export.add_argument("--format", choices=["jsonl"], default="jsonl")
    export.add_argument("--since", type=_when)
    export.add_argument("--until", type=_when)
    return p


def main(argv: Sequence[str], out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    spec = args.records or os.environ.get("BRIDGE_RECORDS") or DEFAULT_RECORDS
    if spec.lower() == "none":
        sys.stderr.write(f"{PROG}: error: records are off (--records none)\n")
        return 2
    if not spec.startswith(("postgresql://", "postgres://")) and not os.path.exists(spec):
        sys.stderr.write(f"{PROG}: error: no records at {spec}\n")
        return 2
    try:
        db = Database(spec)
    except RecordsError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 2
    try:
        if args.command == "list":
            for call in db.list_calls(args.since, args.until, args.reason, args.number):
                out.write(_summary(call) + "\n")
        elif args.command == "show":
            record = db.load(args.call_sid)
            if record is None:
                sys.stderr.write(f"{PROG}: error: no call {args.call_sid} in {describe(spec)}\n")
                return 1
            if args.json:
                out.write(json.dumps(record.to_json(), indent=2) + "\n")
            else:
                out.write(render(record))
        else:
            for call in db.list_calls(args.since, args.until):
                full = db.load(call.call_sid)
                if full is not None:
                    out.write(json.dumps(full.to_json(), separators=(",", ":")) + "\n")
    finally:
        db.close()
    return 0


def _summary(call: CallRecord) -> str:
    duration = f"{call.ended_at - call.started_at:.1f}s" if call.ended_at is not None else "-"
    return "  ".join(
        (
            iso(call.started_at),
            call.call_sid,
            call.from_number or "-",
            call.to_number or "-",
            duration,
            call.end_reason or "in progress",
        )
    )


def _heard(turn: Turn) -> str:
    parts = []
    if turn.playback is not None:
        fraction = turn.heard_fraction
        shown = f" {fraction:.0%}" if turn.playback != "played" and fraction is not None else ""
        parts.append(turn.playback.replace("_", " ") + shown)
    elif turn.reply is not None:
        parts.append("playback unknown")
    if turn.latency_audio_ms is not None:
        parts.append(f"first audio {turn.latency_audio_ms:.0f} ms")
    if turn.latency_mark_ms is not None:
        parts.append(f"heard by {turn.latency_mark_ms:.0f} ms")
    return f"  [{'; '.join(parts)}]" if parts else ""


def render(record: CallRecord) -> str:
    """The record as text: header, then turns and events in time order."""
    lines = [
        f"call {record.call_sid}  stream {record.stream_sid}  account {record.account_sid or '-'}",
        f"from {record.from_number or '-'}  to {record.to_number or '-'}",
        f"started {iso(record.started_at)}  ended {iso(record.ended_at)}",
        f"end: {record.end_reason or 'in progress'}"
        + (f" ({record.end_detail})" if record.end_detail else ""),
        f"keypad digits: {record.dtmf_count}  barge-ins: {record.barge_ins}",
        *([f"recording: {record.recording}"] if record.recording else []),
        "",
    ]
    rows: list[tuple[float, int, str]] = []
    for turn in record.turns:
        rows.append((turn.at, 0, f"{iso(turn.at)}  {turn.role:<9}  {turn.text}{_heard(turn)}"))
    for event in record.events:
        data = event.data
        detail = ""
        if "arguments" in data:
            detail = f" {data['arguments']}"
        if "result" in data:
            detail += f" -> {data['result']}"
        rows.append((event.at, 1, f"{iso(event.at)}  {event.kind:<9}  {event.name}{detail}"))
    lines += [text for _, _, text in sorted(rows, key=lambda r: (r[0], r[1]))]
    return "\n".join(lines) + "\n"
