"""Call records: a private-by-default database of calls (issue 13).

:class:`CallRecorder` (pure) builds a :class:`CallRecord` from what the call driver sees;
:class:`RecordStore` writes it in the background to SQLite or PostgreSQL; ``python -m server
calls`` and ``GET /calls/{CallSid}/record`` read it back. See docs/records.md.
"""

from server.records.model import CallRecord, Event, Turn
from server.records.recorder import CallRecorder, Write
from server.records.redact import Redactor, RedactorLoadError, load_redactor
from server.records.store import (
    DEFAULT_RECORDS,
    Database,
    RecordsError,
    RecordStore,
    open_store,
)

__all__ = [
    "DEFAULT_RECORDS",
    "CallRecord",
    "CallRecorder",
    "Database",
    "Event",
    "RecordStore",
    "RecordsError",
    "Redactor",
    "RedactorLoadError",
    "Turn",
    "Write",
    "load_redactor",
    "open_store",
]
