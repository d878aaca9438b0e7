"""Tests of `qbq models`: the table and the JSON carry every catalogued model and figure."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from qbq.catalog import MODELS
from qbq.cli import app


def test_models_json_lists_every_model_with_figures_and_sources() -> None:
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert set(rows) == set(MODELS)
    mini = rows["gpt-5-mini"]
    assert (mini["context_window"], mini["max_input_tokens"], mini["max_output_tokens"]) == (
        400_000, 272_000, 128_000)
    assert mini["image"] == {"family": "patch", "base_tokens": 0, "tile_tokens": 0,
                             "patch_multiplier": 1.2, "max_patches": 1536, "max_dimension": 2048}
    assert mini["reasoning_efforts"] == ["minimal", "low", "medium", "high"]
    assert mini["default_reasoning_effort"] == "medium"
    assert mini["prices_per_1m_usd"]["batch"]["input"] == 0.125
    assert rows["gpt-4o"]["prices_per_1m_usd"]["flex"] is None
    assert rows["gpt-5.4"]["long_context"] == {"over_input_tokens": 272_000, "input_factor": 2.0,
                                               "output_factor": 1.5}
    assert all(row["sources"]["prices"].startswith("https://developers.openai.com/")
               for row in rows.values())


def test_models_table_names_every_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # the console is made when the command prints
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    for name in MODELS:
        assert name in result.output
    assert "272,000" in result.output
