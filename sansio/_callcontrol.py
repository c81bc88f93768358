"""Call control settings: transfer targets, keypad actions, safety rules, silence and length
limits, keypad entry, and the fallback, validated once (every call shares them).

Target names are what the model may pick; the numbers stay here, so a prompt injection can
never make the bridge dial a number it was told.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._errors import ConfigError

_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_SIP = re.compile(r"^sips?:[^\s<>\"']+@[^\s<>\"']+$")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")
_KEYS = frozenset("0123456789*#")


@dataclass(frozen=True, slots=True)
class SafetyRule:
    """A user line containing any of ``phrases`` (case and spacing ignored) makes the agent say
    ``message`` at once, then transfers the call to ``target``."""

    name: str
    phrases: tuple[str, ...]
    message: str
    target: str


@dataclass(frozen=True, slots=True)
class Resume:
    """A stream that resumes a call whose transfer did not go through: the conversation so far
    (``agent.context.messages`` entries) and what the agent says first."""

    history: tuple[Mapping[str, Any], ...]
    greeting: str


ResumeHook = Callable[[str, Mapping[str, str]], "Resume | None"]


@dataclass(frozen=True, slots=True)
class CallControl:
    """The call control of :class:`~sansio.BridgeConfig` (``BridgeConfig.control``).

    ``fallback``: the driver can redirect the call (Twilio REST credentials and a fallback), so
    an agent failure or a shutdown hands the caller to it instead of hanging up. ``resume``
    (driver hook, like ``admit``) recognises a signed resumed stream at Twilio's ``start``.
    """

    transfer_tool: str | None = "transfer_call"
    targets: Mapping[str, str] = field(default_factory=dict)
    announce_grace: float = 3.0
    announce_timeout: float = 20.0
    handoff_timeout: float = 15.0
    fallback: bool = False
    keypad: Mapping[str, str] = field(default_factory=dict)
    safety_rules: tuple[SafetyRule, ...] = ()
    silence_reprompt: float | None = None
    silence_hangup: int | None = None
    reprompt_text: str = "Are you still there?"
    silence_goodbye: str = "I haven't heard from you, so I'll end the call now. Goodbye."
    max_call_duration: float | None = None
    duration_warning: str = "Just so you know, we have about one minute left on this call."
    duration_goodbye: str = "We've reached the time limit for this call. Goodbye."
    transfer_failed: str = "I'm sorry, I couldn't connect you just now. How else can I help?"
    dtmf_collect: bool = False
    dtmf_terminator: str = "#"
    dtmf_timeout: float = 3.0
    dtmf_collect_template: str = "The caller entered {digits} on the keypad."
    resume: ResumeHook | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name, number in self.targets.items():
            if not _NAME.match(name):
                raise ConfigError(
                    "targets", f"target name {name!r} must be a word (A-Z, 0-9, _, -)"
                )
            if not (_E164.match(number) or _SIP.match(number)):
                raise ConfigError(
                    "targets", f"{name}: {number!r} is neither an E.164 number nor a sip: URI"
                )
        for key, action in self.keypad.items():
            if key not in _KEYS or len(key) != 1:
                raise ConfigError("keypad", f"{key!r} is not a keypad key (0-9, * or #)")
            kind, _, target = action.partition(":")
            if action != "hangup" and not (kind == "transfer" and target in self.targets):
                raise ConfigError(
                    "keypad", f"{key}={action}: use hangup or transfer:NAME of a --transfer-target"
                )
        if self.dtmf_collect and self.dtmf_terminator in self.keypad:
            raise ConfigError("keypad", "the --dtmf-terminator key cannot also be a keypad action")
        for rule in self.safety_rules:
            if rule.target not in self.targets:
                raise ConfigError("safety_rules", f"{rule.name}: unknown target {rule.target!r}")
            if not rule.phrases or not all(normalise(p).strip() for p in rule.phrases):
                raise ConfigError("safety_rules", f"{rule.name}: phrases must be non-empty")
            if not rule.message.strip():
                raise ConfigError("safety_rules", f"{rule.name}: a message is required")
        for name in ("announce_grace", "announce_timeout", "handoff_timeout", "dtmf_timeout"):
            _positive(name, getattr(self, name))
        for name in ("silence_reprompt", "max_call_duration"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        if self.silence_hangup is not None and (
            type(self.silence_hangup) is not int or self.silence_hangup < 1
        ):
            raise ConfigError("silence_hangup", "must be a positive number of reprompts")
        if self.silence_hangup is not None and self.silence_reprompt is None:
            raise ConfigError("silence_hangup", "needs --silence-reprompt")
        if self.dtmf_terminator not in _KEYS or len(self.dtmf_terminator) != 1:
            raise ConfigError("dtmf_terminator", "must be one keypad key")
        if "{digits}" not in self.dtmf_collect_template:
            raise ConfigError("dtmf_collect_template", "must contain the placeholder {digits}")


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(name, f"must be a positive number of seconds, got {value!r}")


_SPACES = re.compile(r"[^a-z0-9']+")


def normalise(text: str) -> str:
    """Lower case, curly apostrophes straightened, every run of other characters one space."""
    return " " + _SPACES.sub(" ", text.lower().replace("\u2019", "'")).strip() + " "


def matching_rule(rules: tuple[SafetyRule, ...], line: str) -> SafetyRule | None:
    """The first rule with a phrase in ``line`` (whole words: "pain" is not in "painting")."""
    said = normalise(line)
    for rule in rules:
        if any(normalise(phrase) in said for phrase in rule.phrases):
            return rule
    return None
