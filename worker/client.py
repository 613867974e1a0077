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


async def connect(settings: Settings) -> Client:
    api_key = settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
        api_key=api_key,
        tls=settings.temporal_tls or api_key is not None,
    )
