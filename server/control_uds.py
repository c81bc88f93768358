"""The control API between the workers of one instance (``--workers N``): each worker listens
on a Unix socket in a directory the parent made (``TWILIO_BRIDGE_CONTROL_DIR``); a worker that
gets a request for a call it does not have asks the others, each over one bounded
request/answer exchange (one JSON line each way, with a timeout)."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from server.call_handle import CallHandle
from server.control_api import Answer, ControlApi

CONTROL_DIR_ENV = "TWILIO_BRIDGE_CONTROL_DIR"
MAX_LINE = 4 << 20  # bytes of one request or answer line (a worker's whole listing)


def setup_control_dir() -> Path:
    """In the parent, before spawning workers: the directory of their sockets (removed at exit)."""
    directory = Path(tempfile.mkdtemp(prefix="twilio-bridge-control-"))
    os.environ[CONTROL_DIR_ENV] = str(directory)

    def cleanup() -> None:
        os.environ.pop(CONTROL_DIR_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)

    atexit.register(cleanup)
    return directory


class UnixRelay:
    def __init__(self, api: ControlApi, directory: Path, timeout: float) -> None:
        self._api = api
        self._directory = directory
        self._timeout = timeout
        self._path = directory / f"{os.getpid()}.sock"
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self._path), limit=MAX_LINE
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._path.unlink(missing_ok=True)

    def live(self, handle: CallHandle, up: bool) -> None:
        """Nothing to record: a worker asks all the others."""

    async def forward(self, op: str, sid: str, payload: dict[str, Any]) -> Answer | None:
        request = {"op": op, "sid": sid, "payload": payload}
        answers = await asyncio.gather(*(self._ask(p, request) for p in self._peers()))
        return next((a for a in answers if a is not None and a[0] != 404), None)

    async def others(self) -> list[dict[str, Any]]:
        answers = await asyncio.gather(*(self._ask(p, {"op": "list"}) for p in self._peers()))
        calls: list[dict[str, Any]] = []
        for answer in answers:
            if answer is not None and isinstance(answer[1].get("calls"), list):
                calls += answer[1]["calls"]
        return calls

    def _peers(self) -> list[Path]:
        return sorted(p for p in self._directory.glob("*.sock") if p != self._path)

    async def _ask(self, path: Path, request: dict[str, Any]) -> Answer | None:
        """One exchange with the worker at ``path``; None if it is gone or too slow."""
        writer = None
        try:
            async with asyncio.timeout(self._timeout):
                reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_LINE)
                writer.write(json.dumps(request).encode() + b"\n")
                status, body = json.loads(await reader.readline())
            return (status, body) if isinstance(status, int) and isinstance(body, dict) else None
        except (OSError, TimeoutError, ValueError, TypeError):
            return None
        finally:
            if writer is not None:
                writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                request = json.loads(await reader.readline())
                if not isinstance(request, dict):
                    raise ValueError("not an object")
                answer = self._api.serve_peer(
                    str(request.get("op")), str(request.get("sid")), request.get("payload", {})
                )
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (OSError, TimeoutError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
