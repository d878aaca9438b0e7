"""Structured Outputs size limits, enforced by the simulator with OpenAI's 400, over HTTP.

https://platform.openai.com/docs/guides/structured-outputs#supported-schemas: 5,000 object
properties, 10 levels of nesting, 1,000 enum values, 15,000 characters in one enum of more than
250 values, 120,000 characters of names and enum/const values.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from qbq.simulator import BackgroundServer, SimConfig, create_app
from qbq.simulator.schema_limits import measure_schema

MODEL = "gpt-4.1-mini"
HELLO = [{"role": "user", "content": "hi"}]


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _flat(count: int, name_chars: int = 0) -> dict[str, Any]:
    return _object({f"p{i}".ljust(name_chars, "x"): {"type": "string"} for i in range(count)})


def _nested(levels: int) -> dict[str, Any]:
    """The root object and `levels` objects nested in it, one inside the other."""
    node: dict[str, Any] = {"type": "string"}
    for _ in range(levels + 1):
        node = _object({"a": node})
    return node


def _enums(*sizes: int, chars: int = 1) -> dict[str, Any]:
    return _object(
        {
            f"e{k}": {"type": "string", "enum": [f"{k}-{i}".ljust(chars, "v") for i in range(size)]}
            for k, size in enumerate(sizes)
        }
    )


def _format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "limits", "schema": schema, "strict": True}}


@pytest.fixture(scope="module")
def client() -> Iterator[openai.OpenAI]:
    with BackgroundServer(create_app(SimConfig())) as sim, openai.OpenAI(
        base_url=sim.url + "/v1", api_key="sk-test", max_retries=0
    ) as c:
        yield c


OVER = [
    pytest.param(_flat(5_001), "5001 parameters exceeds limit of 5000.", id="properties"),
    pytest.param(_nested(11), "11 levels of nesting exceeds limit of 10.", id="nesting"),
    pytest.param(_enums(600, 401), "1001 enum values exceeds limit of 1000.", id="enum-values"),
    pytest.param(
        _enums(251, chars=60),
        "In context=('properties', 'e0'), 15060 characters of enum values exceeds limit of 15000 "
        "for an enum with more than 250 values.",
        id="large-enum-chars",
    ),
    pytest.param(
        _flat(1_000, name_chars=121),
        "121000 characters of property names, definition names, enum values and const values "
        "exceeds limit of 120000.",
        id="total-chars",
    ),
]


@pytest.mark.parametrize(("schema", "problem"), OVER)
def test_over_a_limit_is_refused_like_openai(
    client: openai.OpenAI, schema: dict[str, Any], problem: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=HELLO, response_format=_format(schema))
    assert refused.value.body == {
        "message": f"Invalid schema for response_format 'limits': {problem}",
        "type": "invalid_request_error",
        "param": "response_format",
        "code": "invalid_json_schema",
    }


AT_LIMIT = [
    pytest.param(_flat(5_000), id="properties"),
    pytest.param(_nested(10), id="nesting"),
    pytest.param(_enums(600, 400), id="enum-values"),
    pytest.param(_enums(250, chars=70), id="250-long-values"),
    pytest.param(_flat(990, name_chars=121), id="total-chars"),
]


@pytest.mark.parametrize("schema", AT_LIMIT)
def test_at_a_limit_is_accepted(client: openai.OpenAI, schema: dict[str, Any]) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, response_format=_format(schema))
    assert reply.usage is not None and reply.usage.prompt_tokens > 0


def test_non_strict_schemas_are_not_held_to_the_limits(client: openai.OpenAI) -> None:
    loose = {"type": "json_schema", "json_schema": {"name": "limits", "schema": _nested(11)}}
    assert client.chat.completions.create(model=MODEL, messages=HELLO, response_format=loose).choices


def test_what_the_limits_count() -> None:
    answer = _object({"mark": {"type": "number"}, "status": {"enum": ["answered", "blank"]}})
    schema = {
        **_object(
            {
                "students": {"type": "array", "items": {"$ref": "#/$defs/student"}},
                "kind": {"const": "grading"},
            }
        ),
        "$defs": {
            "student": _object(
                {
                    "ref": {"type": "string", "enum": [f"S{i:03d}" for i in range(300)]},
                    "name": {"anyOf": [_object({"first": {"type": "string"}}), {"type": "null"}]},
                    "answers": {"type": "array", "items": answer},
                }
            )
        },
    }
    size = measure_schema(schema)
    # students[] → student (via $ref) → answers[] → answer; anyOf stays at its place's depth.
    assert size.nesting == 4
    assert size.properties == 2 + 3 + 1 + 2
    assert size.enum_values == 300 + 2
    assert size.large_enums == [(("$defs", "student", "properties", "ref"), 300 * 4)]
    names = len("students") + len("kind") + len("student") + len("refnameanswers") + len("first")
    names += len("markstatus")
    assert size.string_chars == names + 300 * 4 + len("answeredblank") + len("grading")
