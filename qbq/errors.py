"""The one error tree of qbq; retry and failure decisions key on these types, never on text.

    QbqError
    ├── InputError                 the request or configuration is wrong (exit code 2)
    │   ├── RequestValidationError     a field of the request is invalid
    │   ├── ImageError                 a page cannot be read or measured
    │   │   └── PageFetchError             a page URL could not be downloaded (status_code if HTTP)
    │   │       └── PageUrlRefusedError        the URL or the address it leads to is not allowed
    │   ├── PageIdConflictError        page ids seen before with other content (no regrade)
    │   ├── UnknownModelError          a model with no known limits
    │   └── ConfigurationError         settings, blocks or limits are missing or wrong
    ├── PlanningError              a student cannot fit in any batch (exit code 2)
    │   └── RequestOverLimitError      a batch exceeds the key's learned TPM (split, never sent)
    ├── ProviderError              the model provider failed to answer (transient unless noted)
    │   ├── RateLimitedError           HTTP 429; carries retry_after seconds when given
    │   ├── FlexUnavailableError       HTTP 429 resource_unavailable: flex has no capacity now
    │   ├── QuotaExhaustedError        HTTP 429 insufficient_quota: no credit; stops the run
    │   ├── ProviderUnavailableError   HTTP 5xx
    │   ├── ProviderTimeoutError       no answer within the client timeout (or HTTP 408)
    │   │   └── ReplyTimeoutError          no answer within the timeout sized to the output
    │   ├── ProviderConnectionError    the connection failed or dropped
    │   ├── ProviderDownError          the circuit breaker gave up on the provider (not retried)
    │   └── ProviderRequestError       HTTP 4xx other than 429: our request is wrong (not retried)
    │       └── ProviderContentError       HTTP 400 for what the request carries (an image, its
    │                                      size, the response schema): isolated by bisecting
    ├── ResponseError              the provider answered, but the answer is unusable
    │   ├── ResponseShapeError         not JSON, or not the expected envelope
    │   ├── ResponseSchemaError        JSON that breaks the response schema
    │   ├── ResponseRuleError          valid schema, broken rules (students, questions, marks)
    │   ├── TruncatedResponseError     finish_reason "length"
    │   └── RefusalError               the model refused
    ├── GradingFailedError         a batch could not be graded after its attempts
    │   └── RetryBudgetExhaustedError  the run's retry budget (attempts, tokens) is spent
    ├── DeliveryError              the results API refused or could not be reached
    ├── RedactedError              an outside exception whose message held a secret, masked
    ├── StoreStateError            a store row is missing or a state change breaks its rules
    └── StoreUnavailableError      the store failed persistently, or longer than QBQ_DB_OUTAGE_S

Every error pickles (Dask and Prefect ship them between processes): `__reduce__` rebuilds it
from its constructor arguments. Messages that reach the store are cut to `DETAIL_MAX`
characters with `clip_detail`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "DETAIL_MAX",
    "ConfigurationError",
    "DeliveryError",
    "FlexUnavailableError",
    "GradingFailedError",
    "ImageError",
    "InputError",
    "PageFetchError",
    "PageIdConflictError",
    "PageUrlRefusedError",
    "PlanningError",
    "ProviderConnectionError",
    "ProviderContentError",
    "ProviderDownError",
    "ProviderError",
    "ProviderRequestError",
    "ProviderTimeoutError",
    "ProviderUnavailableError",
    "QbqError",
    "QuotaExhaustedError",
    "RateLimitedError",
    "RedactedError",
    "RefusalError",
    "ReplyTimeoutError",
    "RequestOverLimitError",
    "RequestValidationError",
    "ResponseError",
    "ResponseRuleError",
    "ResponseSchemaError",
    "ResponseShapeError",
    "RetryBudgetExhaustedError",
    "StoreStateError",
    "StoreUnavailableError",
    "TruncatedResponseError",
    "UnknownModelError",
    "clip_detail",
]

#: Longest error detail or failure reason kept in the store, the payload and logs (characters).
DETAIL_MAX = 500


def clip_detail(text: str, limit: int = DETAIL_MAX) -> str:
    """`text` cut to `limit` characters, ending in "…" when it was longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class QbqError(Exception):
    """Base of every error qbq raises on purpose."""

    #: Short machine-readable stage name recorded with the error ("input", "plan", "grade", ...).
    stage: str = "run"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def error_type(self) -> str:
        return type(self).__name__

    def _init_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Positional and keyword arguments that rebuild this error (see `__reduce__`)."""
        return (self.message,), {}

    def __reduce__(self) -> tuple[Any, ...]:
        args, kwargs = self._init_args()
        return (_rebuild, (type(self), args, kwargs), self.__dict__.copy())


def _rebuild(cls: type[QbqError], args: tuple[Any, ...], kwargs: dict[str, Any]) -> QbqError:
    return cls(*args, **kwargs)


class InputError(QbqError):
    """The request or configuration is wrong; nothing was sent to a model."""

    stage = "input"


class RequestValidationError(InputError):
    """One or more fields of the request are invalid; `problems` lists `field: problem` lines."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid request:\n" + "\n".join(f"  - {p}" for p in problems))

    def _init_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (self.problems,), {}


class ImageError(InputError):
    """A page image is missing, unreadable or not an image."""


class PageFetchError(ImageError):
    """A page URL could not be downloaded; `status_code` is the HTTP status when one came back.

    At intake this fails only the student whose page it is (a model-answer page fails the
    request). The message names the page and host, never the URL's query (signed URLs carry
    credentials there).
    """

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code

    def __reduce__(self) -> tuple[type[PageFetchError], tuple[str, int | None]]:
        return (type(self), (self.message, self.status_code))


class PageUrlRefusedError(PageFetchError):
    """The URL is not one qbq fetches (scheme, credentials) or leads to a non-public address."""


class PageIdConflictError(InputError):
    """Declared page ids were seen before, in the same assessment, with other content.

    `ids` lists them (sorted). Grading would return the old pages' marks, so the request is
    refused unless it says `"regrade": true`.
    """

    def __init__(self, assessment_id: str, ids: list[str]) -> None:
        self.assessment_id = assessment_id
        self.ids = ids
        shown = ", ".join(repr(i) for i in ids[:20]) + (f" and {len(ids) - 20} more"
                                                        if len(ids) > 20 else "")
        super().__init__(
            f"page ids already used in assessment {assessment_id!r} with other content: {shown}."
            ' Give new page ids, or set "regrade": true to grade the new pages as a new process')

    def _init_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (self.assessment_id, self.ids), {}


class UnknownModelError(InputError):
    """The model is not in the catalogue and no limits were given for it."""


class ConfigurationError(InputError):
    """Settings, blocks or limits are missing or contradictory."""


class PlanningError(QbqError):
    """The request cannot be split into batches within the model's limits."""

    stage = "plan"


class RequestOverLimitError(PlanningError):
    """The request alone costs more tokens than the key's tokens-per-minute limit learned from
    the provider (the plan could not know it), so it is never sent: OpenAI would refuse it with
    429 "Request too large". Grading splits the batch; not a provider failure."""


class ProviderError(QbqError):
    """The provider did not produce an answer; `transient` errors are worth retrying."""

    stage = "provider"
    transient: bool = True

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code

    def _init_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (self.message,), {"status_code": self.status_code}


class RateLimitedError(ProviderError):
    """HTTP 429 from the provider; `retry_after` is the wait it asked for, in seconds."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, status_code: int | None = 429
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after

    def _init_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (self.message,), {"retry_after": self.retry_after, "status_code": self.status_code}


class FlexUnavailableError(ProviderError):
    """HTTP 429 with code `resource_unavailable`: flex processing lacks capacity right now.

    Not a rate limit (nothing to pace, no `retry-after`, and unbilled): OpenAI's flex guide
    (https://platform.openai.com/docs/guides/flex-processing) advises retrying with
    exponential backoff, so grading retries it like any transient error.
    """


class QuotaExhaustedError(ProviderError):
    """OpenAI's 429 `insufficient_quota`: the account has no credit left, and no wait fixes it.

    Not retried; the first one stops every later request of the run (`qbq.guards`), so the
    batches not yet graded fail at once without a model call and a rerun resumes them
    (https://platform.openai.com/docs/guides/error-codes).
    """

    transient = False


class ProviderUnavailableError(ProviderError):
    """HTTP 5xx from the provider."""


class ProviderTimeoutError(ProviderError):
    """The provider did not answer within the client timeout."""


class ReplyTimeoutError(ProviderTimeoutError):
    """No answer within the request's own timeout, sized to its expected output (client side):
    grading splits the batch as after a truncation, since a smaller request answers sooner."""


class ProviderConnectionError(ProviderError):
    """The connection to the provider failed or dropped."""


class ProviderDownError(ProviderError):
    """The provider failed too long in a row; the circuit breaker stopped calling it."""

    transient = False


class ProviderRequestError(ProviderError):
    """HTTP 4xx other than 429: the request itself is wrong, so retrying cannot help.

    `param` and `code` are the provider's own (`error.param`, `error.code` of OpenAI's error
    body, https://platform.openai.com/docs/guides/error-codes), None when it gave none.
    """

    transient = False

    def __init__(self, message: str, *, status_code: int | None = None,
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message, status_code=status_code)
        self.param = param
        self.code = code

    def _init_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (self.message,), {"status_code": self.status_code, "param": self.param,
                                 "code": self.code}


class ProviderContentError(ProviderRequestError):
    """HTTP 400 for the content of the request: an image (undecodable, too large, not
    downloadable), the request's size or the response schema's size.

    `param` names the part when the provider says (e.g. "messages[2].content[5].image_url.url");
    OpenAI gives null for an undecodable or animated image, so grading bisects the batch to find
    the students at fault (`qbq.grading`).
    """


class ResponseError(QbqError):
    """The provider answered but the answer cannot be used; `body` keeps the raw text."""

    stage = "response"

    def __init__(self, message: str, *, body: str | None = None) -> None:
        super().__init__(message)
        self.body = body

    def _init_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (self.message,), {"body": self.body}


class ResponseShapeError(ResponseError):
    """The reply is not JSON or lacks the expected envelope."""


class ResponseSchemaError(ResponseError):
    """The reply is JSON but breaks the response schema."""


class ResponseRuleError(ResponseError):
    """The reply fits the schema but breaks the batch's rules.

    `problems` maps each offending student's ref to its broken rules (`GENERAL` holds the
    problems that concern no expected student, e.g. invented refs), so a caller keeps the
    valid rest of the reply and gives each student its own reason.
    """

    #: Key of `problems` for rules broken outside any expected student.
    GENERAL = "*"

    def __init__(self, problems: Mapping[str, Sequence[str]], *, body: str | None = None) -> None:
        self.problems = {ref: list(lines) for ref, lines in problems.items()}
        flat = [line for lines in self.problems.values() for line in lines]
        super().__init__("reply breaks the rules: " + "; ".join(flat), body=body)

    @property
    def offending_refs(self) -> set[str]:
        """The expected students whose part of the reply broke a rule."""
        return {ref for ref in self.problems if ref != self.GENERAL}

    def reason_for(self, ref: str) -> str | None:
        """This student's own problems, joined; None when the student broke no rule."""
        lines = self.problems.get(ref)
        return "; ".join(lines) if lines else None

    def _init_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (self.problems,), {"body": self.body}


class TruncatedResponseError(ResponseError):
    """The reply was cut off (finish_reason "length")."""


class RefusalError(ResponseError):
    """The model refused to answer."""


class GradingFailedError(QbqError):
    """A batch could not be graded; the last underlying error is the cause."""

    stage = "grade"


class RetryBudgetExhaustedError(GradingFailedError):
    """The run spent its retry budget; the students not yet graded fail with this reason."""


class DeliveryError(QbqError):
    """The results API refused the payload or could not be reached."""

    stage = "deliver"

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code

    def _init_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (self.message,), {"status_code": self.status_code}


class RedactedError(QbqError):
    """An exception from outside qbq (a driver, a client library) whose message held a secret
    (a signed URL query, image bytes, a key): re-raised with the message masked, named by
    `original_type`, so Prefect's states, events and logs never store the secret."""

    def __init__(self, message: str, original_type: str = "Exception") -> None:
        super().__init__(message)
        self.original_type = original_type

    def _init_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (self.message, self.original_type), {}


class StoreStateError(QbqError):
    """A store row is missing or a state change breaks the store's state rules."""

    stage = "store"


class StoreUnavailableError(QbqError):
    """The store cannot be used: a persistent error (read-only, disk full) or an outage longer
    than `QBQ_DB_OUTAGE_S`. The message names the store (no password) and the cause."""

    stage = "store"
