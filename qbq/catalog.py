"""The catalogue of OpenAI models qbq knows: limits, image-token formula, encoding and prices.

Every other module asks `get_model_spec` rather than hard-coding a model's numbers.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from qbq.errors import ConfigurationError, UnknownModelError

__all__ = ["MODELS", "ImageFormula", "ModelSpec", "get_model_spec"]

_PER_MILLION = 1_000_000

# OpenAI publishes dated snapshots ("gpt-4o-2024-08-06") that share the base model's numbers.
_SNAPSHOT_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class ImageFormula:
    """How a model turns an image into input tokens (see `qbq.tokens.image_tokens`).

    The "tile" family counts 512-px tiles after resizing; the "patch" family counts 32-px
    patches and multiplies the count.
    """

    family: Literal["tile", "patch"]
    #: tile family: tokens per image (also the whole cost at detail=low).
    base_tokens: int = 0
    #: tile family: tokens per 512-px tile.
    tile_tokens: int = 0
    #: patch family: multiplier applied to the patch count.
    patch_multiplier: float = 1.0
    #: patch family: the most patches an image may cover; larger images are scaled down.
    max_patches: int = 1536


@dataclass(frozen=True)
class ModelSpec:
    """Limits, image formula, tokenizer and prices of one model.

    A spec built for a model missing from the catalogue has prices 0 and `price_known`
    False: its cost is unknown, not free.
    """

    name: str
    context_window: int
    max_output_tokens: int
    image: ImageFormula
    #: tiktoken encoding name; "o200k_base" for all current models.
    encoding: str
    #: USD per 1M input tokens that were not served from the prompt cache.
    price_input_per_m: float
    #: USD per 1M input tokens served from the prompt cache.
    price_cached_input_per_m: float
    #: USD per 1M output tokens (reasoning tokens included, as OpenAI bills them).
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
    #: The effort qbq sends when none is configured (None: send no `reasoning_effort`).
    default_reasoning_effort: str | None = None

    @property
    def input_limit(self) -> int:
        """Most prompt tokens a request may carry (`max_input_tokens`, else the window)."""
        return self.max_input_tokens or self.context_window

    def cost_usd(self, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> float:
        """Cost in USD of one request; `cached_tokens` is the cached part of `prompt_tokens`.

        OpenAI's usage reports cached tokens as a subset of the prompt tokens, so only the
        remainder is billed at the full input price.
        """
        if min(prompt_tokens, cached_tokens, completion_tokens) < 0:
            raise ValueError("token counts must not be negative")
        if cached_tokens > prompt_tokens:
            raise ValueError(
                f"cached_tokens ({cached_tokens}) exceeds prompt_tokens ({prompt_tokens})"
            )
        uncached = prompt_tokens - cached_tokens
        return (
            uncached * self.price_input_per_m
            + cached_tokens * self.price_cached_input_per_m
            + completion_tokens * self.price_output_per_m
        ) / _PER_MILLION


def _tile(base: int, tile: int) -> ImageFormula:
    return ImageFormula(family="tile", base_tokens=base, tile_tokens=tile)


def _patch(multiplier: float) -> ImageFormula:
    return ImageFormula(family="patch", patch_multiplier=multiplier)


def _spec(
    name: str,
    context_window: int,
    max_output_tokens: int,
    image: ImageFormula,
    prices: tuple[float, float, float],
) -> ModelSpec:
    price_input, price_cached, price_output = prices
    return ModelSpec(
        name=name,
        context_window=context_window,
        max_output_tokens=max_output_tokens,
        image=image,
        encoding="o200k_base",
        price_input_per_m=price_input,
        price_cached_input_per_m=price_cached,
        price_output_per_m=price_output,
    )


_GPT_4O_IMAGE = _tile(85, 170)

_SPECS = (
    _spec("gpt-4o", 128_000, 16_384, _GPT_4O_IMAGE, (2.50, 1.25, 10.00)),
    _spec("gpt-4o-mini", 128_000, 16_384, _tile(2833, 5667), (0.15, 0.075, 0.60)),
    _spec("gpt-4.1", 1_047_576, 32_768, _tile(85, 170), (2.00, 0.50, 8.00)),
    _spec("gpt-4.1-mini", 1_047_576, 32_768, _patch(1.62), (0.40, 0.10, 1.60)),
    _spec("gpt-4.1-nano", 1_047_576, 32_768, _patch(2.46), (0.10, 0.025, 0.40)),
    _spec("o4-mini", 200_000, 100_000, _patch(1.72), (1.10, 0.275, 4.40)),
    _spec("o3", 200_000, 100_000, _tile(75, 150), (2.00, 0.50, 8.00)),
    _spec("gpt-5-mini", 400_000, 128_000, _patch(1.62), (0.25, 0.025, 2.00)),
    _spec("gpt-5", 400_000, 128_000, _tile(70, 140), (1.25, 0.125, 10.00)),
)

#: Known models by base name; read-only.
MODELS: Mapping[str, ModelSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})


def _check_limit(setting: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise ConfigurationError(f"{setting} must be a positive number of tokens, got {value}")


def get_model_spec(
    name: str,
    *,
    context_window: int | None = None,
    max_output_tokens: int | None = None,
) -> ModelSpec:
    """The spec of model `name`; dated snapshots resolve to their base model.

    Limits given here override the catalogue's. A model missing from the catalogue needs
    both limits; it then gets gpt-4o's image formula and unknown (zero) prices.
    """
    _check_limit("QBQ_MODEL_CONTEXT_WINDOW", context_window)
    _check_limit("QBQ_MODEL_MAX_OUTPUT_TOKENS", max_output_tokens)

    known = MODELS.get(name) or MODELS.get(_SNAPSHOT_SUFFIX.sub("", name))
    if known is not None:
        # Keep the requested name (a snapshot stays a snapshot) so requests and reports
        # show exactly the model that was asked for.
        return dataclasses.replace(
            known,
            name=name,
            context_window=context_window or known.context_window,
            max_output_tokens=max_output_tokens or known.max_output_tokens,
        )

    if context_window is None or max_output_tokens is None:
        raise UnknownModelError(
            f"unknown model {name!r}: its limits are not in the catalogue "
            f"(known models: {', '.join(sorted(MODELS))}). To use it anyway, set both "
            "QBQ_MODEL_CONTEXT_WINDOW and QBQ_MODEL_MAX_OUTPUT_TOKENS."
        )
    return ModelSpec(
        name=name,
        context_window=context_window,
        max_output_tokens=max_output_tokens,
        # gpt-4o's tile formula is the documented default for vision models.
        image=_GPT_4O_IMAGE,
        encoding="o200k_base",
        price_input_per_m=0.0,
        price_cached_input_per_m=0.0,
        price_output_per_m=0.0,
        price_known=False,
    )
