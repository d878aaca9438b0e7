"""Injected provider faults: which kinds exist, how they are chosen, and how a reply is spoiled.

A fault is chosen once per chat request that passed validation: from the scripted sequence
while it lasts (one entry per request, "ok" meaning none), then at random by the configured
rates with a seeded generator. Faults that spoil the content (`not_json`, `schema_break`,
`rule_break`, `truncate`, `refusal`) start from the true answer, so marks of the students left
intact still follow the ground truth.

`schema_break` and `rule_break` come in variants; a variant may be pinned by writing
`KIND:VARIANT` (e.g. `rule_break:mark_above_max`), else one is picked from a hash of the
request and the seed, so the same request always gets the same variant.

The faults OpenAI answers with a status have opt-in variants instead, used only when pinned:
`rate_limit_no_headers` is a 429 `rate_limit_exceeded` without `retry-after` that still carries
the `x-ratelimit-*` headers (`:reset_only`, the default), or carries no rate-limit header at
all (`:bare`; both are seen from OpenAI, see https://github.com/openai/openai-node/issues/1477);
`http408`, `http409` and the 5xx faults may pin `:should_retry_true` or `:should_retry_false`
to send the `x-should-retry` header the OpenAI SDKs obey. `insufficient_quota` is OpenAI's 429
for an account without credit (https://platform.openai.com/docs/guides/error-codes): no
`retry-after`, no rate-limit headers, and no wait fixes it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BATCH_FAULT_KINDS",
    "CONTENT_FAULTS",
    "FAULT_KINDS",
    "FAULT_VARIANTS",
    "OK",
    "RATE_LIMIT_FAULTS",
    "REFUSAL_TEXT",
    "STATUS_FAULTS",
    "Fault",
    "FaultPlan",
    "SpoiledReply",
    "check_fault_name",
    "parse_batch_fault_rates",
    "parse_fault_rates",
    "parse_fault_script",
    "spoil_reply",
]

#: Every fault kind, in the order rates are laid out on [0, 1).
FAULT_KINDS: tuple[str, ...] = (
    "http500",
    "http502",
    "http503",
    "timeout",
    "disconnect",
    "rate_limit",
    "not_json",
    "schema_break",
    "rule_break",
    "truncate",
    "refusal",
    "http408",
    "http409",
    "insufficient_quota",
    "rate_limit_no_headers",
)
#: The script entry meaning "no fault for this request".
OK = "ok"
#: Faults answered with an HTTP error status instead of a completion.
STATUS_FAULTS: dict[str, int] = {
    "http500": 500, "http502": 502, "http503": 503, "http408": 408, "http409": 409,
}
#: Faults answered with a 429 before the rate limits are charged.
RATE_LIMIT_FAULTS: tuple[str, ...] = ("rate_limit", "rate_limit_no_headers", "insufficient_quota")
_SHOULD_RETRY = ("should_retry_true", "should_retry_false")
#: Faults that answer 200 with a spoiled completion.
CONTENT_FAULTS: tuple[str, ...] = ("not_json", "schema_break", "rule_break", "truncate", "refusal")
FAULT_VARIANTS: dict[str, tuple[str, ...]] = {
    "schema_break": ("missing_mark", "mark_string", "extra_key"),
    "rule_break": (
        "student_missing",
        "student_twice",
        "question_missing",
        "question_twice",
        "mark_above_max",
    ),
    "rate_limit_no_headers": ("reset_only", "bare"),
    **{kind: _SHOULD_RETRY for kind in ("http500", "http502", "http503", "http408", "http409")},
}
REFUSAL_TEXT = "I can't help with grading this content."
NOT_JSON_TEXT = (
    "[simulated] I have looked at the pages of {count} student(s). Overall the answers were "
    "reasonable, with some gaps in the working; I would give most of them a pass. (This reply "
    "is prose, not the JSON that was asked for.)"
)


@dataclass(frozen=True)
class Fault:
    """One fault to inject: its kind and, for schema_break/rule_break, a pinned variant."""

    kind: str
    variant: str | None = None

    @property
    def label(self) -> str:
        return self.kind if self.variant is None else f"{self.kind}:{self.variant}"


def _valid_names() -> str:
    variants = [f"{kind}:{v}" for kind, vs in FAULT_VARIANTS.items() for v in vs]
    return ", ".join(FAULT_KINDS) + " (variants: " + ", ".join(variants) + ")"


def check_fault_name(name: str) -> Fault:
    """The fault named `KIND` or `KIND:VARIANT`; ValueError naming the valid kinds otherwise."""
    kind, _, variant = name.strip().partition(":")
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown simulator fault kind {kind!r}; valid kinds: {_valid_names()}")
    if not variant:
        return Fault(kind)
    if variant not in FAULT_VARIANTS.get(kind, ()):
        allowed = ", ".join(FAULT_VARIANTS.get(kind, ())) or "none"
        raise ValueError(
            f"unknown variant {variant!r} of simulator fault {kind!r}; valid variants: {allowed}"
        )
    return Fault(kind, variant)


def parse_fault_rates(value: Any) -> dict[str, float]:
    """Fault rates from a mapping or a string "KIND=RATE,KIND=RATE" (JSON objects work too).

    Each rate is in [0, 1] and together they add up to at most 1.
    """
    if value is None:
        return {}
    items: Iterable[tuple[Any, Any]]
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            return parse_fault_rates(json.loads(text))
        pairs: list[tuple[str, str]] = []
        for chunk in text.split(","):
            if not chunk.strip():
                continue
            name, sep, text_rate = chunk.partition("=")
            if not sep:
                raise ValueError(f"fault {chunk.strip()!r} must be written KIND=RATE, e.g. http500=0.1")
            pairs.append((name, text_rate))
        items = pairs
    elif isinstance(value, Mapping):
        items = value.items()
    else:
        raise ValueError("faults must be a mapping of kind to rate or a 'KIND=RATE,...' string")
    rates: dict[str, float] = {}
    for name, raw_rate in items:
        fault = check_fault_name(str(name))
        try:
            rate = float(raw_rate)
        except (TypeError, ValueError):
            raise ValueError(
                f"the rate of fault {fault.label!r} must be a number, got {raw_rate!r}"
            ) from None
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"the rate of fault {fault.label!r} must be between 0 and 1, got {rate}")
        rates[fault.label] = rate
    total = sum(rates.values())
    if total > 1.0 + 1e-9:
        raise ValueError(f"fault rates add up to {total:g}; together they may be at most 1")
    return rates


#: Faults a line of a batch may draw: a 5xx (an error-file line), `timeout` (an error-file line
#: with error code `request_timeout`) or a content fault (a spoiled 200 in the output file).
BATCH_FAULT_KINDS: tuple[str, ...] = ("http500", "http502", "http503", "timeout", *CONTENT_FAULTS)


def parse_batch_fault_rates(value: Any) -> dict[str, float]:
    """Fault rates for batch lines (see `parse_fault_rates`), limited to BATCH_FAULT_KINDS."""
    rates = parse_fault_rates(value)
    for name in rates:
        kind = name.partition(":")[0]
        if kind not in BATCH_FAULT_KINDS:
            raise ValueError(
                f"fault {kind!r} cannot happen to a batch line; batch faults: "
                + ", ".join(BATCH_FAULT_KINDS)
            )
    return rates


def parse_fault_script(value: Any) -> list[str]:
    """A fault script from a list or a string "KIND,ok,KIND:VARIANT" (a JSON array works too)."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return parse_fault_script(json.loads(text))
        names = [chunk.strip() for chunk in text.split(",") if chunk.strip()]
    elif isinstance(value, Sequence):
        names = [str(item).strip() for item in value]
    else:
        raise ValueError("fault_script must be a list of fault kinds or a 'KIND,ok,KIND' string")
    script: list[str] = []
    for name in names:
        script.append(OK if name == OK else check_fault_name(name).label)
    return script


class FaultPlan:
    """The faults still to come: the rest of the script, then seeded draws by rate.

    Not thread-safe on its own; the simulator calls it under its state lock.
    """

    def __init__(self, rates: Mapping[str, float], script: Sequence[str], seed: int) -> None:
        self._rates = [(check_fault_name(name), rate) for name, rate in rates.items() if rate > 0]
        self._script: deque[str] = deque(script)
        self._rng = random.Random(f"qbq-sim-faults:{seed}")

    def next(self) -> tuple[Fault | None, str | None]:
        """The fault for the next request, and the script entry it used (None: drawn by rate)."""
        if self._script:
            entry = self._script.popleft()
            return (None if entry == OK else check_fault_name(entry)), entry
        if not self._rates:
            return None, None
        draw = self._rng.random()
        cumulative = 0.0
        for fault, rate in self._rates:
            cumulative += rate
            if draw < cumulative:
                return fault, None
        return None, None

    def give_back(self, entry: str) -> None:
        """Put a script entry back at the front (its request was refused before the fault)."""
        self._script.appendleft(entry)

    @property
    def script_left(self) -> int:
        return len(self._script)


# --- spoiling a reply ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SpoiledReply:
    """The message of a faulted 200 reply; `variant` says which variant was applied, if any."""

    content: str | None
    refusal: str | None
    finish_reason: str
    variant: str | None = None


def _pick(variants: Sequence[str], pinned: str | None, key: bytes) -> str | None:
    if pinned is not None:
        return pinned if pinned in variants else None
    if not variants:
        return None
    index = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % len(variants)
    return variants[index]


def _first_answer(answer: dict[str, Any]) -> dict[str, Any] | None:
    for student in answer.get("students", []):
        answers = student.get("answers") if isinstance(student, dict) else None
        if isinstance(answers, list) and answers:
            first = answers[0]
            return first if isinstance(first, dict) else None
    return None


def _break_schema(answer: dict[str, Any], variant: str | None) -> str:
    first = _first_answer(answer)
    if variant == "missing_mark" and first is not None:
        first.pop("mark", None)
    elif variant == "mark_string" and first is not None:
        first["mark"] = f"{first.get('mark')} marks"
    else:  # extra_key, and the fallback when there is no answer to spoil
        answer["comment"] = "[simulated] an extra key the schema does not allow"
    return json.dumps(answer, ensure_ascii=False, separators=(",", ":"))


def _schema_variants(answer: dict[str, Any]) -> tuple[str, ...]:
    if _first_answer(answer) is None:
        return ("extra_key",)
    return FAULT_VARIANTS["schema_break"]


def _rule_variants(answer: dict[str, Any]) -> tuple[str, ...]:
    students = answer.get("students")
    if not isinstance(students, list) or not students:
        return ()
    if _first_answer(answer) is None:
        return ("student_missing", "student_twice")
    return FAULT_VARIANTS["rule_break"]


def _break_rules(answer: dict[str, Any], variant: str | None, max_marks: Mapping[str, float]) -> None:
    students: list[Any] = answer.get("students", [])
    if variant == "student_missing":
        students.pop()
    elif variant == "student_twice":
        students.append(copy.deepcopy(students[0]))
    else:
        owner = next(s for s in students if isinstance(s, dict) and s.get("answers"))
        answers: list[Any] = owner["answers"]
        if variant == "question_missing":
            answers.pop()
        elif variant == "question_twice":
            answers.append(copy.deepcopy(answers[0]))
        elif variant == "mark_above_max":
            first = answers[0]
            top = max_marks.get(str(first.get("question_number")), 0.0)
            first["mark"] = top + 1


def spoil_reply(
    fault: Fault,
    answer: dict[str, Any],
    content: str,
    *,
    dump: Callable[[dict[str, Any]], str],
    cut: Callable[[str], str],
    max_marks: Mapping[str, float],
    request_key: bytes,
) -> SpoiledReply:
    """The reply `fault` (a content fault) makes of the true `answer` and its `content`.

    `answer` is the reply as sent when valid (already fitted to the schema); `dump(answer)`
    turns a changed answer into content as the response format asks; `cut(content)` cuts
    content in the middle of its tokens; `max_marks` maps question numbers to maximum marks.
    """
    answer = copy.deepcopy(answer)
    if fault.kind == "not_json":
        students = answer.get("students")
        count = len(students) if isinstance(students, list) else 0
        return SpoiledReply(NOT_JSON_TEXT.format(count=count), None, "stop")
    if fault.kind == "refusal":
        return SpoiledReply(None, REFUSAL_TEXT, "stop")
    if fault.kind == "truncate":
        return SpoiledReply(cut(content), None, "length")
    if fault.kind == "schema_break":
        broken = _pick(_schema_variants(answer), fault.variant, request_key) or "extra_key"
        return SpoiledReply(_break_schema(answer, broken), None, "stop", broken)
    if fault.kind == "rule_break":
        variant = _pick(_rule_variants(answer), fault.variant, request_key)
        if variant is not None:
            _break_rules(answer, variant, max_marks)
        # Without students (or the pinned variant's students/answers) nothing can break.
        return SpoiledReply(dump(answer), None, "stop", variant or "none")
    raise ValueError(f"{fault.kind!r} is not a content fault")
