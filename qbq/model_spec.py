"""What qbq knows about one model: limits, image formula, reasoning efforts and prices by mode.

The figures themselves live in `qbq.catalog`; this module only defines their shape and the
arithmetic on them (input limit, price of a request in each processing mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from qbq.errors import ConfigurationError

__all__ = ["MODES", "ImageFormula", "Mode", "ModelSpec", "Prices"]

#: How a request is processed and billed: the synchronous API at standard prices, the Batch API
#: (asynchronous, up to 24 h) or `service_tier="flex"` (synchronous, slower, Batch prices).
Mode = Literal["sync", "batch", "flex"]
MODES: tuple[Mode, ...] = get_args(Mode)

_PER_MILLION = 1_000_000


@dataclass(frozen=True)
class ImageFormula:
    """How a model turns an image into input tokens (see `qbq.tokens.image_tokens`).

    The "tile" family counts 512-px tiles after resizing; the "patch" family counts 32-px
    patches (after fitting the image within `max_dimension` px and, past `max_patches`,
    shrinking it) and multiplies the count. Figures: OpenAI's vision guide,
    https://developers.openai.com/api/docs/guides/images-vision#calculating-costs
    """

    family: Literal["tile", "patch"]
    #: tile family: tokens per image (also the whole cost at detail=low).
    base_tokens: int = 0
    #: tile family: tokens per 512-px tile.
    tile_tokens: int = 0
    #: patch family: multiplier applied to the patch count.
    patch_multiplier: float = 1.0
    #: patch family: the most patches an image may cover at detail=high (the patch budget).
    max_patches: int = 1536
    #: patch family: images are first fitted within this many pixels on their longer side.
    max_dimension: int = 2048

    def describe(self) -> str:
        """One-line form for tables, e.g. "tile 85+170/tile" or "patch x1.2 <=2500"."""
        if self.family == "tile":
            return f"tile {self.base_tokens}+{self.tile_tokens}/tile"
        return f"patch x{self.patch_multiplier:g} <={self.max_patches}"


@dataclass(frozen=True)
class Prices:
    """USD per 1M tokens in one processing mode.

    `cached_input` is the price of prompt tokens served from the prompt cache; `cache_write`,
    when set, is the price of prompt tokens written to the cache (GPT-5.6 bills those at 1.25x
    input); None means cache writes cost ordinary input.
    """

    input: float
    cached_input: float
    output: float
    cache_write: float | None = None

    def halved(self) -> Prices:
        """These prices at 50% (the Batch API and flex discount)."""
        return Prices(self.input / 2, self.cached_input / 2, self.output / 2,
                      None if self.cache_write is None else self.cache_write / 2)


@dataclass(frozen=True)
class ModelSpec:
    """Limits, image formula, tokenizer, reasoning efforts and prices of one model.

    Token figures are tokens; prices are USD per 1M tokens. A spec built for a model missing
    from the catalogue has prices 0 and `price_known` False: its cost is unknown, not free.
    `sources` maps each figure's name to the URL of the OpenAI page it was read from.
    """

    name: str
    context_window: int
    max_output_tokens: int
    image: ImageFormula
    #: tiktoken encoding name; "o200k_base" for all current models.
    encoding: str
    #: USD per 1M input tokens that were not served from the prompt cache (sync mode).
    price_input_per_m: float
    #: USD per 1M input tokens served from the prompt cache (sync mode).
    price_cached_input_per_m: float
    #: USD per 1M output tokens, reasoning tokens included, as OpenAI bills them (sync mode).
    price_output_per_m: float
    #: False when the prices are placeholders for a model missing from the catalogue.
    price_known: bool = True
    #: Most input (prompt) tokens one request may carry; 0 means the whole context window.
    #: Reasoning models reserve part of their window for output (gpt-5: 272k of 400k).
    max_input_tokens: int = 0
    #: True for models that spend hidden reasoning tokens inside `max_completion_tokens`.
    reasoning: bool = False
    #: The `reasoning_effort` values the model accepts (empty for non-reasoning models).
    reasoning_efforts: tuple[str, ...] = ()
    #: The effort the model uses when none is sent (None: not a reasoning model).
    default_reasoning_effort: str | None = None
    #: USD per 1M prompt tokens written to the prompt cache; None: billed as ordinary input.
    price_cache_write_per_m: float | None = None
    #: Batch API prices; None when the model is not offered through the Batch API.
    batch_prices: Prices | None = None
    #: Flex processing (`service_tier="flex"`) prices; None when flex is not offered.
    flex_prices: Prices | None = None
    #: A prompt over this many tokens is billed at the long-context rates for the whole
    #: request (None: no long-context tier).
    long_context_threshold: int | None = None
    #: Long-context multipliers on the input (and cached input) and on the output price.
    long_context_input_factor: float = 1.0
    long_context_output_factor: float = 1.0
    #: (figure, URL) pairs: where each figure was published; a tuple so specs stay hashable.
    sources: tuple[tuple[str, str], ...] = ()

    @property
    def input_limit(self) -> int:
        """Most prompt tokens a request may carry: `max_input_tokens` within the window."""
        if self.max_input_tokens:
            return min(self.max_input_tokens, self.context_window)
        return self.context_window

    @property
    def modes(self) -> tuple[Mode, ...]:
        """The processing modes this model is offered in ("sync" always)."""
        offered: list[Mode] = ["sync"]
        if self.batch_prices is not None:
            offered.append("batch")
        if self.flex_prices is not None:
            offered.append("flex")
        return tuple(offered)

    def source(self, figure: str) -> str | None:
        """The URL the named figure was read from, if recorded."""
        return dict(self.sources).get(figure)

    def prices(self, mode: Mode = "sync") -> Prices:
        """Prices (USD per 1M tokens) in `mode`; ConfigurationError if the model lacks it."""
        if mode == "sync":
            return Prices(self.price_input_per_m, self.price_cached_input_per_m,
                          self.price_output_per_m, self.price_cache_write_per_m)
        chosen = self.batch_prices if mode == "batch" else self.flex_prices
        if chosen is None:
            raise ConfigurationError(
                f"QBQ_MODE={mode}: {self.name} is not offered in {mode} mode "
                f"(its modes: {', '.join(self.modes)})"
            )
        return chosen

    def cost_usd(self, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> float:
        """Cost in USD of one synchronous request; `cached_tokens` is part of `prompt_tokens`.

        OpenAI's usage reports cached tokens as a subset of the prompt tokens, so only the
        remainder is billed at the full input price.
        """
        return self.cost_usd_in_mode("sync", prompt_tokens, cached_tokens, completion_tokens)

    def cost_usd_in_mode(self, mode: Mode, prompt_tokens: int, cached_tokens: int,
                         completion_tokens: int, cache_write_tokens: int = 0) -> float:
        """Cost in USD of one request processed in `mode` ("sync", "batch" or "flex").

        `cached_tokens` and `cache_write_tokens` are parts of `prompt_tokens`; completion
        tokens include reasoning tokens. A prompt over `long_context_threshold` tokens is billed
        at the long-context rates for the whole request, as OpenAI's model pages state.
        """
        if min(prompt_tokens, cached_tokens, completion_tokens, cache_write_tokens) < 0:
            raise ValueError("token counts must not be negative")
        if cached_tokens + cache_write_tokens > prompt_tokens:
            raise ValueError(
                f"cached_tokens ({cached_tokens}) + cache_write_tokens ({cache_write_tokens}) "
                f"exceed prompt_tokens ({prompt_tokens})"
            )
        p = self.prices(mode)
        in_factor = out_factor = 1.0
        if self.long_context_threshold is not None and prompt_tokens > self.long_context_threshold:
            in_factor, out_factor = self.long_context_input_factor, self.long_context_output_factor
        write_price = p.input if p.cache_write is None else p.cache_write
        uncached = prompt_tokens - cached_tokens - cache_write_tokens
        return (
            (uncached * p.input + cached_tokens * p.cached_input
             + cache_write_tokens * write_price) * in_factor
            + completion_tokens * p.output * out_factor
        ) / _PER_MILLION

    def validate_reasoning_effort(self, effort: str | None, setting: str) -> str | None:
        """The effort to send: `effort`, else the model's default; ConfigurationError naming
        `setting` when the model does not accept it."""
        if effort is None:
            return self.default_reasoning_effort
        if not self.reasoning_efforts:
            raise ConfigurationError(
                f"{setting}={effort!r}: {self.name} is not a reasoning model and takes no "
                "reasoning_effort; unset it for this model"
            )
        if effort not in self.reasoning_efforts:
            raise ConfigurationError(
                f"{setting}={effort!r} is not accepted by {self.name} "
                f"(it accepts: {', '.join(self.reasoning_efforts)}; "
                f"default {self.default_reasoning_effort})"
            )
        return effort
