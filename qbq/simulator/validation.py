"""Request checks the simulator makes as OpenAI's chat completions endpoint does, with its errors.

Each check raises `SimAPIError`, which the app answers in OpenAI's error envelope.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from qbq.catalog import ModelSpec

__all__ = [
    "SimAPIError",
    "check_max_completion_tokens",
    "check_messages",
    "check_response_format",
    "check_strict_schema",
    "image_parts",
]

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
PART_TYPES = ("text", "image_url", "input_audio", "refusal", "audio", "file")
DETAILS = ("auto", "low", "high")
_SCHEMA_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_DATA_IMAGE = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,", re.IGNORECASE)
# JSON Schema keywords that strict structured outputs reject.
_STRICT_FORBIDDEN = (
    "allOf",
    "oneOf",
    "not",
    "if",
    "then",
    "else",
    "dependentRequired",
    "dependentSchemas",
    "patternProperties",
)


class SimAPIError(Exception):
    """An error the simulator answers with OpenAI's envelope and HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def _bad(message: str, *, param: str | None = None, code: str | None = None) -> SimAPIError:
    return SimAPIError(400, message, param=param, code=code)


def _missing(param: str) -> SimAPIError:
    return _bad(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _invalid_type(param: str, expected: str, value: Any) -> SimAPIError:
    return _bad(
        f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)} instead.",
        param=param,
        code="invalid_type",
    )


def _invalid_value(param: str, value: Any, allowed: tuple[str, ...]) -> SimAPIError:
    listed = ", ".join(f"'{a}'" for a in allowed[:-1]) + f", and '{allowed[-1]}'"
    return _bad(
        f"Invalid value: '{value}'. Supported values are: {listed}.",
        param=param,
        code="invalid_value",
    )


def _check_image_url(url: Any, param: str) -> None:
    if not isinstance(url, str):
        raise _invalid_type(param, "a string", url)
    lowered = url.lower()
    if lowered.startswith(("http://", "https://")) and len(url) > len("https://"):
        return
    if lowered.startswith("data:"):
        if not _DATA_IMAGE.match(url):
            raise _bad(
                f"Invalid image URL: '{param}'. Expected a base64-encoded data URL with an "
                "image MIME type (e.g. 'data:image/png;base64,...').",
                param=param,
                code="invalid_image_format",
            )
        return
    raise _bad(
        f"Invalid '{param}'. Expected a valid URL, but got a value with an invalid format.",
        param=param,
        code="invalid_value",
    )


def _check_part(part: Any, role: str, param: str) -> None:
    if not isinstance(part, dict):
        raise _invalid_type(param, "an object", part)
    kind = part.get("type")
    if kind is None:
        raise _missing(f"{param}.type")
    if kind not in PART_TYPES:
        raise _invalid_value(f"{param}.type", kind, PART_TYPES)
    if kind == "text":
        if "text" not in part:
            raise _missing(f"{param}.text")
        if not isinstance(part["text"], str):
            raise _invalid_type(f"{param}.text", "a string", part["text"])
        return
    if kind != "image_url":
        raise _bad(
            f"Invalid '{param}.type': the qbq simulator (like qbq's models) accepts only 'text' "
            f"and 'image_url' content parts, got '{kind}'.",
            param=f"{param}.type",
            code="unsupported_value",
        )
    if role != "user":
        raise _bad(
            f"Image URLs are only allowed for messages with role 'user', but this message with "
            f"role '{role}' contains an image URL.",
            param=param,
            code="invalid_value",
        )
    image = part.get("image_url")
    if image is None:
        raise _missing(f"{param}.image_url")
    if not isinstance(image, dict):
        raise _invalid_type(f"{param}.image_url", "an object", image)
    if "url" not in image:
        raise _missing(f"{param}.image_url.url")
    _check_image_url(image["url"], f"{param}.image_url.url")
    detail = image.get("detail", "auto")
    if detail not in DETAILS:
        raise _invalid_value(f"{param}.image_url.detail", detail, DETAILS)


def check_messages(messages: Any) -> list[dict[str, Any]]:
    """The request's messages if they are valid; else the error OpenAI would give."""
    if messages is None:
        raise _missing("messages")
    if not isinstance(messages, list):
        raise _invalid_type("messages", "an array", messages)
    if not messages:
        raise _bad(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            param="messages",
            code="empty_array",
        )
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _invalid_type(param, "an object", message)
        role = message.get("role")
        if role is None:
            raise _missing(f"{param}.role")
        if role not in ROLES:
            raise _invalid_value(f"{param}.role", role, ROLES)
        if "content" not in message or message["content"] is None:
            if role == "assistant" and message.get("tool_calls"):
                continue
            raise _missing(f"{param}.content")
        content = message["content"]
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise _invalid_type(f"{param}.content", "a string or an array", content)
        for j, part in enumerate(content):
            _check_part(part, role, f"{param}.content[{j}]")
    return messages


def image_parts(messages: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    """(param path, url) of every image in checked messages, in prompt order."""
    for i, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if part.get("type") == "image_url":
                yield f"messages[{i}].content[{j}].image_url.url", part["image_url"]["url"]


def _schema_error(name: str, context: tuple[str, ...], problem: str) -> SimAPIError:
    return _bad(
        f"Invalid schema for response_format '{name}': In context={context!r}, {problem}",
        param="response_format",
        code="invalid_json_schema",
    )


def _is_object_schema(node: dict[str, Any]) -> bool:
    kind = node.get("type")
    return (
        kind == "object" or (isinstance(kind, list) and "object" in kind) or ("properties" in node)
    )


def _check_strict_node(node: Any, name: str, context: tuple[str, ...]) -> None:
    if not isinstance(node, dict):
        raise _schema_error(name, context, "schema must be an object.")
    for keyword in _STRICT_FORBIDDEN:
        if keyword in node:
            raise _schema_error(name, context, f"'{keyword}' is not permitted.")
    if _is_object_schema(node):
        if node.get("additionalProperties") is not False:
            raise _schema_error(
                name, context, "'additionalProperties' is required to be supplied and to be false."
            )
        properties = node.get("properties", {})
        if not isinstance(properties, dict):
            raise _schema_error(name, context, "'properties' must be an object.")
        required = node.get("required", [])
        if not isinstance(required, list):
            required = []
        missing = [key for key in properties if key not in required]
        if missing:
            raise _schema_error(
                name,
                context,
                "'required' is required to be supplied and to be an array including every key "
                f"in properties. Missing '{missing[0]}'.",
            )
        extra = [key for key in required if key not in properties]
        if extra:
            raise _schema_error(name, context, f"Extra required key '{extra[0]}' supplied.")
        for key, sub in properties.items():
            _check_strict_node(sub, name, (*context, "properties", key))
    items = node.get("items")
    if items is not None:
        _check_strict_node(items, name, (*context, "items"))
    any_of = node.get("anyOf")
    if any_of is not None:
        if not isinstance(any_of, list) or not any_of:
            raise _schema_error(name, context, "'anyOf' must be a non-empty array.")
        for k, sub in enumerate(any_of):
            _check_strict_node(sub, name, (*context, "anyOf", str(k)))
    for defs_key in ("$defs", "definitions"):
        defs = node.get(defs_key)
        if isinstance(defs, dict):
            for key, sub in defs.items():
                _check_strict_node(sub, name, (*context, defs_key, key))


def check_strict_schema(schema: Any, name: str) -> None:
    """Raise unless `schema` follows the rules of strict structured outputs, recursively.

    Every object lists all its properties in `required` and sets `additionalProperties:
    false`, including objects inside `items`, `anyOf` and `$defs`; the root is an object.
    """
    if not isinstance(schema, dict) or schema.get("type") != "object" or "anyOf" in schema:
        kind = schema.get("type") if isinstance(schema, dict) else None
        raise _schema_error(
            name,
            (),
            f"schema must be a JSON Schema of 'type: \"object\"', got 'type: \"{kind}\"'.",
        )
    _check_strict_node(schema, name, ())


def check_response_format(response_format: Any) -> dict[str, Any] | None:
    """The request's response_format if valid (strict schemas checked); else OpenAI's error."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise _invalid_type("response_format", "an object", response_format)
    kind = response_format.get("type")
    if kind is None:
        raise _missing("response_format.type")
    allowed = ("text", "json_object", "json_schema")
    if kind not in allowed:
        raise _invalid_value("response_format.type", kind, allowed)
    if kind != "json_schema":
        return response_format
    json_schema = response_format.get("json_schema")
    if json_schema is None:
        raise _missing("response_format.json_schema")
    if not isinstance(json_schema, dict):
        raise _invalid_type("response_format.json_schema", "an object", json_schema)
    name = json_schema.get("name")
    if name is None:
        raise _missing("response_format.json_schema.name")
    if not isinstance(name, str) or not _SCHEMA_NAME.match(name):
        raise _bad(
            "Invalid 'response_format.json_schema.name': string does not match pattern. "
            "Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$' (at most 64 "
            "characters).",
            param="response_format.json_schema.name",
            code="invalid_value",
        )
    if "schema" not in json_schema:
        raise _missing("response_format.json_schema.schema")
    schema = json_schema["schema"]
    if not isinstance(schema, dict):
        raise _invalid_type("response_format.json_schema.schema", "an object", schema)
    strict = json_schema.get("strict", False)
    if strict is not None and not isinstance(strict, bool):
        raise _invalid_type("response_format.json_schema.strict", "a boolean", strict)
    if strict:
        check_strict_schema(schema, name)
    return response_format


def check_max_completion_tokens(body: dict[str, Any], spec: ModelSpec) -> int | None:
    """The requested completion budget (max_completion_tokens, else max_tokens), checked."""
    for param in ("max_completion_tokens", "max_tokens"):
        value = body.get(param)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise _invalid_type(param, "an integer", value)
        if value < 1:
            raise _bad(
                f"Invalid '{param}': integer below minimum value. Expected a value >= 1, "
                f"but got {value} instead.",
                param=param,
                code="integer_below_min_value",
            )
        if value > spec.max_output_tokens:
            raise _bad(
                f"{param} is too large: {value}. This model supports at most "
                f"{spec.max_output_tokens} completion tokens, whereas you provided {value}.",
                param=param,
                code="invalid_value",
            )
        return value
    return None
