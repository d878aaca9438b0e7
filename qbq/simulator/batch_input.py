"""Reading and validating a Batch API input file, as the batch's `validating` step does.

Format (https://platform.openai.com/docs/guides/batch and the API reference's "request input
object"): one JSON object a line, `{"custom_id", "method": "POST", "url", "body"}`, with
`url` equal to the batch's endpoint, `custom_id` unique in the file, one model for the whole
file, and at most 50,000 requests. A file that breaks these makes the batch `failed`, with the
problems in `errors.data` (`{code, message, param, line}`, lines counted from 1).

The `duplicate_custom_id` and `mismatched_model` wordings are those OpenAI-compatible services
document as OpenAI's; the others are the simulator's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_BATCH_REQUESTS",
    "MAX_REPORTED_ERRORS",
    "BatchLine",
    "ParsedInput",
    "parse_batch_input",
]

MAX_BATCH_REQUESTS = 50_000
#: At most this many problems are listed in a failed batch's `errors.data`.
MAX_REPORTED_ERRORS = 100


@dataclass(frozen=True)
class BatchLine:
    """One request of the input file; `line` counts from 1."""

    line: int
    custom_id: str
    body: dict[str, Any]


@dataclass
class ParsedInput:
    """The requests of a valid file, or the problems of an invalid one."""

    lines: list[BatchLine]
    model: str | None
    errors: list[dict[str, Any]]


def _error(code: str, message: str, line: int | None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _check_line(number: int, text: str, endpoint: str) -> tuple[BatchLine | None, dict[str, Any] | None]:
    try:
        item = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        item = None
    if not isinstance(item, dict):
        return None, _error("invalid_json_line", "This line is not parseable as valid JSON.", number)
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return None, _error(
            "missing_required_parameter", "Missing required parameter: 'custom_id'.", number, "custom_id"
        )
    if item.get("method") != "POST":
        return None, _error(
            "invalid_method", "Only the POST method is supported for batch requests.", number, "method"
        )
    if item.get("url") != endpoint:
        return None, _error(
            "mismatched_endpoint",
            f"The url '{item.get('url')}' for this request does not match the batch's endpoint "
            f"'{endpoint}'.",
            number,
            "url",
        )
    body = item.get("body")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return None, _error(
            "missing_required_parameter", "Missing required parameter: 'body.model'.", number, "body.model"
        )
    return BatchLine(number, custom_id, body), None


def parse_batch_input(data: bytes, endpoint: str) -> ParsedInput:
    """The requests of a batch input file, or every problem (up to MAX_REPORTED_ERRORS)."""
    try:
        texts = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        return ParsedInput([], None, [_error("invalid_file", "The input file is not UTF-8 text.", None)])
    lines: list[BatchLine] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    model: str | None = None
    for number, text in enumerate(texts, start=1):
        if not text.strip():
            continue
        parsed, problem = _check_line(number, text, endpoint)
        if parsed is not None and parsed.custom_id in seen:
            problem = _error(
                "duplicate_custom_id",
                f"The custom_id '{parsed.custom_id}' for this request is a duplicate of another "
                "request. The custom_id parameter must be unique for each request in a batch.",
                number,
                "custom_id",
            )
        elif parsed is not None and model is not None and parsed.body["model"] != model:
            problem = _error(
                "mismatched_model",
                f"The model '{parsed.body['model']}' for this request does not match the rest of "
                "the batch. Each batch must contain requests for a single model.",
                number,
                "body.model",
            )
        if problem is not None:
            errors.append(problem)
            continue
        assert parsed is not None
        seen.add(parsed.custom_id)
        model = model or parsed.body["model"]
        lines.append(parsed)
    if not lines and not errors:
        errors.append(_error("empty_file", "The batch input file is empty.", None))
    if len(lines) > MAX_BATCH_REQUESTS:
        errors.append(
            _error(
                "too_many_requests",
                f"The batch input file has {len(lines)} requests; a batch may contain at most "
                f"{MAX_BATCH_REQUESTS}.",
                None,
            )
        )
    return ParsedInput(lines, model, errors[:MAX_REPORTED_ERRORS])
