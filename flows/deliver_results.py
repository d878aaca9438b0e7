"""The `deliver-results` flow: POST every due payload in the outbox (scheduled every few minutes).

Grading runs deliver their own payload right away; this flow picks up whatever they could not
deliver (results API down, run crashed after finalize), with the outbox's back-off.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.config import resolve_config
from qbq.delivery import drain_outbox
from qbq.errors import DeliveryError
from qbq.resources import delivery_resources

__all__ = ["deliver_results"]


@flow(name="deliver-results", log_prints=False)
def deliver_results(results_block: str | None = None) -> dict[str, Any]:
    """Deliver all due outbox rows; fails (after trying every row) if any delivery failed.

    Args:
        results_block: Name of a `qbq-results-api` block whose token and timeout the POSTs
            use; empty: the QBQ_RESULTS_API_* environment. Each payload goes to the URL
            recorded with it when its run finished.
    """
    logger = get_run_logger()
    settings, _ = resolve_config(None, results_block, None)
    with delivery_resources(settings) as (store, client):
        report = drain_outbox(store, client, backoff_s=settings.delivery_backoff_s,
                              deadline_s=settings.delivery_deadline_s,
                              lookup_url=settings.results_api_lookup_url)
    logger.info("outbox: %d delivered, %d failed", report.delivered, report.failed)
    if report.failed:
        raise DeliveryError(f"{report.failed} payload(s) not delivered, kept in the outbox for "
                            f"the next run; last error: {report.last_error}")
    return {"delivered": report.delivered, "failed": report.failed}
