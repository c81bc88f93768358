"""The TwiML the bridge answers with: connect the call to the media stream, say busy, dial a
transfer target, or the fallback."""

from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import escape, quoteattr

BUSY_MESSAGE = "All our lines are busy right now. Please call again in a few minutes. Goodbye."
FALLBACK_MESSAGE = (
    "I'm sorry, our assistant is not available right now. Please hold while I connect you."
)
_HEAD = '<?xml version="1.0" encoding="UTF-8"?>'


def twiml_stream(
    stream_url: str, parameters: Sequence[tuple[str, str]], status_callback: str | None = None
) -> str:
    """TwiML connecting the call to ``stream_url``, with ``<Parameter>`` for each pair; with
    ``status_callback`` Twilio posts the stream's events (``stream-error`` among them) there."""
    params = "".join(
        f"<Parameter name={quoteattr(name)} value={quoteattr(value)}/>"
        for name, value in parameters
    )
    callback = (
        f' statusCallback={quoteattr(status_callback)} statusCallbackMethod="POST"'
        if status_callback
        else ""
    )
    return (
        f"{_HEAD}<Response><Connect><Stream url={quoteattr(stream_url)}{callback}>{params}"
        "</Stream></Connect></Response>"
    )


def twiml_busy(message: str = BUSY_MESSAGE) -> str:
    return f"{_HEAD}<Response><Say>{escape(message)}</Say><Hangup/></Response>"


def _dial(number: str, action: str | None, timeout: int) -> str:
    """``<Dial>`` of an E.164 number, or ``<Sip>`` for a ``sip:`` URI."""
    attributes = f" action={quoteattr(action)}" if action else ""
    attributes += f' timeout="{timeout}"'
    noun = f"<Sip>{escape(number)}</Sip>" if number.startswith("sip") else escape(number)
    return f"<Dial{attributes}>{noun}</Dial>"


def twiml_dial(number: str, action: str | None, timeout: int) -> str:
    """A transfer: dial ``number``; Twilio requests ``action`` with the outcome."""
    return f"{_HEAD}<Response>{_dial(number, action, timeout)}</Response>"


def twiml_fallback(number: str, message: str = FALLBACK_MESSAGE, timeout: int = 30) -> str:
    """The fallback target: say why, then dial it."""
    return f"{_HEAD}<Response><Say>{escape(message)}</Say>{_dial(number, None, timeout)}</Response>"


def twiml_hangup() -> str:
    return f"{_HEAD}<Response><Hangup/></Response>"
