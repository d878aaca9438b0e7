"""OpenAI's prompt caching, emulated: identical prompt prefixes of 1,024+ tokens are cached.

The rules (https://platform.openai.com/docs/guides/prompt-caching):

- Caching applies to prompts of 1,024 tokens or more; a hit covers the longest previously
  seen identical prefix, reported in `usage.prompt_tokens_details.cached_tokens` in
  128-token increments (1,024, 1,152, 1,280, ...).
- Requests are routed by a hash of the prompt's first ~256 tokens combined with
  `prompt_cache_key`; caches are not shared between organizations. The simulator keeps one
  cache per (API key, model, prompt_cache_key): the same prefix under another key, or
  without the key it was cached with, is a miss. (OpenAI may still hit by luck there, and may
  miss above ~15 requests per minute per prefix and key; the simulator does neither.)
- "The structured output schema serves as a prefix to the system message", and messages,
  images (links or base64, with the same `detail`) and tools must be identical.
- In-memory retention: cleared after 5-10 minutes of inactivity (always within an hour);
  `prompt_cache_retention: "24h"` keeps prefixes up to 24 hours. Retention here is a
  setting, in simulated seconds since the prefix was last used.

The token order of the emulated prefix: the schema (`response_format` name then schema as
compact JSON), then each message in order (its role and framing, then its parts: text tokens,
or one image as a block of its tokens identified by its bytes and `detail`), then the reply
priming. An image is identified by its content, not its URL: a re-signed link to the same
bytes still hits (OpenAI's documentation does not say; the simulator assumes the cache holds
the image's tokens). Tools are not emulated: qbq sends none.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qbq.catalog import ModelSpec
from qbq.simulator.images import LoadedImage
from qbq.simulator.validation import SimAPIError
from qbq.tokens import MESSAGE_OVERHEAD, REPLY_PRIMING, get_encoding, image_tokens, text_tokens

__all__ = [
    "CACHE_STEP",
    "MIN_CACHED_PROMPT",
    "RETENTIONS",
    "PrefixKeys",
    "PromptCache",
    "check_cache_params",
    "namespace_of",
    "prefix_keys",
]

MIN_CACHED_PROMPT = 1_024
CACHE_STEP = 128
RETENTIONS: tuple[str, ...] = ("in_memory", "24h")
#: Most checkpoints kept (oldest dropped first); a bound on the simulator's memory.
MAX_ENTRIES = 2_000_000


@dataclass(frozen=True)
class PrefixKeys:
    """Checkpoints of one prompt: (prefix length in tokens, digest of that prefix).

    One checkpoint per 128 tokens from 1,024 on; `namespace` keys the cache the prompt is
    looked up in (API key, model, prompt_cache_key).
    """

    namespace: bytes
    checkpoints: tuple[tuple[int, bytes], ...]


class _Prefix:
    """Builds checkpoints while walking a prompt's tokens in order."""

    def __init__(self, namespace: bytes) -> None:
        self._hash = hashlib.blake2b(namespace, digest_size=16)
        self.position = 0
        self._next = CACHE_STEP
        self.checkpoints: list[tuple[int, bytes]] = []

    def _mark(self, digest: bytes) -> None:
        if self.position >= MIN_CACHED_PROMPT:
            self.checkpoints.append((self.position, digest))
        self._next += CACHE_STEP

    def text(self, token_ids: Sequence[int]) -> None:
        i, n = 0, len(token_ids)
        while self.position + (n - i) >= self._next:
            take = self._next - self.position
            self._hash.update(b"t" + array("I", token_ids[i : i + take]).tobytes())
            i += take
            self.position += take
            self._mark(self._hash.copy().digest())
        if i < n:
            self._hash.update(b"t" + array("I", token_ids[i:]).tobytes())
            self.position += n - i

    def block(self, identity: bytes, tokens: int) -> None:
        """`tokens` tokens that only match as a whole (an image, message framing)."""
        start = self.position
        tag = b"b" + len(identity).to_bytes(4, "big") + identity
        while start + tokens >= self._next:
            inside = self._next - start
            partial = self._hash.copy()
            partial.update(tag + inside.to_bytes(4, "big"))
            self.position = self._next
            self._mark(partial.digest())
        self._hash.update(tag + tokens.to_bytes(4, "big"))
        self.position = start + tokens


def _ids(text: str, encoding: str) -> list[int]:
    return get_encoding(encoding).encode_ordinary(text) if text else []


@functools.lru_cache(maxsize=64)
def _schema_ids(dumped: str, encoding: str) -> tuple[int, ...]:
    # Schemas are long and repeat across the requests of a run: tokenize each once.
    return tuple(_ids(dumped, encoding))


def prefix_keys(
    namespace: bytes,
    spec: ModelSpec,
    messages: Sequence[dict[str, Any]],
    response_format: dict[str, Any] | None,
    images: dict[str, LoadedImage],
) -> PrefixKeys:
    """The checkpoints of a prompt, counted as `qbq.tokens.chat_prompt_tokens` counts it.

    `images` maps each image URL of the messages to its loaded image.
    """
    walk = _Prefix(namespace)
    encoding = spec.encoding
    if response_format is not None and response_format.get("type") == "json_schema":
        json_schema = response_format["json_schema"]
        walk.text(_ids(json_schema.get("name", ""), encoding))
        walk.text(_schema_ids(json.dumps(json_schema["schema"], separators=(",", ":")), encoding))
    for message in messages:
        role = message["role"]
        walk.block(b"message:" + role.encode(), MESSAGE_OVERHEAD + text_tokens(role, encoding))
        content = message.get("content")
        if isinstance(content, str):
            walk.text(_ids(content, encoding))
            continue
        for part in content or []:
            if part.get("type") == "text":
                walk.text(_ids(part["text"], encoding))
            elif part.get("type") == "image_url":
                image = part["image_url"]
                loaded = images[image["url"]]
                detail = image.get("detail", "auto")
                identity = hashlib.blake2b(loaded.data, digest_size=16).digest() + detail.encode()
                walk.block(identity, image_tokens(spec, loaded.width, loaded.height, detail))
    walk.block(b"reply", REPLY_PRIMING)
    return PrefixKeys(namespace, tuple(walk.checkpoints))


def namespace_of(api_key: str, model: str, prompt_cache_key: str | None) -> bytes:
    """The cache a request is looked up in: its key, model and prompt_cache_key."""
    key = "\0" if prompt_cache_key is None else "k" + prompt_cache_key
    return "\x1f".join((api_key, model, key)).encode()


def check_cache_params(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """`prompt_cache_key` and `prompt_cache_retention` of a request, checked as OpenAI does."""
    key = body.get("prompt_cache_key")
    if key is not None and not isinstance(key, str):
        raise SimAPIError(
            400,
            "Invalid type for 'prompt_cache_key': expected a string, but got "
            f"{type(key).__name__} instead.",
            param="prompt_cache_key",
            code="invalid_type",
        )
    retention = body.get("prompt_cache_retention")
    if retention is not None and retention not in RETENTIONS:
        raise SimAPIError(
            400,
            f"Invalid value: '{retention}'. Supported values are: 'in_memory' and '24h'.",
            param="prompt_cache_retention",
            code="invalid_value",
        )
    return key, retention


class PromptCache:
    """Cached prefixes: checkpoint → when it expires (simulated seconds). Thread-safe."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, float] = OrderedDict()
        self._max = max_entries

    def clear(self) -> None:
        """Forget every cached prefix."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup_and_store(self, prefix: PrefixKeys, now: float, ttl_s: float) -> int:
        """Tokens of the longest cached prefix (0 if none), then cache this prompt's prefix.

        Every checkpoint of the prompt is (re)written to live `ttl_s` simulated seconds from
        `now`; a hit's checkpoints are refreshed the same way, as a cache in use stays warm.
        """
        with self._lock:
            cached = 0
            for tokens, digest in reversed(prefix.checkpoints):
                expires = self._entries.get(digest)
                if expires is not None and expires > now:
                    cached = tokens
                    break
            until = now + ttl_s
            for _, digest in prefix.checkpoints:
                old = self._entries.pop(digest, None)
                self._entries[digest] = until if old is None else max(old, until)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
            return cached
