"""Client-side tools: Python functions the agent may call during a call.

``end_call`` is built into the core. Register more with ``--tools package.module`` (repeatable):
the module must expose ``TOOLS``, a mapping from function name (as declared in the agent's
``think.functions`` in config.json) to a handler. ``--tools package.module:NAME`` reads the
mapping from attribute ``NAME`` instead. A handler takes the call's arguments (a dict) and
returns a ``str`` or a JSON-serialisable ``dict``, directly or as an awaitable::

    # mytools.py
    async def lookup_hours(args):
        return {"open": "9am", "close": "5pm", "day": args.get("day", "today")}

    TOOLS = {"lookup_hours": lookup_hours}

A handler with a second positional parameter also gets the call, a
:class:`server.call_handle.CallHandle` (``call_sid``, ``from_``, ``to``, ``say()``...): see
docs/tools.md.

Handlers run on the event loop, so blocking work belongs in ``asyncio.to_thread``. A handler
that raises, times out, or returns something else is answered with an error JSON string; a
call never crashes because of a tool.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Union

log = logging.getLogger("server.tools")

ToolResult = Union[str, dict[str, Any]]  # noqa: UP007 - a runtime alias
ToolHandler = Callable[..., Union[Awaitable[ToolResult], ToolResult]]  # noqa: UP007


class ToolLoadError(Exception):
    """A ``--tools`` module cannot be used; the message is one line."""


class ToolRegistry:
    def __init__(self, tools: Mapping[str, ToolHandler] | None = None, timeout: float = 10.0):
        self.tools: dict[str, ToolHandler] = dict(tools or {})
        self.timeout = timeout

    @classmethod
    def load(cls, specs: tuple[str, ...] | list[str], timeout: float = 10.0) -> ToolRegistry:
        registry = cls(timeout=timeout)
        for spec in specs:
            registry.tools.update(load_module_tools(spec))
        return registry

    async def run(
        self, name: str, arguments: Mapping[str, Any], call: object = None
    ) -> tuple[str, bool]:
        """Run tool ``name`` (with ``call`` if it takes two arguments); return (content for
        FunctionCallResponse, succeeded)."""
        handler = self.tools.get(name)
        if handler is None:
            return _error(f"unknown tool {name!r}"), False
        try:
            result = handler(arguments, call) if takes_call(handler) else handler(arguments)
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, self.timeout)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            log.warning("tool %s timed out after %ss", name, self.timeout)
            return _error(f"tool {name!r} timed out"), False
        except Exception as exc:
            log.warning("tool %s failed: %s: %s", name, type(exc).__name__, exc)
            return _error(f"tool {name!r} failed: {type(exc).__name__}"), False
        if isinstance(result, str):
            return result, True
        if isinstance(result, dict):
            try:
                return json.dumps(result), True
            except (TypeError, ValueError) as exc:
                log.warning("tool %s returned a dict that is not JSON: %s", name, exc)
                return _error(f"tool {name!r} returned a result that is not JSON"), False
        log.warning("tool %s returned %s, not str or dict", name, type(result).__name__)
        return _error(f"tool {name!r} returned an unusable result"), False


def takes_call(handler: ToolHandler) -> bool:
    """Whether ``handler`` has room for a second positional argument, the call."""
    try:
        parameters = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: the one-argument form
        return False
    positional = 0
    for parameter in parameters:
        if parameter.kind is parameter.VAR_POSITIONAL:
            return True
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 2


def _error(message: str) -> str:
    return json.dumps({"error": message})


def load_module_tools(spec: str) -> dict[str, ToolHandler]:
    module_name, _, attribute = spec.partition(":")
    attribute = attribute or "TOOLS"
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ToolLoadError(
            f"cannot import tools module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    tools = getattr(module, attribute, None)
    if not isinstance(tools, Mapping):
        raise ToolLoadError(f"tools module {module_name!r} has no {attribute} mapping")
    for name, handler in tools.items():
        if not isinstance(name, str) or not callable(handler):
            raise ToolLoadError(
                f"{module_name}.{attribute}: entry {name!r} must map a name to a callable"
            )
    return dict(tools)
