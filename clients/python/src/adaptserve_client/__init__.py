"""adaptserve-client: typed access to an adaptserve server (templates, usage, admin),
blocking or asyncio, and a configured `openai` SDK client for chat and completions."""

from adaptserve_client.api import pack_folder
from adaptserve_client.calls import Retries
from adaptserve_client.client import AsyncClient, Client
from adaptserve_client.errors import (
    AdaptserveError,
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
)
from adaptserve_client.types import (
    Attributions,
    Classification,
    Generation,
    Span,
    Template,
    TokenUsage,
    UsageRow,
)

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "AdaptserveError",
    "AsyncClient",
    "Attributions",
    "AuthenticationError",
    "BadRequestError",
    "Classification",
    "Client",
    "ConflictError",
    "Generation",
    "InternalServerError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RateLimitError",
    "Retries",
    "Span",
    "Template",
    "TokenUsage",
    "UsageRow",
    "pack_folder",
]
