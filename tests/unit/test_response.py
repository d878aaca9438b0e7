"""Tests of the model reply: strict parsing into precise error types and the batch's rules."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qbq.errors import (
    RefusalError,
    ResponseError,
    ResponseSchemaError,
    ResponseShapeError,
    TruncatedResponseError,
)
from qbq.response import CheckedReply, GradingReply, check_reply, parse_reply, rule_error

MAX_MARKS = {"1": 2.0, "2": 5.0}


def answer(qnum: str = "1", mark: Any = 1.0, **over: Any) -> dict[str, Any]:
    return {"question_number": qnum, "mark": mark, "feedback": "fine", "confidence": "high",
            "status": "answered", **over}


def student(ref: str, answers: list[dict[str, Any]] | None = None,
            name: dict[str, str] | None = None) -> dict[str, Any]:
    return {"ref": ref, "name": name,
            "answers": answers if answers is not None else [answer("1", 1), answer("2", 4)]}


def reply_json(*students: dict[str, Any]) -> str:
    return json.dumps({"students": list(students)})


def parse(content: str | None, finish_reason: str | None = "stop",
          refusal: str | None = None) -> GradingReply:
    return parse_reply(content, finish_reason=finish_reason, refusal=refusal)


# --- parse_reply --------------------------------------------------------------------------------


def test_valid_reply_parses() -> None:
    reply = parse(reply_json(student("A", name={"first": "Ada", "last": "Byron"}), student("B")))
    assert [s.ref for s in reply.students] == ["A", "B"]
    assert reply.students[0].name is not None and reply.students[0].name.last == "Byron"
    assert reply.students[1].name is None
    assert [a.mark for a in reply.students[0].answers] == [1.0, 4.0]


def test_refusal_wins_over_everything() -> None:
    with pytest.raises(RefusalError) as info:
        parse(None, finish_reason="stop", refusal="I can't help with that.")
    assert info.value.body == "I can't help with that."
    assert "refused" in info.value.message


def test_finish_reason_length_is_truncation_even_when_json_is_complete() -> None:
    content = reply_json(student("A"))
    with pytest.raises(TruncatedResponseError) as info:
        parse(content, finish_reason="length")
    assert info.value.body == content


@pytest.mark.parametrize("content", [None, ""])
def test_empty_reply_is_a_shape_error(content: str | None) -> None:
    with pytest.raises(ResponseShapeError, match="empty reply"):
        parse(content)


FULL = reply_json(student("A", name={"first": "Ada", "last": "Lovelace"}),
                  student("B", [answer("1", 0.5, feedback='said "x}" and {y'), answer("2", 3)]))


@given(st.integers(1, len(FULL) - 1))
def test_json_cut_anywhere_is_truncation(cut: int) -> None:
    """A reply cut at any point (finish_reason "stop" notwithstanding) is truncated, not "not JSON"."""
    content = FULL[:cut]
    if not content.strip():
        return
    with pytest.raises(TruncatedResponseError) as info:
        parse(content)
    assert info.value.body == content


def test_json_cut_right_after_an_inner_object_is_truncation() -> None:
    content = FULL[: FULL.index("}") + 1]  # ends with "}" but is not complete
    with pytest.raises(TruncatedResponseError):
        parse(content)


@pytest.mark.parametrize(
    "content",
    [
        "Sure! Here are the grades.",
        "<html>502 Bad Gateway</html>",
        '{"students": [}',
        '{"students": []} and some chatter',  # complete JSON followed by text: not truncated
        '{"students": []}}',
        "```json\n{\"students\": []}\n```",
    ],
)
def test_non_json_is_a_shape_error(content: str) -> None:
    with pytest.raises(ResponseShapeError) as info:
        parse(content)
    assert not isinstance(info.value, TruncatedResponseError)
    assert info.value.body == content


@pytest.mark.parametrize(
    ("content", "where"),
    [
        ("[]", "object"),
        ('{"grades": []}', "students"),
        ('{"students": {}}', "students"),
        (json.dumps({"students": [], "comment": "x"}), "comment"),
        (reply_json({**student("A"), "score": 3}), "score"),
        (reply_json(student("A", [answer(extra=1)])), "extra"),
        (reply_json(student("A", [answer(confidence="very high")])), "confidence"),
        (reply_json(student("A", [answer(status="skipped")])), "status"),
        (reply_json(student("A", [answer(mark="two")])), "mark"),
        (reply_json({"ref": "A", "answers": []}), "name"),
        (reply_json(student("A", name={"first": "Ada"})), "last"),
    ],
)
def test_wrong_shapes_and_extra_keys_are_schema_errors(content: str, where: str) -> None:
    with pytest.raises(ResponseSchemaError) as info:
        parse(content)
    assert where in info.value.message
    assert info.value.body == content


def test_errors_are_response_errors() -> None:
    for content, kind in [("nope", ResponseShapeError), ("[]", ResponseSchemaError),
                          ('{"students": [', TruncatedResponseError)]:
        with pytest.raises(ResponseError) as info:
            parse(content)
        assert type(info.value) is kind


# --- check_reply --------------------------------------------------------------------------------


def check(*students: dict[str, Any], refs: tuple[str, ...] = ("A", "B", "C")) -> CheckedReply:
    return check_reply(parse(reply_json(*students)), list(refs), MAX_MARKS)


def test_all_valid() -> None:
    checked = check(student("A"), student("B"), student("C"))
    assert set(checked.valid) == {"A", "B", "C"}
    assert checked.problems == {}
    assert rule_error(checked, "body") is None


def test_missing_student() -> None:
    checked = check(student("A"), student("C"))
    assert set(checked.valid) == {"A", "C"}
    assert list(checked.problems) == ["B"]
    assert "B" in checked.problems["B"][0] and "missing" in checked.problems["B"][0]


def test_duplicated_student_is_not_kept_even_if_both_copies_are_valid() -> None:
    checked = check(student("A"), student("B"), student("B"), student("C"))
    assert set(checked.valid) == {"A", "C"}
    assert list(checked.problems) == ["B"]
    assert "2 times" in checked.problems["B"][0]


def test_unknown_student_is_reported_and_the_rest_kept() -> None:
    checked = check(student("A"), student("B"), student("C"), student("Z"))
    assert set(checked.valid) == {"A", "B", "C"}
    assert "Z" not in checked.valid
    assert list(checked.problems) == ["*"]
    assert "'Z'" in checked.problems["*"][0]
    error = rule_error(checked, "body")
    assert error is not None and error.offending_refs == set()
    assert "Z" in error.message and error.body == "body"


def test_unknown_question() -> None:
    checked = check(student("A"), student("B", [answer("1"), answer("2"), answer("3")]), student("C"))
    assert set(checked.valid) == {"A", "C"}
    assert checked.problems == {"B": ["B: unknown question 3"]}


def test_question_twice_and_question_missing() -> None:
    checked = check(student("A", [answer("1"), answer("1")]), student("B"), student("C"))
    assert set(checked.valid) == {"B", "C"}
    problems = checked.problems["A"]
    assert "A: question 1 answered 2 times" in problems
    assert "A: question 2 answered 0 times" in problems


@pytest.mark.parametrize(("mark", "ok"), [(-0.5, False), (0, True), (2, True), (2.5, False)])
def test_mark_bounds(mark: float, ok: bool) -> None:
    checked = check(student("A", [answer("1", mark), answer("2", 5)]), student("B"), student("C"))
    assert ("A" in checked.valid) is ok
    if not ok:
        assert checked.problems == {"A": [f"A: question 1 mark {float(mark)} outside 0..2.0"]}


def test_every_problem_names_its_student_and_rule_error_lists_them() -> None:
    checked = check(
        student("A", [answer("1", 3), answer("2", 1)]),
        student("B", [answer("1", 1)]),
        refs=("A", "B", "C"),
    )
    assert checked.valid == {}
    assert set(checked.problems) == {"A", "B", "C"}
    for ref, problems in checked.problems.items():
        assert all(ref in p for p in problems)
    error = rule_error(checked, "raw")
    assert error is not None
    assert error.offending_refs == {"A", "B", "C"}
    assert len(error.problems) == 3
