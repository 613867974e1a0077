"""The Temporal client, configured once from settings: the same for worker, API and CLI."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter

from worker.settings import Settings

FLOW_KEY = SearchAttributeKey.for_keyword("ShipflowFlow")
STAGE_KEY = SearchAttributeKey.for_keyword("ShipflowStage")
COMMIT_KEY = SearchAttributeKey.for_keyword("ShipflowCommit")
#: Registered when the embedded dev server starts (`temporal server start-dev --search-attribute`).
SEARCH_ATTRIBUTES = {
    "ShipflowFlow": "Keyword",
    "ShipflowStage": "Keyword",
    "ShipflowCommit": "Keyword",
}

#: Dynamic config every embedded dev server starts with (`shipflow dev`, tests, benchmarks).
#: Updates are on. The transfer-task loader's rate limit is raised from 20 to 1000 loads a
#: second per shard: the dev server has one shard, so at 20 every workflow and activity task
#: waits ~40 ms to be loaded, which is most of a short step's latency. On a real cluster the
#: same knob trades database load for latency (see README, "Running in production").
DEV_SERVER_DYNAMIC_CONFIG = {
    "frontend.enableUpdateWorkflowExecution": "true",
    "history.transferProcessorMaxPollRPS": "1000",
}


def dev_server_args() -> list[str]:
    """`--dynamic-config-value` arguments for `temporal server start-dev`."""
    args: list[str] = []
    for key, value in DEV_SERVER_DYNAMIC_CONFIG.items():
        args += ["--dynamic-config-value", f"{key}={value}"]
    return args


async def connect(settings: Settings) -> Client:
    api_key = settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
        api_key=api_key,
        tls=settings.temporal_tls or api_key is not None,
    )
