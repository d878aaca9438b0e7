"""Cutting a class scan into students: refs in scan order, the split checked and shown."""

from __future__ import annotations

from collections.abc import Sequence

from qbq.domain import ClassScanSplit

__all__ = ["default_refs", "describe_split", "split_problems"]


def default_refs(count: int) -> list[str]:
    """S001, S002, ... (wider past 999 students, so every ref has the same width)."""
    width = max(3, len(str(count)))
    return [f"S{i:0{width}d}" for i in range(1, count + 1)]


def split_problems(n_pages: int, pages_per_student: int, refs: Sequence[str] | None) -> list[str]:
    """Why `n_pages` cannot be cut into students of `pages_per_student` (with `refs`), if so."""
    students, left = divmod(n_pages, pages_per_student)
    if left:
        return [f"class_scan: the scan has {n_pages} pages, not a multiple of "
                f"pages_per_student={pages_per_student} ({students} whole students and "
                f"{left} page{'s' if left > 1 else ''} left over)"]
    if refs is not None and len(refs) != students:
        return [f"class_scan.refs: {len(refs)} refs given, but the scan's {n_pages} pages at "
                f"pages_per_student={pages_per_student} make {students} students"]
    return []


def describe_split(split: ClassScanSplit, *, limit: int = 12) -> list[str]:
    """Lines saying which pages of the scan went to which student (the first `limit` students)."""
    per = split.pages_per_student
    lines = [f"class scan {split.name} (sha256 {split.sha16}…): {split.n_pages} pages → "
             f"{len(split.refs)} students × {per} page{'s' if per > 1 else ''}"]
    for i, ref in enumerate(split.refs[:limit]):
        first, last = i * per + 1, (i + 1) * per
        pages = f"p{first}" if per == 1 else f"p{first}–p{last}"
        lines.append(f"  {ref}: {pages}")
    if len(split.refs) > limit:
        lines.append(f"  … and {len(split.refs) - limit} more students")
    return lines
