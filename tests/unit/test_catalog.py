"""Tests of the model catalogue: known numbers, snapshot names, unknown models and costs."""

from __future__ import annotations

import pytest

from qbq.catalog import MODELS, ImageFormula, ModelSpec, Prices, get_model_spec
from qbq.errors import ConfigurationError, InputError, UnknownModelError

# name: (context window, max input, max output, image formula, input / cached / output USD per 1M)
EXPECTED = {
    "gpt-4o": (128_000, 128_000, 16_384, ImageFormula("tile", 85, 170), (2.50, 1.25, 10.0)),
    "gpt-4o-mini": (128_000, 128_000, 16_384, ImageFormula("tile", 2833, 5667),
                    (0.15, 0.075, 0.60)),
    "gpt-4.1": (1_047_576, 1_047_576, 32_768, ImageFormula("tile", 85, 170), (2.0, 0.50, 8.0)),
    "gpt-4.1-mini": (1_047_576, 1_047_576, 32_768,
                     ImageFormula("patch", patch_multiplier=1.62, max_patches=6144),
                     (0.40, 0.10, 1.60)),
    "gpt-4.1-nano": (1_047_576, 1_047_576, 32_768, ImageFormula("patch", patch_multiplier=2.46),
                     (0.10, 0.025, 0.40)),
    "o4-mini": (200_000, 200_000, 100_000, ImageFormula("patch", patch_multiplier=1.72),
                (1.10, 0.275, 4.40)),
    "o3": (200_000, 200_000, 100_000, ImageFormula("tile", 75, 150), (2.0, 0.50, 8.0)),
    "gpt-5": (400_000, 272_000, 128_000, ImageFormula("tile", 70, 140), (1.25, 0.125, 10.0)),
    "gpt-5-mini": (400_000, 272_000, 128_000, ImageFormula("patch", patch_multiplier=1.2),
                   (0.25, 0.025, 2.0)),
    "gpt-5-nano": (400_000, 272_000, 128_000, ImageFormula("patch", patch_multiplier=1.5),
                   (0.05, 0.005, 0.40)),
    "gpt-5.1": (400_000, 272_000, 128_000, ImageFormula("tile", 70, 140), (1.25, 0.125, 10.0)),
    "gpt-5.2": (400_000, 272_000, 128_000,
                ImageFormula("patch", patch_multiplier=1.2, max_patches=6144),
                (1.75, 0.175, 14.0)),
    "gpt-5.4": (1_048_576, 920_576, 128_000,
                ImageFormula("patch", patch_multiplier=1.2, max_patches=2500), (2.50, 0.25, 15.0)),
    "gpt-5.4-mini": (400_000, 272_000, 128_000,
                     ImageFormula("patch", patch_multiplier=1.2, max_patches=2500),
                     (0.75, 0.075, 4.50)),
    "gpt-5.4-nano": (400_000, 272_000, 128_000,
                     ImageFormula("patch", patch_multiplier=1.2, max_patches=2500),
                     (0.20, 0.02, 1.25)),
    "gpt-5.5": (1_000_000, 872_000, 128_000,
                ImageFormula("patch", patch_multiplier=1.2, max_patches=2500), (5.0, 0.50, 30.0)),
    "gpt-5.6-sol": (1_050_000, 922_000, 128_000,
                    ImageFormula("patch", patch_multiplier=1.2, max_patches=2500),
                    (4.0, 0.40, 20.0)),
    "gpt-5.6-terra": (1_050_000, 922_000, 128_000,
                      ImageFormula("patch", patch_multiplier=1.2, max_patches=2500),
                      (2.0, 0.20, 12.0)),
    "gpt-5.6-luna": (1_050_000, 922_000, 128_000,
                     ImageFormula("patch", patch_multiplier=1.2, max_patches=2500),
                     (0.20, 0.02, 1.20)),
}

# name: (accepted reasoning_effort values, default) — None for models that do not reason.
EFFORTS: dict[str, tuple[tuple[str, ...], str] | None] = {
    "gpt-4o": None, "gpt-4o-mini": None, "gpt-4.1": None, "gpt-4.1-mini": None,
    "gpt-4.1-nano": None,
    "o3": (("low", "medium", "high"), "medium"),
    "o4-mini": (("low", "medium", "high"), "medium"),
    "gpt-5": (("minimal", "low", "medium", "high"), "medium"),
    "gpt-5-mini": (("minimal", "low", "medium", "high"), "medium"),
    "gpt-5-nano": (("minimal", "low", "medium", "high"), "medium"),
    "gpt-5.1": (("none", "low", "medium", "high"), "none"),
    "gpt-5.2": (("none", "low", "medium", "high", "xhigh"), "none"),
    "gpt-5.4": (("none", "low", "medium", "high", "xhigh"), "none"),
    "gpt-5.4-mini": (("none", "low", "medium", "high", "xhigh"), "none"),
    "gpt-5.4-nano": (("none", "low", "medium", "high", "xhigh"), "none"),
    "gpt-5.5": (("none", "low", "medium", "high", "xhigh"), "medium"),
    "gpt-5.6-sol": (("none", "low", "medium", "high", "xhigh", "max"), "medium"),
    "gpt-5.6-terra": (("none", "low", "medium", "high", "xhigh", "max"), "medium"),
    "gpt-5.6-luna": (("none", "low", "medium", "high", "xhigh", "max"), "medium"),
}

#: Models absent from OpenAI's Flex table.
NO_FLEX = {"gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano"}

#: The values OpenAI's API spec enumerates for `reasoning_effort` (ReasoningEffort).
SPEC_EFFORTS = {"none", "minimal", "low", "medium", "high", "xhigh", "max"}


def test_the_catalogue_holds_exactly_the_expected_models() -> None:
    assert set(MODELS) == set(EXPECTED) == set(EFFORTS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_known_model_numbers(name: str) -> None:
    context_window, max_input, max_output, image, prices = EXPECTED[name]
    spec = get_model_spec(name)
    assert spec == MODELS[name]
    assert spec.name == name
    assert (spec.context_window, spec.input_limit, spec.max_output_tokens) == (
        context_window, max_input, max_output)
    assert spec.image == image
    assert spec.image.max_dimension == 2048
    assert spec.encoding == "o200k_base"
    assert (spec.price_input_per_m, spec.price_cached_input_per_m, spec.price_output_per_m) == prices
    assert spec.price_known


@pytest.mark.parametrize("name", sorted(EFFORTS))
def test_reasoning_efforts(name: str) -> None:
    spec = MODELS[name]
    expected = EFFORTS[name]
    if expected is None:
        assert not spec.reasoning
        assert spec.reasoning_efforts == ()
        assert spec.default_reasoning_effort is None
    else:
        assert spec.reasoning
        assert (spec.reasoning_efforts, spec.default_reasoning_effort) == expected


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_catalogue_invariants(name: str) -> None:
    """Every model carries every figure, consistent with the others and with a source."""
    spec = MODELS[name]
    assert 0 < spec.max_output_tokens < spec.context_window
    assert 0 < spec.input_limit <= spec.context_window
    # A request holding the whole input limit still leaves room for some output.
    assert spec.input_limit + 1 <= spec.context_window or spec.max_input_tokens == 0
    assert set(spec.reasoning_efforts) <= SPEC_EFFORTS
    assert len(set(spec.reasoning_efforts)) == len(spec.reasoning_efforts)
    assert spec.reasoning == bool(spec.reasoning_efforts)
    if spec.reasoning:
        assert spec.default_reasoning_effort in spec.reasoning_efforts
    for mode in spec.modes:
        p = spec.prices(mode)
        assert p.input > 0 and p.output > 0 and p.cached_input > 0
        assert p.cached_input <= p.input
        assert p.output >= p.input
        if p.cache_write is not None:
            assert p.cache_write == pytest.approx(1.25 * p.input)
    sync = spec.prices("sync")
    # The Batch API is half price, input and output, for every catalogued model.
    assert spec.batch_prices is not None
    assert spec.batch_prices.input == pytest.approx(sync.input / 2)
    assert spec.batch_prices.output == pytest.approx(sync.output / 2)
    # Flex: "Tokens are priced at Batch API rates" (flex guide), where offered at all.
    assert (spec.flex_prices is None) == (name in NO_FLEX)
    if spec.flex_prices is not None:
        assert spec.flex_prices.input == spec.batch_prices.input
        assert spec.flex_prices.output == spec.batch_prices.output
    figures = dict(spec.sources)
    for figure in ("context_window", "max_output_tokens", "max_input_tokens", "image", "prices",
                   "batch_prices", "flex_prices", "reasoning_efforts"):
        assert figure in figures, figure
    urls = [v for k, v in figures.items() if k != "max_input_tokens"]
    assert all(u.startswith(("https://developers.openai.com/", "https://github.com/openai/"))
               for u in urls), urls


def test_long_context_tier_only_on_million_token_models() -> None:
    for spec in MODELS.values():
        if spec.context_window > 400_000 and spec.name.startswith("gpt-5"):
            assert spec.long_context_threshold == 272_000
            assert (spec.long_context_input_factor, spec.long_context_output_factor) == (2.0, 1.5)
        else:
            assert spec.long_context_threshold is None


def test_models_is_read_only() -> None:
    with pytest.raises(TypeError):
        MODELS["gpt-4o"] = MODELS["gpt-4.1"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("snapshot", "base"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("o4-mini-2025-04-16", "o4-mini"),
        ("gpt-5-2025-08-07", "gpt-5"),
    ],
)
def test_snapshot_names_resolve_to_their_base(snapshot: str, base: str) -> None:
    spec = get_model_spec(snapshot)
    base_spec = MODELS[base]
    # The requested name is kept so requests and reports name the exact snapshot.
    assert spec.name == snapshot
    assert spec == ModelSpec(**{**base_spec.__dict__, "name": snapshot})


@pytest.mark.parametrize("name", ["gpt-4o-latest-ish", "gpt-4o-2024-08", "my-local-model", ""])
def test_unknown_model_raises_naming_it(name: str) -> None:
    with pytest.raises(UnknownModelError) as info:
        get_model_spec(name)
    message = str(info.value)
    assert repr(name) in message
    assert "gpt-4.1-mini" in message  # lists the known models
    assert "QBQ_MODEL_CONTEXT_WINDOW" in message
    assert "QBQ_MODEL_MAX_OUTPUT_TOKENS" in message
    assert isinstance(info.value, InputError)


@pytest.mark.parametrize(
    ("context_window", "max_output_tokens"), [(100_000, None), (None, 4096), (None, None)]
)
def test_unknown_model_needs_both_limits(
    context_window: int | None, max_output_tokens: int | None
) -> None:
    with pytest.raises(UnknownModelError):
        get_model_spec(
            "future-model", context_window=context_window, max_output_tokens=max_output_tokens
        )


def test_unknown_model_with_limits() -> None:
    spec = get_model_spec("future-model", context_window=64_000, max_output_tokens=4096)
    assert spec.name == "future-model"
    assert (spec.context_window, spec.max_output_tokens) == (64_000, 4096)
    assert spec.image == MODELS["gpt-4o"].image
    assert spec.encoding == "o200k_base"
    assert not spec.price_known
    assert spec.cost_usd(1000, 0, 1000) == 0.0


def test_given_limits_override_a_known_model() -> None:
    spec = get_model_spec("gpt-4.1-mini", context_window=50_000)
    assert spec.context_window == 50_000
    assert spec.max_output_tokens == 32_768
    spec = get_model_spec("gpt-4o-2024-08-06", context_window=1000, max_output_tokens=500)
    assert (spec.context_window, spec.max_output_tokens) == (1000, 500)
    assert spec.price_input_per_m == 2.50
    # The catalogue itself is untouched.
    assert MODELS["gpt-4.1-mini"].context_window == 1_047_576


@pytest.mark.parametrize(("context_window", "max_output_tokens"), [(0, 10), (10, -1)])
def test_non_positive_limits_are_a_configuration_error(
    context_window: int, max_output_tokens: int
) -> None:
    with pytest.raises(ConfigurationError):
        get_model_spec("gpt-4o", context_window=context_window, max_output_tokens=max_output_tokens)


def test_cost_usd_arithmetic() -> None:
    spec = MODELS["gpt-4o"]
    # 800k uncached × $2.50 + 200k cached × $1.25 + 100k output × $10, per million.
    assert spec.cost_usd(1_000_000, 200_000, 100_000) == pytest.approx(2.0 + 0.25 + 1.0)
    assert spec.cost_usd(0, 0, 0) == 0.0
    mini = MODELS["gpt-4.1-mini"]
    assert mini.cost_usd(12_345, 0, 678) == pytest.approx((12_345 * 0.40 + 678 * 1.60) / 1e6)
    assert mini.cost_usd(12_345, 12_345, 0) == pytest.approx(12_345 * 0.10 / 1e6)


@pytest.mark.parametrize(("prompt", "cached", "completion"), [(10, 11, 0), (-1, 0, 0), (5, 0, -2)])
def test_cost_usd_rejects_impossible_counts(prompt: int, cached: int, completion: int) -> None:
    with pytest.raises(ValueError):
        MODELS["gpt-4o"].cost_usd(prompt, cached, completion)


# --- prices by mode ----------------------------------------------------------------------------


def test_cost_by_mode_halves_batch_and_flex() -> None:
    spec = MODELS["gpt-5-mini"]
    sync = spec.cost_usd_in_mode("sync", 100_000, 20_000, 10_000)
    # 80k × $0.25 + 20k × $0.025 + 10k × $2, per million.
    assert sync == pytest.approx((80_000 * 0.25 + 20_000 * 0.025 + 10_000 * 2.0) / 1e6)
    assert sync == spec.cost_usd(100_000, 20_000, 10_000)
    assert spec.cost_usd_in_mode("batch", 100_000, 20_000, 10_000) == pytest.approx(sync / 2)
    assert spec.cost_usd_in_mode("flex", 100_000, 20_000, 10_000) == pytest.approx(sync / 2)


def test_batch_cached_input_without_a_published_price_gets_no_discount() -> None:
    spec = MODELS["gpt-4.1"]
    assert spec.prices("batch") == Prices(1.0, 1.0, 4.0)
    assert spec.cost_usd_in_mode("batch", 1_000_000, 1_000_000, 0) == pytest.approx(1.0)


def test_a_mode_the_model_lacks_is_a_configuration_error_naming_the_setting() -> None:
    with pytest.raises(ConfigurationError, match=r"QBQ_MODE=flex: gpt-4o .*sync, batch"):
        MODELS["gpt-4o"].prices("flex")
    unknown = get_model_spec("future-model", context_window=64_000, max_output_tokens=4096)
    assert unknown.modes == ("sync",)


def test_long_context_prompts_are_billed_at_the_higher_rate_for_the_whole_request() -> None:
    spec = MODELS["gpt-5.4"]
    at = spec.cost_usd(272_000, 0, 1_000)
    over = spec.cost_usd(272_001, 0, 1_000)
    assert at == pytest.approx((272_000 * 2.5 + 1_000 * 15) / 1e6)
    assert over == pytest.approx((272_001 * 5.0 + 1_000 * 22.5) / 1e6)


def test_cache_writes_are_billed_at_their_own_price() -> None:
    spec = MODELS["gpt-5.6-luna"]
    cost = spec.cost_usd_in_mode("sync", 10_000, 2_000, 0, cache_write_tokens=4_000)
    assert cost == pytest.approx((4_000 * 0.20 + 2_000 * 0.02 + 4_000 * 0.25) / 1e6)
    # Models without a cache-write price bill those tokens as ordinary input.
    plain = MODELS["gpt-5-mini"].cost_usd_in_mode("sync", 10_000, 0, 0, cache_write_tokens=4_000)
    assert plain == pytest.approx(10_000 * 0.25 / 1e6)
    with pytest.raises(ValueError):
        spec.cost_usd_in_mode("sync", 10, 6, 0, cache_write_tokens=5)


# --- reasoning effort --------------------------------------------------------------------------


def test_reasoning_effort_defaults_to_the_models_default() -> None:
    assert MODELS["gpt-5-mini"].validate_reasoning_effort(None, "QBQ_REASONING_EFFORT") == "medium"
    assert MODELS["gpt-5.4-mini"].validate_reasoning_effort(None, "QBQ_REASONING_EFFORT") == "none"
    assert MODELS["gpt-4.1-mini"].validate_reasoning_effort(None, "QBQ_REASONING_EFFORT") is None
    assert MODELS["o3"].validate_reasoning_effort("high", "QBQ_REASONING_EFFORT") == "high"


@pytest.mark.parametrize(("model", "effort", "match"), [
    ("gpt-5-mini", "none", r"QBQ_REASONING_EFFORT='none' is not accepted by gpt-5-mini "
                           r"\(it accepts: minimal, low, medium, high; default medium\)"),
    ("o4-mini", "minimal", r"QBQ_REASONING_EFFORT='minimal' is not accepted by o4-mini"),
    ("gpt-5.4-nano", "max", r"not accepted by gpt-5.4-nano"),
    ("gpt-4o", "low", r"QBQ_REASONING_EFFORT='low': gpt-4o is not a reasoning model"),
])
def test_an_effort_the_model_refuses_is_a_configuration_error(model: str, effort: str,
                                                              match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        MODELS[model].validate_reasoning_effort(effort, "QBQ_REASONING_EFFORT")


def test_input_limit_stays_within_an_overridden_window() -> None:
    spec = get_model_spec("gpt-5-mini", context_window=40_000)
    assert spec.max_input_tokens == 272_000
    assert spec.input_limit == 40_000


def test_specs_pickle_and_hash() -> None:
    import pickle

    for spec in MODELS.values():
        assert pickle.loads(pickle.dumps(spec)) == spec
        hash(spec)
