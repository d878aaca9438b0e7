"""Planning against today's models: max input tokens, reasoning allowances, schema limits, cost."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qbq.catalog import MODELS, get_model_spec
from qbq.domain import GradingRequest, Page, Question, Student
from qbq.errors import ConfigurationError, PlanningError
from qbq.planning import BatchPlan, plan_batches, reasoning_allowance
from qbq.prompts import response_schema
from qbq.schema_limits import (
    MAX_REF_LENGTH,
    OPENAI_SCHEMA_LIMITS,
    SchemaCounts,
    schema_counts,
    schema_problems,
)
from qbq.settings import (
    DEFAULT_REASONING_TOKENS_PER_REQUEST,
    DEFAULT_REASONING_TOKENS_PER_STUDENT,
    GradingPolicy,
)

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def page(image_id: str, width: int = 1240, height: int = 1754) -> Page:
    return Page(image_id, "url", f"https://img.example/{image_id}.png", width, height, 200_000)


def exam(n_students: int, *, model: str = "gpt-5-mini", pages: int = 2, questions: int = 4,
         width: int = 1240, height: int = 1754, ref_width: int = 4,
         context_window: int | None = None, max_output_tokens: int | None = None
         ) -> GradingRequest:
    return GradingRequest(
        assessment_id="exam-1",
        model=model,
        spec=get_model_spec(model, context_window=context_window,
                            max_output_tokens=max_output_tokens),
        instructions=None,
        questions=tuple(Question(str(q), 4.0, f"rubric {q}") for q in range(1, questions + 1)),
        model_answer_pages=(),
        students=tuple(
            Student(f"S{i:0{ref_width}d}", tuple(page(f"s{i}-p{j}", width, height)
                                               for j in range(pages)))
            for i in range(n_students)),
    )


def within_limits(plan: BatchPlan, request: GradingRequest) -> None:
    spec = request.spec
    assert [s for b in plan.batches for s in b.students] == list(request.students)
    for b in plan.batches:
        assert b.prompt_tokens <= plan.input_budget <= spec.input_limit
        assert b.prompt_tokens + b.max_completion_tokens <= plan.token_budget
        assert b.max_completion_tokens <= spec.max_output_tokens
        counts = schema_counts(response_schema([q.question_number for q in request.questions]))
        assert not schema_problems(counts), schema_problems(counts)


# --- max input tokens ----------------------------------------------------------------------------


def test_gpt5_mini_300_students_two_pages_every_request_within_272k_input() -> None:
    request = exam(300)
    plan = plan_batches(request, GradingPolicy())
    spec = request.spec
    assert spec.input_limit == 272_000 and spec.context_window == 400_000
    assert plan.input_budget == math.floor(272_000 * 0.9)
    assert plan.token_budget == math.floor(400_000 * 0.9)
    within_limits(plan, request)
    assert all(b.prompt_tokens <= 272_000 for b in plan.batches)
    assert plan.reasoning_effort == "medium"
    assert len(plan.batches) > 1


def test_input_limit_binds_before_the_context_window() -> None:
    # No reasoning, few questions: only the 272k input limit can split these students.
    request = exam(120, model="gpt-5.4-mini", questions=1)
    plan = plan_batches(request, GradingPolicy(avoid_long_context_pricing=False))
    within_limits(plan, request)
    first = plan.batches[0]
    assert first.prompt_tokens + first.max_completion_tokens < plan.token_budget - 50_000
    assert first.prompt_tokens > plan.input_budget - 5_000  # full on input, not on window


def test_long_context_pricing_is_avoided_unless_disabled() -> None:
    request = exam(150, model="gpt-5.4", questions=1)
    avoided = plan_batches(request, GradingPolicy())
    assert avoided.input_budget == math.floor(272_000 * 0.9)
    within_limits(avoided, request)
    allowed = plan_batches(request, GradingPolicy(avoid_long_context_pricing=False))
    assert allowed.input_budget == math.floor(request.spec.input_limit * 0.9)
    assert len(allowed.batches) < len(avoided.batches)
    assert max(b.prompt_tokens for b in allowed.batches) > 272_000
    # Such a request is billed at the long-context rate, and the estimate says so.
    assert allowed.estimated_cost_usd() > avoided.estimated_cost_usd()


def test_a_student_over_the_input_limit_names_it() -> None:
    request = exam(1, pages=140, width=2048, height=2048)
    with pytest.raises(PlanningError, match=r"'S0000'.*takes at most 244,800 input tokens"):
        plan_batches(request, GradingPolicy())


# --- reasoning allowance -------------------------------------------------------------------------


def test_reasoning_models_reserve_an_allowance_and_expect_its_spend() -> None:
    request = exam(10)
    policy = GradingPolicy(reasoning_min_completion_tokens=0)
    plan = plan_batches(request, policy)
    (batch,) = plan.batches
    per_student = DEFAULT_REASONING_TOKENS_PER_STUDENT["medium"]
    per_request = DEFAULT_REASONING_TOKENS_PER_REQUEST["medium"]
    assert batch.expected_reasoning_tokens == per_request + 10 * per_student
    visible = math.ceil(batch.expected_output_tokens * policy.output_headroom)
    assert batch.max_completion_tokens == visible + 2 * batch.expected_reasoning_tokens
    # The cost estimate bills the expected reasoning as output.
    no_reasoning = dataclasses.replace(
        plan, batches=(dataclasses.replace(batch, expected_reasoning_tokens=0),))
    extra = plan.estimated_cost_usd() - no_reasoning.estimated_cost_usd()
    assert extra == pytest.approx(batch.expected_reasoning_tokens * 2.0 / 1e6)


def test_the_reasoning_floor_fills_room_but_never_breaks_a_limit() -> None:
    plan = plan_batches(exam(1), GradingPolicy())
    assert plan.batches[0].max_completion_tokens == 25_000
    small = exam(1, context_window=30_000)
    tight = plan_batches(small, GradingPolicy())
    b = tight.batches[0]
    assert b.prompt_tokens + b.max_completion_tokens == tight.token_budget
    within_limits(tight, small)


@pytest.mark.parametrize(("model", "effort"), [("gpt-4.1-mini", None), ("gpt-5.4-mini", "none")])
def test_no_reasoning_no_allowance(model: str, effort: str | None) -> None:
    request = exam(5, model=model)
    plan = plan_batches(request, GradingPolicy())
    assert plan.reasoning_effort == effort
    b = plan.batches[0]
    assert b.expected_reasoning_tokens == 0
    assert b.max_completion_tokens == math.ceil(b.expected_output_tokens * 1.5)


def test_reasoning_effort_setting_is_validated_and_carried() -> None:
    request = exam(5)
    with pytest.raises(ConfigurationError, match=r"QBQ_REASONING_EFFORT='xhigh'.*gpt-5-mini"):
        plan_batches(request, GradingPolicy(reasoning_effort="xhigh"))
    with pytest.raises(ConfigurationError, match="not a reasoning model"):
        plan_batches(exam(5, model="gpt-4o"), GradingPolicy(reasoning_effort="low"))
    assert plan_batches(request, GradingPolicy(reasoning_effort="low")).reasoning_effort == "low"
    # The flow parameter / block field wins over the setting.
    plan = plan_batches(request, GradingPolicy(reasoning_effort="low"), reasoning_effort="high")
    assert plan.reasoning_effort == "high"
    high = plan.batches[0].expected_reasoning_tokens
    low = plan_batches(request, GradingPolicy(reasoning_effort="low")).batches[0]
    assert high > low.expected_reasoning_tokens


def test_observed_reasoning_sizes_later_batches() -> None:
    request = exam(60)
    policy = GradingPolicy()
    planned = plan_batches(request, policy)
    thrifty = plan_batches(request, policy, observed_reasoning_per_student=100)
    assert len(thrifty.batches) < len(planned.batches)
    within_limits(thrifty, request)
    batch = planned.batches[0]
    # The pure hook the grading side calls before sending a batch.
    assert planned.completion_tokens_for(batch) == batch.max_completion_tokens
    fewer = planned.completion_tokens_for(batch, observed_reasoning_per_student=100, policy=policy)
    more = planned.completion_tokens_for(batch, observed_reasoning_per_student=5000, policy=policy)
    assert fewer < batch.max_completion_tokens < more
    assert more <= min(request.spec.max_output_tokens, planned.token_budget - batch.prompt_tokens)
    assert fewer >= batch.expected_output_tokens
    with pytest.raises(ValueError):
        reasoning_allowance(request.spec, policy, "medium", observed_reasoning_per_student=-1)


@FAST
@given(model=st.sampled_from(sorted(m for m, s in MODELS.items() if s.reasoning)),
       data=st.data(), n=st.integers(1, 40), pages=st.integers(1, 3),
       window=st.integers(60_000, 400_000), observed=st.none() | st.floats(0, 4000))
def test_reasoning_plans_stay_within_every_limit(model: str, data: st.DataObject, n: int,
                                                 pages: int, window: int,
                                                 observed: float | None) -> None:
    effort = data.draw(st.sampled_from(MODELS[model].reasoning_efforts))
    request = exam(n, model=model, pages=pages, context_window=window)
    try:
        plan = plan_batches(request, GradingPolicy(reasoning_effort=effort),
                            observed_reasoning_per_student=observed)
    except PlanningError:
        # Only when one student alone cannot fit.
        alone = dataclasses.replace(request, students=request.students[:1])
        with pytest.raises(PlanningError):
            plan_batches(alone, GradingPolicy(reasoning_effort=effort),
                         observed_reasoning_per_student=observed)
        return
    within_limits(plan, request)
    for b in plan.batches:
        assert b.max_completion_tokens >= b.expected_output_tokens + b.expected_reasoning_tokens


# --- schema limits -------------------------------------------------------------------------------


def test_schema_counts_of_the_response_schema() -> None:
    counts = schema_counts(response_schema(["1", "2", "3"]))
    # Root: students; student: ref, name, answers; name: first, last; answer: 5 fields.
    assert counts.object_properties == 1 + 3 + 2 + 5
    # No refs: the schema is the same for every batch of an assessment (a cacheable prefix).
    assert counts.enum_values == 3 + 3 + 3
    assert counts.enum_chars == len("123") + len("lowmediumhigh") + len(
        "answeredblankunreadable")
    assert counts.large_enum_chars == 0
    assert counts.nesting_depth <= OPENAI_SCHEMA_LIMITS.max_nesting_depth
    names = "students" + "refnameanswers" + "firstlast" + "question_numbermarkfeedbackconfidencestatus"
    assert counts.name_and_enum_chars == len(names) + counts.enum_chars
    assert schema_problems(counts) == []


def test_schema_problems_name_each_limit() -> None:
    over = SchemaCounts(5_001, 11, 1_001, 30_000, 15_001, 120_001)
    problems = schema_problems(over)
    assert len(problems) == 5
    assert "5,001 object properties, over 5,000" in problems[0]
    assert "11 levels of nesting" in problems[1]
    big_enum = {"type": "object", "properties": {"r": {"type": "string",
                                                      "enum": [f"{i:060d}" for i in range(251)]}}}
    assert schema_counts(big_enum).large_enum_chars == 251 * 60
    assert any("characters in an enum" in p for p in schema_problems(schema_counts(big_enum)))


#: A policy under which only the response schema can bound a batch of tiny pages.
SCHEMA_ONLY = GradingPolicy(output_tokens_per_answer=1, output_tokens_per_student=1,
                            max_images_per_request=100_000, max_request_bytes=10**12)


def test_refs_no_longer_bound_a_batch() -> None:
    # Tiny pages on a 1M-token model, long refs: the schema pins no refs (so that it stays in
    # the cached prefix), so neither the 1,000 enum values nor the enum characters bound it.
    request = exam(1_200, model="gpt-4.1-nano", pages=1, width=32, height=32, questions=1,
                   ref_width=MAX_REF_LENGTH - 1)
    plan = plan_batches(request, SCHEMA_ONLY)
    within_limits(plan, request)
    assert len(plan.batches) == 1


# --- cost by mode --------------------------------------------------------------------------------


def test_estimated_cost_by_mode() -> None:
    plan = plan_batches(exam(20), GradingPolicy())
    sync = plan.estimated_cost_usd()
    assert plan.estimated_cost_usd("batch") == pytest.approx(sync / 2)
    assert plan.estimated_cost_usd("flex") == pytest.approx(sync / 2)
    gpt4o = plan_batches(exam(3, model="gpt-4o"), GradingPolicy())
    with pytest.raises(ConfigurationError, match="flex"):
        gpt4o.estimated_cost_usd("flex")


def test_request_parsing_refuses_refs_over_the_documented_maximum() -> None:
    from qbq.errors import RequestValidationError
    from qbq.request import parse_request

    def body(ref: str) -> dict[str, object]:
        return {"assessment_id": "a", "model": "gpt-5-mini",
                "questions": [{"question_number": "1", "max_mark": 1}],
                "students": [{"ref": ref, "pages": [{"path": "p.png"}]}]}

    parse_request(body("x" * MAX_REF_LENGTH))
    with pytest.raises(RequestValidationError, match=r"students\[0\]\.ref"):
        parse_request(body("x" * (MAX_REF_LENGTH + 1)))


def test_an_observed_zero_keeps_the_floor_but_reserves_no_reasoning() -> None:
    request = exam(3)
    plan = plan_batches(request, GradingPolicy(), observed_reasoning_per_student=0)
    b = plan.batches[0]
    assert b.expected_reasoning_tokens == 0
    assert b.max_completion_tokens == 25_000
