"""Session-wide test setup: keep every test away from the user's home, the network and real keys."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_HOME = tempfile.mkdtemp(prefix="qbq-tests-")
os.environ.setdefault("PREFECT_HOME", str(Path(_HOME) / "prefect"))
os.environ.setdefault("QBQ_TIKTOKEN_CACHE_DIR", str(Path(_HOME) / "tiktoken"))
os.environ["OPENAI_API_KEY"] = "sk-test-simulated"  # never a real key in tests
os.environ.pop("OPENAI_BASE_URL", None)
