"""The mutable state of one simulator app: counters, provider buckets, faults, caches, timeline."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
import time
from collections.abc import Mapping
from typing import Any

from qbq.catalog import ModelSpec, get_model_spec
from qbq.simulator.caching import PromptCache, namespace_of, prefix_keys
from qbq.simulator.call import ChatCall, Stage
from qbq.simulator.config import RUNTIME_FIELDS, SimConfig
from qbq.simulator.faults import RATE_LIMIT_FAULTS, Fault, FaultPlan
from qbq.simulator.limits import Outcome, ProviderBuckets
from qbq.simulator.reasoning import parse_effort_tokens
from qbq.simulator.timeline import Timeline

__all__ = ["SimState"]

_TOKEN_KEYS = ("prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens")


#: Longest wait (wall seconds) for earlier arrivals to be charged before charging a request
#: anyway (an earlier request may be fetching an image URL with its own timeout).
ARRIVAL_ORDER_WAIT_S = 1.0


class SimState:
    """Counters, provider buckets, faults, prompt cache and timeline of one simulator app.

    Everything mutable is guarded by one lock, held only for short computations (never
    across an await), so it stays right whichever thread or task reads it. `stages` are the
    steps a chat request goes through (see `qbq.simulator.stages`).

    Counters: `requests`, `by_status` and the token counts are chat-completion calls only;
    `batches` counts batch jobs created, `batch_requests` the lines they processed, and
    `batch_tokens` the lines' token counts.
    """

    def __init__(
        self,
        config: SimConfig,
        stages: list[Stage],
        models: Mapping[str, ModelSpec] | None = None,
    ) -> None:
        self.config = config
        self.stages = stages
        #: Models that replace or extend the catalogue's (tests use it for reasoning specs).
        self.models: Mapping[str, ModelSpec] = dict(models or {})
        self._lock = threading.Lock()
        self._origin = time.monotonic()
        self._buckets = ProviderBuckets(config.rpm, config.tpm)
        self._timeline = Timeline()
        self.prompt_cache = PromptCache()
        # Arrival tickets of chat requests (kept across resets, so a request in flight during a
        # reset cannot settle a ticket a later request holds): every ticket up to
        # `_settled_upto` has been charged or has ended without reaching the rate limits.
        self._tickets = 0
        self._settled_upto = 0
        self._settled: set[int] = set()
        self._clear()

    def _clear(self) -> None:
        self._requests = 0
        self._by_status: dict[str, int] = {}
        self._tokens = dict.fromkeys(_TOKEN_KEYS, 0)
        self._batch_tokens = dict.fromkeys(_TOKEN_KEYS, 0)
        self._batches = 0
        self._batch_requests = 0
        self._fault_counts: dict[str, int] = {}
        self._buckets.reset()
        self._timeline.reset()
        self.prompt_cache.clear()
        self._arm(self.config)

    def _arm(self, config: SimConfig) -> None:
        self._plan = FaultPlan(config.faults, config.fault_script, config.seed)
        self._batch_plan = FaultPlan(config.batch_faults, (), config.seed + 1)
        self._jitter_rng = random.Random(f"qbq-sim-jitter:{config.seed}")
        self._flex_rng = random.Random(f"qbq-sim-flex:{config.seed}")

    def resolve(self, name: str) -> ModelSpec:
        """The spec of model `name`: `models` first, then the catalogue (UnknownModelError)."""
        spec = self.models.get(name)
        if spec is not None:
            return dataclasses.replace(spec, name=name)
        return get_model_spec(name)

    def now(self) -> float:
        """Simulated seconds since the app started."""
        return (time.monotonic() - self._origin) * self.config.time_scale

    # --- counters ---------------------------------------------------------------------------

    def record(self, status: int, **tokens: int) -> None:
        """One chat-completion call answered with `status`; `tokens` as in its usage."""
        with self._lock:
            self._requests += 1
            key = str(status)
            self._by_status[key] = self._by_status.get(key, 0) + 1
            for name, count in tokens.items():
                self._tokens[name] += count

    def record_batch(self) -> None:
        """A batch job was created."""
        with self._lock:
            self._batches += 1

    def record_batch_line(self, **tokens: int) -> None:
        """A batch line was processed (answered or failed); `tokens` as in its usage."""
        with self._lock:
            self._batch_requests += 1
            for name, count in tokens.items():
                self._batch_tokens[name] += count

    def snapshot(self) -> dict[str, Any]:
        """`GET /_sim/stats`: counters (see the class docstring), limits, faults, timeline."""
        with self._lock:
            return {
                "simulated": True,
                "requests": self._requests,
                "by_status": dict(self._by_status),
                **self._tokens,
                "batches": self._batches,
                "batch_requests": self._batch_requests,
                "batch_tokens": dict(self._batch_tokens),
                "limits": {"rpm": self.config.rpm, "tpm": self.config.tpm},
                "time_scale": self.config.time_scale,
                "faults": dict(self._fault_counts),
                "in_flight": self._timeline.in_flight,
                "timeline": self._timeline.snapshot(self.now()),
            }

    def reset(self) -> None:
        """Counters, timeline, buckets, prompt cache and fault counts cleared; the script restarts."""
        with self._lock:
            self._clear()

    # --- run-time configuration -------------------------------------------------------------

    def update_config(self, changes: dict[str, Any]) -> SimConfig:
        """Apply `changes` (fields of RUNTIME_FIELDS) now; raises ValueError when invalid.

        Buckets keep what they have used under new limits; changing faults, the script or the
        seed starts the fault sequence (and the jitter sequence) again; reasoning tokens given
        for some efforts leave the other efforts as they are.
        """
        unknown = sorted(set(changes) - RUNTIME_FIELDS)
        if unknown:
            raise ValueError(
                f"cannot change {', '.join(unknown)} at run time; changeable: "
                + ", ".join(sorted(RUNTIME_FIELDS))
            )
        with self._lock:
            current = self.config.model_dump()
            for name in ("reasoning_tokens", "reasoning_tokens_per_answer"):
                if name in changes:
                    changes = {**changes, name: {**current[name], **parse_effort_tokens(changes[name])}}
            config = SimConfig(**{**current, **changes})
            self.config = config
            self._buckets.configure(config.rpm, config.tpm, self.now())
            if {"faults", "fault_script", "seed", "batch_faults"} & set(changes):
                self._arm(config)
            return config

    # --- the life of a chat request ---------------------------------------------------------

    def draw_fault(self) -> tuple[Fault | None, str | None]:
        """The fault of the next chat request and the script entry it came from (see FaultPlan)."""
        with self._lock:
            return self._plan.next()

    def draw_batch_fault(self) -> Fault | None:
        """The fault of the next batch line, drawn at the `batch_faults` rates."""
        with self._lock:
            return self._batch_plan.next()[0]

    def flex_unavailable(self) -> bool:
        """Whether flex lacks capacity for this request (drawn at `flex_unavailable_rate`)."""
        rate = self.config.flex_unavailable_rate
        if rate <= 0:
            return False
        with self._lock:
            return self._flex_rng.random() < rate

    def reject(self, fault: Fault | None) -> None:
        """A request refused before the provider buckets (unbilled): a rejection in the timeline."""
        with self._lock:
            self._timeline.reject(self.now())
            if fault is not None:
                self._fault_counts[fault.kind] = self._fault_counts.get(fault.kind, 0) + 1

    # --- arrival order ---------------------------------------------------------------------

    def take_ticket(self) -> int:
        """The next chat request's place in arrival order."""
        with self._lock:
            self._tickets += 1
            return self._tickets

    def settle(self, ticket: int | None) -> None:
        """`ticket` was charged, or its request ended before the rate limits (idempotent)."""
        if ticket is None:
            return
        with self._lock:
            if ticket <= self._settled_upto:
                return
            self._settled.add(ticket)
            while self._settled_upto + 1 in self._settled:
                self._settled_upto += 1
                self._settled.discard(self._settled_upto)

    async def wait_turn(self, ticket: int | None) -> None:
        """Wait until every chat request that arrived before `ticket` was charged or ended,
        at most `ARRIVAL_ORDER_WAIT_S` wall seconds (then charge anyway, and no later request
        waits for those earlier ones again): buckets are charged in arrival order, whichever
        request's images took longest to decode."""
        if ticket is None:
            return
        deadline = time.monotonic() + ARRIVAL_ORDER_WAIT_S
        while self._settled_upto < ticket - 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        with self._lock:  # waited long enough: earlier tickets no longer hold anyone up
            if self._settled_upto < ticket - 1:
                self._settled_upto = ticket - 1
                self._settled = {t for t in self._settled if t > self._settled_upto}

    def admit(self, call: ChatCall) -> Outcome:
        """Charge `call` to its key's buckets, or refuse it (an injected 429 always refuses).

        The charge is made as of `call.arrived` when it has one, in arrival order (see
        `wait_turn`; buckets never refill backwards, so a call charged after a later arrival
        would get no refill of its own).

        An accepted request joins the timeline as in flight and its fault is counted; a
        refused one counts as rejected, and gives its script entry back unless the fault
        itself was the 429.
        """
        tokens = call.charged_tokens
        with self._lock:
            now = self.now() if call.arrived is None else min(call.arrived, self.now())
            injected = call.fault is not None and call.fault.kind in RATE_LIMIT_FAULTS
            if injected:
                outcome = self._buckets.refuse(call.api_key, tokens, now)
            else:
                outcome = self._buckets.acquire(call.api_key, tokens, now)
            if outcome.accepted:
                self._timeline.start(now, tokens, in_flight_from=self.now())
            else:
                self._timeline.reject(now)
                if not injected and call.script_entry is not None:
                    self._plan.give_back(call.script_entry)
            if call.fault is not None and (outcome.accepted or injected):
                self._fault_counts[call.fault.kind] = self._fault_counts.get(call.fault.kind, 0) + 1
            return outcome

    def start(self, tokens: int) -> None:
        """A request starts without the rate-limit stage (when a caller removed it)."""
        with self._lock:
            self._timeline.start(self.now(), tokens)

    def finish(self) -> None:
        """An accepted request has been answered (or abandoned): no longer in flight."""
        with self._lock:
            self._timeline.finish(self.now())

    def latency_s(self, completion_tokens: int, *, multiplier: float = 1.0) -> float:
        """Wall seconds to wait before an answer with `completion_tokens` tokens.

        `completion_tokens` includes reasoning tokens (they are generated too); `multiplier`
        slows the answer down (flex processing).
        """
        config = self.config
        simulated_ms = config.latency_ms + config.ms_per_output_token * completion_tokens
        if simulated_ms <= 0:
            return 0.0
        factor = multiplier
        if config.jitter > 0:
            with self._lock:
                factor *= self._jitter_rng.lognormvariate(0.0, config.jitter)
        return simulated_ms * factor / 1000 / config.time_scale

    def cached_prefix_tokens(self, call: ChatCall) -> int:
        """Cached tokens of an answered `call`'s prompt (0 on a miss), then its prefix is cached.

        Called once per answered request (never for refused ones, which OpenAI does not cache).
        """
        config = self.config
        if not config.prompt_cache:
            return 0
        spec = call.model
        namespace = namespace_of(call.api_key, spec.name, call.prompt_cache_key)
        prefix = prefix_keys(namespace, spec, call.messages, call.response_format, call.images)
        retention = call.prompt_cache_retention or config.prompt_cache_default_retention
        ttl = config.prompt_cache_extended_ttl_s if retention == "24h" else config.prompt_cache_ttl_s
        cached = self.prompt_cache.lookup_and_store(prefix, self.now(), ttl)
        return min(cached, call.prompt_tokens)
