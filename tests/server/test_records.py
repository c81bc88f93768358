"""Call records: the pure recorder driven by a real core, and the store on SQLite and PostgreSQL.

The PostgreSQL cases need ``TEST_POSTGRES_URL`` (``.ci/postgres.sh`` prints one); without it
they skip locally and fail under ``CI=true``, so CI cannot pass without running them.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sansio import CallBridge
from server.records import (
    CallRecord,
    CallRecorder,
    Database,
    Event,
    RecordsError,
    RecordStore,
    Turn,
    Write,
)
from server.records import cli as records_cli
from server.records.redact import FAILED, guarded
from server.records.store import SCHEMA_VERSION
from tests.helpers import CALL_SID, config, twilio_dtmf, twilio_mark, twilio_start, twilio_stop

# ---------------------------------------------------------------------- the recorder


class Call:
    """A real core in virtual time, with every action batch fed to a recorder."""

    def __init__(self, **overrides: Any) -> None:
        self.now = 100.0
        self.core = CallBridge(config(mark_interval_ms=500, **overrides), now=self.now)
        self.recorder = CallRecorder(clock_offset=1_700_000_000.0)
        self.marks: list[str] = []

    def pump(self) -> None:
        actions = self.core.actions()
        self.recorder.feed(actions, self.now)
        for action in actions:
            text = getattr(action, "text", "")
            if type(action).__name__ == "SendTwilioMark":
                self.marks.append(json.loads(text)["mark"]["name"])

    def at(self, now: float) -> Call:
        self.now = now
        return self

    def twilio(self, text: str) -> None:
        self.core.twilio_text(text, self.now)
        if self.recorder.awaiting_mark is not None and self.recorder.awaiting_mark in text:
            self.recorder.mark_echoed(text, self.now)
        self.pump()

    def agent(self, message: dict[str, Any] | bytes) -> None:
        if isinstance(message, bytes):
            self.core.agent_audio(message, self.now)
        else:
            self.core.agent_text(json.dumps(message), self.now)
        self.pump()

    def ready(self, parameters: dict[str, str] | None = None) -> None:
        self.twilio(twilio_start(parameters if parameters is not None else {"From": "+15550100"}))
        self.core.agent_connected(self.now)
        self.agent({"type": "Welcome", "request_id": "r"})
        self.agent({"type": "SettingsApplied"})


def say(role: str, content: str) -> dict[str, Any]:
    return {"type": "ConversationText", "role": role, "content": content}


def test_recorder_builds_the_whole_record_from_a_call() -> None:
    call = Call()
    call.ready({"From": "+15550100", "To": "+15550199"})
    call.at(101.0).agent(say("user", "I have a cough"))
    call.at(101.2).agent(say("assistant", "How long have you had it?"))
    call.at(101.5).agent(b"\x01" * 4000)  # one second in two halves: a mark after each
    call.agent(b"\x01" * 4000)
    first_mark = call.marks[0]
    call.at(101.9).twilio(twilio_mark(first_mark))
    call.at(102.0).agent({"type": "UserStartedSpeaking"})  # barge-in: heard 4000 of 8000
    call.at(103.0).agent(say("user", "Since Monday"))
    call.at(103.1).agent(say("assistant", "Please book a visit."))
    call.at(103.4).agent(b"\x02" * 1600)
    call.at(103.5).agent({"type": "AgentAudioDone"})
    for name in call.marks[2:]:
        call.at(103.7).twilio(twilio_mark(name))
    call.twilio(twilio_dtmf("4"))
    call.twilio(twilio_dtmf("2"))
    call.at(104.0).twilio(twilio_stop())
    record = call.recorder.record
    assert record is not None
    assert (record.call_sid, record.from_number, record.to_number) == (
        CALL_SID,
        "+15550100",
        "+15550199",
    )
    assert [(t.role, t.text) for t in record.turns] == [
        ("user", "I have a cough"),
        ("assistant", "How long have you had it?"),
        ("user", "Since Monday"),
        ("assistant", "Please book a visit."),
    ]
    cut, played = record.turns[1], record.turns[3]
    assert (cut.playback, cut.heard_fraction, cut.sent_bytes, cut.heard_bytes) == (
        "partly_heard",
        0.5,
        8000,
        4000,
    )
    assert (played.playback, played.heard_fraction) == ("played", 1.0)
    assert cut.latency_audio_ms == 500.0 and cut.latency_mark_ms == 900.0
    assert played.latency_audio_ms == 400.0 and played.latency_mark_ms == 700.0
    assert record.dtmf_count == 2 and record.barge_ins == 1
    assert [e.kind for e in record.events] == ["barge_in"]
    assert record.end_reason == "hangup" and record.ended_at == 1_700_000_104.0
    assert record.turns[0].at == 1_700_000_101.0


def test_recorder_writes_start_turns_then_finish_and_copies_what_it_hands_over() -> None:
    call = Call()
    call.ready()
    first = call.recorder.take()
    assert [w.op for w in first] == ["start"]
    call.agent(say("user", "hello"))
    turns = call.recorder.take()
    assert [w.op for w in turns] == ["turn"] and turns[0].turn is not None
    call.recorder.record.turns[0].text = "changed later"  # type: ignore[union-attr]
    assert turns[0].turn.text == "hello"  # a copy: the writer thread never sees a mutation
    assert call.recorder.take() == [] and not call.recorder.dirty
    call.twilio(twilio_stop())
    assert [w.op for w in call.recorder.take()] == ["finish"]


def test_recorder_binds_a_line_that_comes_after_its_audio_and_counts_a_cleared_reply() -> None:
    call = Call()
    call.ready()
    call.agent(b"\x01" * 800)  # audio first, no mark echoed yet
    call.agent(say("assistant", "Late text"))
    call.agent({"type": "UserStartedSpeaking"})
    record = call.recorder.record
    assert record is not None
    assert [(t.role, t.text, t.playback, t.heard_fraction) for t in record.turns] == [
        ("assistant", "Late text", "cleared", 0.0)
    ]


def test_recorder_keeps_tool_calls_with_results_and_redacts_before_keeping() -> None:
    def redact(kind: str, text: str) -> str:
        return f"<{kind}>"

    call = Call()
    call.recorder = CallRecorder(redact=redact)
    call.ready({"From": "+15550100"})
    call.agent(
        {
            "type": "FunctionCallRequest",
            "functions": [
                {
                    "id": "f1",
                    "name": "lookup",
                    "arguments": '{"dob": "1970-01-01"}',
                    "client_side": True,
                }
            ],
        }
    )
    call.recorder.tool_result("f1", '{"found": true}', True)
    call.agent(say("user", "my secret"))
    record = call.recorder.record
    assert record is not None
    assert record.from_number == "<number>"
    assert record.turns[0].text == "<transcript>"
    (tool,) = record.events
    assert (tool.kind, tool.name) == ("tool_call", "lookup")
    assert tool.data == {
        "call_id": "f1",
        "arguments": "<tool_arguments>",
        "result": "<tool_result>",
        "ok": True,
    }


def test_a_failing_redaction_hook_withholds_the_text() -> None:
    def broken(kind: str, text: str) -> str:
        raise RuntimeError(text)

    assert guarded(broken)("transcript", "private words") == FAILED


# ---------------------------------------------------------------------- the store


def _postgres_url() -> str:
    url = os.environ.get("TEST_POSTGRES_URL", "")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("TEST_POSTGRES_URL is not set under CI=true: run .ci/postgres.sh")
        pytest.skip("TEST_POSTGRES_URL is not set (run .ci/postgres.sh)")
    return url


def _reset_postgres(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for table in ("turns", "events", "calls", "outbox", "outbound", "schema_version"):
            conn.execute(f"DROP TABLE IF EXISTS {table}")


@pytest.fixture(params=["sqlite", "postgres"])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "calls.db")
        return
    url = _postgres_url()
    _reset_postgres(url)
    yield url
    _reset_postgres(url)


def _record(sid: str, started: float, **fields: Any) -> CallRecord:
    record = CallRecord(sid, "MZ" + sid, "AC1", "+15550100", "+15550199", started, **fields)
    return record


def _write_call(store: RecordStore, record: CallRecord) -> None:
    store.submit([Write("start", record.call_sid, record=record.copy())])
    for turn in record.turns:
        store.submit([Write("turn", record.call_sid, turn=turn)])
    for event in record.events:
        store.submit([Write("event", record.call_sid, event=event)])
    if record.ended_at is not None:
        store.submit([Write("finish", record.call_sid, record=record.copy())])


def _full_record(sid: str = "CA1", started: float = 1_700_000_000.0) -> CallRecord:
    record = _record(
        sid,
        started,
        ended_at=started + 30,
        end_reason="hangup",
        end_detail="the caller hung up (stop)",
        dtmf_count=3,
        barge_ins=1,
    )
    record.turns = [
        Turn(0, "user", "I have a cough", started + 1),
        Turn(
            1,
            "assistant",
            "How long?",
            started + 2,
            reply=1,
            playback="partly_heard",
            heard_fraction=0.5,
            sent_bytes=8000,
            heard_bytes=4000,
            latency_audio_ms=500.0,
            latency_mark_ms=900.0,
        ),
    ]
    record.events = [
        Event(
            0, started + 3, "tool_call", "lookup", {"arguments": "{}", "result": "ok", "ok": True}
        )
    ]
    return record


def test_store_round_trips_a_record_written_in_the_background(spec: str) -> None:
    store = RecordStore(spec)
    finished: list[CallRecord] = []
    store.on_finished.append(finished.append)
    try:
        record = _full_record()
        _write_call(store, record)
        assert store.flush()
        assert store.load("CA1") == record
        assert finished == [record]  # the seam for the webhook outbox: once, complete
        assert store.load("CA-unknown") is None
    finally:
        store.close()


def test_a_crash_keeps_the_start_and_the_turns_of_a_call_in_progress(spec: str) -> None:
    store = RecordStore(spec)
    record = _full_record()
    partial = _record("CA1", record.started_at)
    partial.turns = record.turns
    _write_call(store, partial)
    assert store.flush()
    store.close()
    loaded = Database(spec).load("CA1")
    assert loaded is not None and not loaded.complete
    assert [t.text for t in loaded.turns] == ["I have a cough", "How long?"]


def test_migrations_run_once_and_record_the_schema_version(spec: str) -> None:
    for _ in range(2):
        db = Database(spec)
        assert db.query("SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
        db.close()


def test_a_newer_schema_is_refused(spec: str) -> None:
    db = Database(spec)
    db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    db.close()
    with pytest.raises(RecordsError, match="upgrade the server"):
        Database(spec)


def test_retention_deletes_old_calls_only(spec: str) -> None:
    now = time.time()
    old, new = _full_record("CA-old", now - 10 * 86400), _full_record("CA-new", now - 6 * 86400)
    store = RecordStore(spec)
    for record in (old, new):
        _write_call(store, record)
    assert store.flush()
    store.close()
    store = RecordStore(spec, retention_days=7)  # the writer purges when it starts
    assert store.flush()
    try:
        assert store.load("CA-old") is None
        assert store.load("CA-new") == new
        db = Database(spec)
        assert db.query("SELECT COUNT(*) FROM turns WHERE call_sid = 'CA-old'") == [(0,)]
    finally:
        store.close()


def _worker(spec: str, prefix: str, count: int) -> None:
    store = RecordStore(spec)
    for i in range(count):
        _write_call(store, _full_record(f"{prefix}{i}", 1_700_000_000.0 + i))
    store.flush(30)
    store.close()


def test_several_processes_write_the_same_store(spec: str) -> None:
    Database(spec).close()  # migrated once up front, as the first worker would
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker, args=(spec, f"CA{w}-", 40)) for w in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    db = Database(spec)
    assert db.query("SELECT COUNT(*) FROM calls WHERE ended_at IS NOT NULL") == [(120,)]
    assert db.query("SELECT COUNT(*) FROM turns") == [(240,)]


def test_sqlite_store_is_in_wal_mode(tmp_path: Path) -> None:
    Database(str(tmp_path / "c.db")).close()
    conn = sqlite3.connect(tmp_path / "c.db")
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


# ---------------------------------------------------------------------- reading them


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = records_cli.main(list(argv), out)
    return code, out.getvalue()


def test_calls_list_show_and_export(spec: str) -> None:
    store = RecordStore(spec)
    base = 1_700_000_000.0  # 2023-11-14T22:13:20Z
    _write_call(store, _full_record("CA1", base))
    other = _full_record("CA2", base + 86400)
    other.from_number, other.end_reason = "+15550777", "tool"
    _write_call(store, other)
    assert store.flush()
    store.close()

    code, out = _cli("--records", spec, "list")
    assert code == 0 and [line.split()[1] for line in out.splitlines()] == ["CA1", "CA2"]
    assert _cli("--records", spec, "list", "--reason", "tool")[1].split()[1] == "CA2"
    assert _cli("--records", spec, "list", "--number", "+15550777")[1].count("\n") == 1
    assert _cli("--records", spec, "list", "--since", "2023-11-15")[1].split()[1] == "CA2"
    assert _cli("--records", spec, "list", "--until", "2023-11-15")[1].split()[1] == "CA1"

    code, out = _cli("--records", spec, "show", "CA1", "--json")
    assert code == 0 and CallRecord.from_json(json.loads(out)) == _full_record("CA1", base)
    code, out = _cli("--records", spec, "show", "CA1")
    assert "How long?  [partly heard 50%; first audio 500 ms; heard by 900 ms]" in out
    assert "tool_call  lookup {} -> ok" in out and "end: hangup" in out
    assert _cli("--records", spec, "show", "CA-none")[0] == 1

    code, out = _cli("--records", spec, "export", "--format", "jsonl")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["call_sid"] for r in lines] == ["CA1", "CA2"]
    assert lines[0]["turns"][1]["heard_fraction"] == 0.5


def test_calls_cli_names_a_missing_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from server.cli import main

    assert main(["calls", "--records", str(tmp_path / "absent.db"), "list"]) == 2
    assert "no records at" in capsys.readouterr().err
