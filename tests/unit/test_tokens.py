"""Tests of offline token accounting: tiktoken cache seeding, image formulas, chat prompts."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qbq import tokens
from qbq.catalog import MODELS, get_model_spec
from qbq.errors import ConfigurationError, ImageError
from qbq.tokens import (
    MESSAGE_OVERHEAD,
    REPLY_PRIMING,
    Detail,
    chat_prompt_tokens,
    completion_tokens,
    ensure_tiktoken_offline,
    get_encoding,
    image_tokens,
    schema_tokens,
    text_tokens,
    tiktoken_cache_key,
)

HELLO_WORLD_O200K = [24912, 2375]
HELLO_WORLD_CL100K = [15339, 1917]


@pytest.fixture(autouse=True, scope="module")
def _tiktoken_cache_outside_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Keep the seeded cache out of the real home when nothing else chose a folder.
    with pytest.MonkeyPatch.context() as mp:
        if not os.environ.get("TIKTOKEN_CACHE_DIR"):
            mp.setenv("QBQ_TIKTOKEN_CACHE_DIR", str(tmp_path_factory.mktemp("tiktoken")))
        yield


# --- offline tiktoken ---------------------------------------------------------------------------

# Runs in a fresh interpreter so neither tiktoken nor qbq has anything loaded or cached. Any
# attempt to download or open a socket fails loudly.
_OFFLINE_SCRIPT = """
import json, os, socket, sys
import tiktoken.load

def no_download(path):
    raise AssertionError(f"tiktoken tried to download {path}")

def no_socket(*args, **kwargs):
    raise AssertionError("network access attempted")

tiktoken.load.read_file = no_download
socket.socket.connect = no_socket
socket.create_connection = no_socket

from qbq.tokens import ensure_tiktoken_offline, get_encoding, text_tokens

cache_dir = ensure_tiktoken_offline()
again = ensure_tiktoken_offline()
print(json.dumps({
    "cache_dir": str(cache_dir),
    "again": str(again),
    "env": os.environ["TIKTOKEN_CACHE_DIR"],
    "o200k": get_encoding("o200k_base").encode("hello world"),
    "cl100k": get_encoding("cl100k_base").encode("hello world"),
    "count": text_tokens("hello world"),
    "files": sorted(os.listdir(cache_dir)),
}))
"""


def _run_offline(env_updates: dict[str, str]) -> dict[str, Any]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR", "QBQ_TIKTOKEN_CACHE_DIR"}
    }
    env.update(env_updates)
    done = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _expected_files() -> list[str]:
    return sorted(tiktoken_cache_key(name) for name in ("o200k_base", "cl100k_base"))


def test_offline_with_fresh_empty_cache(tmp_path: Path) -> None:
    cache = tmp_path / "qbq-tiktoken"
    result = _run_offline({"HOME": str(tmp_path / "home"), "QBQ_TIKTOKEN_CACHE_DIR": str(cache)})
    assert result["cache_dir"] == result["again"] == result["env"] == str(cache)
    assert result["o200k"] == HELLO_WORLD_O200K
    assert result["cl100k"] == HELLO_WORLD_CL100K
    assert result["count"] == 2
    assert result["files"] == _expected_files()


def test_offline_default_folder_is_under_home(tmp_path: Path) -> None:
    result = _run_offline({"HOME": str(tmp_path)})
    assert result["cache_dir"] == str(tmp_path / ".cache" / "qbq" / "tiktoken")
    assert result["o200k"] == HELLO_WORLD_O200K


def test_an_existing_tiktoken_cache_dir_is_kept_and_seeded(tmp_path: Path) -> None:
    chosen = tmp_path / "chosen"
    result = _run_offline({"HOME": str(tmp_path), "TIKTOKEN_CACHE_DIR": str(chosen)})
    assert result["cache_dir"] == str(chosen)
    assert result["files"] == _expected_files()
    assert not (tmp_path / ".cache").exists()


def test_a_corrupted_cache_file_is_replaced(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {"HOME": str(tmp_path), "QBQ_TIKTOKEN_CACHE_DIR": str(cache)}
    _run_offline(env)
    o200k_file = cache / tiktoken_cache_key("o200k_base")
    good = o200k_file.read_bytes()
    o200k_file.write_bytes(good[:-100] + b"corrupted")
    # Left alone, tiktoken would notice the bad hash and download; the script forbids that.
    result = _run_offline(env)
    assert result["o200k"] == HELLO_WORLD_O200K
    assert o200k_file.read_bytes() == good


def test_a_bad_bundled_file_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokens, "_bundled_encoding_bytes", lambda encoding: b"not a vocabulary")
    with pytest.raises(ConfigurationError, match="sha256"):
        tokens._seed(tmp_path, "o200k_base")
    assert not any(tmp_path.iterdir())


def test_file_names_and_hashes_match_installed_tiktoken() -> None:
    source = inspect.getsource(importlib.import_module("tiktoken_ext.openai_public"))
    for url, expected_hash in tokens._ENCODING_FILES.values():
        assert url in source
        assert expected_hash in source
    assert (
        tiktoken_cache_key("o200k_base")
        == hashlib.sha1(
            b"https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
        ).hexdigest()
    )


def test_ensure_is_thread_safe_and_seeds_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tokens, "_seeded_dirs", set())
    seeded: list[str] = []
    real_seed = tokens._seed

    def counting_seed(cache_dir: Path, encoding: str) -> None:
        seeded.append(encoding)
        real_seed(cache_dir, encoding)

    monkeypatch.setattr(tokens, "_seed", counting_seed)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_tiktoken_offline())) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [tmp_path] * 8
    assert sorted(seeded) == ["cl100k_base", "o200k_base"]
    assert sorted(p.name for p in tmp_path.iterdir()) == _expected_files()


def test_unbundled_encoding_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="r50k_base"):
        get_encoding("r50k_base")


# --- text ---------------------------------------------------------------------------------------


def test_text_tokens() -> None:
    assert text_tokens("hello world") == 2
    assert text_tokens("hello world", "cl100k_base") == 2
    assert text_tokens("") == 0
    assert completion_tokens("hello world") == 2
    long_text = "The mitochondria is the powerhouse of the cell. " * 500
    assert text_tokens(long_text) == len(get_encoding("o200k_base").encode(long_text))


def test_special_token_text_is_counted_as_plain_text() -> None:
    # Student answers are untrusted; "<|endoftext|>" must neither raise nor count as 1 token.
    assert text_tokens("<|endoftext|>") > 1


# --- images -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "width", "height", "detail", "expected"),
    [
        # OpenAI's published examples.
        ("gpt-4o", 1024, 1024, "high", 765),
        ("gpt-4o", 2048, 4096, "high", 1105),
        ("gpt-4o", 4096, 8192, "low", 85),
        ("gpt-4o-mini", 1024, 1024, "high", 2833 + 5667 * 4),
        # Small images are not enlarged: one tile.
        ("gpt-4o", 512, 512, "high", 85 + 170),
        ("gpt-4o", 100, 50, "high", 85 + 170),
        ("gpt-4o", 513, 512, "high", 85 + 170 * 2),
        # auto is priced as high.
        ("gpt-4o", 1024, 1024, "auto", 765),
        ("gpt-4o-mini", 1024, 1024, "low", 2833),
        ("o3", 1024, 1024, "high", 75 + 150 * 4),
        ("gpt-5", 1024, 1024, "low", 70),
        # A4 scan at 150 dpi: 1240×1754 → 768×1086 → 2×3 tiles.
        ("gpt-4.1", 1240, 1754, "high", 85 + 170 * 6),
    ],
)
def test_tile_formula(model: str, width: int, height: int, detail: Detail, expected: int) -> None:
    assert image_tokens(get_model_spec(model), width, height, detail) == expected


@pytest.mark.parametrize(
    ("width", "height", "patches"),
    [
        # OpenAI's worked examples for a 1,536-patch budget (vision guide, "Calculating costs").
        (1024, 1024, 1024),
        (1800, 2400, 1452),
        # Small and exact-fit images.
        (32, 32, 1),
        (33, 32, 2),
        (1024, 1536, 1536),
    ],
)
@pytest.mark.parametrize("model", ["gpt-4.1-nano", "o4-mini", "gpt-5-mini", "gpt-5-nano"])
def test_patch_formula(model: str, width: int, height: int, patches: int) -> None:
    spec = get_model_spec(model)
    assert spec.image.max_patches == 1536
    assert tokens._patch_count(width, height, 1536, 2048) == patches
    expected = math.ceil(round(patches * spec.image.patch_multiplier, 6))
    details: tuple[Detail, ...] = ("low", "high", "auto")
    for detail in details:
        # Patch models are priced at their detail=high sizing.
        assert image_tokens(spec, width, height, detail) == expected


@pytest.mark.parametrize("model", ["gpt-5.4", "gpt-5.4-mini", "gpt-5.5", "gpt-5.6-luna"])
def test_patch_formula_2500_budget_worked_examples(model: str) -> None:
    """The guide's gpt-5.4 detail=high examples: 2,048-px sides, 2,500 patches, x1.2."""
    spec = get_model_spec(model)
    assert image_tokens(spec, 1024, 1024) == 1229  # ceil(1024 × 1.2)
    assert tokens._patch_count(2048, 2048, 2500, 2048) == 2500  # shrunk to 1600 × 1600
    assert image_tokens(spec, 2048, 2048) == 3000


def test_patch_models_fit_the_longer_side_within_2048_px_first() -> None:
    # 4000 × 500 covers 125 × 16 = 2,000 patches, under a 6,144 budget, but the image is first
    # fitted to 2048 × 256: 64 × 8 = 512 patches.
    assert tokens._patch_count(4000, 500, 6144, 2048) == 512
    # gpt-4.1-mini's 6,144-patch budget: an A4 scan at 200 dpi (1654 × 2339) is fitted to
    # 1448 × 2048 = 46 × 64 = 2,944 patches, not shrunk to 1,536.
    assert tokens._patch_count(1654, 2339, 6144, 2048) == 46 * 64


def test_patch_multiplier_values() -> None:
    assert image_tokens(get_model_spec("gpt-4.1-mini"), 1024, 1024) == 1659  # 1024 × 1.62
    # 1800 × 2400 → 1536 × 2048 → 3,072 patches (under 6,144) × 1.62 = 4976.64.
    assert image_tokens(get_model_spec("gpt-4.1-mini"), 1800, 2400) == 4977
    assert image_tokens(get_model_spec("gpt-4.1-nano"), 1024, 1024) == 2520  # 1024 × 2.46 = 2519.04
    assert image_tokens(get_model_spec("gpt-4.1-nano"), 1800, 2400) == 3572  # 1452 × 2.46
    assert image_tokens(get_model_spec("gpt-5-mini"), 1024, 1024) == 1229  # 1024 × 1.2
    assert image_tokens(get_model_spec("gpt-5-nano"), 1024, 1024) == 1536  # 1024 × 1.5
    # 100 × 1.72 is 172.00000000000003 in floats; it must stay 172.
    assert image_tokens(get_model_spec("o4-mini"), 320, 320) == 172


@pytest.mark.parametrize(("width", "height"), [(0, 10), (10, 0), (-5, 5)])
def test_non_positive_image_size_is_an_image_error(width: int, height: int) -> None:
    with pytest.raises(ImageError):
        image_tokens(MODELS["gpt-4o"], width, height)


@given(
    model=st.sampled_from(sorted(MODELS)),
    width=st.integers(1, 12_000),
    height=st.integers(1, 12_000),
)
def test_image_tokens_positive_and_low_at_most_high(model: str, width: int, height: int) -> None:
    spec = MODELS[model]
    low = image_tokens(spec, width, height, "low")
    high = image_tokens(spec, width, height, "high")
    assert 0 < low <= high
    assert image_tokens(spec, width, height, "auto") == high


@given(width=st.integers(1, 20_000), height=st.integers(1, 20_000),
       budget=st.sampled_from([1536, 2500, 6144]))
def test_patch_count_never_exceeds_the_cap(width: int, height: int, budget: int) -> None:
    assert 1 <= tokens._patch_count(width, height, budget, 2048) <= budget


def test_ten_thousand_students_plan_fast() -> None:
    spec = MODELS["gpt-4.1-mini"]
    tile_spec = MODELS["gpt-4o"]
    text_tokens("warm up the encoder")
    start = time.perf_counter()
    total = 0
    for student in range(10_000):
        total += text_tokens(f"Student S{student:05d}")
        for page in range(4):
            # Scans vary by a few pixels, so the cache sees many distinct sizes.
            width, height = 1240 + (student + page) % 50, 1754 + student % 30
            total += image_tokens(spec, width, height, "high")
            total += image_tokens(tile_spec, width, height, "high")
    assert total > 0
    assert time.perf_counter() - start < 2.0


# --- chat prompts -------------------------------------------------------------------------------

_DIMS = {"img://a1": (1240, 1754), "img://b1": (1024, 1024), "img://b2": (512, 512)}
_RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {
        "name": "grades",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"students": {"type": "array", "items": {"type": "string"}}},
            "required": ["students"],
            "additionalProperties": False,
        },
    },
}


def _student_parts(ref: str, answer: str, urls: list[str]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": f"Student {ref}: {answer}"}]
    parts += [{"type": "image_url", "image_url": {"url": u, "detail": "high"}} for u in urls]
    return parts


def _messages(students: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    user_parts: list[dict[str, Any]] = [{"type": "text", "text": "Grade question 3."}]
    for parts in students:
        user_parts += parts
    return [
        {"role": "system", "content": "You are a careful examiner."},
        {"role": "user", "content": user_parts},
    ]


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4.1-mini"])
def test_chat_prompt_tokens_is_additive_over_students(model: str) -> None:
    spec = MODELS[model]
    dims = _DIMS.__getitem__
    a = _student_parts("A", "photosynthesis", ["img://a1"])
    b = _student_parts("B", "respiration <|endoftext|>", ["img://b1", "img://b2"])
    base = chat_prompt_tokens(spec, _messages([]), _RESPONSE_FORMAT, dims)
    with_a = chat_prompt_tokens(spec, _messages([a]), _RESPONSE_FORMAT, dims)
    both = chat_prompt_tokens(spec, _messages([a, b]), _RESPONSE_FORMAT, dims)

    def piece(parts: list[dict[str, Any]]) -> int:
        return chat_prompt_tokens(spec, [{"role": "user", "content": parts}], None, dims) - (
            REPLY_PRIMING + MESSAGE_OVERHEAD + text_tokens("user")
        )

    assert with_a == base + piece(a)
    assert both == base + piece(a) + piece(b)
    assert piece(b) == (
        text_tokens("Student B: respiration <|endoftext|>")
        + image_tokens(spec, 1024, 1024, "high")
        + image_tokens(spec, 512, 512, "high")
    )


def test_chat_prompt_tokens_exact_composition() -> None:
    spec = MODELS["gpt-4o"]
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be strict."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Question 1"},
                {"type": "image_url", "image_url": {"url": "img://b1"}},  # detail defaults to auto
            ],
        },
    ]
    schema = _RESPONSE_FORMAT["json_schema"]["schema"]
    expected = (
        REPLY_PRIMING
        + MESSAGE_OVERHEAD
        + text_tokens("system")
        + text_tokens("Be strict.")
        + MESSAGE_OVERHEAD
        + text_tokens("user")
        + text_tokens("Question 1")
        + 765
        + text_tokens(json.dumps(schema, separators=(",", ":")))
        + text_tokens("grades")
    )
    assert chat_prompt_tokens(spec, messages, _RESPONSE_FORMAT, _DIMS.__getitem__) == expected
    assert schema_tokens(schema) == text_tokens(json.dumps(schema, separators=(",", ":")))
    without_schema = chat_prompt_tokens(spec, messages, None, _DIMS.__getitem__)
    assert expected - without_schema == schema_tokens(schema) + text_tokens("grades")
    plain_json = chat_prompt_tokens(spec, messages, {"type": "json_object"}, _DIMS.__getitem__)
    assert plain_json == without_schema


def test_chat_prompt_tokens_rejects_unknown_parts() -> None:
    messages = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]
    with pytest.raises(ValueError, match="input_audio"):
        chat_prompt_tokens(MODELS["gpt-4o"], messages, None, _DIMS.__getitem__)
