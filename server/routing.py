"""Agents per number: ``--route NUMBER=CONFIG`` chooses the ``Settings`` of a call by the number
called, with ``--config`` as the default.

The choice is made at the stream's ``start`` (the core's ``choose_settings`` hook), from its
custom parameters, so it holds whichever worker took the webhook: an inbound call by its ``To``
parameter (the webhook passes it through), an outbound call by a ``bridgeAgent`` parameter signed
by this bridge (server/outbound.py), since its ``To`` is the callee. Either way only the files
named at startup can be chosen, never a path from the call.

An agent's name, which ``POST /calls`` takes as ``agent``, is its file's stem
(``--route +15550100=pediatrics.json`` is ``pediatrics``); ``default`` is ``--config``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
DEFAULT_AGENT = "default"
AGENT_PARAMETER = "bridgeAgent"


class RoutingError(ValueError):
    """A --route that cannot be served (the message names it)."""


@dataclass(frozen=True)
class Routing:
    """Called number -> agent name -> ``Settings``; ``key`` signs the outbound agent choice."""

    numbers: Mapping[str, str] = field(default_factory=dict)
    agents: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    key: str | None = field(default=None, repr=False)

    def names(self) -> list[str]:
        return [DEFAULT_AGENT, *sorted(self.agents)]

    def agent_parameter(self, name: str) -> tuple[str, str]:
        """The signed ``<Parameter>`` naming agent ``name`` (a known one) for a call's stream."""
        assert self.key is not None and (name == DEFAULT_AGENT or name in self.agents)
        return AGENT_PARAMETER, f"{name}.{_mac(self.key, name)}"

    def choose(self, parameters: Mapping[str, str]) -> Mapping[str, Any] | None:
        """The ``Settings`` of a call with these custom parameters; None for the default."""
        signed = parameters.get(AGENT_PARAMETER)
        if signed is not None and self.key is not None:
            name, _, mac = signed.rpartition(".")
            if hmac.compare_digest(mac.encode(), _mac(self.key, name).encode()):
                return self.agents.get(name)
        routed = self.numbers.get(parameters.get("To", ""))
        return self.agents.get(routed) if routed is not None else None


def _mac(key: str, name: str) -> str:
    return hmac.new(key.encode(), f"agent:{name}".encode(), hashlib.sha256).hexdigest()[:32]


def load_routing(
    routes: Mapping[str, str], key: str | None, load: Callable[[str], dict[str, Any]]
) -> Routing:
    """Each ``NUMBER -> CONFIG`` checked (E.164, one file per name) and ``load``ed once."""
    numbers: dict[str, str] = {}
    agents: dict[str, dict[str, Any]] = {}
    files: dict[str, Path] = {}
    for number, path in routes.items():
        if not E164.match(number):
            raise RoutingError(f"invalid --route {number}={path}: {number} is not an E.164 number")
        name = Path(path).stem
        if name == DEFAULT_AGENT:
            raise RoutingError(f"invalid --route {number}={path}: {name} names --config")
        known = files.get(name)
        if known is not None and known.resolve() != Path(path).resolve():
            raise RoutingError(f"invalid --route {number}={path}: agent {name} is {known} already")
        if known is None:
            files[name] = Path(path)
            agents[name] = load(path)
        numbers[number] = name
    return Routing(numbers=numbers, agents=agents, key=key)
