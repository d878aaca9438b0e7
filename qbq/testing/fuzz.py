"""A hypothesis fuzz harness over request parsing, loading (with a fake fetcher) and planning.

`check_request_text` runs one request text through everything that happens before a model
call and returns the qbq error it ended in (or None); any other exception escapes and is a
finding. `hostile_requests` draws request texts: a valid native or legacy request with fields
swapped for hostile values, keys dropped or added, or the text itself mangled. The suite runs a
short search (tests/unit/test_fuzz.py), `benchmarks/fuzz.py` a long one.
"""

from __future__ import annotations

import base64
import copy
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from hypothesis import strategies as st

from qbq.errors import QbqError
from qbq.loading import load_request
from qbq.planning import plan_batches
from qbq.request import parse_request_json
from qbq.settings import GradingPolicy, QbqSettings
from qbq.testing.fakes import FakeFetcher

__all__ = ["FUZZ_PAGE_URL", "FuzzWorld", "check_request_text", "hostile_requests", "make_world"]

#: The one URL the fuzz fetcher serves a page for.
FUZZ_PAGE_URL: Final = "https://pages.example/p.png?X-Amz-Signature=secret"

#: Values that broke or nearly broke qbq once (issue 15) and their neighbours.
HOSTILE_VALUES: Final[tuple[Any, ...]] = (
    "", " ", "\x00", "pa\x00th.png", "S1\nforged", "[/b]", "[bold]x[/bold]", "\x1b[31mred",
    "\u202eevil", "a\u2028b", "R" * 50_000, "http://0177.0.0.1/x", "http://[::1/x",
    "http://127.1/x", "http://2130706433/x", "https://user:pw@host.example/x", "file:///etc/passwd",
    "ftp://host/x", "https://", "http://[::ffff:127.0.0.1]/x", "https://pages.example:99999/x",
    "data:image/png;base64,", "data:image/png;base64,!!!!", "data:text/plain;base64,aGk=",
    "data:image/png;base64,iVBORw0KGgo=", "../../etc/passwd", "/dev/zero", "/proc/self/mem",
    "p.png", "missing.png", ".", "~", "%00", "\ud800", 0, -1, 1, 2**31, 2**63, 10**400, -(10**30),
    0.5, 1e308, float("inf"), float("-inf"), float("nan"), True, None, [], {}, [[[[[]]]]],
    {"a": {"b": {"c": None}}}, ["S1", "S1"],
)

def _png_1px() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (1, 1), 255).save(out, "PNG")
    return out.getvalue()


_PNG_1PX: Final = _png_1px()

_FIELDS: Final = ("assessment_id", "model", "instructions", "questions", "students",
                  "model_answer_pages", "class_scan", "regrade")


@dataclass(frozen=True)
class FuzzWorld:
    """A folder with one valid page, settings whose page cache lives there, and a fetcher."""

    base_dir: Path
    settings: QbqSettings
    pass_settings: QbqSettings
    page: bytes


def make_world(folder: Path, page_png: bytes) -> FuzzWorld:
    """Write `page_png` as `p.png` in `folder`; the page cache goes to `folder/cache`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "p.png").write_bytes(page_png)
    settings = QbqSettings(page_cache_dir=str(folder / "cache"), page_roots=None)
    return FuzzWorld(folder, settings, settings.model_copy(update={"page_urls": "pass"}),
                     page_png)


def _native() -> dict[str, Any]:
    return {
        "assessment_id": "exam-1", "model": "gpt-4.1-mini", "instructions": "Be fair.",
        "questions": [{"question_number": "1", "max_mark": 2, "rubric": "1 per step"},
                      {"question_number": "2", "max_mark": 3}],
        "model_answer_pages": [{"path": "p.png"}],
        "students": [
            {"ref": "S1", "pages": [{"path": "p.png", "id": "s1p1"}]},
            {"ref": "S2", "pages": [{"url": FUZZ_PAGE_URL, "id": "s2p1", "width": 400,
                                     "height": 560}]},
        ],
    }


def _legacy() -> dict[str, Any]:
    return {
        "external_assessment_id": 1, "external_assessment_settings_id": 2,
        "external_assessment_file_id": 3, "pages_per_student": 1, "prompt": "Be fair.",
        "images": [{"id": 11, "page_number": 1, "aws_path": FUZZ_PAGE_URL},
                   {"id": 12, "page_number": 1, "aws_path": FUZZ_PAGE_URL}],
        "question_list": [{"question_number": "1", "max_mark": 4}],
    }


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into a decoded JSON value."""
    out: list[tuple[Any, ...]] = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, child in node.items():
            out.extend(_paths(child, (*prefix, key)))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            out.extend(_paths(child, (*prefix, i)))
    return out


def _set(body: Any, path: tuple[Any, ...], value: Any, drop: bool) -> None:
    parent = body
    for part in path[:-1]:
        parent = parent[part]
    if drop and isinstance(parent, dict):
        parent.pop(path[-1], None)
    else:
        parent[path[-1]] = value


@st.composite
def _mutated(draw: st.DrawFn) -> str:
    body = draw(st.sampled_from((_native, _legacy)))()
    value_pool = st.one_of(st.sampled_from(HOSTILE_VALUES), st.text(max_size=40),
                           st.integers(), st.floats())
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(body)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        _set(body, path, copy.deepcopy(draw(value_pool)), drop=draw(st.booleans()))
    if draw(st.booleans()):
        body[draw(st.sampled_from(_FIELDS))] = copy.deepcopy(draw(value_pool))
    return json.dumps(body, allow_nan=True)


@st.composite
def _mangled(draw: st.DrawFn) -> str:
    text = json.dumps(draw(st.sampled_from((_native, _legacy)))())
    cut = draw(st.integers(0, len(text)))
    kind = draw(st.sampled_from(("truncate", "insert", "deep", "number")))
    if kind == "truncate":
        return text[:cut]
    if kind == "insert":
        return text[:cut] + draw(st.text(max_size=20)) + text[cut:]
    if kind == "deep":
        n = draw(st.integers(10, 5_000))
        return text[:-1] + ', "x": ' + "[" * n + "]" * draw(st.integers(0, n)) + "}"
    return text[:-1] + ', "x": ' + "9" * draw(st.integers(1, 6_000)) + "}"


_LABEL: Final = st.text(st.characters(blacklist_categories=("Cc", "Cf", "Zl", "Zp", "Cs")),
                       min_size=1, max_size=70)


@st.composite
def _valid_shaped(draw: st.DrawFn) -> str:
    """Requests that pass parsing, with extreme values within the limits, to reach loading
    and planning: odd refs and ids, 1 × 65,535-pixel pages, tiny and huge marks."""
    side = st.integers(1, 65_535)

    def a_page(i: int) -> dict[str, Any]:
        kind = draw(st.sampled_from(("path", "url", "sized_url", "data_uri")))
        page: dict[str, Any] = {"id": f"{draw(_LABEL)[:100]}-{i}"} if draw(st.booleans()) else {}
        if kind == "path":
            page["path"] = "p.png"
        elif kind == "data_uri":
            page["data_uri"] = "data:image/png;base64," + base64.b64encode(_PNG_1PX).decode()
        else:
            page.update(url=FUZZ_PAGE_URL, id=f"u{i}")
            if kind == "sized_url":
                page.update(width=draw(side), height=draw(side))
        return page

    n_questions = draw(st.integers(1, 12))
    refs = draw(st.lists(_LABEL, min_size=1, max_size=12, unique_by=lambda r: r.strip()))
    counter = iter(range(10_000))
    body = {
        "assessment_id": draw(_LABEL), "model": draw(st.sampled_from(
            ("gpt-4.1-mini", "gpt-4o", "gpt-5-mini", "o4-mini", "gpt-4.1-nano"))),
        "instructions": draw(st.text(max_size=300) | st.none()),
        "questions": [{"question_number": f"{q}{draw(_LABEL)[:20]}",
                       "max_mark": draw(st.floats(1e-9, 1_000)),
                       "rubric": draw(st.text(max_size=100) | st.none())}
                      for q in range(n_questions)],
        "students": [{"ref": ref, "pages": [a_page(next(counter))
                                             for _ in range(draw(st.integers(1, 3)))]}
                     for ref in refs],
    }
    return json.dumps(body)


def hostile_requests() -> st.SearchStrategy[str]:
    """Request texts: valid requests with hostile field values, valid ones with extreme
    values, and mangled JSON."""
    return st.one_of(_mutated(), _valid_shaped(), _mangled())


def check_request_text(text: str, world: FuzzWorld, *, pass_urls: bool = False) -> QbqError | None:
    """Parse, load (pages from `world`, URLs from a fake fetcher) and plan `text`.

    Returns the qbq error it ended in, or None when it planned; anything else raises.
    """
    settings = world.pass_settings if pass_urls else world.settings
    fetch = FakeFetcher({FUZZ_PAGE_URL: world.page})
    try:
        request = load_request(parse_request_json(text), base_dir=world.base_dir,
                               settings=settings, fetch=fetch)
        plan_batches(request, GradingPolicy(), max_request_tokens=settings.tpm)
    except QbqError as exc:
        return exc
    return None
