"""The prompt-cache emulation's arithmetic: checkpoints every 128 tokens from 1,024, on a fixed clock."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

from qbq.catalog import get_model_spec
from qbq.simulator.caching import PromptCache, namespace_of, prefix_keys
from qbq.simulator.images import LoadedImage
from qbq.tokens import chat_prompt_tokens

SPEC = get_model_spec("gpt-4.1-mini")
NS = namespace_of("sk-test", SPEC.name, None)


def _png(shade: int) -> LoadedImage:
    buffer = io.BytesIO()
    Image.new("RGB", (900, 1200), (shade, shade, shade)).save(buffer, format="PNG")
    return LoadedImage(buffer.getvalue(), 900, 1200)


IMAGES = {"a": _png(10), "b": _png(20)}


def _messages(text: str, image: str) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": text},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                     {"type": "text", "text": "end"}]},
    ]


def test_checkpoints_cover_the_prompt_in_128_token_steps() -> None:
    messages = _messages("word " * 2_000, "a")
    keys = prefix_keys(NS, SPEC, messages, None, IMAGES)
    total = chat_prompt_tokens(SPEC, messages, None, lambda url: (900, 1200))
    positions = [tokens for tokens, _ in keys.checkpoints]
    assert positions == list(range(1_024, total + 1, 128))


def test_prefixes_share_checkpoints_up_to_their_first_difference() -> None:
    base = prefix_keys(NS, SPEC, _messages("word " * 2_000, "a"), None, IMAGES)
    other_image = prefix_keys(NS, SPEC, _messages("word " * 2_000, "b"), None, IMAGES)
    shared = [a for a, b in zip(base.checkpoints, other_image.checkpoints, strict=True) if a == b]
    # The text (2,000 tokens plus framing) is shared; from the image on nothing is.
    assert [tokens for tokens, _ in shared] == list(range(1_024, 2_005, 128))
    other_key = prefix_keys(namespace_of("sk-test", SPEC.name, "k"), SPEC,
                            _messages("word " * 2_000, "a"), None, IMAGES)
    assert not set(base.checkpoints) & set(other_key.checkpoints)


def test_cache_hits_refresh_and_expire_on_a_fixed_clock() -> None:
    cache = PromptCache()
    keys = prefix_keys(NS, SPEC, _messages("word " * 2_000, "a"), None, IMAGES)
    longest = keys.checkpoints[-1][0]
    assert cache.lookup_and_store(keys, now=0.0, ttl_s=300) == 0
    assert cache.lookup_and_store(keys, now=299.0, ttl_s=300) == longest
    # The hit at 299 s kept it warm until 599 s.
    assert cache.lookup_and_store(keys, now=598.0, ttl_s=300) == longest
    assert cache.lookup_and_store(keys, now=2_000.0, ttl_s=300) == 0


def test_the_cache_is_bounded() -> None:
    cache = PromptCache(max_entries=10)
    for shade in range(5):
        keys = prefix_keys(NS, SPEC, _messages(f"{shade} " + "word " * 3_000, "a"), None, IMAGES)
        cache.lookup_and_store(keys, now=0.0, ttl_s=300)
    assert len(cache) == 10
