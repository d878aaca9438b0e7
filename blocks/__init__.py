"""Prefect blocks: named, server-stored configuration for qbq deployments.

Blocks hold configuration and build clients; they never run workflow logic. A flow resolves
them by name (`flows.config.resolve_config`) into the same settings objects that environment
variables produce, so local runs need no blocks at all. Register the types on a server with
`prefect block register -m blocks`.
"""

from blocks.grading_policy import GradingPolicyBlock
from blocks.openai_provider import OpenAIProvider
from blocks.results_api import ResultsAPI

__all__ = ["GradingPolicyBlock", "OpenAIProvider", "ResultsAPI"]
