"""Bounds on every field of a request, and the checks that keep its text printable.

A request is outside input: each string has a maximum length, ids and refs hold no control or
format characters (so a ref cannot forge a prompt label, a log line or a terminal escape),
numbers are bounded, and JSON nesting is counted before the text is parsed. The figures are
listed in README "Request limits"; `qbq.request` applies them.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any, Final

from pydantic import AfterValidator, Field

from qbq.schema_limits import MAX_REF_LENGTH

__all__ = [
    "MAX_ASSESSMENT_ID_LENGTH",
    "MAX_EXTERNAL_ID",
    "MAX_INSTRUCTIONS_LENGTH",
    "MAX_JSON_DEPTH",
    "MAX_MARK",
    "MAX_MODEL_NAME_LENGTH",
    "MAX_PAGES_PER_STUDENT",
    "MAX_PAGE_ID_LENGTH",
    "MAX_PAGE_SIDE",
    "MAX_PATH_LENGTH",
    "MAX_QUESTIONS",
    "MAX_QUESTION_NUMBER_LENGTH",
    "MAX_REF_LENGTH",
    "MAX_RUBRIC_LENGTH",
    "MAX_STUDENTS",
    "MAX_URL_LENGTH",
    "AssessmentId",
    "Instructions",
    "ModelName",
    "PageId",
    "PathText",
    "QuestionNumber",
    "Ref",
    "Rubric",
    "UrlText",
    "json_depth_problem",
    "nesting_problem",
    "unprintable",
]

#: Longest `assessment_id` (characters); the store keeps it in a 200-character column.
MAX_ASSESSMENT_ID_LENGTH: Final = 128
#: Longest page id (characters): ids key batches and name pages in errors.
MAX_PAGE_ID_LENGTH: Final = 128
#: Longest question number (characters): pinned in the response schema's enum like refs.
MAX_QUESTION_NUMBER_LENGTH: Final = 32
#: Longest model name (characters).
MAX_MODEL_NAME_LENGTH: Final = 100
#: Longest instructions (characters, about 5,000 tokens): sent with every batch.
MAX_INSTRUCTIONS_LENGTH: Final = 20_000
#: Longest rubric of one question (characters).
MAX_RUBRIC_LENGTH: Final = 5_000
#: Longest page path (characters): Linux's PATH_MAX.
MAX_PATH_LENGTH: Final = 4_096
#: Longest page URL (characters): presigned S3/GCS URLs stay under 2,000; 8,192 leaves room.
MAX_URL_LENGTH: Final = 8_192
#: Largest declared page width or height (pixels): JPEG's and WebP's format limit is
#: 65,535 (https://developers.google.com/speed/webp/docs/riff_container).
MAX_PAGE_SIDE: Final = 65_535
#: Largest `max_mark` of one question.
MAX_MARK: Final = 1_000
#: Most questions in a request (OpenAI allows 1,000 enum values per schema in all).
MAX_QUESTIONS: Final = 1_000
#: Most students in a request (and refs in a class scan).
MAX_STUDENTS: Final = 100_000
#: Most pages of one student, model-answer pages, or pages per student in a class scan.
MAX_PAGES_PER_STUDENT: Final = 1_000
#: Largest integer id of a legacy request (PostgreSQL's BIGINT).
MAX_EXTERNAL_ID: Final = 2**63 - 1
#: Deepest nesting of arrays and objects in a request (a native request uses 5 levels).
MAX_JSON_DEPTH: Final = 32

# Cc: C0/C1 controls incl. ESC and NUL; Cf: format characters (bidi overrides, zero-width);
# Zl/Zp: line and paragraph separators, which some log viewers break lines on.
_UNPRINTABLE: Final = frozenset({"Cc", "Cf", "Zl", "Zp"})
_PROSE_ALLOWED: Final = frozenset("\n\r\t")


def unprintable(text: str, allowed: frozenset[str] = frozenset()) -> str | None:
    """The first control or format character of `text` as `U+XXXX`, or None when it has none.

    `allowed` characters (e.g. newline in instructions) pass.
    """
    for ch in text:
        if ch not in allowed and unicodedata.category(ch) in _UNPRINTABLE:
            return f"U+{ord(ch):04X}"
    return None


def _label(value: str) -> str:
    found = unprintable(value)
    if found is not None:
        raise ValueError(f"must not contain control or format characters (found {found})")
    return value


def _prose(value: str) -> str:
    found = unprintable(value, _PROSE_ALLOWED)
    if found is not None:
        raise ValueError(f"must not contain control characters other than newline and tab "
                         f"(found {found})")
    return value


# One-line strings without control or format characters: ids, refs, question numbers, names.
#: A student ref (pinned in the response schema's enum, see `qbq.schema_limits`).
Ref = Annotated[str, Field(min_length=1, max_length=MAX_REF_LENGTH), AfterValidator(_label)]
#: A page id.
PageId = Annotated[str, Field(min_length=1, max_length=MAX_PAGE_ID_LENGTH),
                   AfterValidator(_label)]
#: An assessment id.
AssessmentId = Annotated[str, Field(min_length=1, max_length=MAX_ASSESSMENT_ID_LENGTH),
                         AfterValidator(_label)]
#: A question number.
QuestionNumber = Annotated[str, Field(min_length=1, max_length=MAX_QUESTION_NUMBER_LENGTH),
                           AfterValidator(_label)]
#: A model name.
ModelName = Annotated[str, Field(min_length=1, max_length=MAX_MODEL_NAME_LENGTH),
                      AfterValidator(_label)]
#: A page path (a NUL would reach the OS as an error of its own).
PathText = Annotated[str, Field(max_length=MAX_PATH_LENGTH), AfterValidator(_label)]
#: A page URL.
UrlText = Annotated[str, Field(max_length=MAX_URL_LENGTH), AfterValidator(_label)]
#: Instructions: newlines and tabs pass, other control characters (NUL, ESC) do not.
Instructions = Annotated[str, Field(max_length=MAX_INSTRUCTIONS_LENGTH), AfterValidator(_prose)]
#: One question's rubric, like instructions.
Rubric = Annotated[str, Field(max_length=MAX_RUBRIC_LENGTH), AfterValidator(_prose)]


# A JSON string (escapes included) or one bracket; the unrolled loop keeps long strings (data
# URIs of megabytes) inside one fast regex step.
_TOKENS: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def json_depth_problem(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why `text` nests arrays and objects deeper than `max_depth`, or None.

    Counted on the raw text before any parser sees it (Python's `json` recurses once per level
    and raises RecursionError near 1,000). Malformed text is left for the parser to report.
    """
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    depth = 0
    for match in _TOKENS.finditer(data):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                return (f"request: JSON nested deeper than {max_depth} levels (arrays and "
                        f"objects), at byte {match.start():,}")
        elif token in (b"]", b"}"):
            depth -= 1
    return None


def nesting_problem(data: Any, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Like `json_depth_problem`, for a decoded object (a flow parameter), without recursion."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > max_depth:
                return f"request: nested deeper than {max_depth} levels (arrays and objects)"
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return None
