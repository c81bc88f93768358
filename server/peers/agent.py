"""LocalAgent: a stand-in for the Deepgram Voice Agent API v1, for tests, demos and benchmarks.

It speaks the wire protocol of ``wss://agent.deepgram.com/v1/agent/converse`` (Welcome, one
Settings, SettingsApplied, binary audio both ways, ConversationText, UserStartedSpeaking,
AgentThinking, AgentStartedSpeaking, AgentAudioDone, FunctionCallRequest/Response, LatencyReport,
History, Warning, Error) and applies Deepgram's documented rules strictly, so that a bridge which
passes against it has no protocol bugs a real agent would punish. It cannot understand speech or
synthesize text: an energy VAD stands in for turn detection and shipped clips or tones stand in for
the voice. It is an independent peer: it imports nothing from the bridge (``sansio``/``server``).
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
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .audio import BYTES_PER_MS, SAMPLE_RATE, Vad, load_clip, tone

ReplyMode = Literal["clip", "echo", "tone"]
AudioHook = Callable[["AgentSession", bytes, float], None]
"""``hook(session, data, t)`` with ``t = time.perf_counter()``; must be fast and must not raise."""

PATH = "/v1/agent/converse"
ERROR_CLOSE_CODE = 1000
"""Deepgram documents no close codes for the agent API; the Error message is the authority."""
GOODBYE_TEXT = "Thank you for calling. Goodbye!"
REPLY_TEXT = "I understand. Could you tell me a little more about that?"
TIMEOUT_DESCRIPTION = (
    "We waited too long for a websocket message. "
    "Please ensure that you're sending binary messages containing user speech."
)
_UPDATE_ACKS = {
    "UpdatePrompt": "PromptUpdated",
    "UpdateSpeak": "SpeakUpdated",
    "UpdateThink": "ThinkUpdated",
    "UpdateListen": "ListenUpdated",
}


class _Fatal(Exception):
    """A client mistake Deepgram answers with a fatal ``Error`` message and a close."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


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
    if isinstance(agent, dict) and not isinstance(agent.get("greeting", ""), str):
        return "agent.greeting: must be a string"
    return None


def _declares_function(think: object, name: str) -> bool:
    """Whether ``agent.think`` (an object or a fallback list of them) declares function ``name``."""
    providers = think if isinstance(think, list) else [think]
    for provider in providers:
        functions = provider.get("functions") if isinstance(provider, dict) else None
        if isinstance(functions, list) and any(
            isinstance(function, dict) and function.get("name") == name for function in functions
        ):
            return True
    return False


class AgentSession:
    """One client connection: the protocol state machine plus everything tests want to inspect.

    Recorded for tests: ``headers`` and ``settings`` as received, ``events`` (types of the JSON
    messages received, in order), ``sent`` (types of the JSON messages sent), ``audio`` (caller
    audio received, unless the agent was told not to record), ``audio_bytes``,
    ``audio_before_settings_applied`` (bytes of binary audio that arrived before SettingsApplied
    was sent: a correct bridge keeps this at 0), ``function_call_responses``, ``utterances``
    (caller turns the VAD ended), ``error`` (code of the fatal Error sent, if any) and
    ``close_code``/``close_reason`` once the connection is closed.
    """

    def __init__(self, agent: LocalAgent, ws: ServerConnection) -> None:
        self.agent = agent
        self.ws = ws
        self.request_id = str(uuid.uuid4())
        self.headers: Headers = ws.request.headers if ws.request is not None else Headers()
        self.settings: dict[str, Any] | None = None
        self.settings_applied = False
        self.events: list[str] = []
        self.sent: list[str] = []
        self.audio = bytearray()
        self.audio_bytes = 0
        self.audio_before_settings_applied = 0
        self.audio_bytes_sent = 0
        self.function_call_responses: list[dict[str, Any]] = []
        self.utterances = 0
        self.error: str | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._last_received = self._loop.time()
        self._tasks: set[asyncio.Task[None]] = set()
        self._speech: asyncio.Task[None] | None = None
        self._pending_calls: dict[str, asyncio.Future[str]] = {}
        self._think: object = None
        self._vad = Vad(agent.vad_threshold, end_ms=agent.vad_end_ms)
        self._vad_origin = 0
        self._utterance_start = 0
        self._handlers: dict[str, Callable[[dict[str, Any]], Coroutine[Any, Any, None]]] = {
            "Settings": self._on_settings,
            "KeepAlive": self._on_keep_alive,
            "InjectUserMessage": self._on_inject_user_message,
            "InjectAgentMessage": self._on_inject_agent_message,
            "FunctionCallResponse": self._on_function_call_response,
            "ForceEndTurn": self._on_force_end_turn,
            **{kind: self._on_update for kind in _UPDATE_ACKS},
        }

    @property
    def speaking(self) -> bool:
        """Whether a reply (or the greeting, or the continuous stream) is being sent."""
        return self._speech is not None and not self._speech.done()

    async def send_json(self, message: dict[str, Any]) -> None:
        """Send a JSON message now. Tests use it to make the agent say anything at all."""
        self.sent.append(str(message.get("type")))
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

        Outside continuous mode the reply in progress is abandoned too, as after a real barge-in;
        the continuous bench stream keeps going so that a benchmark can measure many barge-ins.
        """
        if not self.agent.continuous:
            self._cancel_speech()
        await self.send_json({"type": "UserStartedSpeaking"})

    async def run(self) -> None:
        """Serve the connection until it closes; never raises for anything the client sends."""
        self._spawn(self._watch_idle())
        try:
            await self.send_json({"type": "Welcome", "request_id": self.request_id})
            async for message in self.ws:
                self._last_received = self._loop.time()
                try:
                    if isinstance(message, str):
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
            self.closed.set()

    # ---- receiving ----

    async def _on_text(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            raise _Fatal("UNPARSABLE_CLIENT_MESSAGE", "The message is not valid JSON.") from None
        kind = message.get("type") if isinstance(message, dict) else None
        if not isinstance(kind, str):
            raise _Fatal("UNPARSABLE_CLIENT_MESSAGE", "The message has no string 'type' field.")
        self.events.append(kind)
        handler = self._handlers.get(kind)
        if handler is None:
            raise _Fatal("UNPARSABLE_CLIENT_MESSAGE", f"Unknown message type {kind!r}.")
        if self.settings is None and kind != "Settings":
            raise _Fatal(
                "NON_SETTINGS_MESSAGE_BEFORE_SETTINGS",
                f"The client sent {kind} before sending a Settings message.",
            )
        await handler(message)

    async def _on_binary(self, data: bytes) -> None:
        agent = self.agent
        if agent.on_audio is not None:
            agent.on_audio(self, data, time.perf_counter())
        self.audio_bytes += len(data)
        if agent.record_audio:
            self.audio += data
        if not self.settings_applied:
            self.audio_before_settings_applied += len(data)
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
                self._utterance_start = event.offset
                self._cancel_speech()
                await self.send_json({"type": "UserStartedSpeaking"})
            else:
                await self._on_utterance_end(event.offset)

    async def _on_utterance_end(self, end: int) -> None:
        self.utterances += 1
        start = self._utterance_start
        seconds = (end - start) / SAMPLE_RATE
        spoken = self.audio[self._vad_origin + start : self._vad_origin + end]
        await self._user_turn(f"(caller spoke for {seconds:.1f} s)")
        hang_up = self.utterances == self.agent.hangup_after_utterances
        self._start_speech(self._respond(hang_up, bytes(spoken)))

    async def _on_settings(self, message: dict[str, Any]) -> None:
        if self.settings is not None:
            raise _Fatal(
                "SETTINGS_ALREADY_APPLIED",
                "Settings were already applied. To change settings, open a new connection.",
            )
        problem = settings_problem(message)
        if problem is not None:
            raise _Fatal("INVALID_SETTINGS", f"Invalid Settings: {problem}")
        self.settings = message
        agent_config = message["agent"]
        self._think = agent_config.get("think") if isinstance(agent_config, dict) else None
        self._spawn(self._apply_settings())

    async def _apply_settings(self) -> None:
        if self.agent.settings_delay > 0:
            await asyncio.sleep(self.agent.settings_delay)
        await self.send_json({"type": "SettingsApplied"})
        self.settings_applied = True
        self._vad_origin = len(self.audio)
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
            self._think = message.get("think")
        await self.send_json({"type": _UPDATE_ACKS[kind]})

    async def _on_force_end_turn(self, message: dict[str, Any]) -> None:
        await self.send_json(
            {
                "type": "Warning",
                "description": "ForceEndTurn is only supported with Flux (listen version v2).",
                "code": "FORCE_END_TURN_UNSUPPORTED",
            }
        )

    async def _on_inject_user_message(self, message: dict[str, Any]) -> None:
        content = message.get("content")
        if not isinstance(content, str):
            raise _Fatal("UNPARSABLE_CLIENT_MESSAGE", "InjectUserMessage needs string 'content'.")
        await self._user_turn(content)
        self._start_speech(self._respond(self.agent.hangup_cue in content, None))

    async def _on_inject_agent_message(self, message: dict[str, Any]) -> None:
        text = message.get("message")
        if not isinstance(text, str):
            raise _Fatal("UNPARSABLE_CLIENT_MESSAGE", "InjectAgentMessage needs string 'message'.")
        self._start_speech(self._speak(text, self.agent.tone_audio))

    async def _on_function_call_response(self, message: dict[str, Any]) -> None:
        call_id, name, content = message.get("id"), message.get("name"), message.get("content")
        if not (isinstance(call_id, str) and isinstance(name, str) and isinstance(content, str)):
            raise _Fatal(
                "UNPARSABLE_CLIENT_MESSAGE",
                "FunctionCallResponse needs string 'id', 'name' and 'content'.",
            )
        self.function_call_responses.append(message)
        waiter = self._pending_calls.pop(call_id, None)
        if waiter is None:
            await self.send_json(
                {
                    "type": "Warning",
                    "description": f"FunctionCallResponse for unknown function call {call_id!r}.",
                    "code": "UNKNOWN_FUNCTION_CALL_ID",
                }
            )
        elif not waiter.done():
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
        await self.send_json({"type": "ConversationText", "role": "user", "content": content})
        await self._history("user", content)

    async def _respond(self, hang_up: bool, spoken: bytes | None) -> None:
        await self.send_json({"type": "AgentThinking", "content": "Thinking about a reply."})
        if self.agent.think_delay > 0:
            await asyncio.sleep(self.agent.think_delay)
        if hang_up:
            await self._end_call()
            return
        agent = self.agent
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
                "stt_latency": 0.05,
                "ttt_token_latency": agent.think_delay,
                "ttt_text_latency": agent.think_delay,
                "tts_latency": 0.05,
                "total_latency": agent.think_delay + 0.1,
            }
        )
        await self._history("assistant", REPLY_TEXT)

    async def _end_call(self) -> None:
        """Ask the client to run ``end_call`` if it declared it, then say goodbye."""
        if _declares_function(self._think, "end_call"):
            call_id = f"fc_{uuid.uuid4()}"
            waiter: asyncio.Future[str] = self._loop.create_future()
            self._pending_calls[call_id] = waiter
            arguments = json.dumps({"reason": "caller said goodbye"})
            function = {"id": call_id, "name": "end_call", "arguments": arguments}
            await self.send_json(
                {"type": "FunctionCallRequest", "functions": [{**function, "client_side": True}]}
            )
            await waiter
        await self._speak(GOODBYE_TEXT, self.agent.goodbye_audio)

    async def _speak(self, text: str, audio: bytes) -> None:
        agent = self.agent
        await self.send_json({"type": "ConversationText", "role": "assistant", "content": text})
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
        for index, offset in enumerate(range(0, len(audio), step)):
            delay = start + index * interval - self._loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
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

    async def _history(self, role: str, content: str) -> None:
        flags = self.settings.get("flags") if self.settings is not None else None
        if isinstance(flags, dict) and flags.get("history") is False:
            return
        await self.send_json({"type": "History", "role": role, "content": content})

    # ---- ending ----

    async def _watch_idle(self) -> None:
        timeout = self.agent.idle_timeout
        while (remaining := self._last_received + timeout - self._loop.time()) > 0:
            await asyncio.sleep(remaining)
        await self._fail("CLIENT_MESSAGE_TIMEOUT", TIMEOUT_DESCRIPTION)

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
    ``hangup_after_utterances`` (end the call on the Nth caller turn); VAD tuning;
    ``agent_started_speaking`` (send that message); ``record_audio`` (keep received audio);
    ``on_audio``/``on_sent`` bench hooks, see :data:`AudioHook`.
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
        vad_threshold: float = 300.0,
        vad_end_ms: int = 600,
        agent_started_speaking: bool = True,
        record_audio: bool = True,
        on_audio: AudioHook | None = None,
        on_sent: AudioHook | None = None,
    ) -> None:
        if reply not in ("clip", "echo", "tone"):
            raise ValueError(f"reply must be 'clip', 'echo' or 'tone', not {reply!r}")
        if reply == "echo" and not record_audio:
            raise ValueError("reply='echo' needs record_audio=True")
        if pace <= 0:
            raise ValueError("pace must be positive")
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
        self.vad_threshold = vad_threshold
        self.vad_end_ms = vad_end_ms
        self.agent_started_speaking = agent_started_speaking
        self.record_audio = record_audio
        self.on_audio = on_audio
        self.on_sent = on_sent
        self.greeting_audio = load_clip("agent-greeting")
        self.reply_audio = load_clip("agent-reply")
        self.tone_audio = b"".join(tone(f, 400) for f in (523.25, 659.25, 783.99)) * 2
        self.goodbye_audio = tone(783.99, 500) + tone(659.25, 500) + tone(523.25, 500)
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
        session = AgentSession(self, ws)
        self.sessions.append(session)
        await session.run()


def main(argv: list[str] | None = None) -> int:
    """``python -m server.peers.agent``: run a LocalAgent until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m server.peers.agent",
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
    args = parser.parse_args(argv)
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            parser.error(f"environment variable {args.api_key_env} is not set")
    agent = LocalAgent(
        args.host,
        args.port,
        api_key=api_key,
        reply=args.reply,
        continuous=args.continuous,
        pace=args.pace,
        idle_timeout=args.idle_timeout,
        hangup_after_utterances=args.hangup_after,
    )

    async def serve_until_cancelled() -> None:
        async with agent:
            print(agent.url, flush=True)
            await asyncio.Future()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_until_cancelled())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
