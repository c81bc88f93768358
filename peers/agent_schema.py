"""The shapes of the Voice Agent v1 client messages, as the local agent checks them.

Written from the models of ``deepgram-sdk`` 7.17 (``deepgram/agent/v1/types``, ``deepgram/types``)
without importing it: the SDK is a test dependency, and the peer must stand alone. Deepgram parses
every client message into a typed structure first, so a wrong type, a missing required field or an
unknown provider ``type`` fails the parse and is answered with ``UNPARSABLE_CLIENT_MESSAGE``, naming
the field (``Check the agent.think.provider field against the API spec.``). Unknown extra fields are
ignored, as by the SDK models (``extra="allow"``). Values that parse but make no sense are the
agent's business (``INVALID_SETTINGS``), not this module's.

A check takes a value and its dotted path and returns the path of the first field that does not
parse, or None.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Check = Callable[[object, str], "str | None"]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _string(value: object, path: str) -> str | None:
    return None if isinstance(value, str) else path


def _boolean(value: object, path: str) -> str | None:
    return None if isinstance(value, bool) else path


def _integer(value: object, path: str) -> str | None:
    return None if isinstance(value, int) and not isinstance(value, bool) else path


def _number(value: object, path: str) -> str | None:
    return None if isinstance(value, int | float) and not isinstance(value, bool) else path


def _anything(value: object, path: str) -> str | None:
    return None


def _literal(*allowed: object) -> Check:
    def check(value: object, path: str) -> str | None:
        ok = any(value == a and type(value) is type(a) for a in allowed)
        return None if ok else path

    return check


def _list(item: Check) -> Check:
    def check(value: object, path: str) -> str | None:
        if not isinstance(value, list):
            return path
        for index, entry in enumerate(value):
            if (bad := item(entry, f"{path}[{index}]")) is not None:
                return bad
        return None

    return check


def _string_map(value: object, path: str) -> str | None:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        return path
    return None


def _object(required: Mapping[str, Check], optional: Mapping[str, Check] | None = None) -> Check:
    """An object with these fields; ``null`` counts as absent for an optional field."""
    optional = optional or {}

    def check(value: object, path: str) -> str | None:
        if not isinstance(value, dict):
            return path
        for key, field_check in required.items():
            if key not in value:
                return _join(path, key)
            if (bad := field_check(value[key], _join(path, key))) is not None:
                return bad
        for key, field_check in optional.items():
            present = value.get(key) is not None
            if present and (bad := field_check(value[key], _join(path, key))) is not None:
                return bad
        return None

    return check


def _either(*checks: Check) -> Check:
    """The first alternative that parses wins; a failure names the deepest path reached."""

    def check(value: object, path: str) -> str | None:
        failures = []
        for alternative in checks:
            bad = alternative(value, path)
            if bad is None:
                return None
            failures.append(bad)
        return max(failures, key=len)

    return check


def _tagged(
    tag: str,
    variants: Mapping[str, Check],
    default: str | None = None,
    name: Callable[[object], object] | None = None,
) -> Check:
    """A union told apart by ``tag`` (``type`` for providers, ``version`` for listen), or by
    ``name(value of tag)`` when the tag is not itself the variant's name."""

    def check(value: object, path: str) -> str | None:
        if not isinstance(value, dict):
            return path
        kind = name(value.get(tag)) if name is not None else value.get(tag, default)
        variant = variants.get(kind) if isinstance(kind, str) else None
        return path if variant is None else variant(value, path)

    return check


def _one_or_many(item: Check) -> Check:
    """``think`` and ``speak`` take one object or an ordered fallback list of them."""
    many = _list(item)
    return lambda value, path: many(value, path) if isinstance(value, list) else item(value, path)


_ENDPOINT = _object({}, {"url": _string, "headers": _string_map})
_TEMPERATURE = {"temperature": _number}

LISTEN_PROVIDER = _tagged(
    "version",
    {
        "v1": _object(
            {},
            {
                "type": _literal("deepgram"),
                "model": _string,
                "language": _string,
                "keyterms": _list(_string),
                "smart_format": _boolean,
            },
        ),
        "v2": _object(
            {"model": _string},
            {
                "type": _literal("deepgram"),
                "language_hints": _list(_string),
                "language_hint": _either(_string, _list(_string)),
                "eot_threshold": _number,
                "eager_eot_threshold": _number,
                "eot_timeout_ms": _integer,
                "keyterms": _list(_string),
            },
        ),
    },
    default="v1",
)
THINK_PROVIDER = _tagged(
    "type",
    {
        "open_ai": _object(
            {"model": _string},
            {**_TEMPERATURE, "version": _literal("v1"), "reasoning_mode": _string},
        ),
        "aws_bedrock": _object({"model": _string}, {**_TEMPERATURE, "credentials": _object({})}),
        "anthropic": _object({"model": _string}, {**_TEMPERATURE, "version": _literal("v1")}),
        "google": _object({"model": _string}, {**_TEMPERATURE, "version": _string}),
        "groq": _object(
            {},
            {
                **_TEMPERATURE,
                "model": _string,
                "version": _literal("v1"),
                "reasoning_mode": _string,
            },
        ),
        "deepgram": _object(
            {"model": _string},
            {
                **_TEMPERATURE,
                "version": _literal("v1"),
                "reasoning_mode": _string,
                "voice_prompt_opt_out": _boolean,
            },
        ),
    },
)
FUNCTION = _object(
    {},
    {
        "name": _string,
        "description": _string,
        "parameters": _object({}),
        "defer_until_eot": _boolean,
        "initial_agent_filler": _boolean,
        "agent_filler_max_count": _integer,
        "agent_filler_interval_ms": _integer,
        "endpoint": _object({}, {"url": _string, "method": _string, "headers": _string_map}),
    },
)
THINK = _one_or_many(
    _object(
        {"provider": THINK_PROVIDER},
        {
            "endpoint": _ENDPOINT,
            "functions": _list(FUNCTION),
            "prompt": _string,
            "context_length": _either(_literal("max"), _number),
        },
    )
)
SPEAK_PROVIDER = _tagged(
    "type",
    {
        "deepgram": _object(
            {"model": _string},
            {"version": _string, "speed": _number, "expressivity": _integer},
        ),
        "eleven_labs": _object(
            {"model_id": _string},
            {"version": _literal("v1"), "language": _string, "language_code": _string},
        ),
        "cartesia": _object(
            {"model_id": _string, "voice": _object({})},
            {"version": _string, "language": _string, "volume": _number},
        ),
        "open_ai": _object({"model": _string, "voice": _string}, {"version": _literal("v1")}),
        "aws_polly": _object(
            {
                "voice": _string,
                "language": _string,
                "engine": _string,
                "credentials": _object({}),
            },
            {"language_code": _string},
        ),
    },
)
SPEAK = _one_or_many(_object({"provider": SPEAK_PROVIDER}, {"endpoint": _ENDPOINT}))
LISTEN = _object({}, {"provider": LISTEN_PROVIDER})
HISTORY_ITEM = _either(
    _object({"role": _string, "content": _string}, {"type": _literal("History")}),
    _object(
        {
            "function_calls": _list(
                _object(
                    {
                        "id": _string,
                        "name": _string,
                        "client_side": _boolean,
                        "arguments": _string,
                        "response": _string,
                    },
                    {"thought_signature": _string},
                )
            )
        },
        {"type": _literal("History")},
    ),
)
AGENT = _object(
    {},
    {
        "language": _string,
        "context": _object({}, {"messages": _list(HISTORY_ITEM)}),
        "messages": _list(HISTORY_ITEM),
        "listen": LISTEN,
        "think": THINK,
        "think_live": _object({"provider": _object({})}),
        "speak": SPEAK,
        "greeting": _string,
    },
)
SETTINGS = _object(
    {
        "audio": _object(
            {},
            {
                "input": _object({"encoding": _string, "sample_rate": _integer}),
                "output": _object(
                    {},
                    {
                        "encoding": _string,
                        "sample_rate": _integer,
                        "bitrate": _integer,
                        "container": _string,
                    },
                ),
            },
        ),
        "agent": _either(_string, AGENT),
    },
    {
        "tags": _list(_string),
        "experimental": _boolean,
        "flags": _object({}, {"history": _boolean}),
        "mip_opt_out": _boolean,
    },
)
_BEHAVIOR = {"behavior": _literal("default", "queue", "interrupt")}

CLIENT_MESSAGES: dict[str, Check] = {
    "Settings": SETTINGS,
    "UpdatePrompt": _object({"prompt": _string}),
    "UpdateSpeak": _object({"speak": SPEAK}),
    "UpdateThink": _object({"think": THINK}),
    "UpdateListen": _object({"listen": _object({"provider": LISTEN_PROVIDER})}),
    "UpdateThink_Live": _object({"think_live": _object({"provider": _object({})})}),
    "InjectUserMessage": _object({"content": _string}),
    "InjectAgentMessage": _tagged(
        "is_dynamic",
        {
            "static": _object({"message": _string}, _BEHAVIOR),
            "dynamic": _object({"is_dynamic": _literal(True)}, _BEHAVIOR),
        },
        default="static",
        name=lambda value: "dynamic" if value is not None else "static",
    ),
    "FunctionCallResponse": _object({"id": _string, "name": _string, "content": _string}),
    "KeepAlive": _object({}),
    "ForceEndTurn": _object({}),
    "__customToThinkProvider": _object({"content": _anything}),
}
"""Every client JSON message of the v1 spec (and of SDK 7.17), by ``type``. ``id`` is required
in a client's ``FunctionCallResponse`` (the spec makes it optional only for the server's)."""


def unparsable_field(message: dict[str, Any]) -> str | None:
    """The dotted path of the first field of ``message`` that does not parse, or None.

    ``message`` must have a known string ``type``; the path is ``""`` for the message itself.
    """
    return CLIENT_MESSAGES[message["type"]](message, "")
