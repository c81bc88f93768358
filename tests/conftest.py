"""Keep the test suite from writing ``./calls.db`` into the working tree.

The server's default record store is ``./calls.db``; every test server (in-process or a
subprocess) writes instead to one throwaway SQLite file per session, unless the test passes
``--records`` itself. Records stay on, so every call test also runs the recorder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.records import store


@pytest.fixture(autouse=True, scope="session")
def _records_in_a_temporary_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    path = str(Path(tmp_path_factory.mktemp("records")) / "calls.db")
    saved, store.DEFAULT_RECORDS = store.DEFAULT_RECORDS, path
    previous = os.environ.get("BRIDGE_RECORDS")
    os.environ["BRIDGE_RECORDS"] = path
    try:
        yield
    finally:
        store.DEFAULT_RECORDS = saved
        if previous is None:
            os.environ.pop("BRIDGE_RECORDS", None)
        else:
            os.environ["BRIDGE_RECORDS"] = previous
