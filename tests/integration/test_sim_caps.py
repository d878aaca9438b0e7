"""Per-image and per-request caps of OpenAI's vision input, enforced by the simulator over HTTP.

https://platform.openai.com/docs/guides/images-vision: PNG, JPEG, WEBP, non-animated GIF; at
most 500 images and 50 MB of payload per request.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from qbq.images import encode_data_uri
from qbq.simulator import BackgroundServer, SimConfig, create_app
from qbq.simulator.caps import MAX_REQUEST_BYTES

MODEL = "gpt-4.1-mini"


def _image(fmt: str, frames: int = 1) -> str:
    buffer = io.BytesIO()
    images = [Image.new("RGB", (8, 8), (40 * k, 0, 0)) for k in range(frames)]
    if frames > 1:
        images[0].save(buffer, format=fmt, save_all=True, append_images=images[1:], duration=100)
    else:
        images[0].save(buffer, format=fmt)
    mime = {"GIF": "image/gif", "PNG": "image/png", "WEBP": "image/webp", "JPEG": "image/jpeg"}[fmt]
    return encode_data_uri(buffer.getvalue(), mime)


def _with_images(urls: list[str]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": "Student ref: S1"}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return [{"role": "user", "content": parts}]


@pytest.fixture(scope="module")
def sim() -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(SimConfig())) as server:
        yield server


@pytest.fixture(scope="module")
def client(sim: BackgroundServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-test", max_retries=0) as c:
        yield c


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_supported_formats_pass(client: openai.OpenAI, fmt: str) -> None:
    assert client.chat.completions.create(model=MODEL, messages=_with_images([_image(fmt)])).choices


def test_an_animated_gif_is_refused_as_openai_does(client: openai.OpenAI) -> None:
    animated = _image("GIF", frames=3)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=MODEL, messages=_with_images([_image("PNG"), animated])
        )
    # OpenAI's words; it does not say which image (param null), so a client must bisect.
    assert refused.value.body == {
        "message": "You uploaded an unsupported image. Please make sure your image has of one the "
        "following formats: ['png', 'jpeg', 'gif', 'webp'].",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_image_format",
    }


def test_at_most_500_images(client: openai.OpenAI) -> None:
    page = _image("PNG")
    assert client.chat.completions.create(model=MODEL, messages=_with_images([page] * 500)).choices
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=_with_images([page] * 501))
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["param"] == "messages"
    assert refused.value.body["code"] == "too_many_images"
    assert "501" in refused.value.body["message"] and "500" in refused.value.body["message"]


def test_a_body_over_50_mb_is_refused(sim: BackgroundServer) -> None:
    body = b'{"model": "gpt-4.1-mini", "pad": "' + b"x" * MAX_REQUEST_BYTES + b'"}'
    assert MAX_REQUEST_BYTES == 50 * 1024 * 1024
    raw = httpx.post(
        sim.url + "/v1/chat/completions",
        content=body,
        headers={"authorization": "Bearer sk-test", "content-type": "application/json"},
        timeout=60,
    )
    assert raw.status_code == 400
    error = raw.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")
    assert str(len(body)) in error["message"]
