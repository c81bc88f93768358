"""The control API between instances that share PostgreSQL records (``--records
postgresql://...``): each process records its live calls in ``bridge_live_calls`` with its
owner id, and listens on the channel ``bridge_control_<owner>``. A process asked about a call
it does not have looks up the owner, sends the request with ``pg_notify`` and waits (bounded)
for the answer on its own channel. Listings and ``GET`` read the table."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any

import psycopg

from server.call_handle import CallHandle
from server.control_api import Answer, ControlApi

log = logging.getLogger("server.control")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS bridge_live_calls (call_sid text PRIMARY KEY,"
    " owner text NOT NULL, call jsonb NOT NULL, since timestamptz NOT NULL DEFAULT now())"
)
MAX_WAITING = 256  # relayed requests awaiting an answer at once


class PostgresRelay:
    def __init__(self, api: ControlApi, url: str, timeout: float) -> None:
        self._api = api
        self._url = url
        self._timeout = timeout
        self.owner = uuid.uuid4().hex
        self._listen: psycopg.AsyncConnection[Any] | None = None
        self._talk: psycopg.AsyncConnection[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Future[Answer]] = {}
        self._writes: set[asyncio.Task[None]] = set()

    @staticmethod
    def channel(owner: str) -> str:
        return f"bridge_control_{owner}"

    async def start(self) -> None:
        connect = psycopg.AsyncConnection.connect
        self._talk = await connect(self._url, autocommit=True, connect_timeout=10)
        self._listen = await connect(self._url, autocommit=True, connect_timeout=10)
        await self._talk.execute(_SCHEMA)
        await self._listen.execute(f"LISTEN {self.channel(self.owner)}")
        self._task = asyncio.get_running_loop().create_task(self._receive())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._writes:
            await asyncio.wait(self._writes, timeout=self._timeout)
        for conn in (self._talk, self._listen):
            if conn is None:
                continue
            with contextlib.suppress(psycopg.Error, TimeoutError):
                if conn is self._talk:
                    async with asyncio.timeout(self._timeout):
                        sql = "DELETE FROM bridge_live_calls WHERE owner = %s"
                        await conn.execute(sql, (self.owner,))
                await conn.close()

    # ------------------------------------------------------------------ the live calls

    def live(self, handle: CallHandle, up: bool) -> None:
        """A call of this process started (``up``) or finished: the table follows."""
        if up:
            sql = (
                "INSERT INTO bridge_live_calls (call_sid, owner, call) VALUES (%s, %s, %s)"
                " ON CONFLICT (call_sid) DO UPDATE SET owner = EXCLUDED.owner, call = EXCLUDED.call"
            )
            args: tuple[Any, ...] = (handle.call_sid, self.owner, json.dumps(handle.describe()))
        else:
            sql = "DELETE FROM bridge_live_calls WHERE call_sid = %s AND owner = %s"
            args = (handle.call_sid, self.owner)
        task = asyncio.get_running_loop().create_task(self._write(sql, args))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        assert self._talk is not None
        try:
            async with asyncio.timeout(self._timeout):
                await self._talk.execute(sql, args)
        except (psycopg.Error, TimeoutError) as exc:
            log.warning("live calls table not updated: %s", type(exc).__name__)

    # ------------------------------------------------------------------ the relay

    async def forward(self, op: str, sid: str, payload: dict[str, Any]) -> Answer | None:
        sql = "SELECT owner, call FROM bridge_live_calls WHERE call_sid = %s"
        try:
            rows = await self._query(sql, sid)
        except (psycopg.Error, TimeoutError) as exc:
            return 503, {"error": f"the live calls cannot be read: {type(exc).__name__}"}
        if not rows or rows[0][0] == self.owner:
            return None
        owner, call = rows[0]
        if op == "get":
            return 200, dict(call)
        if len(self._waiting) >= MAX_WAITING:
            return 503, {"error": "too many relayed requests in flight"}
        key = uuid.uuid4().hex
        future = self._waiting[key] = asyncio.get_running_loop().create_future()
        request = {"id": key, "reply": self.owner, "op": op, "sid": sid, "payload": payload}
        try:
            text = json.dumps(request, ensure_ascii=False)
            await self._query("SELECT pg_notify(%s, %s)", self.channel(owner), text)
            async with asyncio.timeout(self._timeout):
                answer: Answer = await future
            return answer
        except (psycopg.Error, TimeoutError):
            return 504, {"error": f"the instance that has call {sid} did not answer"}
        finally:
            self._waiting.pop(key, None)

    async def others(self) -> list[dict[str, Any]]:
        sql = "SELECT call FROM bridge_live_calls WHERE owner <> %s"
        try:
            rows = await self._query(sql, self.owner)
        except (psycopg.Error, TimeoutError) as exc:
            log.warning("live calls not listed: %s", type(exc).__name__)
            return []
        return [row[0] for row in rows]

    async def _query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        assert self._talk is not None
        async with asyncio.timeout(self._timeout):
            cursor = await self._talk.execute(sql, args)
            return await cursor.fetchall() if cursor.description else []

    async def _receive(self) -> None:
        assert self._listen is not None
        try:
            async for note in self._listen.notifies():
                self._on_note(note.payload)
        except psycopg.Error as exc:
            log.error("control channel lost: %s", type(exc).__name__)

    def _on_note(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        if "reply" in message:  # a request for one of this process's calls
            answer = self._api.serve_peer(
                str(message.get("op")), str(message.get("sid")), message.get("payload", {})
            )
            reply = json.dumps({"id": message.get("id"), "answer": answer}, ensure_ascii=False)
            channel = self.channel(str(message["reply"]))
            task = asyncio.get_running_loop().create_task(
                self._write("SELECT pg_notify(%s, %s)", (channel, reply))
            )
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)
            return
        future = self._waiting.get(str(message.get("id")))
        got = message.get("answer")
        if future is None or future.done() or not isinstance(got, list) or len(got) != 2:
            return
        status, body = got
        if isinstance(status, int) and isinstance(body, dict):
            future.set_result((status, body))
