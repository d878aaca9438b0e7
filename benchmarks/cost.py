"""Cost: what a student costs to grade, per exam shape and processing mode (SIMULATED provider).

Three realistic exams — 30 students × 4 pages with 2 model-answer pages and a rubric, 200 × 2 and
1,000 × 1 — are planned by qbq and graded batch by batch against qbq's simulator, which emulates
OpenAI's prompt caching. For each it prints the billed input tokens per student (prompt tokens
not served from the cache, i.e. billed at the full input price) against the student's own
pages' tokens, the cached share of all prompt tokens, whether every batch after the first read
its prefix from the cache, and the cost per 100 students (catalogue prices, `qbq.catalog`):

- sync: the standard API with nothing cached (what a prompt whose schema pins each batch's
  refs costs: no batch shares another's prefix);
- sync + cache: the standard API with the cached tokens the simulator reported;
- batch: the Batch API's prices for the same tokens (cached tokens at the Batch cached price
  where the catalogue has one);
- flex: flex prices for the same tokens ("n/a" for models without flex).

Token counts do not change with the mode, so one simulated run prices all four.

Batches hold at most 10 students (`--max-students-per-batch`, QBQ_MAX_STUDENTS_PER_BATCH; a
smaller batch fails smaller): with the model's limits alone, 30 x 4 fits in one request and
there would be no later batch to read a cached prefix.

    python benchmarks/cost.py [--model gpt-5-mini] [--plot docs/cost.png] [--work DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from qbq import pipeline
from qbq.cost import billed_input_tokens, own_page_tokens, usage_cost_usd
from qbq.errors import ConfigurationError
from qbq.grading import grade_batch
from qbq.model_spec import Mode, ModelSpec
from qbq.preparation import prepare
from qbq.provider import OpenAIChatProvider, make_openai_client
from qbq.sample import write_sample
from qbq.settings import GradingPolicy, QbqSettings
from qbq.simulator import BackgroundServer, SimConfig, create_app
from qbq.testing.fakes import FakeClock, fake_run, memory_store
from qbq.usage import Usage

#: (label, students, pages per student, model-answer pages)
EXAMS: tuple[tuple[str, int, int, int], ...] = (
    ("30 x 4 + 2 model answers", 30, 4, 2),
    ("200 x 2", 200, 2, 1),
    ("1,000 x 1", 1000, 1, 1),
)
#: A4 at 100 dpi: a phone scan after qbq's intake, and cheap enough to draw 1,500 pages.
PAGE_SIZE = (827, 1169)
QUESTIONS = 4


@dataclass(frozen=True)
class ExamCost:
    label: str
    students: int
    batches: int
    own_tokens_per_student: float
    billed_input_per_student: float
    cached_share: float
    later_batches_all_cached: bool
    per_100: dict[str, float | None]
    seconds: float

    @property
    def ratio(self) -> float:
        return self.billed_input_per_student / self.own_tokens_per_student


def _per_100(spec: ModelSpec, usage: Usage, students: int) -> dict[str, float | None]:
    """USD per 100 students in each mode; `usage` as reported (cached tokens included)."""
    cold = Usage(replies=usage.replies, prompt_tokens=usage.prompt_tokens,
                 completion_tokens=usage.completion_tokens,
                 reasoning_tokens=usage.reasoning_tokens)
    out: dict[str, float | None] = {}
    rows: tuple[tuple[str, Mode, Usage], ...] = (
        ("sync", "sync", cold), ("sync + cache", "sync", usage), ("batch", "batch", usage),
        ("flex", "flex", usage))
    for name, mode, used in rows:
        try:
            out[name] = usage_cost_usd(spec, used, mode) * 100 / students
        except ConfigurationError:
            out[name] = None  # the model is not offered in this mode
    return out


def run_exam(label: str, students: int, pages: int, answers: int, *, model: str, work: Path,
             sim: BackgroundServer, max_students: int | None) -> ExamCost:
    """Write, plan and grade one exam against the simulator; its token and cost figures."""
    start = time.perf_counter()
    folder = work / label.replace(" ", "").replace(",", "").replace("+", "_")
    request = write_sample(folder, students=students, pages=pages, questions=QUESTIONS,
                           seed=students, model=model, page_size=PAGE_SIZE,
                           with_names=False, model_answer_pages=answers)
    policy = GradingPolicy(max_students_per_batch=max_students)
    prepared = prepare(request, settings=QbqSettings(), policy=policy)
    store = memory_store()
    pipeline.register(store, prepared, QbqSettings(database_url="sqlite://"))
    provider = OpenAIChatProvider(make_openai_client(api_key="sk-bench", base_url=f"{sim.url}/v1",
                                                     loopback_only=True, timeout_s=600))
    try:
        deps = fake_run(store, provider, FakeClock(), policy=policy).deps
        outcomes = [grade_batch(b, prepared.request, deps) for b in prepared.plan.batches]
    finally:
        provider.close()
    failed = [o.index for o in outcomes if o.status != "succeeded"]
    if failed:
        raise RuntimeError(f"{label}: batches {failed} failed on the simulator")
    usage = sum((o.usage for o in outcomes), Usage())
    own = sum(own_page_tokens(prepared.request, s) for s in prepared.request.students)
    return ExamCost(
        label=label, students=students, batches=len(outcomes),
        own_tokens_per_student=own / students,
        billed_input_per_student=billed_input_tokens(usage) / students,
        cached_share=usage.cached_tokens / usage.prompt_tokens,
        later_batches_all_cached=all(o.usage.cached_tokens > 0 for o in outcomes[1:]),
        per_100=_per_100(prepared.request.spec, usage, students),
        seconds=time.perf_counter() - start)


def format_table(model: str, rows: list[ExamCost]) -> str:
    modes = ("sync", "sync + cache", "batch", "flex")
    head = (f"{'exam (SIMULATED provider, ' + model + ')':<44} {'batches':>7} {'own tok':>8} "
            f"{'billed in':>9} {'ratio':>6} {'cached':>7} {'later hit':>9} "
            + " ".join(f"{'$/100 ' + m:>17}" for m in modes))
    lines = [head]
    for r in rows:
        cost = " ".join(f"{'n/a' if r.per_100[m] is None else f'{r.per_100[m]:.4f}':>17}"
                        for m in modes)
        lines.append(f"{r.label:<44} {r.batches:>7} {r.own_tokens_per_student:>8,.0f} "
                     f"{r.billed_input_per_student:>9,.0f} {r.ratio:>6.3f} "
                     f"{r.cached_share:>7.1%} {'yes' if r.later_batches_all_cached else 'NO':>9} "
                     + cost)
    return "\n".join(lines)


def plot(rows: list[ExamCost], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = ("sync", "sync + cache", "batch", "flex")
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.2
    for i, mode in enumerate(modes):
        values = [r.per_100[mode] or 0.0 for r in rows]
        ax.bar([x + i * width for x in range(len(rows))], values, width, label=mode)
    ax.set_xticks([x + 1.5 * width for x in range(len(rows))], [r.label for r in rows])
    ax.set_ylabel("USD per 100 students (simulated)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt-5-mini")
    parser.add_argument("--work", type=Path, default=None, help="Folder for the exams' pages.")
    parser.add_argument("--plot", type=Path, default=None, help="Also draw this PNG.")
    parser.add_argument("--only", type=int, default=None, help="Run only exam N (0-based).")
    parser.add_argument("--max-students-per-batch", type=int, default=10,
                        help="QBQ_MAX_STUDENTS_PER_BATCH (0: only the model's limits; they put "
                        "30 x 4 in one request, so nothing could be cached).")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="qbq-cost-"))
    rows: list[ExamCost] = []
    with BackgroundServer(create_app(SimConfig())) as sim:
        for i, (label, students, pages, answers) in enumerate(EXAMS):
            if args.only is not None and i != args.only:
                continue
            rows.append(run_exam(label, students, pages, answers, model=args.model, work=work,
                                 sim=sim, max_students=args.max_students_per_batch or None))
            print(f"{label}: {rows[-1].seconds:.0f} s", flush=True)
    print(f"max students per batch: {args.max_students_per_batch or 'model limits only'}")
    print(format_table(args.model, rows))
    if args.plot:
        plot(rows, args.plot)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
