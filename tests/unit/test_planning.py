"""Tests of `plan_batches`: coverage, order, limits, maximal batches, stable keys, token estimates."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qbq.catalog import get_model_spec
from qbq.domain import GradingRequest, Page, Question, Student
from qbq.errors import PlanningError
from qbq.planning import BatchPlan, PlannedBatch, _prefix_tokens, plan_batches, prompt_questions
from qbq.prompts import StudentPages, build_messages, response_format, response_schema
from qbq.schema_limits import schema_counts, schema_problems
from qbq.settings import GradingPolicy
from qbq.tokens import chat_prompt_tokens

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Tile and patch models; limits are overridden with small numbers so that the limits bind.
MODELS = ["gpt-4o", "gpt-4.1-mini", "o3", "gpt-5-mini"]


def page(image_id: str, width: int = 800, height: int = 1100, n_bytes: int = 50_000,
         url: str | None = None) -> Page:
    return Page(image_id, "url", url or f"https://img.example/{image_id}.png", width, height,
                n_bytes)


def make_request(
    n_students: int = 5,
    *,
    pages_per_student: int = 2,
    model: str = "gpt-4o",
    context_window: int | None = None,
    max_output_tokens: int | None = None,
    assessment_id: str = "exam-1",
    n_questions: int = 3,
    model_answers: int = 0,
) -> GradingRequest:
    students = tuple(
        Student(f"S{i:03d}", tuple(page(f"s{i}-p{j}") for j in range(pages_per_student)))
        for i in range(n_students)
    )
    return GradingRequest(
        assessment_id=assessment_id,
        model=model,
        spec=get_model_spec(model, context_window=context_window,
                            max_output_tokens=max_output_tokens),
        instructions="Be strict about units.",
        questions=tuple(Question(str(q), 4.0, f"rubric for {q}") for q in range(1, n_questions + 1)),
        model_answer_pages=tuple(page(f"ma-{k}") for k in range(model_answers)),
        students=students,
    )


# --- strategies ---------------------------------------------------------------------------------

refs_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=10
)
free_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=80)


@st.composite
def pages_st(draw: st.DrawFn, prefix: str, n: int) -> tuple[Page, ...]:
    return tuple(
        page(
            f"{prefix}-{j}",
            width=draw(st.integers(1, 2600)),
            height=draw(st.integers(1, 2600)),
            n_bytes=draw(st.integers(1, 1_500_000)),
        )
        for j in range(n)
    )


@st.composite
def requests_st(draw: st.DrawFn, max_students: int = 20) -> GradingRequest:
    model = draw(st.sampled_from(MODELS))
    refs = draw(st.lists(refs_text, min_size=1, max_size=max_students, unique=True))
    students = tuple(
        Student(ref, draw(pages_st(f"s{i}", draw(st.integers(1, 4))))) for i, ref in enumerate(refs)
    )
    n_questions = draw(st.integers(1, 5))
    questions = tuple(
        Question(f"Q{q}", draw(st.sampled_from([1.0, 2.5, 10.0])), draw(st.none() | free_text))
        for q in range(1, n_questions + 1)
    )
    return GradingRequest(
        assessment_id=draw(st.text(min_size=1, max_size=8)),
        model=model,
        spec=get_model_spec(
            model,
            context_window=draw(st.integers(8_000, 40_000)),
            max_output_tokens=draw(st.integers(2_000, 16_000)),
        ),
        instructions=draw(st.none() | free_text),
        questions=questions,
        model_answer_pages=draw(pages_st("ma", draw(st.integers(0, 2)))),
        students=students,
    )


policies_st = st.builds(
    GradingPolicy,
    context_margin=st.sampled_from([0.0, 0.05, 0.1, 0.3]),
    max_students_per_batch=st.none() | st.integers(1, 8),
    max_images_per_request=st.integers(6, 80),
    max_request_bytes=st.integers(2_000_000, 6_000_000),
    output_headroom=st.sampled_from([1.0, 1.5, 2.0]),
)


def plan_or_skip(request: GradingRequest, policy: GradingPolicy) -> BatchPlan | None:
    """The plan, or None when a student cannot fit alone (which must then be true for real)."""
    try:
        return plan_batches(request, policy)
    except PlanningError as exc:
        ref = next(s.ref for s in request.students if repr(s.ref) in str(exc))
        alone = dataclasses.replace(request, students=(
            next(s for s in request.students if s.ref == ref),))
        with pytest.raises(PlanningError):
            plan_batches(alone, policy)
        return None


def exact_prompt_tokens(request: GradingRequest, batch: PlannedBatch) -> int:
    """What the simulator (and OpenAI) would charge for this batch's real messages."""
    all_pages = [*request.model_answer_pages, *(p for s in batch.students for p in s.pages)]
    dims = {p.location: (p.width, p.height) for p in all_pages}
    messages = build_messages(
        instructions=request.instructions,
        questions=prompt_questions(request),
        model_answer_urls=[p.location for p in request.model_answer_pages],
        students=[StudentPages(s.ref, [p.location for p in s.pages]) for s in batch.students],
    )
    fmt = response_format([q.question_number for q in request.questions])
    return chat_prompt_tokens(request.spec, messages, fmt, lambda url: dims[url])


def per_student_output(request: GradingRequest, policy: GradingPolicy) -> int:
    return policy.output_tokens_per_student + policy.output_tokens_per_answer * len(request.questions)


# --- invariants ---------------------------------------------------------------------------------


@FAST
@given(requests_st(), policies_st)
def test_every_page_once_students_whole_and_in_order(
    request: GradingRequest, policy: GradingPolicy
) -> None:
    plan = plan_or_skip(request, policy)
    if plan is None:
        return
    planned = [s for b in plan.batches for s in b.students]
    assert planned == list(request.students)  # same students, same order, none split or dropped
    planned_pages = [p.image_id for b in plan.batches for s in b.students for p in s.pages]
    all_pages = [p.image_id for s in request.students for p in s.pages]
    assert sorted(planned_pages) == sorted(all_pages)
    assert len(planned_pages) == len(set(planned_pages))
    assert [b.index for b in plan.batches] == list(range(len(plan.batches)))
    assert all(b.students for b in plan.batches)
    assert plan.n_students == len(request.students)
    assert plan.process_id == request.process_id()


@FAST
@given(requests_st(), policies_st)
def test_every_batch_within_limits(request: GradingRequest, policy: GradingPolicy) -> None:
    plan = plan_or_skip(request, policy)
    if plan is None:
        return
    spec = request.spec
    assert plan.token_budget == math.floor(spec.context_window * (1 - policy.context_margin))
    n_model_answers = len(request.model_answer_pages)
    assert plan.input_budget <= math.floor(spec.input_limit * (1 - policy.context_margin))
    for b in plan.batches:
        assert b.prompt_tokens <= plan.input_budget
        assert b.prompt_tokens + b.max_completion_tokens <= plan.token_budget
        assert b.max_completion_tokens <= spec.max_output_tokens
        assert b.max_completion_tokens >= b.expected_output_tokens * policy.output_headroom
        assert b.expected_output_tokens >= len(b.students) * per_student_output(request, policy)
        assert b.n_images == n_model_answers + sum(len(s.pages) for s in b.students)
        assert b.n_images <= policy.max_images_per_request
        assert b.n_bytes >= sum(p.n_bytes for s in b.students for p in s.pages)
        assert b.n_bytes <= policy.max_request_bytes
        if policy.max_students_per_batch is not None:
            assert len(b.students) <= policy.max_students_per_batch


@FAST
@given(requests_st(max_students=14), policies_st)
def test_batches_are_maximal(request: GradingRequest, policy: GradingPolicy) -> None:
    """The first student of batch k+1 did not fit into batch k."""
    plan = plan_or_skip(request, policy)
    if plan is None:
        return
    spec = request.spec
    prefix_tokens, prefix_bytes = _prefix_tokens(request)
    assert plan.prefix_tokens == prefix_tokens
    for b, nxt in zip(plan.batches, plan.batches[1:], strict=False):
        first = nxt.students[0]
        # Re-planned on their own, batch k's students plus that student still split there.
        replan = plan_batches(dataclasses.replace(request, students=(*b.students, first)), policy)
        assert [x.refs for x in replan.batches] == [b.refs, [first.ref]]
        # And by the limit arithmetic (the planner's estimates are additive per student).
        alone = replan.batches[1]
        n = len(b.students) + 1
        tokens = b.prompt_tokens + alone.prompt_tokens - prefix_tokens
        assert plan.completion is not None
        max_out = plan.completion.max_completion(n)
        visible = math.ceil(
            (b.expected_output_tokens + per_student_output(request, policy)) * policy.output_headroom
        )
        assert max_out == visible + plan.completion.reasoning.allowance(n)
        images = b.n_images + len(first.pages)
        n_bytes = b.n_bytes + alone.n_bytes - prefix_bytes
        cap = policy.max_students_per_batch or len(request.students)
        schema = schema_counts(response_schema([q.question_number for q in request.questions]))
        assert (
            n > cap
            or tokens > plan.input_budget
            or tokens + max_out > plan.token_budget
            or bool(schema_problems(schema))
            or max_out > spec.max_output_tokens
            or images > policy.max_images_per_request
            or n_bytes > policy.max_request_bytes
        )


@FAST
@given(requests_st(max_students=10), policies_st)
def test_prompt_estimate_covers_the_exact_count(
    request: GradingRequest, policy: GradingPolicy
) -> None:
    plan = plan_or_skip(request, policy)
    if plan is None:
        return
    for b in plan.batches:
        exact = exact_prompt_tokens(request, b)
        assert exact <= b.prompt_tokens <= exact * 1.01 + 20, (b.prompt_tokens, exact)


def test_prompt_estimate_on_a_realistic_request() -> None:
    request = make_request(30, pages_per_student=4, model="gpt-4.1-mini", model_answers=2,
                           context_window=40_000)
    plan = plan_batches(request, GradingPolicy())
    assert len(plan.batches) > 1
    for b in plan.batches:
        exact = exact_prompt_tokens(request, b)
        assert exact <= b.prompt_tokens <= exact * 1.01 + 20


# --- examples -----------------------------------------------------------------------------------


def test_large_context_puts_everyone_in_one_batch() -> None:
    request = make_request(12)
    plan = plan_batches(request, GradingPolicy())
    assert [b.refs for b in plan.batches] == [[s.ref for s in request.students]]


def test_max_students_per_batch_splits_evenly_in_order() -> None:
    request = make_request(7)
    plan = plan_batches(request, GradingPolicy(max_students_per_batch=3))
    assert [len(b.students) for b in plan.batches] == [3, 3, 1]
    assert [s.ref for b in plan.batches for s in b.students] == [s.ref for s in request.students]


def test_completion_budget_counts_against_the_context_window() -> None:
    # 512×512 on gpt-4o = 255 tokens a page; each student also reserves ⌈370 × 1.5⌉ = 555
    # completion tokens. The prompts alone of all 10 students would fit into 3,600 tokens.
    request = make_request(10, pages_per_student=1, context_window=4_000)
    request = dataclasses.replace(request, students=tuple(
        Student(s.ref, (page(s.pages[0].image_id, 512, 512),)) for s in request.students))
    plan = plan_batches(request, GradingPolicy())
    assert plan.token_budget == 3_600
    assert plan.prefix_tokens + 10 * 255 < plan.token_budget
    assert [len(b.students) for b in plan.batches] == [3, 3, 3, 1]
    for b in plan.batches:
        assert b.prompt_tokens + b.max_completion_tokens <= plan.token_budget


def test_image_cap_counts_model_answer_pages() -> None:
    request = make_request(4, pages_per_student=2, model_answers=2)
    plan = plan_batches(request, GradingPolicy(max_images_per_request=6))
    # 2 model-answer images + 2 students × 2 pages = 6 per batch.
    assert [len(b.students) for b in plan.batches] == [2, 2]
    assert all(b.n_images == 6 for b in plan.batches)


def test_output_limit_bounds_students_per_batch() -> None:
    # 3 questions → 40 + 3 × 110 = 370 expected tokens per student, × 1.5 headroom.
    request = make_request(6, max_output_tokens=1_200)
    plan = plan_batches(request, GradingPolicy())
    # 8 + 2 × 370 = 748 → 1,122 ≤ 1,200; 8 + 3 × 370 = 1,118 → 1,677 > 1,200.
    assert [len(b.students) for b in plan.batches] == [2, 2, 2]
    assert all(b.max_completion_tokens == 1_122 for b in plan.batches)


# --- keys ---------------------------------------------------------------------------------------


def keys(request: GradingRequest, policy: GradingPolicy | None = None) -> list[str]:
    return [b.idempotency_key for b in plan_batches(request, policy or GradingPolicy(
        max_students_per_batch=2)).batches]


def with_page(request: GradingRequest, student: int, new_page: Page) -> GradingRequest:
    students = list(request.students)
    s = students[student]
    students[student] = Student(s.ref, (new_page, *s.pages[1:]))
    return dataclasses.replace(request, students=tuple(students))


@FAST
@given(requests_st(max_students=8), policies_st)
def test_same_request_same_keys(request: GradingRequest, policy: GradingPolicy) -> None:
    plan = plan_or_skip(request, policy)
    if plan is None:
        return
    rebuilt = dataclasses.replace(request, students=tuple(
        Student(s.ref, tuple(dataclasses.replace(p) for p in s.pages)) for s in request.students))
    again = plan_batches(rebuilt, policy)
    assert [b.idempotency_key for b in again.batches] == [b.idempotency_key for b in plan.batches]
    assert len({b.idempotency_key for b in plan.batches}) == len(plan.batches)
    assert all(re.fullmatch(r"[0-9a-f]{64}", b.idempotency_key) for b in plan.batches)


def test_changed_page_id_changes_only_that_batchs_key() -> None:
    request = make_request(6)
    before = keys(request)
    old = request.students[3].pages[0]
    after = keys(with_page(request, 3, dataclasses.replace(old, image_id="sha256:other")))
    assert len(before) == len(after) == 3
    assert after[1] != before[1]
    assert (after[0], after[2]) == (before[0], before[2])


def test_changed_url_with_same_id_keeps_keys() -> None:
    request = make_request(6)
    old = request.students[3].pages[0]
    presigned = dataclasses.replace(old, location=old.location + "?X-Amz-Signature=new")
    assert keys(with_page(request, 3, presigned)) == keys(request)


@pytest.mark.parametrize(
    "change",
    [
        lambda r: dataclasses.replace(r, questions=(
            dataclasses.replace(r.questions[0], rubric="a different rubric"), *r.questions[1:])),
        lambda r: dataclasses.replace(r, questions=(
            dataclasses.replace(r.questions[0], max_mark=5.0), *r.questions[1:])),
        lambda r: dataclasses.replace(r, instructions="Be lenient."),
        # A dated snapshot: same limits, so the same batches, but a different model.
        lambda r: dataclasses.replace(r, model="gpt-4o-2024-08-06",
                                      spec=get_model_spec("gpt-4o-2024-08-06")),
        lambda r: dataclasses.replace(r, assessment_id="exam-2"),
        lambda r: dataclasses.replace(r, model_answer_pages=(page("ma-x"),)),
    ],
    ids=["rubric", "max_mark", "instructions", "model", "assessment_id", "model_answers"],
)
def test_prompt_model_or_assessment_change_changes_every_key(
    change: Callable[[GradingRequest], GradingRequest],
) -> None:
    request = make_request(6)
    changed = change(request)
    before, after = keys(request), keys(changed)
    assert len(before) == len(after) == 3
    assert not set(before) & set(after)


def test_keys_do_not_depend_on_the_limits_only_on_the_batch_content() -> None:
    request = make_request(4)
    bigger_window = dataclasses.replace(request, spec=get_model_spec("gpt-4o", context_window=500_000))
    assert keys(request) == keys(bigger_window)


# --- planning errors ----------------------------------------------------------------------------


def test_student_too_large_for_the_context_names_student_and_numbers() -> None:
    students = (
        Student("small", (page("a"),)),
        Student("huge", tuple(page(f"h{j}", 2048, 2048) for j in range(60))),
    )
    request = dataclasses.replace(make_request(1, context_window=40_000), students=students)
    with pytest.raises(PlanningError) as info:
        plan_batches(request, GradingPolicy())
    msg = str(info.value)
    assert "'huge'" in msg and "'small'" not in msg
    assert "60 pages" in msg
    assert "36,000" in msg  # 40,000 minus the 10% margin
    assert "context window 40,000" in msg
    needs = re.search(r"needs ([\d,]+) tokens", msg)
    assert needs is not None
    assert int(needs.group(1).replace(",", "")) > 36_000


def test_student_with_too_many_images_names_the_cap() -> None:
    request = make_request(2, pages_per_student=5, model_answers=1)
    with pytest.raises(PlanningError, match=r"'S000'.*has 6 images .*cap of 5"):
        plan_batches(request, GradingPolicy(max_images_per_request=5))


def test_student_too_many_bytes_names_the_cap() -> None:
    request = make_request(2, pages_per_student=3)
    with pytest.raises(PlanningError, match=r"'S000'.*byte request, over the cap of 100,000"):
        plan_batches(request, GradingPolicy(max_request_bytes=100_000))


def test_output_too_large_for_one_student_names_the_numbers() -> None:
    request = make_request(1, n_questions=20, max_output_tokens=1_000)
    # 8 + 40 + 20 × 110 = 2,248 expected → 3,372 with headroom.
    with pytest.raises(PlanningError, match=r"'S000'.*expects 3,372 completion tokens, over .*1,000"):
        plan_batches(request, GradingPolicy())


# --- cost ---------------------------------------------------------------------------------------


def test_estimated_cost_is_positive_and_between_cached_and_uncached_bounds() -> None:
    request = make_request(40, pages_per_student=3, model_answers=3, context_window=30_000)
    plan = plan_batches(request, GradingPolicy())
    spec = request.spec
    assert len(plan.batches) > 2 and plan.prefix_tokens >= 1024
    cost = plan.estimated_cost_usd()
    out = plan.expected_output_tokens * spec.price_output_per_m
    upper = (plan.prompt_tokens * spec.price_input_per_m + out) / 1e6
    lower = (plan.prompt_tokens * spec.price_cached_input_per_m + out) / 1e6
    assert 0 < lower < cost < upper
    # The cached discount applies to the shared prefix of every batch but the first, counted in
    # OpenAI's 128-token cache steps.
    cached = (plan.prefix_tokens - plan.prefix_tokens % 128) * (len(plan.batches) - 1)
    assert cost == pytest.approx(upper - cached * (spec.price_input_per_m
                                                   - spec.price_cached_input_per_m) / 1e6)
    # Sane: 40 students × 3 pages on gpt-4o cost cents, not dollars.
    assert 0.01 < cost < 1.0


def test_estimated_cost_of_an_unknown_model_is_zero() -> None:
    request = dataclasses.replace(
        make_request(3), model="my-model",
        spec=get_model_spec("my-model", context_window=100_000, max_output_tokens=4_000))
    plan = plan_batches(request, GradingPolicy())
    assert plan.estimated_cost_usd() == 0.0
    assert plan.prompt_tokens > 0
