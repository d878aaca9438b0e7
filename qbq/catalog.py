"""The catalogue of OpenAI models qbq knows, each figure with the OpenAI page it came from.

Every other module asks `get_model_spec` rather than hard-coding a model's numbers. The figures
were read in November 2026 from stored copies of OpenAI's pages (this machine has no internet);
where two sources disagree the choice and the reason are written next to the figure and in the
README ("Models"). `qbq models` prints the table.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from types import MappingProxyType

from qbq.errors import ConfigurationError, UnknownModelError
from qbq.model_spec import MODES, ImageFormula, Mode, ModelSpec, Prices

__all__ = ["MODELS", "MODES", "ImageFormula", "Mode", "ModelSpec", "Prices", "get_model_spec"]

# OpenAI publishes dated snapshots ("gpt-4o-2024-08-06") that share the base model's numbers.
_SNAPSHOT_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")

_DOCS = "https://developers.openai.com/api/docs"
#: Vision guide, "Model sizing behavior" and "Calculating costs" (patch budgets, multipliers,
#: tile base/tile tokens).
VISION_URL = f"{_DOCS}/guides/images-vision#calculating-costs"
#: Pricing page: standard, Batch and Flex tables (flex availability is the Flex table).
PRICING_URL = f"{_DOCS}/pricing"
#: Flex guide: "Tokens are priced at Batch API rates"; models listed on the pricing page.
FLEX_URL = f"{_DOCS}/guides/flex-processing"
#: Reasoning guide: effort values, per-model defaults (gpt-5.5 and GPT-5.6 default to medium).
REASONING_URL = f"{_DOCS}/guides/reasoning"
#: OpenAI's OpenAPI spec, `ReasoningEffort` (2026-05 text: gpt-5.1 defaults to none and accepts
#: none/low/medium/high; models before gpt-5.1 default to medium and do not accept none; xhigh
#: for every model after gpt-5.1-codex-max).
SPEC_URL = "https://github.com/openai/openai-openapi/blob/master/openapi.yaml"


def _page(name: str) -> str:
    return f"{_DOCS}/models/{name}"


def _tile(base: int, tile: int) -> ImageFormula:
    return ImageFormula(family="tile", base_tokens=base, tile_tokens=tile)


def _patch(multiplier: float, max_patches: int) -> ImageFormula:
    return ImageFormula(family="patch", patch_multiplier=multiplier, max_patches=max_patches)


_O_SERIES = ("low", "medium", "high")
_GPT5 = ("minimal", "low", "medium", "high")
_GPT51 = ("none", "low", "medium", "high")
_XHIGH = ("none", "low", "medium", "high", "xhigh")
_MAX = ("none", "low", "medium", "high", "xhigh", "max")


def _spec(
    name: str,
    *,
    window: int,
    max_output: int,
    image: ImageFormula,
    prices: tuple[float, float, float],
    batch: Prices | None,
    flex: Prices | None,
    max_input: int = 0,
    efforts: tuple[str, ...] = (),
    default_effort: str | None = None,
    cache_write: float | None = None,
    long_context: int | None = None,
    input_stated: bool = False,
    sources: Mapping[str, str] | None = None,
) -> ModelSpec:
    # Long: one keyword per catalogue column, each checked; splitting would hide the checks from the table
    # they guard.
    price_input, price_cached, price_output = prices
    where = {
        "context_window": _page(name), "max_output_tokens": _page(name),
        "max_input_tokens": _page(name), "image": VISION_URL, "prices": _page(name),
        "batch_prices": PRICING_URL, "flex_prices": PRICING_URL,
        "reasoning_efforts": _page(name),
    }
    if max_input and not input_stated:
        where["max_input_tokens"] = f"derived: window - max output (not stated on {_page(name)})"
    if not max_input:
        where["max_input_tokens"] = "none: the whole context window"
    where.update(sources or {})
    return ModelSpec(
        name=name,
        context_window=window,
        max_output_tokens=max_output,
        image=image,
        encoding="o200k_base",
        price_input_per_m=price_input,
        price_cached_input_per_m=price_cached,
        price_output_per_m=price_output,
        max_input_tokens=max_input,
        reasoning=bool(efforts),
        reasoning_efforts=efforts,
        default_reasoning_effort=default_effort,
        price_cache_write_per_m=cache_write,
        batch_prices=batch,
        flex_prices=flex,
        long_context_threshold=long_context,
        # "Prompts with >272K input tokens are priced at 2x input and 1.5x output for the full
        # request" (GPT-5.4, GPT-5.5 and GPT-5.6 model pages).
        long_context_input_factor=2.0 if long_context else 1.0,
        long_context_output_factor=1.5 if long_context else 1.0,
        sources=tuple(sorted(where.items())),
    )


def _half(prices: tuple[float, float, float], cache_write: float | None = None) -> Prices:
    """Batch/flex prices at 50% of standard, cached input included (GPT-5 family tables)."""
    return Prices(*prices, cache_write=cache_write).halved()


def _half_uncached(prices: tuple[float, float, float]) -> Prices:
    """Batch prices at 50%, for models whose Batch table publishes no cached-input price.

    qbq then bills cached tokens at the Batch input price: no cache discount is assumed, the
    upper bound of what the page allows.
    """
    half_input = prices[0] / 2
    return Prices(half_input, half_input, prices[2] / 2)


# Windows of 400,000 with 128,000 output: OpenAI states "Maximum input tokens: 272,000" on the
# gpt-5 family's pages (gpt-5-nano's page says so in those words). The 400k-window GPT-5.x models
# whose pages do not state it get the same 272,000 = 400,000 - 128,000, the conservative reading.
_IN_272K = 272_000
# 1.05M-window models: their pages give no separate input limit; window - max output.
_GPT54_WINDOW = 1_048_576  # gpt-5.4: 1,048,576 (model page as quoted in March 2026) vs 1,050,000
_GPT55_WINDOW = 1_000_000  # gpt-5.5: 1,000,000 vs 1,050,000 elsewhere; the smaller is used.
_GPT56_WINDOW = 1_050_000  # gpt-5.6 family: "1,050,000 context window" (gpt-5.6-luna's page).

_PRICES: dict[str, tuple[float, float, float]] = {
    # USD per 1M tokens: input, cached input, output (standard/sync).
    "gpt-4o": (2.50, 1.25, 10.00),
    "gpt-4o-mini": (0.15, 0.075, 0.60),
    "gpt-4.1": (2.00, 0.50, 8.00),
    "gpt-4.1-mini": (0.40, 0.10, 1.60),
    "gpt-4.1-nano": (0.10, 0.025, 0.40),
    "o3": (2.00, 0.50, 8.00),
    "o4-mini": (1.10, 0.275, 4.40),
    "gpt-5": (1.25, 0.125, 10.00),
    "gpt-5-mini": (0.25, 0.025, 2.00),
    "gpt-5-nano": (0.05, 0.005, 0.40),
    "gpt-5.1": (1.25, 0.125, 10.00),
    "gpt-5.2": (1.75, 0.175, 14.00),
    "gpt-5.4": (2.50, 0.25, 15.00),
    "gpt-5.4-mini": (0.75, 0.075, 4.50),
    "gpt-5.4-nano": (0.20, 0.02, 1.25),
    "gpt-5.5": (5.00, 0.50, 30.00),
    # GPT-5.6 prices as of their last changes: Sol cut to $4/$0.40/$20 on 2026-08-21, Terra
    # (-20%) and Luna (-80%) on 2026-07-30 (pricing page and changelog).
    "gpt-5.6-sol": (4.00, 0.40, 20.00),
    "gpt-5.6-terra": (2.00, 0.20, 12.00),
    "gpt-5.6-luna": (0.20, 0.02, 1.20),
}

_SPECS = (
    # --- GPT-4o and GPT-4.1: no reasoning, no flex (absent from the Flex table) -------------
    _spec("gpt-4o", window=128_000, max_output=16_384, image=_tile(85, 170),
          prices=_PRICES["gpt-4o"], batch=_half_uncached(_PRICES["gpt-4o"]), flex=None),
    _spec("gpt-4o-mini", window=128_000, max_output=16_384, image=_tile(2833, 5667),
          prices=_PRICES["gpt-4o-mini"], batch=_half_uncached(_PRICES["gpt-4o-mini"]),
          flex=None),
    _spec("gpt-4.1", window=1_047_576, max_output=32_768, image=_tile(85, 170),
          prices=_PRICES["gpt-4.1"], batch=_half_uncached(_PRICES["gpt-4.1"]), flex=None),
    # The late-2026 vision guide gives gpt-4.1-mini a 6,144-patch budget at every detail level
    # (the earlier guide said 1,536); the larger is used, so a plan never under-counts.
    _spec("gpt-4.1-mini", window=1_047_576, max_output=32_768, image=_patch(1.62, 6144),
          prices=_PRICES["gpt-4.1-mini"], batch=_half_uncached(_PRICES["gpt-4.1-mini"]),
          flex=None),
    _spec("gpt-4.1-nano", window=1_047_576, max_output=32_768, image=_patch(2.46, 1536),
          prices=_PRICES["gpt-4.1-nano"], batch=_half_uncached(_PRICES["gpt-4.1-nano"]),
          flex=None),
    # --- o-series: reasoning low/medium/high, default medium ----------------------------------
    _spec("o3", window=200_000, max_output=100_000, image=_tile(75, 150),
          prices=_PRICES["o3"], batch=_half_uncached(_PRICES["o3"]),
          flex=Prices(1.00, 0.25, 4.00), efforts=_O_SERIES, default_effort="medium",
          sources={"reasoning_efforts": SPEC_URL}),
    _spec("o4-mini", window=200_000, max_output=100_000, image=_patch(1.72, 1536),
          prices=_PRICES["o4-mini"], batch=_half_uncached(_PRICES["o4-mini"]),
          # The Flex table rounds o4-mini's cached input to $0.138.
          flex=Prices(0.55, 0.138, 2.20), efforts=_O_SERIES, default_effort="medium",
          sources={"reasoning_efforts": SPEC_URL}),
    # --- GPT-5 (August 2025): minimal/low/medium/high, default medium ------------------------
    _spec("gpt-5", window=400_000, max_input=_IN_272K, input_stated=True, max_output=128_000,
          image=_tile(70, 140), prices=_PRICES["gpt-5"], batch=_half(_PRICES["gpt-5"]),
          flex=_half(_PRICES["gpt-5"]), efforts=_GPT5, default_effort="medium",
          sources={"reasoning_efforts": SPEC_URL}),
    # gpt-5-mini's multiplier: the vision guide said 1.62 until mid-2026 while users measured
    # 1.20 from `usage`; the late-2026 guide lists 1.2, agreeing with the measurements: 1.2.
    _spec("gpt-5-mini", window=400_000, max_input=_IN_272K, input_stated=True, max_output=128_000,
          image=_patch(1.2, 1536), prices=_PRICES["gpt-5-mini"],
          batch=_half(_PRICES["gpt-5-mini"]), flex=_half(_PRICES["gpt-5-mini"]),
          efforts=_GPT5, default_effort="medium", sources={"reasoning_efforts": SPEC_URL}),
    # gpt-5-nano: 2.46 in the earlier guide, 1.5 measured and in the late-2026 guide: 1.5.
    _spec("gpt-5-nano", window=400_000, max_input=_IN_272K, input_stated=True, max_output=128_000,
          image=_patch(1.5, 1536), prices=_PRICES["gpt-5-nano"],
          batch=_half(_PRICES["gpt-5-nano"]), flex=_half(_PRICES["gpt-5-nano"]),
          efforts=_GPT5, default_effort="medium", sources={"reasoning_efforts": SPEC_URL}),
    # --- GPT-5.x ------------------------------------------------------------------------------
    _spec("gpt-5.1", window=400_000, max_input=_IN_272K, max_output=128_000,
          image=_tile(70, 140), prices=_PRICES["gpt-5.1"], batch=_half(_PRICES["gpt-5.1"]),
          flex=_half(_PRICES["gpt-5.1"]), efforts=_GPT51, default_effort="none",
          sources={"reasoning_efforts": SPEC_URL}),
    # gpt-5.2: 6,144-patch budget and x1.2 (late-2026 guide; the earlier one listed it among the
    # 1,536-patch models with no multiplier, and users measured 1.2).
    _spec("gpt-5.2", window=400_000, max_input=_IN_272K, max_output=128_000,
          image=_patch(1.2, 6144), prices=_PRICES["gpt-5.2"], batch=_half(_PRICES["gpt-5.2"]),
          flex=_half(_PRICES["gpt-5.2"]), efforts=_XHIGH, default_effort="none",
          sources={"reasoning_efforts": SPEC_URL}),
    _spec("gpt-5.4", window=_GPT54_WINDOW, max_input=_GPT54_WINDOW - 128_000,
          max_output=128_000, image=_patch(1.2, 2500), prices=_PRICES["gpt-5.4"],
          # The Batch and Flex tables round gpt-5.4's cached input to $0.13.
          batch=Prices(1.25, 0.13, 7.50), flex=Prices(1.25, 0.13, 7.50),
          efforts=_XHIGH, default_effort="none", long_context=272_000),
    # gpt-5.4-mini and -nano: users measured a 1,536-patch cap (at most 1,843 tokens); the guide
    # gives them the 2,500-patch budget of gpt-5.4. The larger budget is used (never
    # under-counts); `usage` corrects the spend.
    _spec("gpt-5.4-mini", window=400_000, max_input=_IN_272K, max_output=128_000,
          image=_patch(1.2, 2500), prices=_PRICES["gpt-5.4-mini"],
          batch=_half(_PRICES["gpt-5.4-mini"]), flex=_half(_PRICES["gpt-5.4-mini"]),
          efforts=_XHIGH, default_effort="none"),
    # "Reasoning.effort supports none (default), low, medium, high, xhigh" (gpt-5.4-nano page).
    _spec("gpt-5.4-nano", window=400_000, max_input=_IN_272K, max_output=128_000,
          image=_patch(1.2, 2500), prices=_PRICES["gpt-5.4-nano"],
          batch=_half(_PRICES["gpt-5.4-nano"]), flex=_half(_PRICES["gpt-5.4-nano"]),
          efforts=_XHIGH, default_effort="none"),
    # gpt-5.5 "defaults to medium reasoning effort" (reasoning guide).
    _spec("gpt-5.5", window=_GPT55_WINDOW, max_input=_GPT55_WINDOW - 128_000,
          max_output=128_000, image=_patch(1.2, 2500), prices=_PRICES["gpt-5.5"],
          batch=_half(_PRICES["gpt-5.5"]), flex=_half(_PRICES["gpt-5.5"]),
          efforts=_XHIGH, default_effort="medium", long_context=272_000,
          sources={"default_reasoning_effort": REASONING_URL}),
    # GPT-5.6: "Reasoning.effort supports: none, low, medium (default), high, xhigh, and max"
    # (gpt-5.6-luna's page; Sol and Terra are taken to match: "GPT-5.6 defaults to medium",
    # reasoning guide). Cache writes are billed at 1.25x the uncached input rate.
    _spec("gpt-5.6-sol", window=_GPT56_WINDOW, max_input=_GPT56_WINDOW - 128_000,
          max_output=128_000, image=_patch(1.2, 2500), prices=_PRICES["gpt-5.6-sol"],
          cache_write=5.00, batch=_half(_PRICES["gpt-5.6-sol"], 5.00),
          flex=_half(_PRICES["gpt-5.6-sol"], 5.00), efforts=_MAX, default_effort="medium",
          long_context=272_000, sources={"reasoning_efforts": _page("gpt-5.6-luna")}),
    _spec("gpt-5.6-terra", window=_GPT56_WINDOW, max_input=_GPT56_WINDOW - 128_000,
          max_output=128_000, image=_patch(1.2, 2500), prices=_PRICES["gpt-5.6-terra"],
          cache_write=2.50, batch=_half(_PRICES["gpt-5.6-terra"], 2.50),
          flex=_half(_PRICES["gpt-5.6-terra"], 2.50), efforts=_MAX, default_effort="medium",
          long_context=272_000, sources={"reasoning_efforts": _page("gpt-5.6-luna")}),
    _spec("gpt-5.6-luna", window=_GPT56_WINDOW, max_input=_GPT56_WINDOW - 128_000,
          max_output=128_000, image=_patch(1.2, 2500), prices=_PRICES["gpt-5.6-luna"],
          cache_write=0.25, batch=_half(_PRICES["gpt-5.6-luna"], 0.25),
          flex=_half(_PRICES["gpt-5.6-luna"], 0.25), efforts=_MAX, default_effort="medium",
          long_context=272_000),
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

    Limits given here (tokens) override the catalogue's; the input limit then stays within the
    new window (`ModelSpec.input_limit`). A model missing from the catalogue needs both limits;
    it then gets gpt-4o's image formula, unknown (zero) prices, no reasoning and sync mode only.
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
        image=MODELS["gpt-4o"].image,
        encoding="o200k_base",
        price_input_per_m=0.0,
        price_cached_input_per_m=0.0,
        price_output_per_m=0.0,
        price_known=False,
    )
