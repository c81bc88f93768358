"""LocalAgent: a stand-in for the Deepgram Voice Agent API v1, for tests, demos and benchmarks.

It speaks the wire protocol of ``wss://agent.deepgram.com/v1/agent/converse``: every client and
server message of the v1 spec and of ``deepgram-sdk`` 7.17 (see :mod:`.agent_schema`), and applies
Deepgram's documented rules strictly, so that a bridge which passes against it has no protocol bugs
a real agent would punish. Options make it as surprising as the real one: speculative function
calls cancelled when the caller resumes, refused injections, multi-item and server-side function
calls, audio already queued after a barge-in, and each way a session can fail mid-call. It cannot
understand speech or synthesize text: an energy VAD stands in for turn detection and shipped clips
or tones stand in for the voice. It is an independent peer: it imports nothing from the bridge.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import os
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal, NamedTuple

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .agent_schema import unparsable_field
from .audio import BYTES_PER_MS, SAMPLE_RATE, Vad, load_clip, tone

ReplyMode = Literal["clip", "echo", "tone"]
FailMode = Literal["error", "close_1011", "drop", "duration_cap"]
FAIL_MODES: tuple[FailMode, ...] = ("error", "close_1011", "drop", "duration_cap")
AudioHook = Callable[["AgentSession", bytes, float], None]
"""``hook(session, data, t)`` with ``t = time.perf_counter()``; must be fast and must not raise."""

PATH = "/v1/agent/converse"
ERROR_CLOSE_CODE = 1000
"""Deepgram documents no close codes for the agent API; the Error message is the authority."""
GOODBYE_TEXT = "Thank you for calling. Goodbye!"
REPLY_TEXT = "I understand. Could you tell me a little more about that?"
TRANSFER_TEXT = "I'm connecting you to the front desk."
TRANSFER_FAILED_TEXT = "I'm sorry, I can't connect you right now. How else can I help?"
TRANSFER_REASON = "the caller asked for the front desk"
TIMEOUT_DESCRIPTION = (
    "We waited too long for a websocket message. "
    "Please ensure that you're sending binary messages containing user speech."
)
SESSION_CAP_SECONDS = 7200.0
"""Deepgram closes every agent session at the 2-hour mark, KeepAlive or not."""
SESSION_CAP_REASON = "maximum session length reached"
REFUSED_TEXT = "Cannot inject message while agent is currently speaking"
REFUSED_USER_TEXT = "Cannot inject message while user is currently speaking"
_UPDATE_ACKS = {
    "UpdatePrompt": "PromptUpdated",
    "UpdateSpeak": "SpeakUpdated",
    "UpdateThink": "ThinkUpdated",
    "UpdateListen": "ListenUpdated",
    "UpdateThink_Live": "ThinkLiveUpdated",
}


class Received(NamedTuple):
    """One client message as it arrived: parsed JSON (a dict) or the binary audio itself."""

    t: float
    """``loop.time()`` on arrival."""
    message: dict[str, Any] | bytes


@dataclass(frozen=True, slots=True)
class Failure:
    """How a session fails mid-call: ``mode`` at ``after`` seconds past ``SettingsApplied``.

    ``error``: an ``INTERNAL_SERVER_ERROR`` Error, then a close; ``close_1011``: a close with 1011
    and no Error; ``drop``: the TCP connection is cut with no close frame; ``duration_cap``: the
    session cap, a normal close (1000) with no Error, as at Deepgram's 2-hour mark. Only the first
    ``sessions`` connections fail, so that a client which reconnects gets a working one.
    """

    mode: FailMode
    after: float = 1.0
    sessions: int = 1


class _Fatal(Exception):
    """A client mistake Deepgram answers with a fatal ``Error`` message and a close."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


def _unparsable(path: str) -> _Fatal:
    """Deepgram's wording when a message fails to parse, naming the field."""
    if not path:
        return _Fatal(
            "UNPARSABLE_CLIENT_MESSAGE",
            "Text message received from client did not match any of the formats we expect.",
        )
    return _Fatal(
        "UNPARSABLE_CLIENT_MESSAGE",
        f"Error parsing client message. Check the {path} field against the API spec.",
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def settings_problem(message: dict[str, Any]) -> str | None:
    """Why a Settings message is INVALID_SETTINGS for this agent, naming the field, or None.

    Deepgram requires ``audio`` and ``agent``, and ``encoding`` plus ``sample_rate`` whenever
    ``audio.input`` is present. This agent also insists on mu-law 8 kHz both ways without a
    container, since that is the only format a Twilio bridge can pass through unchanged.
    """
    audio = message.get("audio")
    if not isinstance(audio, dict):
        return "audio: required object is missing"
    for direction in ("input", "output"):
        spec = audio.get(direction)
        if spec is None:
            return f"audio.{direction}: missing; the default is linear16, only mulaw is supported"
        if not isinstance(spec, dict):
            return f"audio.{direction}: must be an object"
        for field in ("encoding", "sample_rate"):
            if field not in spec:
                return f"audio.{direction}.{field}: required"
        if spec["encoding"] != "mulaw":
            return f"audio.{direction}.encoding: {spec['encoding']!r} unsupported, use 'mulaw'"
        if not _is_int(spec["sample_rate"]) or spec["sample_rate"] != SAMPLE_RATE:
            return f"audio.{direction}.sample_rate: {spec['sample_rate']!r} unsupported, use 8000"
    container = audio["output"].get("container", "none")
    if container != "none":
        return f"audio.output.container: {container!r} unsupported, use 'none'"
    agent = message.get("agent")
    if not isinstance(agent, dict | str):
        return "agent: required, an object or the id of a stored agent configuration"
    return None


def _entries(section: object) -> list[dict[str, Any]]:
    """``think``/``speak`` as a list of provider entries (one object or a fallback list)."""
    values = section if isinstance(section, list) else [section]
    return [value for value in values if isinstance(value, dict)]


def semantic_problem(message: dict[str, Any]) -> str | None:
    """Why a Settings that parsed is still INVALID_SETTINGS, naming the field, or None."""
    agent = message["agent"]
    if isinstance(agent, str):
        try:
            uuid.UUID(agent)
        except ValueError:
            return "agent: not the id of a stored agent configuration"
        return None
    for index, speak in enumerate(_entries(agent.get("speak"))):
        if speak["provider"].get("type") != "deepgram" and not speak.get("endpoint"):
            return f"agent.speak[{index}].endpoint: required for a non-Deepgram TTS provider"
    fillers = ("initial_agent_filler", "agent_filler_max_count", "agent_filler_interval_ms")
    for think in _entries(agent.get("think")):
        for function in think.get("functions") or []:
            used = [name for name in fillers if function.get(name) is not None]
            if used and agent.get("think_live") is None:
                return f"agent.think.functions.{used[0]}: requires agent.think_live"
    return None


def _functions(think: object) -> list[dict[str, Any]]:
    """The functions ``agent.think`` declares (an object or a fallback list: the first entry)."""
    entries = _entries(think)
    functions = entries[0].get("functions") if entries else None
    if not isinstance(functions, list):
        return []
    return [f for f in functions if isinstance(f, dict) and isinstance(f.get("name"), str)]


class _Turn(NamedTuple):
    """A caller turn the VAD ended but the agent has not confirmed yet (speculative mode)."""

    start: int
    end: int
    call_id: str | None
    """The ``end_call`` request already dispatched for it, if any."""


class AgentSession:
    """One client connection: the protocol state machine plus everything tests want to inspect.

    Recorded for tests: ``headers`` and ``settings`` as received, ``received`` (every client
    message, JSON parsed and binary audio as is, on arrival), ``events`` (types of the JSON
    messages received, in order), ``sent`` (types of the JSON messages sent) and ``sent_messages``
    (the messages themselves), ``audio`` (caller audio received, unless the agent was told not to
    record), ``audio_bytes``, ``audio_before_settings_applied`` (bytes of binary audio that
    arrived before SettingsApplied was sent: a correct bridge keeps this at 0),
    ``context_messages`` (the history ``agent.context.messages`` seeded), ``prompt`` (after
    ``UpdatePrompt`` appends), ``function_call_responses``, ``late_function_call_responses``
    (answers to cancelled calls, which Deepgram drops), ``cancelled`` (ids withdrawn by
    ``FunctionCallCancelled``), ``refused`` (injections answered with ``InjectionRefused``),
    ``utterances`` (caller turns confirmed), ``error`` (code of the fatal Error sent, if any),
    ``failed`` (the :class:`Failure` mode applied) and ``close_code``/``close_reason``; and,
    on ``time.monotonic()``, ``applied_at`` (SettingsApplied sent), ``first_audio_at`` and
    ``closed_at``, with ``order`` (the JSON types received, one ``"audio"`` per run of binary).
    """

    def __init__(self, agent: LocalAgent, ws: ServerConnection, index: int) -> None:
        self.agent = agent
        self.ws = ws
        self.index = index
        self.request_id = str(uuid.uuid4())
        self.headers: Headers = ws.request.headers if ws.request is not None else Headers()
        self.settings: dict[str, Any] | None = None
        self.settings_applied = False
        self.received: list[Received] = []
        self.events: list[str] = []
        self.sent: list[str] = []
        self.sent_messages: list[dict[str, Any]] = []
        self.audio = bytearray()
        self.audio_bytes = 0
        self.audio_before_settings_applied = 0
        self.audio_bytes_sent = 0
        self.context_messages: list[dict[str, Any]] = []
        self.prompt: str | None = None
        self.function_call_responses: list[dict[str, Any]] = []
        self.late_function_call_responses: list[dict[str, Any]] = []
        self.cancelled: list[str] = []
        self.refused: list[dict[str, Any]] = []
        self.utterances = 0
        self.error: str | None = None
        self.failed: FailMode | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed = asyncio.Event()
        self.order: list[str] = []
        self.applied_at: float | None = None
        self.first_audio_at: float | None = None
        self.closed_at: float | None = None
        self._loop = asyncio.get_running_loop()
        self._last_received = self._loop.time()
        self._tasks: set[asyncio.Task[None]] = set()
        self._speech: asyncio.Task[None] | None = None
        self._speech_audio = b""
        self._speech_offset = 0
        self._pending_calls: dict[str, asyncio.Future[str]] = {}
        self._cancelled_ids: set[str] = set()
        self._think: object = None
        self._listen_version = "v1"
        end_ms = agent.speculative_end_ms if agent.speculative else agent.vad_end_ms
        self._vad = Vad(agent.vad_threshold, end_ms=end_ms)
        self._vad_origin = 0
        self._vad_fed = 0
        self._utterance_start = 0
        self._turn: _Turn | None = None
        self._handlers: dict[str, Callable[[dict[str, Any]], Coroutine[Any, Any, None]]] = {
            "Settings": self._on_settings,
            "KeepAlive": self._on_keep_alive,
            "InjectUserMessage": self._on_inject_user_message,
            "InjectAgentMessage": self._on_inject_agent_message,
            "FunctionCallResponse": self._on_function_call_response,
            "ForceEndTurn": self._on_force_end_turn,
            "__customToThinkProvider": self._on_custom_to_think,
            **{kind: self._on_update for kind in _UPDATE_ACKS},
        }

    @property
    def texts(self) -> list[dict[str, Any]]:
        """The JSON messages received, in order."""
        return [m.message for m in self.received if isinstance(m.message, dict)]

    def types(self) -> list[str]:
        """The ``type`` of each JSON message received."""
        return [str(text.get("type", "?")) for text in self.texts]

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        """Send anything: a dict as JSON, a str as a raw text frame, bytes as audio."""
        if isinstance(message, dict):
            await self.send_json(message)
        elif isinstance(message, str):
            await self.ws.send(message)
        else:
            await self.send_bytes(message)

    @property
    def speaking(self) -> bool:
        """Whether a reply (or the greeting, or the continuous stream) is being sent."""
        return self._speech is not None and not self._speech.done()

    async def send_json(self, message: dict[str, Any]) -> None:
        """Send a JSON message now. Tests use it to make the agent say anything at all."""
        self.sent.append(str(message.get("type")))
        self.sent_messages.append(message)
        await self.ws.send(json.dumps(message))

    async def send_bytes(self, data: bytes) -> None:
        """Send one binary audio message, calling the ``on_sent`` hook right before."""
        hook = self.agent.on_sent
        if hook is not None:
            hook(self, data, time.perf_counter())
        self.audio_bytes_sent += len(data)
        await self.ws.send(data)

    async def user_started_speaking(self) -> None:
        """Send ``UserStartedSpeaking`` now, as the agent does when the caller barges in.

        Outside continuous mode the reply in progress is abandoned too, as after a real barge-in,
        except for ``stale_audio_ms`` of it already queued, which still follows the message. The
        continuous bench stream keeps going so that a benchmark can measure many barge-ins.
        """
        stale = b""
        if not self.agent.continuous:
            if self.speaking and self.agent.stale_audio_ms > 0:
                end = self._speech_offset + self.agent.stale_audio_ms * BYTES_PER_MS
                stale = self._speech_audio[self._speech_offset : end]
            self._cancel_speech()
        await self.send_json({"type": "UserStartedSpeaking"})
        if stale:
            await self.send_bytes(stale)

    async def request_functions(self, functions: list[dict[str, Any]]) -> dict[str, str]:
        """Send one ``FunctionCallRequest`` with every function in ``functions`` and return
        the responses by id, once all have arrived.

        Each item is a declared function (``name``, optional ``endpoint``): one with an
        ``endpoint`` is server-side (``client_side: false``) and the agent answers it with its
        own ``FunctionCallResponse``, as Deepgram does after calling the endpoint (it does not).
        A ``History`` with the function calls follows.
        """
        items = []
        for function in functions:
            server_side = bool(function.get("endpoint"))
            items.append(
                {
                    "id": f"fc_{uuid.uuid4()}",
                    "name": function["name"],
                    "arguments": json.dumps(function.get("arguments", {})),
                    "client_side": not server_side,
                }
            )
        waiters = {}
        for item in items:
            if item["client_side"]:
                waiters[item["id"]] = self._loop.create_future()
                self._pending_calls[item["id"]] = waiters[item["id"]]
        await self.send_json({"type": "FunctionCallRequest", "functions": items})
        results = {}
        for item in items:
            if item["client_side"]:
                results[item["id"]] = await waiters[item["id"]]
                self._pending_calls.pop(item["id"], None)
            else:
                content = json.dumps({"ok": True, "handled_by": "server"})
                await self.send_json(
                    {
                        "type": "FunctionCallResponse",
                        "id": item["id"],
                        "name": item["name"],
                        "content": content,
                    }
                )
                results[item["id"]] = content
        history = [{**item, "response": results[item["id"]]} for item in items]
        await self._history_function_calls(history)
        return results

    async def cancel_function_calls(self, call_ids: list[str]) -> None:
        """Withdraw requests with ``FunctionCallCancelled``; their late responses are dropped."""
        names = {}
        for message in self.sent_messages:
            if message.get("type") == "FunctionCallRequest":
                names.update({f["id"]: f["name"] for f in message["functions"]})
        cancelled = [{"id": call_id, "name": names.get(call_id, "")} for call_id in call_ids]
        for call_id in call_ids:
            self._cancelled_ids.add(call_id)
            self.cancelled.append(call_id)
            waiter = self._pending_calls.pop(call_id, None)
            if waiter is not None and not waiter.done():
                waiter.cancel()
        await self.send_json({"type": "FunctionCallCancelled", "functions": cancelled})

    async def run(self) -> None:
        """Serve the connection until it closes; never raises for anything the client sends."""
        if not self.agent.passive:
            self._spawn(self._watch_idle())
            self._spawn(self._watch_session_cap())
        try:
            await self.send_json({"type": "Welcome", "request_id": self.request_id})
            async for message in self.ws:
                self._last_received = self._loop.time()
                try:
                    if self.agent.passive:
                        self._on_passive(message)
                    elif isinstance(message, str):
                        await self._on_text(message)
                    else:
                        await self._on_binary(message)
                except _Fatal as fatal:
                    await self._fail(fatal.code, fatal.description)
                    break
        except ConnectionClosed:
            pass
        finally:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.ws.wait_closed()
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason
            self.closed_at = time.monotonic()
            self.closed.set()

    def _on_passive(self, message: str | bytes) -> None:
        """Passive mode: record the message on arrival; only Settings gets an answer."""
        if isinstance(message, bytes):
            self._record_audio(message)
            return
        data = json.loads(message)
        self.received.append(Received(self._loop.time(), data))
        self.events.append(str(data.get("type", "?")))
        self.order.append(self.events[-1])
        if data.get("type") == "Settings" and self.settings is None:
            self.settings = data
            if self.agent.apply_settings:
                self._spawn(self._apply_settings())

    def _record_audio(self, data: bytes) -> None:
        agent = self.agent
        if agent.on_audio is not None:
            agent.on_audio(self, data, time.perf_counter())
        self.audio_bytes += len(data)
        if self.first_audio_at is None:
            self.first_audio_at = time.monotonic()
        if self.order[-1:] != ["audio"]:
            self.order.append("audio")
        if agent.record_audio:
            self.audio += data
            self.received.append(Received(self._loop.time(), data))
        if not self.settings_applied:
            self.audio_before_settings_applied += len(data)

    # ---- receiving ----

    async def _on_text(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            raise _Fatal("UNPARSABLE_CLIENT_MESSAGE", "The message is not valid JSON.") from None
        kind = message.get("type") if isinstance(message, dict) else None
        if not isinstance(kind, str):
            raise _Fatal("UNPARSABLE_CLIENT_MESSAGE", "The message has no string 'type' field.")
        self.received.append(Received(self._loop.time(), message))
        self.events.append(kind)
        self.order.append(kind)
        handler = self._handlers.get(kind)
        if handler is None:
            raise _Fatal("UNPARSABLE_CLIENT_MESSAGE", f"Unknown message type {kind!r}.")
        if self.settings is None and kind != "Settings":
            raise _Fatal(
                "NON_SETTINGS_MESSAGE_BEFORE_SETTINGS",
                f"The client sent {kind} before sending a Settings message.",
            )
        if kind == "FunctionCallResponse":
            self._check_function_call_response(message)
        elif (
            self.agent.strict
            and kind != "Settings"
            and (path := unparsable_field(message)) is not None
        ):
            raise _unparsable(path)
        await handler(message)

    async def _on_binary(self, data: bytes) -> None:
        agent = self.agent
        self._record_audio(data)
        if not self.settings_applied:
            if self.settings is None:
                raise _Fatal(
                    "NON_SETTINGS_MESSAGE_BEFORE_SETTINGS",
                    "The client sent binary audio before sending a Settings message.",
                )
            return
        if agent.continuous:
            return
        for event in self._vad.feed(data):
            if event.kind == "start":
                await self._on_speech_start(event.offset)
            elif agent.speculative:
                await self._on_speculative_end(event.offset)
            else:
                await self._on_utterance_end(self._utterance_start, event.offset)
        self._vad_fed += len(data)
        turn = self._turn
        if turn is not None and self._vad_fed - turn.end >= agent.vad_end_ms * BYTES_PER_MS:
            self._turn = None
            await self._on_utterance_end(turn.start, turn.end, turn.call_id)

    async def _on_speech_start(self, offset: int) -> None:
        turn = self._turn
        if turn is None:
            self._utterance_start = offset
            await self.user_started_speaking()
            return
        # The caller resumed inside the speculative window: the turn goes on, and any function
        # call dispatched for it is withdrawn (Deepgram's FunctionCallCancelled).
        self._turn = None
        await self.user_started_speaking()
        if turn.call_id is not None:
            await self.cancel_function_calls([turn.call_id])

    async def _on_speculative_end(self, end: int) -> None:
        hang_up = self.utterances + 1 == self.agent.hangup_after_utterances
        call_id = None
        end_call = self._end_call_function()
        if hang_up and end_call is not None and not end_call.get("defer_until_eot"):
            call_id = await self._dispatch_end_call()
        self._turn = _Turn(self._utterance_start, end, call_id)

    async def _on_utterance_end(self, start: int, end: int, call_id: str | None = None) -> None:
        self.utterances += 1
        seconds = (end - start) / SAMPLE_RATE
        spoken = self.audio[self._vad_origin + start : self._vad_origin + end]
        await self._user_turn(f"(caller spoke for {seconds:.1f} s)")
        hang_up = self.utterances == self.agent.hangup_after_utterances
        transfer = self.utterances == self.agent.transfer_after_utterances
        self._start_speech(self._respond(hang_up, bytes(spoken), call_id, transfer=transfer))

    async def _on_settings(self, message: dict[str, Any]) -> None:
        if self.settings is not None:
            raise _Fatal(
                "SETTINGS_ALREADY_APPLIED",
                "Settings were already applied. To change settings, open a new connection.",
            )
        problem = settings_problem(message)
        if problem is not None:
            raise _Fatal("INVALID_SETTINGS", f"Invalid Settings: {problem}")
        if self.agent.strict:
            if (path := unparsable_field(message)) is not None:
                raise _unparsable(path)
            if (problem := semantic_problem(message)) is not None:
                raise _Fatal("INVALID_SETTINGS", f"Invalid Settings: {problem}")
        self.settings = message
        agent_config = message["agent"]
        if isinstance(agent_config, dict):
            self._think = agent_config.get("think")
            context = agent_config.get("context")
            history = context.get("messages") if isinstance(context, dict) else None
            history = agent_config.get("messages") if history is None else history
            self.context_messages = list(history or [])
            thinks = _entries(self._think)
            self.prompt = thinks[0].get("prompt") if thinks else None
            listen = agent_config.get("listen")
            provider = listen.get("provider") if isinstance(listen, dict) else None
            if isinstance(provider, dict):
                self._listen_version = str(provider.get("version", "v1"))
        self._spawn(self._apply_settings())

    async def _apply_settings(self) -> None:
        if self.agent.settings_delay > 0:
            await asyncio.sleep(self.agent.settings_delay)
        self.applied_at = time.monotonic()  # audio from now on is not early (it is sent now)
        self.settings_applied = True
        self._vad_origin = len(self.audio)
        try:
            await self.send_json({"type": "SettingsApplied"})
        except ConnectionClosed:
            return
        if self.agent.passive:
            return
        failure = self.agent.failure
        if failure is not None and self.index < failure.sessions:
            self._spawn(self._fail_later(failure))
        if self.agent.continuous:
            self._start_speech(self._stream_forever())
            return
        agent_config = self.settings["agent"] if self.settings is not None else None
        greeting = agent_config.get("greeting") if isinstance(agent_config, dict) else None
        if greeting:
            self._start_speech(self._speak(greeting, self.agent.greeting_audio))

    async def _on_keep_alive(self, message: dict[str, Any]) -> None:
        """KeepAlive has no reply; receiving it already reset the idle timer."""

    async def _on_update(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "UpdateThink":
            self._think = message["think"]
            thinks = _entries(self._think)
            self.prompt = thinks[0].get("prompt") if thinks else None
        elif kind == "UpdatePrompt":
            # UpdatePrompt adds to the prompt; UpdateThink replaces it (Deepgram's docs).
            self.prompt = "\n".join(p for p in (self.prompt, message.get("prompt")) if p)
        elif kind == "UpdateThink_Live":
            agent_config = self.settings["agent"] if self.settings is not None else None
            if not isinstance(agent_config, dict) or agent_config.get("think_live") is None:
                raise _unparsable("think_live")
        await self.send_json({"type": _UPDATE_ACKS[kind]})

    async def _on_force_end_turn(self, message: dict[str, Any]) -> None:
        if self._listen_version != "v2":
            await self.send_json(
                {
                    "type": "Warning",
                    "description": "ForceEndTurn is only supported with Flux (listen version v2).",
                    "code": "FORCE_END_TURN_UNSUPPORTED",
                }
            )
        elif self._vad.speaking:
            # Flux ends the turn now; the rest of the caller's speech starts a new one.
            self._vad = Vad(self.agent.vad_threshold, end_ms=self.agent.vad_end_ms)
            await self._on_utterance_end(self._utterance_start, self._vad_fed)
            self._vad_origin = len(self.audio)
            self._vad_fed = 0

    async def _on_custom_to_think(self, message: dict[str, Any]) -> None:
        """Passed to a custom think endpoint, which this agent has not: nothing comes back."""

    def _refusal(self) -> str | None:
        """Why an injection with the default behaviour is refused now, or None."""
        if self.speaking:
            return REFUSED_TEXT
        if self._vad.speaking or self._turn is not None:
            return REFUSED_USER_TEXT
        return None

    async def _refuse(self, message: dict[str, Any], why: str) -> None:
        self.refused.append(message)
        await self.send_json({"type": "InjectionRefused", "message": why})

    async def _on_inject_user_message(self, message: dict[str, Any]) -> None:
        content = message.get("content")
        if not isinstance(content, str):
            raise _Fatal("UNPARSABLE_CLIENT_MESSAGE", "InjectUserMessage needs string 'content'.")
        if self.agent.refuse_injections and (why := self._refusal()) is not None:
            await self._refuse(message, why)
            return
        await self._user_turn(content)
        self._start_speech(self._respond(self.agent.hangup_cue in content, None))

    async def _on_inject_agent_message(self, message: dict[str, Any]) -> None:
        text = message.get("message")
        if message.get("is_dynamic") is True:
            agent_config = self.settings["agent"] if self.settings is not None else None
            if not isinstance(agent_config, dict) or agent_config.get("think_live") is None:
                raise _unparsable("is_dynamic")
            text = "(a line written by Think Live)"
        if not isinstance(text, str):
            raise _Fatal("UNPARSABLE_CLIENT_MESSAGE", "InjectAgentMessage needs string 'message'.")
        behavior = message.get("behavior") or "default"
        if behavior == "default" and (why := self._refusal()) is not None:
            await self._refuse(message, why)
        elif behavior == "queue" and self.speaking:
            self._spawn(self._after_speech(self._speech, text))
        else:
            self._start_speech(self._speak(text, self.agent.tone_audio))

    async def _after_speech(self, current: asyncio.Task[None] | None, text: str) -> None:
        """``behavior: queue``: speak once the current turn has finished."""
        if current is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(current)
        if not self.speaking:
            self._start_speech(self._speak(text, self.agent.tone_audio))

    @staticmethod
    def _check_function_call_response(message: dict[str, Any]) -> None:
        call_id, name, content = message.get("id"), message.get("name"), message.get("content")
        if not (isinstance(call_id, str) and isinstance(name, str) and isinstance(content, str)):
            raise _Fatal(
                "UNPARSABLE_CLIENT_MESSAGE",
                "FunctionCallResponse needs string 'id', 'name' and 'content'.",
            )

    async def _on_function_call_response(self, message: dict[str, Any]) -> None:
        call_id, content = message["id"], message["content"]
        if call_id in self._cancelled_ids:
            # "Send no FunctionCallResponse for this id": a late one is dropped without a word.
            self.late_function_call_responses.append(message)
            return
        self.function_call_responses.append(message)
        waiter = self._pending_calls.get(call_id)
        if waiter is None or waiter.done():
            await self.send_json(
                {
                    "type": "Warning",
                    "description": f"FunctionCallResponse for unknown function call {call_id!r}.",
                    "code": "UNKNOWN_FUNCTION_CALL_ID",
                }
            )
        else:
            waiter.set_result(content)

    # ---- speaking ----

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(self._quietly(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @staticmethod
    async def _quietly(coro: Coroutine[Any, Any, None]) -> None:
        """Run a background step; the connection closing under it is normal, not an error."""
        with contextlib.suppress(ConnectionClosed):
            await coro

    def _start_speech(self, coro: Coroutine[Any, Any, None]) -> None:
        self._cancel_speech()
        self._speech = self._spawn(coro)

    def _cancel_speech(self) -> None:
        if self._speech is not None:
            self._speech.cancel()
            self._speech = None

    async def _user_turn(self, content: str) -> None:
        await self.send_json(
            {
                "type": "ConversationText",
                "role": "user",
                "content": content,
            }
        )
        await self._history("user", content)

    async def _respond(
        self,
        hang_up: bool,
        spoken: bytes | None,
        call_id: str | None = None,
        *,
        transfer: bool = False,
    ) -> None:
        await self.send_json({"type": "AgentThinking", "content": "Thinking about a reply."})
        if self.agent.think_delay > 0:
            await asyncio.sleep(self.agent.think_delay)
        if hang_up:
            await self._end_call(call_id)
            return
        if transfer and self._function("transfer_call") is not None:
            await self._transfer()
            return
        agent = self.agent
        if agent.call_functions:
            tools = [f for f in _functions(self._think) if f["name"] != "end_call"]
            if tools:
                await self.request_functions(tools)
        if agent.reply == "echo" and spoken:
            audio = spoken
        elif agent.reply == "tone":
            audio = agent.tone_audio
        else:
            audio = agent.reply_audio
        await self._speak(REPLY_TEXT, audio)
        await self.send_json(
            {
                "type": "LatencyReport",
                "ttt_token_latency": agent.think_delay,
                "ttt_text_latency": agent.think_delay,
                "tts_latency": 0.05,
                "total_latency": agent.think_delay + 0.1,
            }
        )
        await self._history("assistant", REPLY_TEXT)

    def _end_call_function(self) -> dict[str, Any] | None:
        return self._function("end_call")

    def _function(self, name: str) -> dict[str, Any] | None:
        return next((f for f in _functions(self._think) if f["name"] == name), None)

    async def _transfer(self) -> None:
        """Ask the client to run ``transfer_call`` for ``transfer_target``, then say what its
        result means, as a real agent speaks after a function result."""
        arguments = {"target": self.agent.transfer_target, "reason": TRANSFER_REASON}
        results = await self.request_functions([{"name": "transfer_call", "arguments": arguments}])
        try:
            ok = all(json.loads(content).get("ok") is True for content in results.values())
        except (ValueError, AttributeError):
            ok = False
        text = TRANSFER_TEXT if ok else TRANSFER_FAILED_TEXT
        await self._speak(text, self.agent.transfer_audio)
        await self._history("assistant", text)

    async def _dispatch_end_call(self) -> str:
        call_id = f"fc_{uuid.uuid4()}"
        self._pending_calls[call_id] = self._loop.create_future()
        arguments = json.dumps({"reason": "caller said goodbye"})
        function = {"id": call_id, "name": "end_call", "arguments": arguments}
        await self.send_json(
            {"type": "FunctionCallRequest", "functions": [{**function, "client_side": True}]}
        )
        return call_id

    async def _end_call(self, call_id: str | None) -> None:
        """Ask the client to run ``end_call`` if it declared it (unless already dispatched
        speculatively for this turn), then say goodbye; the call's History comes last."""
        if call_id is None and self._end_call_function() is not None:
            call_id = await self._dispatch_end_call()
        response = None
        if call_id is not None:
            response = await self._pending_calls[call_id]
            del self._pending_calls[call_id]
        await self._speak(GOODBYE_TEXT, self.agent.goodbye_audio)
        if call_id is not None and response is not None:
            arguments = json.dumps({"reason": "caller said goodbye"})
            call = {"id": call_id, "name": "end_call", "client_side": True}
            await self._history_function_calls(
                [{**call, "arguments": arguments, "response": response}]
            )

    async def _speak(self, text: str, audio: bytes) -> None:
        agent = self.agent
        await self.send_json(
            {
                "type": "ConversationText",
                "role": "assistant",
                "content": text,
            }
        )
        if agent.agent_started_speaking:
            await self.send_json(
                {
                    "type": "AgentStartedSpeaking",
                    "total_latency": agent.think_delay + 0.1,
                    "tts_latency": 0.05,
                    "ttt_latency": agent.think_delay,
                }
            )
        step = agent.chunk_bytes
        interval = agent.chunk_ms / 1000 / agent.pace
        start = self._loop.time()
        self._speech_audio = audio
        for index, offset in enumerate(range(0, len(audio), step)):
            delay = start + index * interval - self._loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._speech_offset = offset + step
            await self.send_bytes(audio[offset : offset + step])
        await self.send_json({"type": "AgentAudioDone"})

    async def _stream_forever(self) -> None:
        """Continuous bench mode: one ``chunk_ms`` chunk every ``chunk_ms``, in real time."""
        chunks = self.agent.continuous_chunks
        interval = self.agent.chunk_ms / 1000
        start = self._loop.time()
        sent = 0
        while True:
            for chunk in chunks:
                await self.send_bytes(chunk)
                sent += 1
                await asyncio.sleep(start + sent * interval - self._loop.time())

    def _history_enabled(self) -> bool:
        flags = self.settings.get("flags") if self.settings is not None else None
        return not (isinstance(flags, dict) and flags.get("history") is False)

    async def _history(self, role: str, content: str) -> None:
        if self._history_enabled():
            await self.send_json({"type": "History", "role": role, "content": content})

    async def _history_function_calls(self, calls: list[dict[str, Any]]) -> None:
        if self._history_enabled():
            await self.send_json({"type": "History", "function_calls": calls})

    # ---- ending ----

    async def _watch_idle(self) -> None:
        timeout = self.agent.idle_timeout
        while (remaining := self._last_received + timeout - self._loop.time()) > 0:
            await asyncio.sleep(remaining)
        await self._fail("CLIENT_MESSAGE_TIMEOUT", TIMEOUT_DESCRIPTION)

    async def _watch_session_cap(self) -> None:
        await asyncio.sleep(self.agent.session_cap)
        await self._apply_failure("duration_cap")

    async def _fail_later(self, failure: Failure) -> None:
        await asyncio.sleep(failure.after)
        await self._apply_failure(failure.mode)

    async def _apply_failure(self, mode: FailMode) -> None:
        """End the session mid-call in one of the ways a real one ends (see :class:`Failure`)."""
        self.failed = mode
        self._cancel_speech()
        if mode == "error":
            await self._fail("INTERNAL_SERVER_ERROR", "An internal server error occurred.")
        elif mode == "close_1011":
            await self.ws.close(1011, "internal error")
        elif mode == "drop":
            transport = self.ws.transport
            if transport is not None:
                transport.abort()
        else:
            await self.ws.close(1000, SESSION_CAP_REASON)

    async def _fail(self, code: str, description: str) -> None:
        """Send a fatal Error and close, as Deepgram does."""
        self.error = code
        self._cancel_speech()
        with contextlib.suppress(ConnectionClosed):
            await self.send_json({"type": "Error", "description": description, "code": code})
        await self.ws.close(ERROR_CLOSE_CODE, code)


class LocalAgent:
    """A local Deepgram Voice Agent v1 server (any path is accepted).

    Use ``async with LocalAgent() as agent:`` (or ``start()``/``stop()``) and point the bridge at
    ``agent.url``. Every connection appends an :class:`AgentSession` to ``agent.sessions``.

    Options: ``api_key`` (require ``Authorization: Token <key>``, else HTTP 401); ``reply``
    ("clip", "echo" or "tone"); ``continuous`` (bench mode: stream audio forever, no VAD);
    ``chunk_ms`` (audio per binary message: 100 ms normally, 60 ms in continuous mode);
    ``pace`` (replies are sent this many times faster than real time, like Deepgram's bursts);
    ``idle_timeout``; ``settings_delay`` (time to "apply" Settings, during which early audio is
    counted); ``think_delay``; ``hangup_cue`` (text in an InjectUserMessage that ends the call);
    ``hangup_after_utterances`` (end the call on the Nth caller turn);
    ``transfer_after_utterances`` (on the Nth caller turn, call ``transfer_call`` for
    ``transfer_target`` if the Settings declare it, then announce the transfer); VAD tuning;
    ``agent_started_speaking`` (send that message); ``record_audio`` (keep received audio);
    ``on_audio``/``on_sent`` bench hooks, see :data:`AudioHook`.

    Strictness and surprises, each off unless said otherwise: ``strict`` (on: every client
    message is parsed against the v1 schema, see :mod:`.agent_schema`); ``speculative`` (a turn
    ends after ``speculative_end_ms`` of silence and is confirmed after ``vad_end_ms``: an
    ``end_call`` without ``defer_until_eot`` is dispatched at once and cancelled with
    ``FunctionCallCancelled`` if the caller resumes in between); ``refuse_injections``
    (``InjectUserMessage`` while the agent or the caller is speaking gets ``InjectionRefused``;
    ``InjectAgentMessage`` with the default behaviour always does, as the spec says);
    ``call_functions`` (each reply first calls every declared function but ``end_call`` in one
    ``FunctionCallRequest``, server-side for those with an ``endpoint``); ``stale_audio_ms``
    (audio of the interrupted reply still sent after ``UserStartedSpeaking``); ``failure`` (a
    :class:`Failure`: end sessions mid-call); ``session_cap`` (seconds; Deepgram's is 2 hours).

    ``passive`` makes it the tests' agent: every message is recorded on arrival and accepted
    unchecked, ``Settings`` gets ``SettingsApplied`` after ``settings_delay`` (never, with
    ``apply_settings=False``), and it says nothing else unless a test sends it (no VAD, no
    replies, no idle timeout, no session cap).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_key: str | None = None,
        reply: ReplyMode = "clip",
        continuous: bool = False,
        chunk_ms: int | None = None,
        pace: float = 2.0,
        idle_timeout: float = 10.0,
        settings_delay: float = 0.1,
        think_delay: float = 0.2,
        hangup_cue: str = "#",
        hangup_after_utterances: int | None = None,
        transfer_after_utterances: int | None = None,
        transfer_target: str = "front_desk",
        vad_threshold: float = 300.0,
        vad_end_ms: int = 600,
        agent_started_speaking: bool = True,
        record_audio: bool = True,
        on_audio: AudioHook | None = None,
        on_sent: AudioHook | None = None,
        strict: bool = True,
        speculative: bool = False,
        speculative_end_ms: int = 200,
        refuse_injections: bool = False,
        call_functions: bool = False,
        stale_audio_ms: int = 0,
        failure: Failure | None = None,
        session_cap: float = SESSION_CAP_SECONDS,
        passive: bool = False,
        apply_settings: bool = True,
    ) -> None:
        if reply not in ("clip", "echo", "tone"):
            raise ValueError(f"reply must be 'clip', 'echo' or 'tone', not {reply!r}")
        if reply == "echo" and not record_audio:
            raise ValueError("reply='echo' needs record_audio=True")
        if pace <= 0:
            raise ValueError("pace must be positive")
        if speculative and not 0 < speculative_end_ms < vad_end_ms:
            raise ValueError("speculative_end_ms must be positive and below vad_end_ms")
        if failure is not None and failure.mode not in FAIL_MODES:
            raise ValueError(f"failure mode must be one of {FAIL_MODES}, not {failure.mode!r}")
        self.host = host
        self.port = port
        self.api_key = api_key
        self.reply: ReplyMode = reply
        self.continuous = continuous
        self.chunk_ms = chunk_ms if chunk_ms is not None else (60 if continuous else 100)
        self.chunk_bytes = self.chunk_ms * BYTES_PER_MS
        if self.chunk_bytes <= 0:
            raise ValueError("chunk_ms must be positive")
        self.pace = pace
        self.idle_timeout = idle_timeout
        self.settings_delay = settings_delay
        self.think_delay = think_delay
        self.hangup_cue = hangup_cue
        self.hangup_after_utterances = hangup_after_utterances
        self.transfer_after_utterances = transfer_after_utterances
        self.transfer_target = transfer_target
        self.vad_threshold = vad_threshold
        self.vad_end_ms = vad_end_ms
        self.agent_started_speaking = agent_started_speaking
        self.record_audio = record_audio
        self.on_audio = on_audio
        self.on_sent = on_sent
        self.strict = strict
        self.speculative = speculative
        self.speculative_end_ms = speculative_end_ms
        self.refuse_injections = refuse_injections
        self.call_functions = call_functions
        self.stale_audio_ms = stale_audio_ms
        self.failure = failure
        self.session_cap = session_cap
        self.passive = passive
        self.apply_settings = apply_settings
        self.greeting_audio = load_clip("agent-greeting")
        self.reply_audio = load_clip("agent-reply")
        self.tone_audio = b"".join(tone(f, 400) for f in (523.25, 659.25, 783.99)) * 2
        self.goodbye_audio = tone(783.99, 500) + tone(659.25, 500) + tone(523.25, 500)
        self.transfer_audio = tone(523.25, 400) + tone(783.99, 600)
        loop_audio = self.greeting_audio + self.reply_audio
        self.continuous_chunks = tuple(
            loop_audio[i : i + self.chunk_bytes]
            for i in range(0, len(loop_audio) - self.chunk_bytes + 1, self.chunk_bytes)
        )
        self.sessions: list[AgentSession] = []
        self._server: Server | None = None

    @property
    def url(self) -> str:
        """The URL to give the bridge, with Deepgram's path (any path works)."""
        return f"ws://{self.host}:{self.port}{PATH}"

    @property
    def open_connections(self) -> int:
        return sum(1 for s in self.sessions if not s.closed.is_set())

    async def session(self, index: int = 0, timeout: float = 3.0) -> AgentSession:
        """The ``index``-th connection, once it has come (AssertionError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while len(self.sessions) <= index:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for agent connection {index}")
            await asyncio.sleep(0.002)
        return self.sessions[index]

    async def start(self) -> None:
        """Listen; ``port`` then holds the real port when 0 (ephemeral) was asked for."""
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._check_auth,
            compression=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close every connection (1001) and wait for all sessions to finish."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> LocalAgent:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def _check_auth(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.api_key is None:
            return None
        given = request.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Token {self.api_key}".encode()):
            return None
        return connection.respond(
            HTTPStatus.UNAUTHORIZED, "Websocket initialized with invalid credentials.\n"
        )

    async def _handle(self, ws: ServerConnection) -> None:
        session = AgentSession(self, ws, len(self.sessions))
        self.sessions.append(session)
        await session.run()


def agent_from_argv(argv: list[str] | None = None) -> LocalAgent:
    """The LocalAgent ``python -m peers.agent`` would run with these arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m peers.agent",
        description="Local stand-in for the Deepgram Voice Agent API v1.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key-env", metavar="NAME", help="require the key in this env var")
    parser.add_argument("--reply", choices=["clip", "echo", "tone"], default="clip")
    parser.add_argument("--continuous", action="store_true", help="bench mode: speak forever")
    parser.add_argument("--pace", type=float, default=2.0, help="reply speed vs real time")
    parser.add_argument("--idle-timeout", type=float, default=10.0)
    parser.add_argument("--hangup-after", type=int, metavar="N", help="end the call on turn N")
    parser.add_argument(
        "--transfer-after", type=int, metavar="N", help="call transfer_call on turn N"
    )
    parser.add_argument(
        "--transfer-target", default="front_desk", metavar="NAME", help="the transfer's target"
    )
    parser.add_argument("--lenient", action="store_true", help="skip the v1 schema checks")
    parser.add_argument(
        "--speculative", action="store_true", help="dispatch end_call before the turn is confirmed"
    )
    parser.add_argument(
        "--refuse-injections", action="store_true", help="refuse InjectUserMessage mid-turn"
    )
    parser.add_argument(
        "--call-functions", action="store_true", help="call every declared function each turn"
    )
    parser.add_argument(
        "--stale-audio-ms", type=int, default=0, help="audio still sent after a barge-in"
    )
    parser.add_argument("--fail", choices=FAIL_MODES, help="end sessions mid-call this way")
    parser.add_argument("--fail-after", type=float, default=5.0, metavar="SECONDS")
    parser.add_argument("--fail-sessions", type=int, default=1, metavar="N")
    parser.add_argument("--session-cap", type=float, default=SESSION_CAP_SECONDS)
    args = parser.parse_args(argv)
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            parser.error(f"environment variable {args.api_key_env} is not set")
    return build_agent(args, api_key)


def main(argv: list[str] | None = None) -> int:
    """``python -m peers.agent``: run a LocalAgent until Ctrl-C."""
    agent = agent_from_argv(argv)

    async def serve_until_cancelled() -> None:
        async with agent:
            print(agent.url, flush=True)
            await asyncio.Future()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_until_cancelled())
    return 0


def build_agent(args: argparse.Namespace, api_key: str | None) -> LocalAgent:
    return LocalAgent(
        args.host,
        args.port,
        api_key=api_key,
        reply=args.reply,
        continuous=args.continuous,
        pace=args.pace,
        idle_timeout=args.idle_timeout,
        hangup_after_utterances=args.hangup_after,
        transfer_after_utterances=args.transfer_after,
        transfer_target=args.transfer_target,
        strict=not args.lenient,
        speculative=args.speculative,
        refuse_injections=args.refuse_injections,
        call_functions=args.call_functions,
        stale_audio_ms=args.stale_audio_ms,
        failure=Failure(args.fail, args.fail_after, args.fail_sessions) if args.fail else None,
        session_cap=args.session_cap,
    )


if __name__ == "__main__":
    raise SystemExit(main())
