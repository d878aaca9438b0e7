"""`plan_batches`: split a request into the largest batches that fit the model's limits (pure).

A batch's prompt is the stable prefix (system, questions, model answers, schema) plus each of
its students' label and pages; its completion budget is the expected output times a headroom.
Students keep their request order and are never split across batches.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

from qbq.domain import GradingRequest, Page, Student
from qbq.errors import PlanningError
from qbq.prompts import (
    PROMPT_VERSION,
    Detail,
    PromptQuestion,
    build_messages,
    response_format,
    student_label,
)
from qbq.settings import GradingPolicy
from qbq.tokens import chat_prompt_tokens, image_tokens, text_tokens

__all__ = ["BatchPlan", "PlannedBatch", "batch_key", "plan_batches", "prompt_questions"]

#: Completion tokens of the reply envelope `{"students":[...]}` around the students.
_REPLY_ENVELOPE_TOKENS = 8
#: JSON punctuation and field names around one image part or text part in the request body.
_PART_OVERHEAD_BYTES = 64
_DETAIL: Detail = "high"


@dataclass(frozen=True, slots=True)
class PlannedBatch:
    """One model request's worth of students, with its token and size estimates."""

    index: int
    idempotency_key: str
    students: tuple[Student, ...]
    prompt_tokens: int
    expected_output_tokens: int
    max_completion_tokens: int
    n_images: int
    n_bytes: int
    prefix_tokens: int = 0
    student_tokens: tuple[int, ...] = ()

    @property
    def refs(self) -> list[str]:
        return [s.ref for s in self.students]

    def prompt_tokens_for(self, refs: set[str]) -> int:
        """The planned prompt of a request holding only these of the batch's students."""
        if not self.student_tokens:
            return self.prompt_tokens
        return self.prefix_tokens + sum(
            t for s, t in zip(self.students, self.student_tokens, strict=True) if s.ref in refs)


@dataclass(frozen=True)
class BatchPlan:
    """The batches of one request and the limits they were planned against."""

    process_id: str
    model: str
    batches: tuple[PlannedBatch, ...]
    prefix_tokens: int
    token_budget: int
    cost_per_m: tuple[float, float, float]

    @property
    def n_students(self) -> int:
        return sum(len(b.students) for b in self.batches)

    @property
    def prompt_tokens(self) -> int:
        return sum(b.prompt_tokens for b in self.batches)

    @property
    def expected_output_tokens(self) -> int:
        return sum(b.expected_output_tokens for b in self.batches)

    def estimated_cost_usd(self) -> float:
        """Estimate with the stable prefix cached after the first request (≥1,024 tokens)."""
        price_in, price_cached, price_out = self.cost_per_m
        cached = self.prefix_tokens * (len(self.batches) - 1) if self.prefix_tokens >= 1024 else 0
        uncached = self.prompt_tokens - cached
        return (uncached * price_in + cached * price_cached
                + self.expected_output_tokens * price_out) / 1e6


def prompt_questions(request: GradingRequest) -> list[PromptQuestion]:
    return [PromptQuestion(q.question_number, q.max_mark, q.rubric) for q in request.questions]


def batch_key(request: GradingRequest, students: Sequence[Student]) -> str:
    """Idempotency key: assessment, model, prompt version and fingerprint, ordered page ids."""
    body = [
        PROMPT_VERSION,
        request.assessment_id,
        request.model,
        request.prompt_fingerprint,
        [[s.ref, s.image_ids] for s in students],
    ]
    canon = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class _StudentCost:
    prompt_tokens: int
    n_images: int
    n_bytes: int


def _prefix_tokens(request: GradingRequest) -> tuple[int, int]:
    """Tokens and body bytes of a request with no students (the part every batch repeats)."""
    dims = {f"page:{p.image_id}": (p.width, p.height) for p in request.model_answer_pages}
    messages = build_messages(
        instructions=request.instructions,
        questions=prompt_questions(request),
        model_answer_urls=list(dims),
        students=[],
        detail=_DETAIL,
    )
    fmt = response_format([], [q.question_number for q in request.questions])
    tokens = chat_prompt_tokens(request.spec, messages, fmt, lambda url: dims[url])
    n_bytes = len(json.dumps([messages, fmt])) + sum(
        p.n_bytes + _PART_OVERHEAD_BYTES for p in request.model_answer_pages
    )
    return tokens, n_bytes


def _student_cost(request: GradingRequest, student: Student) -> _StudentCost:
    label = student_label(student.ref)
    tokens = text_tokens(label, request.spec.encoding)
    # The ref also appears once in the schema's enum: its JSON string plus a separator.
    tokens += text_tokens(json.dumps(student.ref), request.spec.encoding) + 1
    tokens += sum(_page_tokens(request, p) for p in student.pages)
    n_bytes = len(label) + _PART_OVERHEAD_BYTES + sum(
        p.n_bytes + _PART_OVERHEAD_BYTES for p in student.pages
    )
    return _StudentCost(tokens, len(student.pages), n_bytes)


def _page_tokens(request: GradingRequest, page: Page) -> int:
    return image_tokens(request.spec, page.width, page.height, _DETAIL)


def plan_batches(request: GradingRequest, policy: GradingPolicy, *,
                 max_request_tokens: int | None = None) -> BatchPlan:
    """Greedy, order-preserving packing of students into the largest batches that fit.

    `max_request_tokens` (the key's tokens-per-minute limit) caps prompt + completion tokens of
    one request too: a request above it could never be sent.
    """
    spec = request.spec
    budget = math.floor(spec.context_window * (1.0 - policy.context_margin))
    if max_request_tokens is not None:
        budget = min(budget, max_request_tokens)
    prefix_tokens, prefix_bytes = _prefix_tokens(request)
    prefix_images = len(request.model_answer_pages)
    per_student_out = (
        policy.output_tokens_per_student + policy.output_tokens_per_answer * len(request.questions)
    )
    cap = policy.max_students_per_batch or len(request.students)

    def completion_budget(n: int) -> tuple[int, int]:
        expected = _REPLY_ENVELOPE_TOKENS + n * per_student_out
        return expected, math.ceil(expected * policy.output_headroom)

    batches: list[PlannedBatch] = []
    current: list[Student] = []
    costs: list[int] = []
    tokens, images, n_bytes = prefix_tokens, prefix_images, prefix_bytes

    def close() -> None:
        expected, max_out = completion_budget(len(current))
        batches.append(PlannedBatch(
            index=len(batches),
            idempotency_key=batch_key(request, current),
            students=tuple(current),
            prompt_tokens=tokens,
            expected_output_tokens=expected,
            max_completion_tokens=max_out,
            n_images=images,
            n_bytes=n_bytes,
            prefix_tokens=prefix_tokens,
            student_tokens=tuple(costs),
        ))

    for student in request.gradable_students:  # students that failed at intake go to reduce
        cost = _student_cost(request, student)
        for _ in range(2):  # try the open batch, then a fresh one
            n = len(current) + 1
            _, max_out = completion_budget(n)
            fits = (
                n <= cap
                and tokens + cost.prompt_tokens + max_out <= budget
                and max_out <= spec.max_output_tokens
                and images + cost.n_images <= policy.max_images_per_request
                and n_bytes + cost.n_bytes <= policy.max_request_bytes
            )
            if fits:
                current.append(student)
                costs.append(cost.prompt_tokens)
                tokens += cost.prompt_tokens
                images += cost.n_images
                n_bytes += cost.n_bytes
                break
            if not current:
                raise _too_big(request, student, cost, policy, budget, prefix_tokens,
                               prefix_images, prefix_bytes, completion_budget(1)[1])
            close()
            current, costs = [], []
            tokens, images, n_bytes = prefix_tokens, prefix_images, prefix_bytes
    if current:
        close()
    price = (spec.price_input_per_m, spec.price_cached_input_per_m, spec.price_output_per_m)
    return BatchPlan(request.process_id(), request.model, tuple(batches), prefix_tokens, budget,
                     price)


def _too_big(request: GradingRequest, student: Student, cost: _StudentCost,
             policy: GradingPolicy, budget: int, prefix_tokens: int, prefix_images: int,
             prefix_bytes: int, max_out: int) -> PlanningError:
    spec = request.spec
    reasons = []
    need = prefix_tokens + cost.prompt_tokens + max_out
    if need > budget:
        reasons.append(
            f"needs {need:,} tokens ({prefix_tokens:,} shared prompt + {cost.prompt_tokens:,} "
            f"for its {len(student.pages)} pages + {max_out:,} completion) but {request.model} "
            f"allows {budget:,} (context window {spec.context_window:,} minus "
            f"{policy.context_margin:.0%} margin, and at most the tokens-per-minute limit)"
        )
    if max_out > spec.max_output_tokens:
        reasons.append(f"expects {max_out:,} completion tokens, over the model's "
                       f"{spec.max_output_tokens:,}")
    if prefix_images + cost.n_images > policy.max_images_per_request:
        reasons.append(f"has {prefix_images + cost.n_images} images with the model answers, "
                       f"over the cap of {policy.max_images_per_request}")
    if prefix_bytes + cost.n_bytes > policy.max_request_bytes:
        reasons.append(f"makes a {prefix_bytes + cost.n_bytes:,}-byte request, over the cap of "
                       f"{policy.max_request_bytes:,}")
    return PlanningError(f"student {student.ref!r} cannot fit in one request: "
                         + "; ".join(reasons or ["limits too small"]))
