"""`Usage` adds field by field; the one backoff rule; the one review rule."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qbq.backoff import backoff_ceiling, full_jitter
from qbq.review import answer_needs_review, answers_need_review, review_reason
from qbq.usage import Usage

counts = st.integers(min_value=0, max_value=10**9)
usages = st.builds(Usage, counts, counts, counts, counts, counts,
                   st.floats(min_value=0, max_value=1e6, allow_nan=False))


@given(usages, usages, usages)
def test_usage_adds_like_numbers(a: Usage, b: Usage, c: Usage) -> None:
    assert a + Usage() == a
    assert a + b == b + a
    assert ((a + b) + c).as_dict().keys() == a.as_dict().keys()
    assert ((a + b) + c).prompt_tokens == (a + (b + c)).prompt_tokens
    assert (a + b).total_tokens == a.total_tokens + b.total_tokens


def test_usage_from_nullable_columns() -> None:
    assert Usage.from_counts(prompt_tokens=None, completion_tokens=5) == Usage(completion_tokens=5)


def test_backoff_doubles_to_a_ceiling_and_jitter_stays_under_it() -> None:
    assert [backoff_ceiling(n, base_s=1.0, max_s=10.0) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 10]
    assert backoff_ceiling(10_000, base_s=30.0, max_s=3600.0) == 3600.0  # no overflow
    rng = random.Random(1)
    assert all(0 <= full_jitter(3, base_s=1.0, max_s=60.0, rng=rng) <= 4.0 for _ in range(100))
    with pytest.raises(ValueError):
        backoff_ceiling(0, base_s=1.0, max_s=1.0)


def test_the_review_rule() -> None:
    assert answer_needs_review("low", "answered")
    assert answer_needs_review("high", "unreadable")
    assert not answer_needs_review("high", "blank")  # a confident reading of an empty answer
    assert not answer_needs_review("medium", "answered")
    assert answers_need_review([("high", "answered"), ("low", "answered")])
    assert not answers_need_review([])
    assert review_reason("medium", "unreadable") == "unreadable"
    assert review_reason("low", "answered") == "low confidence"
