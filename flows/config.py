"""Run configuration for the flows: settings from the environment, overridden by named blocks,
and the task runner (threads, or Dask for spreading `grade_batch` over a cluster)."""

from __future__ import annotations

import copyreg
from typing import Any, Literal, TypeVar, cast

from prefect.blocks.core import Block
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.utilities.annotations import BaseAnnotation, allow_failure, quote, unmapped
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from blocks import GradingPolicyBlock, OpenAIProvider, ResultsAPI
from qbq.errors import ConfigurationError
from qbq.settings import GradingPolicy, QbqSettings, get_settings, task_threads

__all__ = ["RunnerSettings", "load_block", "make_task_runner", "resolve_config"]

B = TypeVar("B", bound=Block)


def load_block(block_class: type[B], name: str) -> B:
    """The saved block `name` (or `<type-slug>/name`) of `block_class`, or `ConfigurationError`."""
    slug = block_class.get_block_type_slug()
    document = name.removeprefix(f"{slug}/")
    if not document or "/" in document:
        raise ConfigurationError(f"block name {name!r} is not a {slug} block name")
    try:
        # _sync: a sync load even when a caller runs inside an event loop
        block = cast(B, block_class.load(document, _sync=True))  # type: ignore[call-arg]
    except ValueError as exc:  # prefect: not found; pydantic: saved values no longer valid
        raise ConfigurationError(
            f"cannot load the {slug} block {document!r} from the Prefect server: {exc}. "
            "Register the block types with `prefect block register -m blocks`, create the "
            "block (UI → Blocks, or Block.save), or leave the parameter empty to use the "
            "QBQ_*/OPENAI_* environment."
        ) from exc
    return block


def resolve_config(provider_block: str | None, results_block: str | None,
                   policy_block: str | None) -> tuple[QbqSettings, GradingPolicy]:
    """Settings and policy from the environment, with each named block's fields on top.

    Without block names nothing is loaded, so local runs need neither blocks nor a server.
    """
    settings = get_settings()
    policy = GradingPolicy()
    overrides: dict[str, Any] = {}
    if provider_block:
        overrides |= load_block(OpenAIProvider, provider_block).to_settings_overrides()
    if results_block:
        overrides |= load_block(ResultsAPI, results_block).to_settings_overrides()
    if overrides:
        settings = QbqSettings.model_validate({**settings.model_dump(), **overrides})
    if policy_block:
        policy = load_block(GradingPolicyBlock, policy_block).to_policy(policy)
    return settings, policy


def _reduce_annotation(annotation: BaseAnnotation) -> tuple[Any, tuple[Any]]:
    return type(annotation), (annotation.unwrap(),)


def _keep_annotations_through_pickle() -> None:
    """Make `quote(x)` / `unmapped(x)` unpickle as themselves, not as `quote((x,))`.

    Prefect 3.9.1's annotations are tuple subclasses whose default pickling re-wraps their
    one-element tuple, so a quoted task argument reaches a Dask worker as a 1-tuple
    (prefect-dask issue #43). Threads never pickle, so only the Dask runner needs this.
    """
    for annotation in (quote, unmapped, allow_failure):
        copyreg.pickle(annotation, _reduce_annotation)


class RunnerSettings(BaseSettings):
    """Which task runner grades the batches of one flow run."""

    model_config = SettingsConfigDict(env_prefix="QBQ_", extra="ignore")

    task_runner: Literal["threads", "dask"] = Field(
        "threads", description="threads: a thread pool in the flow run's process (sized from "
        "QBQ_MAX_IN_FLIGHT); dask: a Dask cluster (QBQ_DASK_ADDRESS, or a LocalCluster).",
    )
    dask_address: str | None = Field(
        None, description="Scheduler address of an existing Dask cluster (tcp://host:8786); "
        "None: start a LocalCluster for the flow run.",
    )
    dask_workers: int = Field(2, gt=0, description="Worker processes of the LocalCluster.")
    dask_threads_per_worker: int = Field(
        2, gt=0, description="Threads per LocalCluster worker."
    )


def make_task_runner(settings: QbqSettings,
                     runner: RunnerSettings | None = None) -> TaskRunner[Any]:
    """The task runner chosen by `QBQ_TASK_RUNNER` (threads unless it says dask), read when the
    flow runs rather than when its module is imported. Use it as a context manager."""
    runner = runner if runner is not None else RunnerSettings()
    if runner.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=task_threads(settings))
    try:
        from prefect_dask.task_runners import DaskTaskRunner
    except ImportError as exc:
        raise ConfigurationError(
            "QBQ_TASK_RUNNER=dask needs the prefect-dask package") from exc
    _keep_annotations_through_pickle()
    if runner.dask_address:
        return DaskTaskRunner(address=runner.dask_address)
    # a LocalCluster on loopback, without the dashboard's all-interfaces listener
    return DaskTaskRunner(cluster_kwargs={"n_workers": runner.dask_workers,
                                          "threads_per_worker": runner.dask_threads_per_worker,
                                          "processes": True, "host": "127.0.0.1",
                                          "dashboard_address": None})
