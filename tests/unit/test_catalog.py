"""Tests of the model catalogue: known numbers, snapshot names, unknown models and costs."""

from __future__ import annotations

import pytest

from qbq.catalog import MODELS, ImageFormula, ModelSpec, get_model_spec
from qbq.errors import ConfigurationError, InputError, UnknownModelError

# name: (context window, max output, image formula, input / cached input / output USD per 1M)
EXPECTED = {
    "gpt-4o": (128_000, 16_384, ImageFormula("tile", 85, 170), (2.50, 1.25, 10.0)),
    "gpt-4o-mini": (128_000, 16_384, ImageFormula("tile", 2833, 5667), (0.15, 0.075, 0.60)),
    "gpt-4.1": (1_047_576, 32_768, ImageFormula("tile", 85, 170), (2.0, 0.50, 8.0)),
    "gpt-4.1-mini": (
        1_047_576,
        32_768,
        ImageFormula("patch", patch_multiplier=1.62),
        (0.40, 0.10, 1.60),
    ),
    "gpt-4.1-nano": (
        1_047_576,
        32_768,
        ImageFormula("patch", patch_multiplier=2.46),
        (0.10, 0.025, 0.40),
    ),
    "o4-mini": (
        200_000,
        100_000,
        ImageFormula("patch", patch_multiplier=1.72),
        (1.10, 0.275, 4.40),
    ),
    "o3": (200_000, 100_000, ImageFormula("tile", 75, 150), (2.0, 0.50, 8.0)),
    "gpt-5-mini": (
        400_000,
        128_000,
        ImageFormula("patch", patch_multiplier=1.62),
        (0.25, 0.025, 2.0),
    ),
    "gpt-5": (400_000, 128_000, ImageFormula("tile", 70, 140), (1.25, 0.125, 10.0)),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_known_model_numbers(name: str) -> None:
    context_window, max_output, image, prices = EXPECTED[name]
    spec = get_model_spec(name)
    assert spec is MODELS[name] or spec == MODELS[name]
    assert spec.name == name
    assert (spec.context_window, spec.max_output_tokens) == (context_window, max_output)
    assert spec.image == image
    assert spec.image.max_patches == 1536
    assert spec.encoding == "o200k_base"
    assert (
        spec.price_input_per_m,
        spec.price_cached_input_per_m,
        spec.price_output_per_m,
    ) == prices
    assert spec.price_known


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
