"""The provider's rate limits, as OpenAI keeps them: per API key, a requests bucket and a
tokens bucket per minute (https://platform.openai.com/docs/guides/rate-limits).

These are the provider's buckets that qbq's own limiter (`qbq.limiter`) must stay within; the
two are deliberately separate implementations.

Each bucket holds at most its per-minute limit and refills continuously at limit/60 per
simulated second. A request is charged one request and its prompt tokens plus its completion
budget (`max_completion_tokens`, else the model's maximum output) when it arrives. A request
that does not fit is refused with a 429 and charged nothing but one request from the requests
bucket (never below zero): refused requests count against the limit, as with OpenAI.

Times here are simulated seconds; the app converts them to wall seconds for headers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qbq.simulator.validation import SimAPIError

__all__ = [
    "ORGANIZATION",
    "Bucket",
    "LimitState",
    "Outcome",
    "ProviderBuckets",
    "insufficient_quota_error",
    "openai_duration",
    "rate_limit_error",
    "rate_limit_headers",
]

ORGANIZATION = "org-qbq-simulated"
_RATE_LIMITS_URL = "https://platform.openai.com/account/rate-limits"


def openai_duration(seconds: float) -> str:
    """A duration as OpenAI writes it in headers and messages: "20ms", "1.2s", "6m0s", "1h2m3s".

    Rounded up to the millisecond, so waiting the stated time is always enough.
    """
    ms = math.ceil(seconds * 1000 - 1e-6) if math.isfinite(seconds) else 0
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


@dataclass
class Bucket:
    """A token bucket of `capacity` (a per-minute limit) that refills at capacity/60 per second."""

    capacity: float
    level: float
    updated: float

    @property
    def rate(self) -> float:
        return self.capacity / 60.0

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until the bucket holds `amount` (which must fit its capacity)."""
        return max(0.0, (amount - self.level) / self.rate)

    def reset_in(self) -> float:
        """Seconds until the bucket is full again (OpenAI's x-ratelimit-reset-*)."""
        return max(0.0, (self.capacity - self.level) / self.rate)

    def resize(self, capacity: float) -> None:
        """A new limit; what was used stays used."""
        used = self.capacity - self.level
        self.capacity = capacity
        self.level = min(capacity, max(0.0, capacity - used))


@dataclass(frozen=True)
class LimitState:
    """One bucket as the headers report it, after the request was charged or refused."""

    limit: int
    remaining: int
    reset_s: float


@dataclass(frozen=True)
class Outcome:
    """What the limiter decided for one request."""

    accepted: bool
    requests: LimitState | None
    tokens: LimitState | None
    #: For a refusal: which limit ("requests" or "tokens"), its limit, what was used before
    #: the request, what the request asked for, and the simulated seconds until it would fit
    #: (None when it never can: more tokens than the limit).
    limited: str | None = None
    limit: int | None = None
    used: int = 0
    requested: int = 0
    wait_s: float | None = None


def _state(bucket: Bucket | None) -> LimitState | None:
    if bucket is None:
        return None
    return LimitState(int(bucket.capacity), math.floor(bucket.level + 1e-9), bucket.reset_in())


class ProviderBuckets:
    """The provider's per-key requests and tokens buckets; None as a limit means unlimited.

    Not thread-safe on its own: the simulator calls it under its state lock.
    """

    def __init__(self, rpm: int | None, tpm: int | None) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self._keys: dict[str, tuple[Bucket | None, Bucket | None]] = {}

    def reset(self) -> None:
        self._keys.clear()

    def configure(self, rpm: int | None, tpm: int | None, now: float) -> None:
        """New limits for every key; buckets keep what they have used."""
        self.rpm, self.tpm = rpm, tpm
        for key, (requests, tokens) in list(self._keys.items()):
            self._keys[key] = (
                self._adjust(requests, rpm, now),
                self._adjust(tokens, tpm, now),
            )

    @staticmethod
    def _adjust(bucket: Bucket | None, limit: int | None, now: float) -> Bucket | None:
        if limit is None:
            return None
        if bucket is None:
            return Bucket(limit, limit, now)
        bucket.refill(now)
        bucket.resize(limit)
        return bucket

    def _buckets(self, key: str, now: float) -> tuple[Bucket | None, Bucket | None]:
        pair = self._keys.get(key)
        if pair is None:
            pair = (
                Bucket(self.rpm, self.rpm, now) if self.rpm is not None else None,
                Bucket(self.tpm, self.tpm, now) if self.tpm is not None else None,
            )
            self._keys[key] = pair
        for bucket in pair:
            if bucket is not None:
                bucket.refill(now)
        return pair

    def acquire(self, key: str, tokens: int, now: float) -> Outcome:
        """Charge one request and `tokens` to `key` if both fit; else refuse (see module doc)."""
        requests, token_bucket = self._buckets(key, now)
        requests_short = requests is not None and requests.level < 1.0 - 1e-9
        too_large = token_bucket is not None and tokens > token_bucket.capacity
        tokens_short = token_bucket is not None and token_bucket.level < tokens - 1e-9
        if not (requests_short or tokens_short):
            if requests is not None:
                requests.level -= 1.0
            if token_bucket is not None:
                token_bucket.level -= tokens
            return Outcome(True, _state(requests), _state(token_bucket))
        if requests_short and requests is not None and not too_large:
            limited, bucket, requested = "requests", requests, 1
        else:
            assert token_bucket is not None
            limited, bucket, requested = "tokens", token_bucket, tokens
        used = math.ceil(bucket.capacity - bucket.level - 1e-9)
        self._charge_refusal(requests)
        return Outcome(
            False,
            _state(requests),
            _state(token_bucket),
            limited=limited,
            limit=int(bucket.capacity),
            used=used,
            requested=requested,
            wait_s=None if too_large else self._wait(requests, token_bucket, tokens),
        )

    def refuse(self, key: str, tokens: int, now: float) -> Outcome:
        """An injected 429: refused like an over-limit request, whatever the buckets hold."""
        requests, token_bucket = self._buckets(key, now)
        if token_bucket is not None and tokens > token_bucket.capacity:
            # Too large for the limits anyway: refused as such.
            self._charge_refusal(requests)
            return Outcome(
                False,
                _state(requests),
                _state(token_bucket),
                limited="tokens",
                limit=self.tpm,
                requested=tokens,
            )
        used = math.ceil(requests.capacity - requests.level - 1e-9) if requests is not None else 0
        self._charge_refusal(requests)
        return Outcome(
            False,
            _state(requests),
            _state(token_bucket),
            limited="requests",
            limit=self.rpm,
            used=used,
            requested=1,
            wait_s=self._wait(requests, token_bucket, tokens),
        )

    @staticmethod
    def _charge_refusal(requests: Bucket | None) -> None:
        if requests is not None:
            requests.level = max(0.0, requests.level - 1.0)

    @staticmethod
    def _wait(requests: Bucket | None, tokens_bucket: Bucket | None, tokens: int) -> float:
        wait = 0.0
        if requests is not None:
            wait = max(wait, requests.wait_for(1.0))
        if tokens_bucket is not None:
            wait = max(wait, tokens_bucket.wait_for(tokens))
        return wait


def rate_limit_headers(outcome: Outcome, time_scale: float) -> dict[str, str]:
    """`x-ratelimit-*` headers in wall time; an unlimited dimension has none.

    With time compressed `time_scale` times, a simulated minute passes in 60 / `time_scale`
    wall seconds, so the limits are stated per wall minute (the per-minute limit ×
    `time_scale`) and the resets in wall seconds: a client that learns its pace from these
    headers (as qbq does without QBQ_RPM/QBQ_TPM) paces right in its own time. The remaining
    counts are what the bucket holds, the same in both times. At `time_scale` 1 these are
    OpenAI's headers as sent.
    """
    headers: dict[str, str] = {}
    for name, state in (("requests", outcome.requests), ("tokens", outcome.tokens)):
        if state is None:
            continue
        headers[f"x-ratelimit-limit-{name}"] = str(round(state.limit * time_scale))
        headers[f"x-ratelimit-remaining-{name}"] = str(state.remaining)
        headers[f"x-ratelimit-reset-{name}"] = openai_duration(state.reset_s / time_scale)
    return headers


def rate_limit_error(
    outcome: Outcome,
    model: str,
    time_scale: float,
    *,
    min_wait_s: float = 0.0,
    injected: bool = False,
    retry_after: bool = True,
) -> tuple[SimAPIError, dict[str, str]]:
    """OpenAI's 429 for a refused request, and its `retry-after`/`retry-after-ms` headers.

    `min_wait_s` (simulated) is a floor on the advertised wait; `injected` marks a 429 made
    by the fault injector rather than by the limits; `retry_after=False` leaves the
    retry-after headers out (the message still says how long to wait, as OpenAI's does).
    """
    headers: dict[str, str] = {}
    limited = outcome.limited or "requests"
    per = "requests per min (RPM)" if limited == "requests" else "tokens per min (TPM)"
    where = f"Rate limit reached for {model} in organization {ORGANIZATION} on {per}"
    if outcome.wait_s is None:
        message = (
            f"Request too large for {model} in organization {ORGANIZATION} on {per}: "
            f"Limit {outcome.limit}, Requested {outcome.requested}. The input or output tokens "
            f"must be reduced in order to run successfully. Visit {_RATE_LIMITS_URL} to learn more."
        )
        return SimAPIError(429, message, type=limited, code="rate_limit_exceeded"), headers
    wall = max(outcome.wait_s, min_wait_s) / time_scale
    ms = max(1, math.ceil(wall * 1000 - 1e-6))
    if retry_after:
        headers["retry-after"] = f"{ms / 1000:.3f}".rstrip("0").rstrip(".")
        headers["retry-after-ms"] = str(ms)
    usage = (
        f": Limit {outcome.limit}, Used {outcome.used}, Requested {outcome.requested}"
        if outcome.limit is not None
        else ""
    )
    note = " (a rate-limit fault injected by the qbq simulator)" if injected else ""
    message = (
        f"{where}{usage}{note}. Please try again in {openai_duration(ms / 1000)}. "
        f"Visit {_RATE_LIMITS_URL} to learn more."
    )
    return SimAPIError(429, message, type=limited, code="rate_limit_exceeded"), headers


def insufficient_quota_error() -> SimAPIError:
    """OpenAI's 429 for an account out of credit: no wait helps, so no retry-after.

    https://platform.openai.com/docs/guides/error-codes ("429 - You exceeded your current
    quota, please check your plan and billing details").
    """
    return SimAPIError(
        429,
        "You exceeded your current quota, please check your plan and billing details. For more "
        "information on this error, read the docs: "
        "https://platform.openai.com/docs/guides/error-codes/api-errors.",
        type="insufficient_quota",
        code="insufficient_quota",
    )
