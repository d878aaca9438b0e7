"""`plan_batches`: split a request into the largest batches that fit the model's limits (pure).

A batch's prompt is the stable prefix (system, questions, model answers, schema) plus each of
its students' label and pages; it must fit the model's input limit. Its completion budget is
the expected visible output times a headroom plus, for reasoning models, a reasoning allowance
per effort; prompt + completion must fit the context window. The response schema must stay
within OpenAI's Structured Outputs limits. Students keep their request order and are never
split across batches.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from qbq.catalog import Mode, ModelSpec
from qbq.domain import GradingRequest, Page, Student
from qbq.errors import PlanningError
from qbq.prompts import (
    PROMPT_VERSION,
    Detail,
    PromptQuestion,
    build_messages,
    response_format,
    response_schema,
    student_label,
)
from qbq.schema_limits import schema_counts, schema_problems
from qbq.settings import GradingPolicy
from qbq.tokens import chat_prompt_tokens, image_tokens, text_tokens

__all__ = [
    "BatchPlan",
    "CompletionModel",
    "PlannedBatch",
    "ReasoningAllowance",
    "batch_key",
    "plan_batches",
    "prompt_questions",
    "reasoning_allowance",
]

#: Completion tokens of the reply envelope `{"students":[...]}` around the students.
_REPLY_ENVELOPE_TOKENS = 8
#: JSON punctuation and field names around one image part or text part in the request body.
_PART_OVERHEAD_BYTES = 64
#: Prompt caching discounts identical prefixes of at least this many tokens.
_CACHE_MIN_TOKENS = 1024
#: ... in steps of this many tokens.
_CACHE_STEP_TOKENS = 128
_DETAIL: Detail = "high"
_EFFORT_SETTING = "QBQ_REASONING_EFFORT"


@dataclass(frozen=True)
class ReasoningAllowance:
    """Reasoning tokens a request is expected to spend, and how many to reserve for them.

    `expected(n)` = per_request + n × per_student tokens (0 when the model does not reason at
    this effort); `allowance(n)` = expected × headroom, the part of max_completion_tokens kept
    for reasoning. `min_completion_tokens` is OpenAI's advice to reserve at least 25,000 tokens
    for reasoning and outputs (https://developers.openai.com/api/docs/guides/reasoning,
    "Allocating space for reasoning"), applied where the window allows.
    """

    effort: str | None
    per_request: int = 0
    per_student: float = 0.0
    headroom: float = 1.0
    min_completion_tokens: int = 0
    #: True when per_student comes from what a run observed rather than from the settings.
    observed: bool = False

    def expected(self, n_students: int) -> int:
        """Expected reasoning tokens of a request with `n_students` students."""
        return math.ceil(self.per_request + n_students * self.per_student)

    def allowance(self, n_students: int) -> int:
        """Reasoning tokens to reserve in max_completion_tokens for `n_students` students."""
        return math.ceil(self.expected(n_students) * self.headroom)


def reasoning_allowance(spec: ModelSpec, policy: GradingPolicy, effort: str | None, *,
                        observed_reasoning_per_student: float | None = None
                        ) -> ReasoningAllowance:
    """The reasoning allowance for `spec` at `effort` (already validated, None: no reasoning).

    `observed_reasoning_per_student` (reasoning tokens a run has seen per student graded so
    far: reported `completion_tokens_details.reasoning_tokens` / students) replaces the
    settings' per-student and per-request figures, so later batches of a run are sized from
    what the model really spent. Pure.
    """
    if not spec.reasoning or effort is None or effort == "none":
        return ReasoningAllowance(effort)
    floor = policy.reasoning_min_completion_tokens
    if observed_reasoning_per_student is not None:
        if observed_reasoning_per_student < 0:
            raise ValueError("observed reasoning tokens per student must not be negative")
        return ReasoningAllowance(effort, 0, observed_reasoning_per_student,
                                  policy.reasoning_headroom, floor, observed=True)
    per_student = policy.reasoning_tokens_per_student.get(effort)
    per_request = policy.reasoning_tokens_per_request.get(effort, 0)
    if per_student is None:
        # An effort the settings do not price: reserve as for the most expensive one known.
        per_student = max(policy.reasoning_tokens_per_student.values(), default=0)
        per_request = max(policy.reasoning_tokens_per_request.values(), default=0)
    return ReasoningAllowance(effort, per_request, float(per_student), policy.reasoning_headroom,
                              floor)


@dataclass(frozen=True)
class CompletionModel:
    """How many completion tokens a batch of n students is expected to need, and may use.

    Visible output: envelope + n × visible_per_student tokens, times output_headroom for the
    cap; reasoning: see `ReasoningAllowance`. Completion tokens include reasoning tokens, as
    OpenAI counts them in `max_completion_tokens` and bills them as output.
    """

    visible_per_student: int
    output_headroom: float
    reasoning: ReasoningAllowance
    envelope_tokens: int = _REPLY_ENVELOPE_TOKENS

    def expected_visible(self, n_students: int) -> int:
        return self.envelope_tokens + n_students * self.visible_per_student

    def max_completion(self, n_students: int) -> int:
        """max_completion_tokens for n students, before the soft reasoning floor."""
        visible = math.ceil(self.expected_visible(n_students) * self.output_headroom)
        return visible + self.reasoning.allowance(n_students)


@dataclass(frozen=True, slots=True)
class PlannedBatch:
    """One model request's worth of students, with its token and size estimates.

    Token figures are tokens: `prompt_tokens` (estimated, never below the real count),
    `expected_output_tokens` (visible JSON), `expected_reasoning_tokens` (hidden, billed as
    output) and `max_completion_tokens` (the cap to send, reasoning included).
    """

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
    expected_reasoning_tokens: int = 0

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
    """The batches of one request and the limits they were planned against.

    `token_budget`: most prompt + completion tokens per request (context window less the
    margin, and at most the key's TPM); `input_budget`: most prompt tokens per request (the
    model's input limit less the margin, and under the long-context threshold when avoided);
    `reasoning_effort`: what grading sends as `reasoning_effort` (None: send none);
    `cost_per_m`: sync input / cached input / output USD per 1M tokens.
    """

    process_id: str
    model: str
    batches: tuple[PlannedBatch, ...]
    prefix_tokens: int
    token_budget: int
    cost_per_m: tuple[float, float, float]
    input_budget: int = 0
    reasoning_effort: str | None = None
    completion: CompletionModel | None = None
    spec: ModelSpec | None = None

    @property
    def n_students(self) -> int:
        return sum(len(b.students) for b in self.batches)

    @property
    def prompt_tokens(self) -> int:
        return sum(b.prompt_tokens for b in self.batches)

    @property
    def expected_output_tokens(self) -> int:
        """Expected visible completion tokens over all batches."""
        return sum(b.expected_output_tokens for b in self.batches)

    @property
    def expected_reasoning_tokens(self) -> int:
        """Expected reasoning tokens over all batches (billed as output)."""
        return sum(b.expected_reasoning_tokens for b in self.batches)

    def estimated_cost_usd(self, mode: Mode = "sync", *, cache: bool = True) -> float:
        """Estimated USD in `mode`, the expected reasoning tokens billed as output.

        With `cache`, every batch after the first reads the stable prefix from the prompt
        cache: OpenAI caches prompts of 1,024+ tokens in 128-token steps
        (https://platform.openai.com/docs/guides/prompt-caching), so the prefix rounded down to
        a step, billed at the cached-input price. Raises `ConfigurationError` when the model is
        not offered in `mode`.
        """
        prefix = self.prefix_tokens if cache and self.prefix_tokens >= _CACHE_MIN_TOKENS else 0
        cached_prefix = prefix - prefix % _CACHE_STEP_TOKENS
        if self.spec is None:
            price_in, price_cached, price_out = self.cost_per_m
            cached = cached_prefix * (len(self.batches) - 1)
            out = self.expected_output_tokens + self.expected_reasoning_tokens
            return ((self.prompt_tokens - cached) * price_in + cached * price_cached
                    + out * price_out) / 1e6
        total = 0.0
        for b in self.batches:
            cached = min(cached_prefix, b.prompt_tokens) if b.index > 0 else 0
            total += self.spec.cost_usd_in_mode(
                mode, b.prompt_tokens, cached,
                b.expected_output_tokens + b.expected_reasoning_tokens)
        return total

    def completion_tokens_for(self, batch: PlannedBatch, *,
                              observed_reasoning_per_student: float | None = None,
                              policy: GradingPolicy | None = None) -> int:
        """max_completion_tokens for `batch`, its reasoning allowance sized from an observed
        figure (reasoning tokens per student graded so far in this run) when given.

        Stays within the plan's limits: prompt + result ≤ `token_budget`, result ≤ the model's
        max output, and never below the batch's expected visible output. Pure.
        """
        if (observed_reasoning_per_student is None or self.completion is None
                or self.spec is None):
            return batch.max_completion_tokens
        policy = policy or GradingPolicy()
        allowance = reasoning_allowance(
            self.spec, policy, self.reasoning_effort,
            observed_reasoning_per_student=observed_reasoning_per_student)
        model = replace(self.completion, reasoning=allowance)
        n = len(batch.students)
        room = min(self.spec.max_output_tokens, self.token_budget - batch.prompt_tokens)
        wanted = _with_floor(model.max_completion(n), allowance, room)
        return max(min(wanted, room), model.expected_visible(n))


def _with_floor(max_out: int, allowance: ReasoningAllowance, room: int) -> int:
    """Raise max_out to the reasoning floor as far as `room` allows (never lowers it)."""
    # min_completion_tokens is 0 unless the model reasons at this effort.
    if allowance.min_completion_tokens > max_out:
        return max(max_out, min(allowance.min_completion_tokens, room))
    return max_out


def prompt_questions(request: GradingRequest) -> list[PromptQuestion]:
    return [PromptQuestion(q.question_number, q.max_mark, q.rubric) for q in request.questions]


def batch_key(request: GradingRequest, students: Sequence[Student]) -> str:
    """Idempotency key: assessment, model, prompt version and fingerprint, ordered page ids."""
    body: list[object] = [
        PROMPT_VERSION,
        request.assessment_id,
        request.model,
        request.prompt_fingerprint,
        [[s.ref, s.image_ids] for s in students],
    ]
    content = request.content_key(students)
    if content is not None:  # a regrade: new content under old ids gets new batches
        body.append(content)
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
    fmt = response_format([q.question_number for q in request.questions])
    tokens = chat_prompt_tokens(request.spec, messages, fmt, lambda url: dims[url])
    n_bytes = len(json.dumps([messages, fmt])) + sum(
        p.n_bytes + _PART_OVERHEAD_BYTES for p in request.model_answer_pages
    )
    return tokens, n_bytes


def _student_cost(request: GradingRequest, student: Student) -> _StudentCost:
    label = student_label(student.ref)
    tokens = text_tokens(label, request.spec.encoding)
    tokens += sum(_page_tokens(request, p) for p in student.pages)
    n_bytes = len(label) + _PART_OVERHEAD_BYTES + sum(
        p.n_bytes + _PART_OVERHEAD_BYTES for p in student.pages
    )
    return _StudentCost(tokens, len(student.pages), n_bytes)


def _page_tokens(request: GradingRequest, page: Page) -> int:
    return image_tokens(request.spec, page.width, page.height, _DETAIL)


@dataclass(frozen=True)
class _Limits:
    """The numbers every batch is packed against (tokens, images, bytes, students)."""

    token_budget: int
    input_budget: int
    max_output: int
    max_students: int
    max_images: int
    max_bytes: int


def _limits(request: GradingRequest, policy: GradingPolicy,
            max_request_tokens: int | None) -> _Limits:
    spec = request.spec
    keep = 1.0 - policy.context_margin
    token_budget = math.floor(spec.context_window * keep)
    if max_request_tokens is not None:
        token_budget = min(token_budget, max_request_tokens)
    input_budget = math.floor(spec.input_limit * keep)
    if policy.avoid_long_context_pricing and spec.long_context_threshold is not None:
        input_budget = min(input_budget, math.floor(spec.long_context_threshold * keep))
    return _Limits(token_budget, min(input_budget, token_budget), spec.max_output_tokens,
                   policy.max_students_per_batch or len(request.students),
                   policy.max_images_per_request, policy.max_request_bytes)


def plan_batches(request: GradingRequest, policy: GradingPolicy, *,
                 max_request_tokens: int | None = None,
                 reasoning_effort: str | None = None,
                 observed_reasoning_per_student: float | None = None) -> BatchPlan:
    """Greedy, order-preserving packing of students into the largest batches that fit.

    Every batch keeps: prompt ≤ the input budget (the model's max input tokens less
    `QBQ_CONTEXT_MARGIN`, and under the 272k long-context threshold unless
    `QBQ_AVOID_LONG_CONTEXT_PRICING=false`); prompt + max_completion_tokens ≤ the context
    window less the margin and ≤ `max_request_tokens` (the key's tokens-per-minute limit);
    max_completion_tokens ≤ the model's max output; the image, byte and student caps; and its
    response schema within OpenAI's Structured Outputs limits (`qbq.schema_limits`).

    `reasoning_effort` (else `QBQ_REASONING_EFFORT`, else the model's default) is validated
    against the model (ConfigurationError naming the setting) and carried on the plan;
    `observed_reasoning_per_student` sizes the reasoning allowance from what a run has seen.
    """
    # Long: one greedy pass that must check every cap together for each student it adds; the caps themselves
    # live in helpers.
    spec = request.spec
    effort = spec.validate_reasoning_effort(reasoning_effort or policy.reasoning_effort,
                                            _EFFORT_SETTING)
    allowance = reasoning_allowance(
        spec, policy, effort, observed_reasoning_per_student=observed_reasoning_per_student)
    completion = CompletionModel(
        policy.output_tokens_per_student + policy.output_tokens_per_answer * len(request.questions),
        policy.output_headroom, allowance)
    limits = _limits(request, policy, max_request_tokens)
    prefix_tokens, prefix_bytes = _prefix_tokens(request)
    prefix_images = len(request.model_answer_pages)
    # The schema is the same for every batch (it pins no refs): checked once.
    schema_issues = schema_problems(schema_counts(
        response_schema([q.question_number for q in request.questions])))

    batches: list[PlannedBatch] = []
    current: list[Student] = []
    costs: list[int] = []
    tokens, images, n_bytes = prefix_tokens, prefix_images, prefix_bytes

    def close() -> None:
        n = len(current)
        room = min(limits.max_output, limits.token_budget - tokens)
        batches.append(PlannedBatch(
            index=len(batches),
            idempotency_key=batch_key(request, current),
            students=tuple(current),
            prompt_tokens=tokens,
            expected_output_tokens=completion.expected_visible(n),
            max_completion_tokens=_with_floor(completion.max_completion(n), allowance, room),
            n_images=images,
            n_bytes=n_bytes,
            prefix_tokens=prefix_tokens,
            student_tokens=tuple(costs),
            expected_reasoning_tokens=allowance.expected(n),
        ))

    for student in request.gradable_students:  # students that failed at intake go to reduce
        cost = _student_cost(request, student)
        for _ in range(2):  # try the open batch, then a fresh one
            n = len(current) + 1
            max_out = completion.max_completion(n)
            fits = (
                n <= limits.max_students
                and tokens + cost.prompt_tokens <= limits.input_budget
                and tokens + cost.prompt_tokens + max_out <= limits.token_budget
                and max_out <= limits.max_output
                and images + cost.n_images <= limits.max_images
                and n_bytes + cost.n_bytes <= limits.max_bytes
                and not schema_issues
            )
            if fits:
                current.append(student)
                costs.append(cost.prompt_tokens)
                tokens += cost.prompt_tokens
                images += cost.n_images
                n_bytes += cost.n_bytes
                break
            if not current:
                raise _too_big(request, student, cost, policy, limits, prefix_tokens,
                               prefix_images, prefix_bytes, completion.max_completion(1),
                               schema_issues)
            close()
            current, costs = [], []
            tokens, images, n_bytes = prefix_tokens, prefix_images, prefix_bytes
    if current:
        close()
    price = (spec.price_input_per_m, spec.price_cached_input_per_m, spec.price_output_per_m)
    return BatchPlan(request.process_id(), request.model, tuple(batches), prefix_tokens,
                     limits.token_budget, price, input_budget=limits.input_budget,
                     reasoning_effort=effort, completion=completion, spec=spec)


def _too_big(request: GradingRequest, student: Student, cost: _StudentCost,
             policy: GradingPolicy, limits: _Limits, prefix_tokens: int, prefix_images: int,
             prefix_bytes: int, max_out: int, schema: Sequence[str]) -> PlanningError:
    spec = request.spec
    reasons = []
    prompt = prefix_tokens + cost.prompt_tokens
    if prompt > limits.input_budget:
        reasons.append(
            f"has a {prompt:,}-token prompt ({prefix_tokens:,} shared + {cost.prompt_tokens:,} "
            f"for its {len(student.pages)} pages) but {request.model} takes at most "
            f"{limits.input_budget:,} input tokens (max input {spec.input_limit:,} minus "
            f"{policy.context_margin:.0%} margin"
            + (", under the long-context price threshold" if policy.avoid_long_context_pricing
               and spec.long_context_threshold else "") + ")"
        )
    need = prompt + max_out
    if need > limits.token_budget:
        reasons.append(
            f"needs {need:,} tokens ({prefix_tokens:,} shared prompt + {cost.prompt_tokens:,} "
            f"for its {len(student.pages)} pages + {max_out:,} completion) but {request.model} "
            f"allows {limits.token_budget:,} (context window {spec.context_window:,} minus "
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
    if schema:
        reasons.append("makes a response schema over OpenAI's Structured Outputs limits ("
                       + "; ".join(schema) + ")")
    return PlanningError(f"student {student.ref!r} cannot fit in one request: "
                         + "; ".join(reasons or ["limits too small"]))
