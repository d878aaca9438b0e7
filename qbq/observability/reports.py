"""Marks as pandas tables from the store: CSV/Parquet exports, distribution charts, review queue.

Rows carry student refs and question numbers only; names never leave the store, and feedback
is read only when a caller asks for it (the review queue's `--show-feedback`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

import pandas as pd

from qbq.review import answer_needs_review, review_reason
from qbq.store import BatchRow, Store, queries
from qbq.store import repository as repo

__all__ = [
    "EXPORT_COLUMNS",
    "PANELS_KEY",
    "draw_mark_chart",
    "export_marks",
    "marks_frame",
    "review_frame",
    "stored_max_marks",
]

#: Exported columns, in order.
EXPORT_COLUMNS: Final = ("ref", "question_number", "mark", "max_mark", "confidence", "status",
                         "needs_review", "student_status")
#: PNG text chunk holding the chart's panel count (for tests and tooling).
PANELS_KEY: Final = "qbq:panels"
def stored_max_marks(summary: Mapping[str, Any] | None) -> dict[str, float]:
    """The question list saved on the process summary (see `metrics.save_metrics`)."""
    raw = (summary or {}).get("max_marks") or {}
    return {str(q): float(m) for q, m in raw.items()}


def _question_order(rows: list[dict[str, Any]], max_marks: Mapping[str, float]) -> list[str]:
    seen = list(max_marks)
    for row in rows:
        if row["question_number"] not in seen:
            seen.append(row["question_number"])
    return seen


def _rows_of(batch: BatchRow, max_marks: Mapping[str, float],
             with_feedback: bool) -> list[dict[str, Any]]:
    result = batch.result or {}
    graded: Mapping[str, Any] = result.get("students", {})
    rows: list[dict[str, Any]] = []
    for ref in batch.student_refs:
        student = graded.get(ref)
        if student is None:
            continue
        for answer in student.get("answers", []):
            qnum = str(answer["question_number"])
            row = {
                "ref": ref,
                "question_number": qnum,
                "mark": float(answer["mark"]),
                "max_mark": max_marks.get(qnum, math.nan),
                "confidence": answer.get("confidence"),
                "status": answer.get("status"),
                "needs_review": answer_needs_review(answer.get("confidence"), answer.get("status")),
                "student_status": "graded",
            }
            if with_feedback:
                row["feedback"] = answer.get("feedback")
            rows.append(row)
    return rows


def marks_frame(store: Store, process_id: str, *, with_feedback: bool = False) -> pd.DataFrame:
    """One row per student and question, in plan order; students not graded get one row per
    question with no mark and `student_status` "failed"."""
    with store.transaction() as session:
        process = repo.get_process(session, process_id)
        if process is None:
            raise KeyError(process_id)
        max_marks = stored_max_marks(process.summary)
        batches = queries.process_batches(session, process_id)
    rows: list[dict[str, Any]] = []
    failed: list[tuple[str, bool]] = []
    for batch in batches:
        rows.extend(_rows_of(batch, max_marks, with_feedback))
        result = batch.result or {}
        graded = result.get("students", {})
        failures = result.get("failures", {})
        failed.extend((ref, bool(failures.get(ref, {}).get("needs_review")))
                      for ref in batch.student_refs if ref not in graded)
    order = _question_order(rows, max_marks)
    for ref, review in failed:
        for qnum in order:
            row = {"ref": ref, "question_number": qnum, "mark": math.nan,
                   "max_mark": max_marks.get(qnum, math.nan), "confidence": None,
                   "status": None, "needs_review": review, "student_status": "failed"}
            if with_feedback:
                row["feedback"] = None
            rows.append(row)
    columns = [*EXPORT_COLUMNS, *(["feedback"] if with_feedback else [])]
    frame = pd.DataFrame(rows, columns=columns)
    frame = frame.astype({"ref": "string", "question_number": "string", "mark": "float64",
                          "max_mark": "float64", "needs_review": "bool",
                          "student_status": "string"})
    rank = {q: i for i, q in enumerate(order)}
    frame["_q"] = frame["question_number"].map(rank)
    frame = frame.sort_values(["ref", "_q"], kind="stable").drop(columns="_q")
    return frame.reset_index(drop=True)


def export_marks(frame: pd.DataFrame, path: Path, fmt: Literal["csv", "parquet"]) -> Path:
    """Write the export columns of `frame` (never feedback) as CSV or Parquet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = frame.loc[:, list(EXPORT_COLUMNS)]
    if fmt == "csv":
        out.to_csv(path, index=False)
    else:
        out.to_parquet(path, index=False)
    return path


def review_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Answers needing review (`qbq.review`'s rule), then students not graded who need a
    person (a refusal) as one row each with question "*"; adds a `reason` column."""
    graded = frame[(frame["student_status"] == "graded") & frame["needs_review"]].copy()
    graded["reason"] = [
        review_reason(confidence, status)
        for confidence, status in zip(graded["confidence"], graded["status"], strict=True)
    ]
    refused = frame[(frame["student_status"] != "graded") & frame["needs_review"]]
    refused = refused.drop_duplicates("ref").copy()
    refused["question_number"] = "*"
    refused["reason"] = "not graded: the model refused"
    return pd.concat([graded, refused], ignore_index=True)


def draw_mark_chart(frame: pd.DataFrame, path: Path, *, title: str) -> int:
    """Histograms of marks per question (x from 0 to max_mark) plus a review-share panel.

    Returns the number of panels (also stored in the PNG's `qbq:panels` text chunk).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    graded = frame[frame["student_status"] == "graded"]
    questions = list(dict.fromkeys(frame["question_number"].tolist()))
    panels = len(questions) + 1
    cols = min(3, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax, qnum in zip(flat, questions, strict=False):
        marks = graded.loc[graded["question_number"] == qnum, "mark"].dropna()
        top = frame.loc[frame["question_number"] == qnum, "max_mark"].max()
        if not top or math.isnan(top):
            top = float(marks.max()) if len(marks) else 1.0
        edges = [i / 2 - 0.25 for i in range(int(top * 2) + 2)]
        ax.hist(marks, bins=edges, color="#4C72B0", edgecolor="white")
        mean = f", mean {marks.mean():.2f}" if len(marks) else ""
        if len(marks):
            ax.axvline(float(marks.mean()), color="#C44E52", linestyle="--", linewidth=1.2)
        ax.set_xlim(-0.5, top + 0.5)
        step = 0.5 if top <= 3 else 1.0 if top <= 12 else float(math.ceil(top / 10))
        ax.set_xticks([i * step for i in range(int(top / step) + 1)])
        ax.set_title(f"Q{qnum}  (max {top:g}, n={len(marks)}{mean})", fontsize=10)
        ax.set_xlabel("mark")
        ax.set_ylabel("students")
        ax.yaxis.get_major_locator().set_params(integer=True)
    _review_panel(flat[len(questions)], frame, questions)
    for ax in flat[panels:]:
        fig.delaxes(ax)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110, metadata={PANELS_KEY: str(panels)})
    plt.close(fig)
    return panels


def _review_panel(ax: Any, frame: pd.DataFrame, questions: list[str]) -> None:
    shares, labels = [], []
    for qnum in questions:
        part = frame[frame["question_number"] == qnum]
        shares.append(100 * float(part["needs_review"].mean()) if len(part) else 0.0)
        labels.append(f"Q{qnum}")
    overall = 100 * float(frame["needs_review"].mean()) if len(frame) else 0.0
    shares.append(overall)
    labels.append("all")
    colors = ["#DD8452"] * len(questions) + ["#55A868"]
    bars = ax.bar(labels, shares, color=colors)
    for bar, share in zip(bars, shares, strict=True):
        ax.annotate(f"{share:.0f}%", (bar.get_x() + bar.get_width() / 2, share),
                    ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, max(100.0, *shares) * 1.08)
    n_review = int(frame["needs_review"].sum())
    ax.set_title(f"needs review: {n_review} of {len(frame)} answers", fontsize=10)
    ax.set_ylabel("% of answers")
