"""Per-call configuration, and the checks that the agent ``Settings`` suits a phone call."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._callcontrol import CallControl
from ._errors import ConfigError

JsonLoads = Callable[[str], Any]
Admit = Callable[[str, Mapping[str, str]], "str | None"]
ChooseSettings = Callable[[Mapping[str, str]], "Mapping[str, Any] | None"]

PREROLL_POLICIES = ("keep", "drop", "last")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    """Everything a :class:`CallBridge` needs, validated once and shared by every call.

    Durations are in seconds except the ``*_ms`` audio sizes. ``settings`` is the agent
    ``Settings`` message; ``{Name}`` placeholders in its strings are filled per call from
    Twilio's ``start.customParameters``.

    ``admit(call_sid, custom_parameters)``, when given, is asked at Twilio's ``start``, before
    any agent leg is opened: a returned string refuses the call (it ends as ``protocol_error``
    with close code 1008). It is the driver's hook for per-call authentication, such as a token
    the webhook put in the TwiML, so the core itself holds no keys.

    ``choose_settings(custom_parameters)``, when given, is asked at ``start`` too: the
    ``Settings`` of this call (an agent chosen by the called number, say), or None for
    ``settings``. The driver validates what it may return once, at startup.

    ``preroll_policy`` says what of the caller audio held before the first ``SettingsApplied``
    reaches the agent: ``keep`` (all of it), ``drop`` (none: an early "Hello?" would make the
    agent's VAD cut its own greeting) or ``last`` (the newest ``preroll_last_ms``). Audio held
    while the agent reconnects is always kept. ``injection_limit`` bounds the injections (keys
    pressed, ``inject_*`` calls) waiting for the agent. ``agent_retries`` bounds the reconnects of
    a call after a mid-call agent failure, each after ``agent_retry_backoff`` doubling;
    ``history_limit`` the conversation entries a reconnect's Settings carry.
    """

    settings: Mapping[str, Any]
    chunk_ms: int = 20
    preroll_ms: int = 5000
    keepalive_interval: float = 8.0
    agent_connect_timeout: float = 10.0
    welcome_timeout: float = 2.0
    settings_timeout: float = 10.0
    twilio_idle_timeout: float = 15.0
    close_timeout: float = 1.0
    mark_interval_ms: int = 500
    hangup_grace: float = 3.0
    hangup_timeout: float = 30.0
    end_call_tool: str | None = "end_call"
    dtmf_template: str = "The caller pressed the {digit} key on the phone keypad."
    preroll_policy: str = "drop"
    preroll_last_ms: int = 300
    injection_limit: int = 32
    agent_retries: int = 2
    agent_retry_backoff: float = 0.5
    history_limit: int = 100
    json_loads: JsonLoads = field(default=json.loads, compare=False)
    admit: Admit | None = field(default=None, compare=False)
    choose_settings: ChooseSettings | None = field(default=None, compare=False)
    control: CallControl = field(default_factory=CallControl)

    def __post_init__(self) -> None:
        validate_settings(self.settings)
        for name in ("chunk_ms", "preroll_ms", "injection_limit", "history_limit"):
            value = getattr(self, name)
            if type(value) is not int or value <= 0:
                raise ConfigError(name, f"must be a positive integer, got {value!r}")
        for name in ("mark_interval_ms", "preroll_last_ms", "agent_retries"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ConfigError(name, f"must be a non-negative integer, got {value!r}")
        if self.preroll_policy not in PREROLL_POLICIES:
            raise ConfigError("preroll_policy", f"must be one of {', '.join(PREROLL_POLICIES)}")
        for name in (
            "keepalive_interval",
            "agent_connect_timeout",
            "welcome_timeout",
            "settings_timeout",
            "twilio_idle_timeout",
            "close_timeout",
            "hangup_grace",
            "hangup_timeout",
            "agent_retry_backoff",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(name, f"must be a positive number of seconds, got {value!r}")
        if "{digit}" not in self.dtmf_template:
            raise ConfigError("dtmf_template", "must contain the placeholder {digit}")

    @property
    def chunk_bytes(self) -> int:
        return self.chunk_ms * 8

    @property
    def preroll_bytes(self) -> int:
        return self.preroll_ms * 8

    @property
    def preroll_release_bytes(self) -> int | None:
        """How much held pre-roll the first ``SettingsApplied`` releases (None: all)."""
        if self.preroll_policy == "keep":
            return None
        return self.preroll_last_ms * 8 if self.preroll_policy == "last" else 0


def validate_settings(settings: object) -> None:
    """Raise :class:`ConfigError` unless ``settings`` is a v1 ``Settings`` fit for Twilio audio.

    Twilio carries mu-law at 8 kHz both ways, so the agent must take and produce exactly that
    with no container: anything else would need transcoding, which this bridge does not do.
    """
    if not isinstance(settings, Mapping):
        raise ConfigError("settings", "must be a JSON object")
    if settings.get("type") != "Settings":
        raise ConfigError("settings.type", 'must be "Settings" (Voice Agent API v1)')
    audio = settings.get("audio")
    if not isinstance(audio, Mapping):
        raise ConfigError("settings.audio", "is required and must be an object")
    for side in ("input", "output"):
        leg = audio.get(side)
        where = f"settings.audio.{side}"
        if not isinstance(leg, Mapping):
            raise ConfigError(where, "is required and must be an object")
        if leg.get("encoding") != "mulaw":
            raise ConfigError(f"{where}.encoding", 'must be "mulaw" (what Twilio carries)')
        if leg.get("sample_rate") != 8000:
            raise ConfigError(f"{where}.sample_rate", "must be 8000 (what Twilio carries)")
    if audio["output"].get("container", "none") != "none":
        raise ConfigError("settings.audio.output.container", 'must be "none" (no file headers)')
    agent = settings.get("agent")
    if not isinstance(agent, Mapping | str) or not agent:
        raise ConfigError("settings.agent", "is required: an object, or a stored agent id")
    if isinstance(agent, Mapping):
        _check_agent(agent)
    try:
        json.dumps(settings)
    except (TypeError, ValueError) as exc:
        raise ConfigError("settings", f"is not JSON-serialisable: {exc}") from None


def _check_agent(agent: Mapping[str, Any]) -> None:
    """The shape the v1 schema fixes for ``agent``, so a mistake is named at startup rather than
    by a Deepgram ``Error`` on every call. Values (models, voices, prompts) are the agent's
    business; ``think`` and ``speak`` may be lists (ordered fallbacks)."""
    for section in ("listen", "think", "speak"):
        if section not in agent:
            continue
        value = agent[section]
        many = section != "listen" and isinstance(value, list)
        entries = value if many else [value]
        if not entries:
            raise ConfigError(f"settings.agent.{section}", "must not be an empty list")
        for index, entry in enumerate(entries):
            where = f"settings.agent.{section}" + (f"[{index}]" if many else "")
            if not isinstance(entry, Mapping):
                raise ConfigError(where, "must be an object")
            provider = entry.get("provider")
            if not isinstance(provider, Mapping) or not isinstance(provider.get("type"), str):
                raise ConfigError(f"{where}.provider", 'must be an object with a "type" (v1)')
            if section == "think":
                _check_think(entry, where)
    if not isinstance(agent.get("greeting", ""), str):
        raise ConfigError("settings.agent.greeting", "must be a string")


def _check_think(think: Mapping[str, Any], where: str) -> None:
    for old, new in (("model", "provider.model"), ("instructions", "prompt")):
        if old in think:
            raise ConfigError(f"{where}.{old}", f"is the pre-v1 schema: use {where}.{new}")
    if not isinstance(think.get("prompt", ""), str):
        raise ConfigError(f"{where}.prompt", "must be a string")
    functions = think.get("functions", [])
    if not isinstance(functions, list):
        raise ConfigError(f"{where}.functions", "must be a list of function objects")
    for index, function in enumerate(functions):
        if not isinstance(function, Mapping) or not function.get("name"):
            raise ConfigError(f"{where}.functions[{index}]", 'must be an object with a "name"')


def fill_placeholders(value: Any, parameters: Mapping[str, str]) -> Any:
    """Return ``value`` with ``{Name}`` replaced in every string where ``Name`` is a parameter.

    Unknown names and other braces are left alone, so prompts may contain literal JSON.
    """
    if isinstance(value, str):
        if "{" not in value:
            return value
        return _PLACEHOLDER.sub(lambda m: parameters.get(m.group(1), m.group(0)), value)
    if isinstance(value, Mapping):
        return {key: fill_placeholders(item, parameters) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [fill_placeholders(item, parameters) for item in value]
    return value
