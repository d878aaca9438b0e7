"""OpenAI's Structured Outputs limits, and a pure count of what a JSON schema uses of them.

The limits ("Supported schemas", https://developers.openai.com/api/docs/guides/structured-outputs#supported-schemas):
at most 5,000 object properties in all and 10 levels of nesting; at most 1,000 enum values in
all; for one string enum with more than 250 values, at most 15,000 characters across its
values; at most 120,000 characters of property names, definition names, enum values and const
values in all. A schema over any of them is refused by the API (HTTP 400), so the planner keeps
every batch's schema within them (`qbq.planning`), whatever the schema pins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_REF_LENGTH",
    "OPENAI_SCHEMA_LIMITS",
    "SchemaCounts",
    "SchemaLimits",
    "schema_counts",
    "schema_problems",
]

#: Longest student ref (characters) qbq accepts: refs travel in every prompt, reply, payload and
#: log line. Enforced where requests are parsed (`qbq.request`).
MAX_REF_LENGTH = 64


@dataclass(frozen=True)
class SchemaLimits:
    """Structured Outputs limits, as published by OpenAI (URL in the module docstring)."""

    max_object_properties: int = 5_000
    max_nesting_depth: int = 10
    max_enum_values: int = 1_000
    #: An enum with more values than this must keep its values within `max_large_enum_chars`.
    large_enum_values: int = 250
    max_large_enum_chars: int = 15_000
    max_name_and_enum_chars: int = 120_000


#: The limits OpenAI documents for `response_format={"type": "json_schema", "strict": true}`.
OPENAI_SCHEMA_LIMITS = SchemaLimits()


@dataclass(frozen=True)
class SchemaCounts:
    """What one JSON schema uses of the limits (counts, characters)."""

    #: Properties of every object schema, added up.
    object_properties: int
    #: Deepest chain of nested object/array schemas (the root object is level 1).
    nesting_depth: int
    #: Values of every enum, added up.
    enum_values: int
    #: Characters of every enum value, added up.
    enum_chars: int
    #: Characters across the values of the largest enum with more than `large_enum_values`
    #: values (0 when no enum is that large).
    large_enum_chars: int
    #: Characters of property names, definition names, enum values and const values.
    name_and_enum_chars: int


def _chars(value: Any) -> int:
    return len(value) if isinstance(value, str) else len(str(value))


def schema_counts(schema: Mapping[str, Any],
                  limits: SchemaLimits = OPENAI_SCHEMA_LIMITS) -> SchemaCounts:
    """Count what `schema` (a JSON-schema dict) uses of OpenAI's Structured Outputs limits.

    Pure and generic over JSON-decoded dicts and lists: it walks `properties`, `items`,
    `anyOf`/`oneOf`/`allOf`, `$defs` and `definitions`, so it applies to whatever the schema
    pins (refs and question numbers in enums today, nothing per batch once the schema is
    identical across batches). Arrays and objects each count as a nesting level, the stricter
    reading of "levels of nesting".
    """
    properties = enums = enum_total_chars = large_enum = chars = 0
    deepest = 0
    stack: list[tuple[Mapping[str, Any], int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        kind = node.get("type")
        nests = kind in ("object", "array") or "properties" in node or "items" in node
        level = depth if nests else depth - 1
        deepest = max(deepest, level)
        props = node.get("properties")
        if isinstance(props, dict):
            properties += len(props)
            chars += sum(len(name) for name in props)
            stack.extend((child, level + 1) for child in props.values()
                         if isinstance(child, dict))
        values = node.get("enum")
        if isinstance(values, list):
            enums += len(values)
            enum_chars = sum(_chars(v) for v in values)
            enum_total_chars += enum_chars
            chars += enum_chars
            if len(values) > limits.large_enum_values:
                large_enum = max(large_enum, enum_chars)
        if "const" in node:
            chars += _chars(node["const"])
        items = node.get("items")
        if isinstance(items, dict):
            stack.append((items, level + 1))
        for key in ("anyOf", "oneOf", "allOf"):
            options = node.get(key)
            if isinstance(options, list):
                # Alternatives sit at the same level as the node that holds them.
                stack.extend((o, level + 1 if nests else depth) for o in options
                             if isinstance(o, dict))
        for key in ("$defs", "definitions"):
            defs = node.get(key)
            if isinstance(defs, dict):
                chars += sum(len(name) for name in defs)
                stack.extend((d, 1) for d in defs.values() if isinstance(d, dict))
    return SchemaCounts(properties, deepest, enums, enum_total_chars, large_enum, chars)


def schema_problems(counts: SchemaCounts,
                    limits: SchemaLimits = OPENAI_SCHEMA_LIMITS) -> list[str]:
    """Each limit `counts` breaks, as a sentence with both numbers; empty when it fits."""
    problems = []
    if counts.object_properties > limits.max_object_properties:
        problems.append(f"{counts.object_properties:,} object properties, over "
                        f"{limits.max_object_properties:,}")
    if counts.nesting_depth > limits.max_nesting_depth:
        problems.append(f"{counts.nesting_depth} levels of nesting, over "
                        f"{limits.max_nesting_depth}")
    if counts.enum_values > limits.max_enum_values:
        problems.append(f"{counts.enum_values:,} enum values, over {limits.max_enum_values:,}")
    if counts.large_enum_chars > limits.max_large_enum_chars:
        problems.append(f"{counts.large_enum_chars:,} characters in an enum of more than "
                        f"{limits.large_enum_values} values, over "
                        f"{limits.max_large_enum_chars:,}")
    if counts.name_and_enum_chars > limits.max_name_and_enum_chars:
        problems.append(f"{counts.name_and_enum_chars:,} characters of names and enum values, "
                        f"over {limits.max_name_and_enum_chars:,}")
    return problems
