"""The size limits of a strict Structured Outputs schema, enforced with OpenAI's 400.

From https://platform.openai.com/docs/guides/structured-outputs#supported-schemas
("Objects have limitations on nesting depth and size"; "Limitations on total string size";
"Limitations on enum size"):

- at most 5,000 object properties in total, and at most 10 levels of nesting;
- at most 120,000 characters of property names, definition names, enum values and const
  values in total;
- at most 1,000 enum values across all enums, and at most 15,000 characters across the string
  values of a single enum that has more than 250 values.

How they are counted here: a property is one key of any `properties` map (definitions
included, each counted once); a level of nesting is one step from the root through
`properties` or `items` to an object or array schema (`anyOf` branches and `$ref` targets
stay at the depth of the place that uses them; a recursive `$ref` is followed once); enum
values count every entry of every `enum`.

Wording: the property and nesting messages are OpenAI's as measured by API users ("6000
parameters exceeds limit of 5000.", "11 levels of nesting exceeds limit of 10."); the enum and
string-size messages follow the same pattern but could not be checked against a real reply.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from qbq.simulator.validation import SimAPIError

__all__ = [
    "LARGE_ENUM_CHARS",
    "LARGE_ENUM_VALUES",
    "MAX_ENUM_VALUES",
    "MAX_NESTING",
    "MAX_PROPERTIES",
    "MAX_STRING_CHARS",
    "SchemaSize",
    "check_schema_limits",
    "measure_schema",
]

MAX_PROPERTIES = 5_000
MAX_NESTING = 10
MAX_ENUM_VALUES = 1_000
#: An enum with more than this many values is held to LARGE_ENUM_CHARS.
LARGE_ENUM_VALUES = 250
LARGE_ENUM_CHARS = 15_000
MAX_STRING_CHARS = 120_000


@dataclass
class SchemaSize:
    """What the limits count in one schema."""

    properties: int = 0
    nesting: int = 0
    enum_values: int = 0
    #: Characters of property names, definition names, enum values and const values.
    string_chars: int = 0
    #: (context, characters) of the largest enum over LARGE_ENUM_VALUES values, if any.
    large_enums: list[tuple[tuple[str, ...], int]] = field(default_factory=list)


def _nodes(node: Any, context: tuple[str, ...]) -> Iterator[tuple[dict[str, Any], tuple[str, ...]]]:
    """Every schema object in `node` with its context, each written place visited once."""
    if not isinstance(node, dict):
        return
    yield node, context
    properties = node.get("properties")
    if isinstance(properties, dict):
        for key, sub in properties.items():
            yield from _nodes(sub, (*context, "properties", str(key)))
    for keyword in ("items", "additionalProperties", "not"):
        if isinstance(node.get(keyword), dict):
            yield from _nodes(node[keyword], (*context, keyword))
    for keyword in ("anyOf", "oneOf", "allOf", "prefixItems"):
        branches = node.get(keyword)
        if isinstance(branches, list):
            for k, sub in enumerate(branches):
                yield from _nodes(sub, (*context, keyword, str(k)))
    for keyword in ("$defs", "definitions"):
        defs = node.get(keyword)
        if isinstance(defs, dict):
            for key, sub in defs.items():
                yield from _nodes(sub, (*context, keyword, str(key)))


def _resolve(ref: str, root: dict[str, Any]) -> Any:
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        return None
    target: Any = root
    for key in ref[2:].split("/"):
        target = target.get(key) if isinstance(target, dict) else None
    return target


def _is_container(node: dict[str, Any]) -> bool:
    kind = node.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    return "object" in kinds or "array" in kinds or "properties" in node or "items" in node


def _depth(node: Any, root: dict[str, Any], depth: int, refs: tuple[str, ...]) -> int:
    """The deepest level (steps through properties/items) of a container under `node`."""
    if not isinstance(node, dict):
        return 0
    ref = node.get("$ref")
    if isinstance(ref, str):
        if refs.count(ref) > 1:  # recursive: counted through one repetition
            return 0
        return _depth(_resolve(ref, root), root, depth, (*refs, ref))
    deepest = depth if _is_container(node) else 0
    properties = node.get("properties")
    if isinstance(properties, dict):
        for sub in properties.values():
            deepest = max(deepest, _depth(sub, root, depth + 1, refs))
    if isinstance(node.get("items"), dict):
        deepest = max(deepest, _depth(node["items"], root, depth + 1, refs))
    for keyword in ("anyOf", "oneOf", "allOf"):
        branches = node.get(keyword)
        if isinstance(branches, list):
            for sub in branches:
                deepest = max(deepest, _depth(sub, root, depth, refs))
    return deepest


def measure_schema(schema: dict[str, Any]) -> SchemaSize:
    """Count what OpenAI's limits count in `schema` (see the module docstring)."""
    size = SchemaSize(nesting=_depth(schema, schema, 0, ()))
    for node, context in _nodes(schema, ()):
        properties = node.get("properties")
        if isinstance(properties, dict):
            size.properties += len(properties)
            size.string_chars += sum(len(str(key)) for key in properties)
        for keyword in ("$defs", "definitions"):
            defs = node.get(keyword)
            if isinstance(defs, dict):
                size.string_chars += sum(len(str(key)) for key in defs)
        enum = node.get("enum")
        if isinstance(enum, list):
            size.enum_values += len(enum)
            chars = sum(len(v) if isinstance(v, str) else len(str(v)) for v in enum)
            size.string_chars += chars
            if len(enum) > LARGE_ENUM_VALUES:
                string_chars = sum(len(v) for v in enum if isinstance(v, str))
                size.large_enums.append((context, string_chars))
        if "const" in node:
            const = node["const"]
            size.string_chars += len(const) if isinstance(const, str) else len(str(const))
    return size


def _too_big(name: str, problem: str) -> SimAPIError:
    return SimAPIError(
        400,
        f"Invalid schema for response_format '{name}': {problem}",
        param="response_format",
        code="invalid_json_schema",
    )


def check_schema_limits(schema: dict[str, Any], name: str) -> None:
    """Raise OpenAI's 400 `invalid_json_schema` when a strict schema is over a size limit."""
    size = measure_schema(schema)
    if size.properties > MAX_PROPERTIES:
        raise _too_big(name, f"{size.properties} parameters exceeds limit of {MAX_PROPERTIES}.")
    if size.nesting > MAX_NESTING:
        raise _too_big(name, f"{size.nesting} levels of nesting exceeds limit of {MAX_NESTING}.")
    if size.enum_values > MAX_ENUM_VALUES:
        raise _too_big(name, f"{size.enum_values} enum values exceeds limit of {MAX_ENUM_VALUES}.")
    for context, chars in size.large_enums:
        if chars > LARGE_ENUM_CHARS:
            raise _too_big(
                name,
                f"In context={context!r}, {chars} characters of enum values exceeds limit of "
                f"{LARGE_ENUM_CHARS} for an enum with more than {LARGE_ENUM_VALUES} values.",
            )
    if size.string_chars > MAX_STRING_CHARS:
        raise _too_big(
            name,
            f"{size.string_chars} characters of property names, definition names, enum values "
            f"and const values exceeds limit of {MAX_STRING_CHARS}.",
        )
