"""The redaction hook: one Python callable that sees every private string before any sink.

``--redact MODULE:FUNC`` imports ``MODULE`` and uses ``FUNC`` (default name ``redact``), loaded
the way ``--tools`` modules are. It is called as ``FUNC(kind, text) -> str`` where ``kind`` is
one of :data:`KINDS`; what it returns is what logs (with ``--log-transcripts``) and records
keep. A hook that raises makes the text ``[redaction failed]``: a bug never leaks the original.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

log = logging.getLogger("server.records")

Redactor = Callable[[str, str], str]
KINDS = ("transcript", "tool_arguments", "tool_result", "number")
FAILED = "[redaction failed]"


class RedactorLoadError(Exception):
    """A ``--redact`` spec cannot be used; the message is one line."""


def keep(kind: str, text: str) -> str:
    """The default: keep the text (logs stay private anyway unless --log-transcripts)."""
    return text


def load_redactor(spec: str | None) -> Redactor:
    if not spec:
        return keep
    module_name, _, attribute = spec.partition(":")
    attribute = attribute or "redact"
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise RedactorLoadError(
            f"cannot import redaction module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    hook = getattr(module, attribute, None)
    if not callable(hook):
        raise RedactorLoadError(f"redaction module {module_name!r} has no callable {attribute}")
    return guarded(hook)


def guarded(hook: Callable[[str, str], object]) -> Redactor:
    def redact(kind: str, text: str) -> str:
        try:
            result = hook(kind, text)
        except Exception as exc:
            log.warning("redaction hook failed (%s): text withheld", type(exc).__name__)
            return FAILED
        return result if isinstance(result, str) else FAILED

    return redact
