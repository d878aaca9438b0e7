"""Session-wide test setup: keep every test away from the user's home, the network and real keys."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

_HOME = tempfile.mkdtemp(prefix="qbq-tests-")
os.environ.setdefault("PREFECT_HOME", str(Path(_HOME) / "prefect"))
os.environ.setdefault("QBQ_TIKTOKEN_CACHE_DIR", str(Path(_HOME) / "tiktoken"))
os.environ.setdefault("QBQ_PAGE_CACHE_DIR", str(Path(_HOME) / "pages"))  # normalised pages
os.environ["OPENAI_API_KEY"] = "sk-test-simulated"  # never a real key in tests
os.environ["QBQ_LOOPBACK_ONLY"] = "true"  # any model request off loopback fails (qbq.provider)
os.environ.pop("OPENAI_BASE_URL", None)


import pytest  # noqa: E402

from tests.support import PgServer, connect_pg_server  # noqa: E402


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer | None]:
    """The PostgreSQL test server (None when unreachable outside CI); drops what tests made."""
    server = connect_pg_server()
    yield server
    if server is not None:
        server.drop_all()
