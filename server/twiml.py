"""The TwiML the webhook answers with: connect the call to the media stream, or say busy."""

from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import escape, quoteattr

BUSY_MESSAGE = "All our lines are busy right now. Please call again in a few minutes. Goodbye."


def twiml_stream(stream_url: str, parameters: Sequence[tuple[str, str]]) -> str:
    """TwiML connecting the call to ``stream_url``, with ``<Parameter>`` for each pair."""
    params = "".join(
        f"<Parameter name={quoteattr(name)} value={quoteattr(value)}/>"
        for name, value in parameters
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Response><Connect><Stream url={quoteattr(stream_url)}>{params}</Stream></Connect>"
        "</Response>"
    )


def twiml_busy(message: str = BUSY_MESSAGE) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Response><Say>{escape(message)}</Say><Hangup/></Response>"
    )
