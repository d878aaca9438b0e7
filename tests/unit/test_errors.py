"""The one error tree: every qbq error lives in `qbq.errors`, is drawn in its docstring, and
survives pickling (Dask and Prefect ship errors between processes)."""

from __future__ import annotations

import importlib
import pickle
import pkgutil

import pytest

import qbq
from qbq import errors
from qbq.errors import (
    DETAIL_MAX,
    DeliveryError,
    PageIdConflictError,
    ProviderError,
    QbqError,
    RateLimitedError,
    RequestValidationError,
    ResponseError,
    ResponseRuleError,
    clip_detail,
)


def _all_error_classes() -> list[type[QbqError]]:
    for module in pkgutil.walk_packages(qbq.__path__, "qbq."):
        if not module.name.endswith("__main__") and ".testing" not in module.name:
            importlib.import_module(module.name)
    found: list[type[QbqError]] = []
    pending: list[type[QbqError]] = [QbqError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def _example(cls: type[QbqError]) -> QbqError:
    if issubclass(cls, RequestValidationError):
        return cls(["students: no students", "questions[0].max_mark: must be > 0"])
    if issubclass(cls, ResponseRuleError):
        return cls({"S1": ["S1: question 1 mark 9 outside 0..4"], "*": ["unknown students"]},
                   body='{"students": []}')
    if issubclass(cls, RateLimitedError):
        return cls("rate limited (429): slow down", retry_after=7.5)
    if issubclass(cls, ProviderError):
        return cls("provider error (503): busy", status_code=503)
    if issubclass(cls, ResponseError):
        return cls("the reply is not JSON", body="Sure! Here")
    if issubclass(cls, DeliveryError):
        return cls("results API answered 500", status_code=500)
    if issubclass(cls, PageIdConflictError):
        return cls("exam-1", ["img-1", "img-2"])
    return cls(f"{cls.__name__} happened")


ERROR_CLASSES = _all_error_classes()


def test_every_error_is_defined_and_drawn_in_the_errors_module() -> None:
    assert len(ERROR_CLASSES) >= 24
    for cls in ERROR_CLASSES:
        assert cls.__module__ == "qbq.errors", cls
        assert cls.__name__ in (errors.__doc__ or ""), cls
        assert cls.__name__ in errors.__all__, cls


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_round_trips_through_pickle(cls: type[QbqError]) -> None:
    error = _example(cls)
    if isinstance(error, ProviderError):
        error.transient = not error.transient  # instance state survives too
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert copy.message == error.message and str(copy) == str(error)
    assert copy.__dict__ == error.__dict__
    assert copy.error_type == cls.__name__ and copy.stage == error.stage


def test_rule_errors_keep_their_problems_per_student() -> None:
    error = ResponseRuleError({"S1": ["a", "b"], "S10": ["c"], "*": ["invented S99"]})
    assert error.offending_refs == {"S1", "S10"}
    assert error.reason_for("S1") == "a; b" and error.reason_for("S10") == "c"
    assert error.reason_for("S2") is None
    assert "invented S99" in error.message


def test_clip_detail() -> None:
    assert clip_detail("short") == "short"
    long = "x" * (DETAIL_MAX + 10)
    assert len(clip_detail(long)) == DETAIL_MAX and clip_detail(long).endswith("…")
