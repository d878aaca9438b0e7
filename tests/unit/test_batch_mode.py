"""Batch mode's pure parts: reading an output file, answering each line's request once, and the
exam-session deployment running in batch mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from qbq import batch_api
from qbq.batch_api import batch_input, read_output
from qbq.batch_mode import BatchReplies, request_fingerprint
from qbq.errors import ConfigurationError
from qbq.provider import ChatRequest
from qbq.testing.fakes import ScriptedProvider


def _completion(content: str) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "gpt-4.1-mini",
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": content, "refusal": None}}],
            "usage": {"prompt_tokens": 2_000, "completion_tokens": 50, "total_tokens": 2_050,
                      "prompt_tokens_details": {"cached_tokens": 1_024}}}


def _line(custom_id: str, status: int | None, content: str = "{}") -> str:
    response = None if status is None else {"status_code": status, "request_id": "r",
                                            "body": _completion(content)}
    error = {"code": "batch_expired", "message": "expired"} if status is None else None
    return json.dumps({"id": "b", "custom_id": custom_id, "response": response, "error": error})


def _request(text: str) -> ChatRequest:
    return ChatRequest(model="gpt-4.1-mini", messages=[{"role": "user", "content": text}],
                       response_format={"type": "json_object"}, max_completion_tokens=100)


def test_only_answered_200_lines_are_used_with_their_cached_tokens() -> None:
    data = "\n".join([_line("a", 200, '{"students":[]}'), _line("b", 500), _line("c", None),
                      "not json"]).encode()
    replies = read_output(data, simulated=True)
    assert list(replies) == ["a"]
    assert replies["a"].content == '{"students":[]}' and replies["a"].usage.cached_tokens == 1_024


def test_input_lines_carry_each_request_body_under_its_custom_id() -> None:
    lines = [json.loads(x) for x in batch_input({"k1": _request("one")}).splitlines()]
    assert lines == [{"custom_id": "k1", "method": "POST", "url": "/v1/chat/completions",
                      "body": _request("one").body()}]


def test_a_lines_reply_answers_its_request_once_then_the_sync_api_does() -> None:
    inner = ScriptedProvider(["1"])
    replied = read_output(_line("k", 200, "from the batch").encode(), simulated=True)["k"]

    provider = BatchReplies({request_fingerprint(_request("one")): replied}, inner)
    assert provider.complete(_request("one")).content == "from the batch"
    assert inner.calls == []
    provider.complete(_request("one"))  # the same request again (a re-ask): sent for real
    provider.complete(_request("two"))  # a request no line carried
    assert len(inner.calls) == 2


def test_the_exam_session_deployment_runs_in_batch_mode() -> None:
    config = yaml.safe_load(Path("prefect.yaml").read_text(encoding="utf-8"))
    session = next(d for d in config["deployments"] if d["name"] == "exam-session")
    assert session["parameters"]["mode"] == "batch"


def test_an_input_over_the_batch_apis_caps_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch_api, "MAX_INPUT_LINES", 1)
    batch_input({"k1": _request("one")})
    with pytest.raises(ConfigurationError, match="sync or flex"):
        batch_input({"k1": _request("one"), "k2": _request("two")})
