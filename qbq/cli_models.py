"""The `qbq models` command: the model catalogue as a table, or as JSON (see `register`)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from qbq.catalog import MODELS, ModelSpec, Prices
from qbq.terminal import stdout

__all__ = ["model_rows", "register"]


def _prices(p: Prices | None) -> dict[str, float | None] | None:
    if p is None:
        return None
    return {"input": p.input, "cached_input": p.cached_input, "output": p.output,
            "cache_write": p.cache_write}


def _row(spec: ModelSpec) -> dict[str, Any]:
    image = spec.image
    return {
        "name": spec.name,
        "context_window": spec.context_window,
        "max_input_tokens": spec.input_limit,
        "max_output_tokens": spec.max_output_tokens,
        "image": {"family": image.family, "base_tokens": image.base_tokens,
                  "tile_tokens": image.tile_tokens, "patch_multiplier": image.patch_multiplier,
                  "max_patches": image.max_patches, "max_dimension": image.max_dimension}
        if image.family == "patch" else
        {"family": image.family, "base_tokens": image.base_tokens,
         "tile_tokens": image.tile_tokens},
        "reasoning": spec.reasoning,
        "reasoning_efforts": list(spec.reasoning_efforts),
        "default_reasoning_effort": spec.default_reasoning_effort,
        "prices_per_1m_usd": {
            "sync": _prices(spec.prices("sync")),
            "batch": _prices(spec.batch_prices),
            "flex": _prices(spec.flex_prices),
        },
        "long_context": None if spec.long_context_threshold is None else {
            "over_input_tokens": spec.long_context_threshold,
            "input_factor": spec.long_context_input_factor,
            "output_factor": spec.long_context_output_factor,
        },
        "sources": dict(spec.sources),
    }


def model_rows() -> list[dict[str, Any]]:
    """Every catalogued model as a JSON-ready dict (tokens; USD per 1M tokens; source URLs)."""
    return [_row(spec) for spec in MODELS.values()]


def _money(value: float) -> str:
    return f"{value:g}"


def _triple(p: Prices | None) -> str:
    if p is None:
        return "-"
    return f"{_money(p.input)} / {_money(p.cached_input)} / {_money(p.output)}"


def _table() -> Table:
    table = Table(title="OpenAI models qbq knows (tokens; USD per 1M tokens: input / cached / "
                        "output)", title_justify="left")
    for column in ("model", "window", "max input", "max output", "image", "reasoning efforts",
                   "sync", "batch", "flex"):
        table.add_column(column, justify="right" if column in {"window", "max input",
                                                                  "max output"} else "left")
    for spec in MODELS.values():
        efforts = "-" if not spec.reasoning else ", ".join(
            f"[bold]{e}[/]" if e == spec.default_reasoning_effort else e
            for e in spec.reasoning_efforts)
        sync = _triple(spec.prices("sync"))
        if spec.price_cache_write_per_m is not None:
            sync += f" (+write {_money(spec.price_cache_write_per_m)})"
        if spec.long_context_threshold is not None:
            sync += f" (>{spec.long_context_threshold // 1000}k: x2 in, x1.5 out)"
        table.add_row(spec.name, f"{spec.context_window:,}", f"{spec.input_limit:,}",
                      f"{spec.max_output_tokens:,}", spec.image.describe(), efforts, sync,
                      _triple(spec.batch_prices), _triple(spec.flex_prices))
    return table


def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """List the models qbq knows: limits, image formula, reasoning efforts and prices.

    Default efforts are in bold. Every figure's source URL is in the --json output.
    """
    if as_json:
        sys.stdout.write(json.dumps(model_rows(), indent=2) + "\n")
        return
    stdout().print(_table())
    stdout().print("Sources: `qbq models --json` (per figure) and README 'Models'.",
                   highlight=False)


def register(app: typer.Typer) -> None:
    """Add the `models` command to the `qbq` app."""
    app.command()(models)
