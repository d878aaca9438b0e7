"""OpenAI's Files API as far as the Batch API needs it, kept in memory (a test device).

Endpoints (https://platform.openai.com/docs/api-reference/files): `POST /v1/files`
(multipart: `file`, `purpose`, optional `expires_after[anchor]`/`expires_after[seconds]`),
`GET /v1/files`, `GET /v1/files/{id}`, `GET /v1/files/{id}/content`, `DELETE /v1/files/{id}`.
Objects are the spec's `OpenAIFile`: `{id, object: "file", bytes, created_at, expires_at,
filename, purpose, status, status_details}`.

Limits: a `batch` file must be `.jsonl` and at most 200 MB ("The Batch API only supports
.jsonl files up to 200 MB in size"); any file at most 512 MB. Batch files expire after 30 days
unless `expires_after` says otherwise (3600 to 2592000 seconds). Files belong to the API key
that uploaded them.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from qbq.simulator.validation import SimAPIError

__all__ = [
    "FILE_PURPOSES",
    "MAX_BATCH_FILE_BYTES",
    "MAX_FILE_BYTES",
    "FileStore",
    "StoredFile",
    "parse_multipart",
]

FILE_PURPOSES: tuple[str, ...] = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
MAX_BATCH_FILE_BYTES = 200 * 1024 * 1024
MAX_FILE_BYTES = 512 * 1024 * 1024
_BATCH_FILE_DAYS_S = 30 * 24 * 3600
_EXPIRY_RANGE_S = (3600, 2_592_000)


@dataclass
class StoredFile:
    """One uploaded or generated file; `data` is its content."""

    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int
    expires_at: int | None
    owner: str

    def to_object(self) -> dict[str, Any]:
        """The `OpenAIFile` object."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, tuple[str, bytes]]]:
    """The form fields and files of a multipart/form-data body: ({name: text}, {name: (filename, bytes)})."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise SimAPIError(
            400,
            "The request must be multipart/form-data with the fields 'file' and 'purpose'.",
        )
    head = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, bytes]] = {}
    if not message.is_multipart():
        return fields, files
    for part in message.iter_parts():
        if not isinstance(part, Message):
            continue
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename is not None:
            files[name] = (filename, data)
        else:
            fields[name] = data.decode("utf-8", errors="replace")
    return fields, files


def _expiry_seconds(fields: dict[str, str], purpose: str) -> int | None:
    anchor = fields.get("expires_after[anchor]")
    raw = fields.get("expires_after[seconds]")
    if anchor is None and raw is None:
        return _BATCH_FILE_DAYS_S if purpose == "batch" else None
    if anchor != "created_at":
        raise SimAPIError(
            400,
            f"Invalid value: '{anchor}'. Supported values are: 'created_at'.",
            param="expires_after.anchor",
            code="invalid_value",
        )
    try:
        seconds = int(raw or "")
    except ValueError:
        seconds = -1
    low, high = _EXPIRY_RANGE_S
    if not low <= seconds <= high:
        raise SimAPIError(
            400,
            f"Invalid 'expires_after.seconds': expected an integer between {low} and {high}, "
            f"but got {raw!r} instead.",
            param="expires_after.seconds",
            code="invalid_value",
        )
    return seconds


def _missing(param: str) -> SimAPIError:
    return SimAPIError(
        400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


class FileStore:
    """Files by id, in memory; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, StoredFile] = {}

    def add(
        self, data: bytes, filename: str, purpose: str, owner: str, expires_in_s: int | None
    ) -> StoredFile:
        """Store `data` as a new file of `owner`, expiring `expires_in_s` seconds from now."""
        now = int(time.time())
        stored = StoredFile(
            id=f"file-sim{uuid.uuid4().hex[:24]}",
            filename=filename,
            purpose=purpose,
            data=data,
            created_at=now,
            expires_at=None if expires_in_s is None else now + expires_in_s,
            owner=owner,
        )
        with self._lock:
            self._files[stored.id] = stored
        return stored

    def upload(self, content_type: str, body: bytes, owner: str) -> StoredFile:
        """A file from a `POST /v1/files` body, checked as OpenAI checks it."""
        fields, files = parse_multipart(content_type, body)
        if "file" not in files:
            raise _missing("file")
        purpose = fields.get("purpose")
        if purpose is None:
            raise _missing("purpose")
        if purpose not in FILE_PURPOSES:
            allowed = ", ".join(f"'{p}'" for p in FILE_PURPOSES[:-1]) + f", and '{FILE_PURPOSES[-1]}'"
            raise SimAPIError(
                400,
                f"Invalid value: '{purpose}'. Supported values are: {allowed}.",
                param="purpose",
                code="invalid_value",
            )
        filename, data = files["file"]
        if purpose == "batch":
            if not filename.lower().endswith(".jsonl"):
                raise SimAPIError(400, "Invalid file format for Batch API. Must be .jsonl", param="file")
            if len(data) > MAX_BATCH_FILE_BYTES:
                raise SimAPIError(
                    400,
                    f"File is too large for purpose 'batch': {len(data)} bytes; the Batch API "
                    f"accepts .jsonl files of at most {MAX_BATCH_FILE_BYTES} bytes (200 MB).",
                    param="file",
                )
        if len(data) > MAX_FILE_BYTES:
            raise SimAPIError(
                400, f"File is too large: {len(data)} bytes; at most 512 MB.", param="file"
            )
        return self.add(data, filename, purpose, owner, _expiry_seconds(fields, purpose))

    def get(self, file_id: str, owner: str) -> StoredFile:
        """The file `file_id` of `owner`; 404 in OpenAI's words otherwise (or once expired)."""
        with self._lock:
            stored = self._files.get(file_id)
        expired = stored is not None and stored.expires_at is not None and stored.expires_at <= time.time()
        if stored is None or stored.owner != owner or expired:
            raise SimAPIError(404, f"No such File object: {file_id}", param="id")
        return stored

    def delete(self, file_id: str, owner: str) -> dict[str, Any]:
        """Remove a file; the API's deletion object `{id, object: "file", deleted: true}`."""
        self.get(file_id, owner)
        with self._lock:
            self._files.pop(file_id, None)
        return {"id": file_id, "object": "file", "deleted": True}

    def listing(self, owner: str, purpose: str | None) -> dict[str, Any]:
        """`GET /v1/files`: the owner's files (of `purpose`, if given), newest first."""
        with self._lock:
            mine = [f for f in self._files.values() if f.owner == owner]
        chosen = [f for f in mine if purpose is None or f.purpose == purpose]
        chosen.sort(key=lambda f: f.created_at, reverse=True)
        data = [f.to_object() for f in chosen]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": False,
        }
