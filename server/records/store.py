"""The record store: SQLite (default) or PostgreSQL, one schema, ordered migrations.

:class:`Database` hides the two drivers behind ``execute``/``query``/``transaction``; SQL is
written once with ``?`` placeholders. :class:`RecordStore` owns a writer thread fed through a
bounded queue, so the call driver never waits for the disk or the network: a full queue drops
the write (counted, logged without content) rather than stall a call. The call row is written
at ``start``, turns and events as they happen, and the row is finalised at the end, so a crash
loses at most the end of the calls in progress. ``on_finished`` hooks run in the writer
thread after a record is complete; with ``outbox`` set, the finish also queues the record for
the end-of-call webhook in the same transaction (see :mod:`server.records.webhook`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from server.records.model import CallRecord, Event, Turn
from server.records.recorder import Write

log = logging.getLogger("server.records")

DEFAULT_RECORDS = "./calls.db"
BUSY_TIMEOUT_MS = 10_000
QUEUE_ITEMS = 10_000
PURGE_EVERY = 3600.0
_MIGRATION_LOCK = 7_263_513  # pg_advisory_xact_lock key shared by every instance

MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "calls, turns and events",
        (
            """CREATE TABLE calls (
                call_sid TEXT PRIMARY KEY,
                stream_sid TEXT NOT NULL,
                account_sid TEXT NOT NULL,
                from_number TEXT NOT NULL,
                to_number TEXT NOT NULL,
                started_at DOUBLE PRECISION NOT NULL,
                ended_at DOUBLE PRECISION,
                end_reason TEXT,
                end_detail TEXT,
                dtmf_count INTEGER NOT NULL DEFAULT 0,
                barge_ins INTEGER NOT NULL DEFAULT 0)""",
            "CREATE INDEX calls_started_at ON calls (started_at)",
            """CREATE TABLE turns (
                call_sid TEXT NOT NULL,
                seq INTEGER NOT NULL,
                role TEXT NOT NULL,
                text TEXT NOT NULL,
                at DOUBLE PRECISION NOT NULL,
                reply INTEGER,
                playback TEXT,
                heard_fraction DOUBLE PRECISION,
                sent_bytes INTEGER NOT NULL DEFAULT 0,
                heard_bytes INTEGER NOT NULL DEFAULT 0,
                latency_audio_ms DOUBLE PRECISION,
                latency_mark_ms DOUBLE PRECISION,
                PRIMARY KEY (call_sid, seq))""",
            """CREATE TABLE events (
                call_sid TEXT NOT NULL,
                seq INTEGER NOT NULL,
                at DOUBLE PRECISION NOT NULL,
                kind TEXT NOT NULL,
                name TEXT NOT NULL,
                data TEXT NOT NULL,
                PRIMARY KEY (call_sid, seq))""",
        ),
    ),
    (
        2,
        "the webhook outbox and the recording's path",
        (
            "ALTER TABLE calls ADD COLUMN recording TEXT",
            """CREATE TABLE outbox (
                call_sid TEXT PRIMARY KEY,
                body TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                next_at DOUBLE PRECISION NOT NULL,
                claimed_until DOUBLE PRECISION,
                delivered_at DOUBLE PRECISION,
                failed_at DOUBLE PRECISION,
                last_error TEXT)""",
            "CREATE INDEX outbox_pending ON outbox (next_at) WHERE delivered_at IS NULL"
            " AND failed_at IS NULL",
        ),
    ),
    (
        3,
        "outbound calls: who was called, by which agent, and how it went",
        (
            """CREATE TABLE outbound (
                call_sid TEXT PRIMARY KEY,
                to_number TEXT,
                from_number TEXT,
                agent TEXT,
                created_at DOUBLE PRECISION,
                status TEXT,
                answered_by TEXT,
                outcome TEXT,
                updated_at DOUBLE PRECISION NOT NULL)""",
        ),
    ),
)
OUTBOUND_COLUMNS = (
    "to_number", "from_number", "agent", "created_at", "status", "answered_by", "outcome"
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

_CALL_COLUMNS = (
    "call_sid, stream_sid, account_sid, from_number, to_number, started_at, ended_at,"
    " end_reason, end_detail, dtmf_count, barge_ins, recording"
)
_TURN_COLUMNS = (
    "seq, role, text, at, reply, playback, heard_fraction, sent_bytes, heard_bytes,"
    " latency_audio_ms, latency_mark_ms"
)


class RecordsError(Exception):
    """The store cannot be opened or read; the message is one line."""


def is_postgres(spec: str) -> bool:
    return spec.startswith(("postgresql://", "postgres://"))


class Database:
    """One connection to SQLite or PostgreSQL, with the schema migrated on open."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.postgres = is_postgres(spec)
        # Per resumed call until its finish: (turn seq, event seq, dtmf, barge-ins) so far.
        self._bases: dict[str, tuple[int, int, int, int]] = {}
        try:
            self._conn: Any = self._connect()
            self.migrate()
        except RecordsError:
            raise
        except Exception as exc:
            raise RecordsError(f"cannot open records {describe(spec)}: {exc}") from None

    def _connect(self) -> Any:
        if self.postgres:
            try:
                import psycopg
            except ImportError:
                raise RecordsError(
                    "PostgreSQL records need psycopg: pip install 'twilio-agent-bridge[postgres]'"
                ) from None
            return psycopg.connect(self.spec, autocommit=True, connect_timeout=10)
        path = Path(self.spec)
        if path.parent and not path.parent.is_dir():
            raise RecordsError(f"cannot open records {self.spec}: no such directory")
        conn = sqlite3.connect(
            self.spec, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._conn.execute(self._sql(sql), tuple(params))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self._conn.execute(self._sql(sql), tuple(params)).fetchall())

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self.postgres:
            with self._conn.transaction():
                yield
            return
        self._conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlock
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def migrate(self) -> None:
        """Apply every migration step above the stored version, once, under a lock."""
        with self.transaction():
            if self.postgres:
                self.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            self.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            rows = self.query("SELECT version FROM schema_version")
            current = rows[0][0] if rows else 0
            if current > SCHEMA_VERSION:
                raise RecordsError(
                    f"records {describe(self.spec)} have schema version {current}; this server"
                    f" knows up to {SCHEMA_VERSION}: upgrade the server"
                )
            for version, _title, statements in MIGRATIONS:
                if version > current:
                    for statement in statements:
                        self.execute(statement)
            if not rows:
                self.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif current < SCHEMA_VERSION:
                self.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    # ------------------------------------------------------------------ writes

    def apply(self, writes: Sequence[Write], outbox: bool = False) -> None:
        """Apply a batch in one transaction; with ``outbox``, a finished call's webhook body
        is queued in that same transaction, so a record is never complete without it."""
        with self.transaction():
            for write in writes:
                if write.op == "start":
                    assert write.record is not None
                    self._start(write.record, write.resumed)
                elif write.op == "turn":
                    assert write.turn is not None
                    self._turn(write.call_sid, write.turn)
                elif write.op == "event":
                    assert write.event is not None
                    self._event(write.call_sid, write.event)
                elif write.op == "outbound":
                    self._outbound(write.call_sid, write.outbound or {})
                elif write.op == "finish":
                    assert write.record is not None
                    self._finish(write.record)
                    if outbox:
                        self._enqueue(write.call_sid)

    def _start(self, r: CallRecord, resumed: bool = False) -> None:
        # A stream resuming its call after a failed transfer continues that call's record (one
        # record per CallSid tells the whole call); any other second start with the same
        # CallSid (a replayed stream) replaces the first.
        if resumed and self._resume(r):
            return
        for table in ("turns", "events", "calls"):
            self.execute(f"DELETE FROM {table} WHERE call_sid = ?", (r.call_sid,))
        self.execute(
            f"INSERT INTO calls ({_CALL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            _call_row(r),
        )

    def _resume(self, r: CallRecord) -> bool:
        """Reopen the stored call: this stream's turns and events follow the first part's."""
        sid = r.call_sid
        rows = self.query("SELECT dtmf_count, barge_ins FROM calls WHERE call_sid = ?", (sid,))
        if not rows:
            return False
        turns = self.query("SELECT COALESCE(MAX(seq) + 1, 0) FROM turns WHERE call_sid = ?", (sid,))
        events = self.query(
            "SELECT COALESCE(MAX(seq) + 1, 0) FROM events WHERE call_sid = ?", (sid,)
        )
        dtmf, barge_ins = rows[0]
        self._bases[sid] = (int(turns[0][0]), int(events[0][0]), int(dtmf), int(barge_ins))
        self.execute(
            "UPDATE calls SET stream_sid = ?, ended_at = NULL, end_reason = NULL,"
            " end_detail = NULL WHERE call_sid = ?",
            (r.stream_sid, sid),
        )
        return True

    def _finish(self, r: CallRecord) -> None:
        _, _, dtmf, barge_ins = self._bases.pop(r.call_sid, (0, 0, 0, 0))
        self.execute(
            "UPDATE calls SET ended_at = ?, end_reason = ?, end_detail = ?, dtmf_count = ?,"
            " barge_ins = ? WHERE call_sid = ?",
            (
                r.ended_at,
                r.end_reason,
                r.end_detail,
                r.dtmf_count + dtmf,
                r.barge_ins + barge_ins,
                r.call_sid,
            ),
        )

    def _turn(self, call_sid: str, t: Turn) -> None:
        names = [n.strip() for n in _TURN_COLUMNS.split(",")]
        updates = ", ".join(f"{n} = excluded.{n}" for n in names[1:])
        self.execute(
            f"INSERT INTO turns (call_sid, {_TURN_COLUMNS}) VALUES"
            f" (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            f" ON CONFLICT (call_sid, seq) DO UPDATE SET {updates}",
            (
                call_sid,
                t.seq + self._bases.get(call_sid, (0,))[0],
                t.role,
                t.text,
                t.at,
                t.reply,
                t.playback,
                t.heard_fraction,
                t.sent_bytes,
                t.heard_bytes,
                t.latency_audio_ms,
                t.latency_mark_ms,
            ),
        )

    def _event(self, call_sid: str, e: Event) -> None:
        self.execute(
            "INSERT INTO events (call_sid, seq, at, kind, name, data) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (call_sid, seq) DO UPDATE SET data = excluded.data",
            (
                call_sid,
                e.seq + self._bases.get(call_sid, (0, 0))[1],
                e.at,
                e.kind,
                e.name,
                json.dumps(e.data),
            ),
        )

    def _outbound(self, call_sid: str, fields: dict[str, Any]) -> None:
        """Insert or update an outbound call's row with the columns ``fields`` names."""
        names = [n for n in OUTBOUND_COLUMNS if n in fields]
        values = [fields[n] for n in names]
        sets = "".join(f", {n} = excluded.{n}" for n in names)
        self.execute(
            f"INSERT INTO outbound (call_sid, {''.join(n + ', ' for n in names)}updated_at)"
            f" VALUES ({'?, ' * (len(names) + 1)}?)"
            f" ON CONFLICT (call_sid) DO UPDATE SET updated_at = excluded.updated_at{sets}",
            (call_sid, *values, time.time()),
        )

    def outbound(self, call_sid: str) -> dict[str, Any] | None:
        rows = self.query(
            f"SELECT {', '.join(OUTBOUND_COLUMNS)}, updated_at FROM outbound WHERE call_sid = ?",
            (call_sid,),
        )
        return dict(zip((*OUTBOUND_COLUMNS, "updated_at"), rows[0], strict=True)) if rows else None

    def _enqueue(self, call_sid: str) -> None:
        record = self.load(call_sid)
        if record is None:  # pragma: no cover - the finish above needs its start
            return
        body = json.dumps(record.to_json(), separators=(",", ":"))
        now = time.time()
        self.execute(
            "INSERT INTO outbox (call_sid, body, created_at, next_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (call_sid) DO NOTHING",
            (call_sid, body, now, now),
        )

    # ------------------------------------------------------------------ the outbox

    def _count(self, sql: str, params: Sequence[Any]) -> int:
        return int(self._conn.execute(self._sql(sql), tuple(params)).rowcount)

    def claim(self, now: float, lease: float) -> tuple[str, str, int, float] | None:
        """Take one due webhook for ``lease`` seconds: ``(call_sid, body, attempt, created_at)``.

        The conditional UPDATE is the claim: of several processes that saw the same row, one
        updates it and the others update nothing (SQLite serialises the whole transaction;
        PostgreSQL re-checks the WHERE on the row it locked). A claim that is never marked
        (the process died) expires after ``lease`` and the row is due again.
        """
        free = (
            "delivered_at IS NULL AND failed_at IS NULL"
            " AND (claimed_until IS NULL OR claimed_until < ?)"
        )
        with self.transaction():
            rows = self.query(
                f"SELECT call_sid FROM outbox WHERE next_at <= ? AND {free}"
                " ORDER BY next_at LIMIT 8",
                (now, now),
            )
            for (call_sid,) in rows:
                taken = self._count(
                    "UPDATE outbox SET claimed_until = ?, attempts = attempts + 1"
                    f" WHERE call_sid = ? AND {free}",
                    (now + lease, call_sid, now),
                )
                if taken == 1:
                    body, attempts, created = self.query(
                        "SELECT body, attempts, created_at FROM outbox WHERE call_sid = ?",
                        (call_sid,),
                    )[0]
                    return call_sid, body, attempts, created
        return None

    def delivered(self, call_sid: str, now: float) -> None:
        self.execute(
            "UPDATE outbox SET delivered_at = ?, claimed_until = NULL, last_error = NULL"
            " WHERE call_sid = ?",
            (now, call_sid),
        )

    def retry_later(self, call_sid: str, at: float, error: str) -> None:
        self.execute(
            "UPDATE outbox SET next_at = ?, claimed_until = NULL, last_error = ?"
            " WHERE call_sid = ?",
            (at, error, call_sid),
        )

    def give_up(self, call_sid: str, now: float, error: str) -> None:
        self.execute(
            "UPDATE outbox SET failed_at = ?, claimed_until = NULL, last_error = ?"
            " WHERE call_sid = ?",
            (now, error, call_sid),
        )

    def next_due(self) -> float | None:
        """When the earliest pending webhook is due (claimed ones: when their lease ends)."""
        rows = self.query(
            "SELECT MIN(CASE WHEN claimed_until IS NOT NULL AND claimed_until > next_at"
            " THEN claimed_until ELSE next_at END) FROM outbox"
            " WHERE delivered_at IS NULL AND failed_at IS NULL"
        )
        value = rows[0][0] if rows else None
        return None if value is None else float(value)

    def outbox_row(self, call_sid: str) -> dict[str, Any] | None:
        """One outbox row as a dict (tests, diagnostics)."""
        names = ("attempts", "next_at", "claimed_until", "delivered_at", "failed_at", "last_error")
        rows = self.query(f"SELECT {', '.join(names)} FROM outbox WHERE call_sid = ?", (call_sid,))
        return dict(zip(names, rows[0], strict=True)) if rows else None

    # ------------------------------------------------------------------ retention

    def purge(self, older_than: float) -> tuple[int, list[str]]:
        """Delete the calls that started before ``older_than`` (epoch seconds), with their
        turns, events and outbox rows; returns how many, and their recordings' paths."""
        with self.transaction():
            rows = self.query(
                "SELECT call_sid, recording FROM calls WHERE started_at < ?", (older_than,)
            )
            for table in ("turns", "events", "outbox"):
                self.execute(
                    f"DELETE FROM {table} WHERE call_sid IN"
                    " (SELECT call_sid FROM calls WHERE started_at < ?)",
                    (older_than,),
                )
            self.execute("DELETE FROM calls WHERE started_at < ?", (older_than,))
            self.execute("DELETE FROM outbound WHERE updated_at < ?", (older_than,))
        return len(rows), [path for _, path in rows if path]

    # ------------------------------------------------------------------ reads

    def list_calls(
        self,
        since: float | None = None,
        until: float | None = None,
        reason: str | None = None,
        number: str | None = None,
    ) -> list[CallRecord]:
        """Calls (without turns and events), oldest first."""
        where: list[str] = []
        params: list[Any] = []
        if since is not None:
            where.append("started_at >= ?")
            params.append(since)
        if until is not None:
            where.append("started_at < ?")
            params.append(until)
        if reason is not None:
            where.append("end_reason = ?")
            params.append(reason)
        if number is not None:
            where.append("(from_number = ? OR to_number = ?)")
            params += [number, number]
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self.query(
            f"SELECT {_CALL_COLUMNS} FROM calls{clause} ORDER BY started_at, call_sid", params
        )
        return [CallRecord(*row) for row in rows]

    def load(self, call_sid: str) -> CallRecord | None:
        rows = self.query(f"SELECT {_CALL_COLUMNS} FROM calls WHERE call_sid = ?", (call_sid,))
        if not rows:
            return None
        record = CallRecord(*rows[0])
        record.turns = [
            Turn(*row)
            for row in self.query(
                f"SELECT {_TURN_COLUMNS} FROM turns WHERE call_sid = ? ORDER BY seq", (call_sid,)
            )
        ]
        record.events = [
            Event(seq, at, kind, name, json.loads(data))
            for seq, at, kind, name, data in self.query(
                "SELECT seq, at, kind, name, data FROM events WHERE call_sid = ? ORDER BY seq",
                (call_sid,),
            )
        ]
        return record


def _call_row(r: CallRecord) -> tuple[Any, ...]:
    return (
        r.call_sid,
        r.stream_sid,
        r.account_sid,
        r.from_number,
        r.to_number,
        r.started_at,
        r.ended_at,
        r.end_reason,
        r.end_detail,
        r.dtmf_count,
        r.barge_ins,
        r.recording,
    )


def describe(spec: str) -> str:
    """A store's name for messages: a PostgreSQL URL without its password."""
    if not is_postgres(spec):
        return spec
    from urllib.parse import urlsplit

    parts = urlsplit(spec)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return (
        f"{parts.scheme}://{parts.username + '@' if parts.username else ''}{host}{port}{parts.path}"
    )


class RecordStore:
    """The server's store: a writer thread for the calls, a lock-guarded reader for HTTP."""

    def __init__(
        self, spec: str, *, retention_days: float | None = None, max_queue: int = QUEUE_ITEMS
    ) -> None:
        self.spec = spec
        self.retention_days = retention_days
        self.on_finished: list[Callable[[CallRecord], None]] = []
        self.outbox = False
        """Queue each finished record for the end-of-call webhook (set before the first call)."""
        self.dropped = 0
        self.failed = 0
        self._reader = Database(spec)  # opens and migrates, in the caller's thread: errors early
        self._read_lock = threading.Lock()
        self._queue: queue.Queue[list[Write] | Callable[[], None] | None] = queue.Queue(max_queue)
        self._next_purge = 0.0
        self._thread = threading.Thread(target=self._run, name="records-writer", daemon=True)
        self._thread.start()

    def submit(self, writes: list[Write]) -> None:
        """Queue writes without ever blocking; a full queue drops them (counted)."""
        try:
            self._queue.put_nowait(writes)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("records queue full: %d write batch(es) dropped", self.dropped)

    def load(self, call_sid: str) -> CallRecord | None:
        with self._read_lock:
            return self._reader.load(call_sid)

    def load_outbound(self, call_sid: str) -> dict[str, Any] | None:
        """The row of an outbound call (docs/outbound.md), or None."""
        with self._read_lock:
            return self._reader.outbound(call_sid)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is written (tests, the CLI after a demo)."""
        done = threading.Event()
        try:
            self._queue.put(done.set, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    async def written(self, timeout: float) -> bool:
        """Wait, without blocking the loop, until everything submitted so far is written:
        a transfer waits so that the dial action, on any instance, reads every turn."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def wake() -> None:
            if not done.done():
                done.set_result(None)

        def signal() -> None:  # in the writer thread
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(wake)

        try:
            self._queue.put_nowait(signal)
        except queue.Full:
            return False
        try:
            await asyncio.wait_for(done, timeout)
        except TimeoutError:
            return False
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the writer thread and close the connections."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        with self._read_lock:
            self._reader.close()

    def _run(self) -> None:
        try:
            db = Database(self.spec)
        except RecordsError as exc:
            log.error("records writer cannot start: %s", exc)
            return
        try:
            while True:
                self._purge_if_due(db)
                try:
                    writes = self._queue.get(timeout=60.0)
                except queue.Empty:
                    continue
                if writes is None:
                    return
                if callable(writes):  # a marker: everything before it is written
                    writes()
                    continue
                self._write(db, writes)
        finally:
            db.close()

    def _write(self, db: Database, writes: list[Write]) -> None:
        try:
            db.apply(writes, self.outbox)
        except Exception as exc:  # never the content: only what went wrong
            self.failed += 1
            log.error("records write failed (%s): %s", type(exc).__name__, exc)
            return
        for write in writes:
            if write.op == "finish" and write.record is not None:
                for hook in self.on_finished:
                    try:
                        hook(write.record)
                    except Exception:
                        log.exception("records on_finished hook failed")

    def _purge_if_due(self, db: Database) -> None:
        days = self.retention_days
        now = time.time()
        if days is None or now < self._next_purge:
            return
        self._next_purge = now + PURGE_EVERY
        try:
            removed, recordings = db.purge(now - days * 86400.0)
        except Exception as exc:
            log.error("records retention failed (%s): %s", type(exc).__name__, exc)
            return
        for path in recordings:
            try:
                Path(path).unlink(missing_ok=True)
            except OSError as exc:
                log.error("records retention: cannot delete a recording (%s)", exc.strerror)
        if removed:
            log.info("records retention: removed %d call(s) older than %g days", removed, days)


def open_store(spec: str | None, retention_days: float | None = None) -> RecordStore | None:
    """``none`` (or empty) turns records off."""
    if not spec or spec.lower() == "none":
        return None
    return RecordStore(spec, retention_days=retention_days)
