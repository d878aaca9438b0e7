"""A shared rate limiter that runs at the provider's limit: GCRA reservations over two buckets.

Every request reserves its cost up front (1 request and prompt + max_completion tokens, as
OpenAI charges) and gets the exact time at which both buckets hold enough; the caller sleeps
until then, so there is no polling and no refused acquire. The bucket state is a few floats kept
in a backend every sender shares: `memory` (threads of one process), `file` (processes of one
host, `fcntl` lock; the default, needs no server), `redis` or `postgres` (several hosts; time is
taken from the server so host clocks need not agree). After each reply the reservation is
corrected by the real `usage` and by the provider's `x-ratelimit-remaining-*` headers (only ever
towards caution); a 429 pauses every sender until its `retry-after`.

Without configured limits the limiter learns them from the provider: the first sender of the
key sends one request alone (the probe), the `x-ratelimit-limit-*` headers of its reply are
written into the shared state, and every sender paces at them from then on — following them
when a later reply states other limits. A provider that states no limits leaves the key
unpaced (the in-flight slots alone bound it), and the limiter logs that once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from qbq.errors import ConfigurationError, QbqError, RequestOverLimitError

log = logging.getLogger("qbq.limiter")

__all__ = [
    "BucketState",
    "FileBackend",
    "Limits",
    "MemoryBackend",
    "RateLimiter",
    "Reservation",
    "learn_limits",
    "make_backend",
    "observe_remaining",
    "refund",
    "reserve",
]


@dataclass(frozen=True)
class Limits:
    """Per-minute limits of one API key, and how much burst qbq allows itself.

    The provider's buckets hold a whole minute; qbq's hold only `burst_s` seconds of rate, so
    it sends at a smooth pace that can never drain the provider's bucket: in any 60 s window it
    sends at most the limit plus `burst_s` seconds' worth (and one request).
    """

    rpm: int
    tpm: int
    burst_s: float = 1.0

    def __post_init__(self) -> None:
        if self.rpm <= 0 or self.tpm <= 0 or self.burst_s <= 0:
            raise ConfigurationError(f"rate limits must be positive, got rpm={self.rpm} "
                                     f"tpm={self.tpm} burst_s={self.burst_s}")

    @property
    def request_capacity(self) -> float:
        return max(1.0, self.rpm * self.burst_s / 60.0)

    @property
    def token_capacity(self) -> float:
        return self.tpm * self.burst_s / 60.0


@dataclass(frozen=True)
class BucketState:
    """GCRA state: the time at which each bucket's debt is paid off, and a shared pause.

    The last three fields serve a limiter without configured limits: the limits learned from
    the provider's headers (`rpm`, `tpm`; 0 until learned), the time a probe request in flight
    stops holding the others back (`probe_until`), and `unpaced`: the provider states no limits.
    """

    t_req: float = 0.0
    t_tok: float = 0.0
    pause_until: float = 0.0
    rpm: int = 0
    tpm: int = 0
    probe_until: float = 0.0
    unpaced: bool = False


# --- pure GCRA arithmetic -------------------------------------------------------------------
# A bucket of capacity B refilling at r per second is full again at time T. At time s it holds
# B - max(0, T - s)·r, so a cost n ≤ B fits from s ≥ T - (B - n)/r, a cost n > B from s ≥ T
# (a full bucket; it then runs n - B into debt), and after taking it the bucket is full again at
# max(T, s) + n/r. In any window of w seconds at most B + w·r + (the largest n - B) is sent.


def reserve(state: BucketState, now: float, limits: Limits,
            tokens: int) -> tuple[BucketState, float]:
    """Reserve one request of `tokens` tokens; return the new state and its start time."""
    if tokens > limits.tpm:
        raise ConfigurationError(f"a request of {tokens:,} tokens can never fit a limit of "
                                 f"{limits.tpm:,} tokens per minute")
    r_req, r_tok = limits.rpm / 60.0, limits.tpm / 60.0
    # A request bigger than the burst starts as soon as the bucket is full, not once it would
    # hold the whole request: waiting for that would idle (n - burst)/r per request, e.g. 59%
    # of the rate for requests of 5 s of rate with a 1 s burst (issue 12).
    start = max(now, state.pause_until,
                state.t_req - (limits.request_capacity - 1) / r_req,
                state.t_tok - (limits.token_capacity - min(tokens, limits.token_capacity)) / r_tok)
    new = replace(state, t_req=max(state.t_req, start) + 1 / r_req,
                  t_tok=max(state.t_tok, start) + tokens / r_tok)
    return new, start


def refund(state: BucketState, limits: Limits, tokens: int) -> BucketState:
    """Give back tokens reserved but not charged (the estimate was above the real usage)."""
    if tokens <= 0:
        return state
    return replace(state, t_tok=state.t_tok - tokens / (limits.tpm / 60.0))


def observe_remaining(state: BucketState, now: float, limits: Limits,
                      remaining_requests: int | None, remaining_tokens: int | None) -> BucketState:
    """Slow down when the provider's `remaining` counts say its minute bucket is running low.

    qbq's own pacing keeps the provider's bucket near full; if it is emptier than one burst,
    someone else is using the key, and qbq waits until the provider's bucket is back to a burst.
    Only ever towards caution.
    """
    t_req, t_tok = state.t_req, state.t_tok
    if remaining_requests is not None and remaining_requests < limits.request_capacity:
        t_req = max(t_req, now + (limits.request_capacity - remaining_requests) / (limits.rpm / 60))
    if remaining_tokens is not None and remaining_tokens < limits.token_capacity:
        t_tok = max(t_tok, now + (limits.token_capacity - remaining_tokens) / (limits.tpm / 60))
    return replace(state, t_req=t_req, t_tok=t_tok)


def pause(state: BucketState, until: float) -> BucketState:
    return replace(state, pause_until=max(state.pause_until, until))


def learn_limits(state: BucketState, now: float, rpm: int | None, tpm: int | None, *,
                 probe_tokens: int = 0, burst_s: float = 1.0) -> BucketState:
    """The shared state after a reply stating `rpm` and `tpm` (None: the reply stated none).

    A probe's reply (`probe_tokens` > 0: the tokens it was charged) ends the probe: with limits
    it is charged to the fresh buckets as if reserved at `now`; without, the key becomes
    unpaced. Any other reply only updates limits that changed; one without limits changes
    nothing (OpenAI omits the headers on some replies).
    """
    probing = probe_tokens > 0
    if rpm is not None and tpm is not None and rpm > 0 and tpm > 0:
        if (rpm, tpm) != (state.rpm, state.tpm) or state.unpaced:
            state = replace(state, rpm=rpm, tpm=tpm, unpaced=False)
        if probing:
            limits = Limits(rpm, tpm, burst_s)
            state, _ = reserve(replace(state, probe_until=0.0), now, limits,
                               min(probe_tokens, tpm))
        return state
    if probing:
        return replace(state, probe_until=0.0, unpaced=state.rpm == 0)
    return state


# --- shared state backends --------------------------------------------------------------------

Update = Callable[[BucketState, float], tuple[BucketState, Any]]


class Backend(Protocol):
    """Runs `update(state, now)` atomically for every sender of one key; returns (result, now)."""

    name: str

    def transact(self, key: str, update: Update) -> tuple[Any, float]: ...


def _decode(raw: bytes | str | None) -> BucketState:
    if not raw:
        return BucketState()
    fields = json.loads(raw)
    known = BucketState.__dataclass_fields__
    return BucketState(**{k: v for k, v in fields.items() if k in known})


def _encode(state: BucketState) -> str:
    return json.dumps(asdict(state))


class MemoryBackend:
    """Threads of one process."""

    name = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, BucketState] = {}

    def transact(self, key: str, update: Update) -> tuple[Any, float]:
        with self._lock:
            now = time.time()
            state, result = update(self._states.get(key, BucketState()), now)
            self._states[key] = state
            return result, now


class FileBackend:
    """Processes of one host: the state lives in a small file under an exclusive `flock`."""

    name = "file"

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # flock is per open file; serialise this process's threads

    def transact(self, key: str, update: Update) -> tuple[Any, float]:
        path = self._folder / f"{key}.json"
        with self._lock, path.open("a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                handle.seek(0)
                now = time.time()
                state, result = update(_decode(handle.read()), now)
                handle.seek(0)
                handle.truncate()
                handle.write(_encode(state))
                handle.flush()
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return result, now


class RedisBackend:
    """Several hosts: optimistic WATCH/MULTI transaction; time from the Redis server."""

    name = "redis"

    def __init__(self, url: str) -> None:
        import redis

        self._client = redis.Redis.from_url(url)
        self._watch_error = redis.WatchError

    def transact(self, key: str, update: Update) -> tuple[Any, float]:
        name = f"qbq:limiter:{key}"
        while True:
            with self._client.pipeline() as pipe:
                try:
                    pipe.watch(name)  # type: ignore[no-untyped-call]
                    seconds, micros = pipe.time()
                    now = seconds + micros / 1e6
                    state, result = update(_decode(pipe.get(name)), now)
                    pipe.multi()
                    pipe.set(name, _encode(state), ex=3600)
                    pipe.execute()
                    return result, now
                except self._watch_error:
                    continue


class PostgresBackend:
    """Several hosts: one row per key, locked with SELECT ... FOR UPDATE; time from the server."""

    name = "postgres"

    def __init__(self, url: str) -> None:
        from sqlalchemy import create_engine, text

        self._engine = create_engine(url, pool_pre_ping=True)
        self._text = text
        with self._engine.begin() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS qbq_limiter "
                              "(key text PRIMARY KEY, state text NOT NULL)"))

    def transact(self, key: str, update: Update) -> tuple[Any, float]:
        text = self._text
        with self._engine.begin() as conn:
            conn.execute(text("INSERT INTO qbq_limiter (key, state) VALUES (:k, '') "
                              "ON CONFLICT (key) DO NOTHING"), {"k": key})
            raw = conn.execute(text("SELECT state FROM qbq_limiter WHERE key = :k FOR UPDATE"),
                               {"k": key}).scalar_one()
            now = float(conn.execute(
                text("SELECT extract(epoch from clock_timestamp())")).scalar_one())
            state, result = update(_decode(raw), now)
            conn.execute(text("UPDATE qbq_limiter SET state = :s WHERE key = :k"),
                         {"s": _encode(state), "k": key})
        return result, now


def make_backend(kind: str, *, url: str | None, folder: Path) -> Backend:
    """The backend named by `QBQ_LIMITER_BACKEND` (memory | file | redis | postgres)."""
    if kind == "memory":
        return MemoryBackend()
    if kind == "file":
        return FileBackend(folder)
    if not url:
        raise ConfigurationError(f"QBQ_LIMITER_URL is required for the {kind} limiter backend")
    if kind == "redis":
        return RedisBackend(url)
    if kind == "postgres":
        return PostgresBackend(url)
    raise ConfigurationError(f"unknown limiter backend {kind!r}: memory, file, redis or postgres")


# --- the limiter --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reservation:
    """One reserved start: `tokens` reserved, the start time, how long the caller slept (s).

    `limits` are the limits it was reserved under (None: not paced — a probe or an unpaced
    key); `probe` marks the one request that learns the provider's limits.
    """

    tokens: int
    start_at: float
    waited_s: float
    limits: Limits | None = None
    probe: bool = False


def key_id(api_key: str | None, base_url: str | None) -> str:
    """Names one provider account without storing its secret."""
    raw = f"{base_url or 'https://api.openai.com/v1'}|{api_key or ''}"
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


class _Op:
    """One update waiting for the next shared transaction."""

    __slots__ = ("done", "error", "now", "result", "update")

    def __init__(self, update: Update) -> None:
        self.update = update
        self.done = False
        self.result: Any = None
        self.now = 0.0
        self.error: BaseException | None = None


class RateLimiter:
    """Paces every sender of one API key at its requests- and tokens-per-minute limits.

    Threads of one process share one instance. Their updates are group-committed: the first
    thread to arrive runs one backend transaction for every update queued meanwhile, so a busy
    process pays one lock and one file (or Redis, PostgreSQL) round trip per wave of requests,
    not per request, while each request still gets its own exact GCRA slot.

    `limits` None: learn them from the provider (see the module docstring); `burst_s` is then
    the burst of the learned limits, `probe_timeout_s` how long the others wait for a probe
    that never settles (at least the request timeout), and `poll_s` how often they look.
    """

    def __init__(self, backend: Backend, limits: Limits | None, key: str,
                 sleep: Callable[[float], None] = time.sleep, *, burst_s: float = 1.0,
                 probe_timeout_s: float = 130.0, poll_s: float = 0.05) -> None:
        self.backend = backend
        self.limits = limits
        self.key = key
        self._sleep = sleep
        self._burst_s = burst_s
        self._probe_timeout_s = probe_timeout_s
        self._poll_s = poll_s
        self._seen: tuple[int, int] | None = None
        self._said_unpaced = False
        self._cond = threading.Condition()
        self._queue: list[_Op] = []
        self._leading = False
        self.transactions = 0

    def _transact(self, update: Update) -> tuple[Any, float]:
        op = _Op(update)
        with self._cond:
            self._queue.append(op)
            while not op.done and self._leading:
                self._cond.wait()
            if op.done:
                return self._outcome(op)
            self._leading = True
            batch, self._queue = self._queue, []

        def update_all(state: BucketState, now: float) -> tuple[BucketState, None]:
            for queued in batch:
                try:
                    state, queued.result = queued.update(state, now)
                except QbqError as exc:  # this request's own problem; the others go on
                    queued.error = exc
            return state, None

        error: BaseException | None = None
        now = 0.0
        try:
            _, now = self.backend.transact(self.key, update_all)
            self.transactions += 1
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller, re-raised
            error = exc
        with self._cond:
            for queued in batch:
                queued.now = now
                queued.error = queued.error or error
                queued.done = True
            self._leading = False
            self._cond.notify_all()
        return self._outcome(op)

    @staticmethod
    def _outcome(op: _Op) -> tuple[Any, float]:
        if op.error is not None:
            raise op.error
        return op.result, op.now

    def acquire(self, tokens: int) -> Reservation:
        """Reserve a request costing `tokens` and sleep until it may start.

        Raises `ConfigurationError` when `tokens` exceeds the configured tokens-per-minute
        limit, `RequestOverLimitError` when it exceeds a learned one (the plan did not know it).
        """
        if self.limits is None:
            return self._acquire_learned(tokens)
        limits = self.limits

        def update(state: BucketState, now: float) -> tuple[BucketState, float]:
            return reserve(state, now, limits, tokens)

        start_at, now = self._transact(update)
        wait = max(0.0, start_at - now)
        if wait > 0:
            self._sleep(wait)
        return Reservation(tokens, start_at, wait, limits)

    def _learned(self, state: BucketState) -> Limits | None:
        if state.rpm > 0 and state.tpm > 0 and not state.unpaced:
            return Limits(state.rpm, state.tpm, self._burst_s)
        return None

    def _acquire_learned(self, tokens: int) -> Reservation:
        waited = 0.0
        while True:
            def update(state: BucketState,
                       now: float) -> tuple[BucketState, tuple[str, float, Limits | None]]:
                limits = self._learned(state)
                if limits is not None:
                    if tokens > limits.tpm:
                        raise RequestOverLimitError(
                            f"a request of {tokens:,} tokens exceeds this key's limit of "
                            f"{limits.tpm:,} tokens per minute (stated by the provider); set "
                            "QBQ_TPM to plan smaller batches")
                    new, start = reserve(state, now, limits, tokens)
                    return new, ("go", start, limits)
                start = max(now, state.pause_until)
                if state.unpaced:
                    return state, ("unpaced", start, None)
                if state.probe_until > now:
                    return state, ("wait", state.probe_until, None)
                return (replace(state, probe_until=start + self._probe_timeout_s),
                        ("probe", start, None))

            (kind, at, limits), now = self._transact(update)
            if kind == "wait":
                nap = min(self._poll_s, max(0.0, at - now))
                self._sleep(nap)
                waited += nap
                continue
            if kind == "unpaced":
                self._say_unpaced()
            wait = max(0.0, at - now)
            if wait > 0:
                self._sleep(wait)
            return Reservation(tokens, at, waited + wait, limits, probe=kind == "probe")

    def _say_unpaced(self) -> None:
        if not self._said_unpaced:
            self._said_unpaced = True
            log.warning("the provider states no rate limits (no x-ratelimit-limit-* headers) and "
                        "QBQ_RPM/QBQ_TPM are not set: requests are paced by QBQ_MAX_IN_FLIGHT "
                        "alone")

    def settle(self, reservation: Reservation, charged_tokens: int | None,
               headers: Mapping[str, str]) -> None:
        """Correct the shared state with what the provider really charged and reports.

        Without configured limits, also learns the limits the headers state (a probe's reply
        ends the probe) and follows them when they change.
        """
        if self.limits is None:
            self._settle_learned(reservation, charged_tokens, headers)
            return
        limits = self.limits
        unused = reservation.tokens - charged_tokens if charged_tokens is not None else 0
        remaining_req = _int_header(headers, "x-ratelimit-remaining-requests")
        remaining_tok = _int_header(headers, "x-ratelimit-remaining-tokens")
        if unused <= 0 and remaining_req is None and remaining_tok is None:
            return

        def update(state: BucketState, now: float) -> tuple[BucketState, None]:
            state = refund(state, limits, unused)
            return observe_remaining(state, now, limits, remaining_req, remaining_tok), None

        self._transact(update)

    def _settle_learned(self, reservation: Reservation, charged_tokens: int | None,
                        headers: Mapping[str, str]) -> None:
        limit_req = _int_header(headers, "x-ratelimit-limit-requests")
        limit_tok = _int_header(headers, "x-ratelimit-limit-tokens")
        remaining_req = _int_header(headers, "x-ratelimit-remaining-requests")
        remaining_tok = _int_header(headers, "x-ratelimit-remaining-tokens")
        charged = charged_tokens if charged_tokens is not None else reservation.tokens
        unused = reservation.tokens - charged
        stated = (limit_req, limit_tok) if limit_req and limit_tok else None
        if (not reservation.probe and (stated is None or stated == self._seen) and unused <= 0
                and remaining_req is None and remaining_tok is None):
            return

        def update(state: BucketState,
                   now: float) -> tuple[BucketState, tuple[int, int, bool]]:
            state = learn_limits(state, now, limit_req, limit_tok,
                                 probe_tokens=max(1, charged) if reservation.probe else 0,
                                 burst_s=self._burst_s)
            limits = self._learned(state)
            if limits is not None:
                if reservation.limits == limits:
                    state = refund(state, limits, unused)
                state = observe_remaining(state, now, limits, remaining_req, remaining_tok)
            return state, (state.rpm, state.tpm, state.unpaced)

        (rpm, tpm, unpaced), _ = self._transact(update)
        if unpaced:
            self._say_unpaced()
        elif (rpm, tpm) != self._seen:
            log.info("pacing at the provider's limits: %s requests and %s tokens per minute",
                     f"{rpm:,}", f"{tpm:,}")
        self._seen = (rpm, tpm)

    def release(self, reservation: Reservation) -> None:
        """The reserved request got no reply: a probe lets another sender probe at once."""
        if not reservation.probe:
            return

        def update(state: BucketState, now: float) -> tuple[BucketState, None]:
            return replace(state, probe_until=0.0), None

        self._transact(update)

    def cool_down(self, seconds: float) -> None:
        """Pause every sender of this key for `seconds` (after a 429 or an open breaker)."""

        def update(state: BucketState, now: float) -> tuple[BucketState, None]:
            return pause(state, now + seconds), None

        self._transact(update)

    def paused_for(self) -> float:
        def update(state: BucketState, now: float) -> tuple[BucketState, float]:
            return state, max(0.0, state.pause_until - now)

        remaining, _ = self._transact(update)
        return float(remaining)
