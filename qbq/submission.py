"""Requests stored in qbq's own store by `qbq submit` and referenced by id in a flow run.

Prefect keeps a flow run's parameters in its database in clear; a request holds image bytes
(data URIs), signed URL queries and instructions. A submitted request is validated, kept in
qbq's store (`submitted_requests`) and the flow run gets only its id (`request_id`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from qbq.errors import RequestValidationError
from qbq.request import parse_request_json
from qbq.store import Store
from qbq.store.submitted import get_submitted, store_submitted

__all__ = ["load_submitted", "submit_request"]


def submit_request(store: Store, text: str | bytes, base_dir: Path) -> str:
    """Validate the request JSON `text`, store it with the folder its relative page paths
    resolve against, and return its id (`req-` and 24 hex of its sha256: the same request
    submitted twice gets the same id). Raises `RequestValidationError`."""
    parse_request_json(text)
    body = text.decode() if isinstance(text, bytes) else text
    folder = str(base_dir.resolve())
    request_id = "req-" + hashlib.sha256(f"{folder}\n{body}".encode()).hexdigest()[:24]
    with store.transaction() as session:
        store_submitted(session, request_id, body, folder)
    return request_id


def load_submitted(store: Store, request_id: str) -> tuple[dict[str, Any], Path]:
    """The decoded request stored under `request_id` and its base folder; raises
    `RequestValidationError` when no request has that id."""
    with store.transaction() as session:
        row = get_submitted(session, request_id[:64])
    if row is None:
        raise RequestValidationError([f"request_id: no submitted request {request_id[:64]!r} "
                                      "in this store (submit it with `qbq submit`)"])
    decoded: dict[str, Any] = json.loads(row.body)
    return decoded, Path(row.base_dir)
