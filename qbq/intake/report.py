"""What intake did to a request, for `qbq plan`: the class-scan split and students failed at intake."""

from __future__ import annotations

from typing import Any

from qbq.domain import GradingRequest
from qbq.intake.class_scan import describe_split

__all__ = ["intake_lines", "intake_summary"]


def intake_summary(request: GradingRequest) -> dict[str, Any]:
    """JSON fields: `class_scan` (the split) and `intake_failures` (ref, reason, error type)."""
    out: dict[str, Any] = {}
    split = request.class_scan
    if split is not None:
        per = split.pages_per_student
        out["class_scan"] = {
            "file": split.name, "sha256_16": split.sha16, "pages": split.n_pages,
            "pages_per_student": per,
            "students": [{"ref": ref, "pages": list(range(i * per + 1, (i + 1) * per + 1))}
                         for i, ref in enumerate(split.refs)],
        }
    failed = [s for s in request.students if s.intake_failure is not None]
    if failed:
        out["intake_failures"] = [
            {"ref": s.ref, "reason": s.intake_failure.reason,
             "error_type": s.intake_failure.error_type}
            for s in failed if s.intake_failure is not None]
    return out


def intake_lines(request: GradingRequest) -> list[str]:
    """The same for people: the split, then one line per student failed at intake."""
    lines = describe_split(request.class_scan) if request.class_scan is not None else []
    for s in request.students:
        if s.intake_failure is not None:
            lines.append(f"not graded: {s.ref}: {s.intake_failure.reason} "
                         f"({s.intake_failure.error_type})")
    return lines
