"""Monitors with `source: requests`: fed by the orchestrator's request feed
(orchestrator/drift_feed.py) rather than by POST /drift/ingest. Their
features must be ones a request has (core/request_features.py), with the
kind it has; the feed's batches arrive at POST /drift/requests."""

from __future__ import annotations

import hmac
import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from core.errors import ServiceError
from core.request_features import REQUEST_FEATURES

MAX_FEED_BATCH = 10_000


class RequestEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seq: int = Field(ge=1, le=2**62)  # the feed's sequence number: a batch sent again is recognised by it
    ts: float = Field(allow_inf_nan=False)
    model: str = Field(max_length=256)
    features: dict[str, Any]


class RequestFeed(BaseModel):
    model_config = ConfigDict(extra="forbid")

    feed: str = Field(min_length=1, max_length=64)  # the feed's id: seq numbers count within one feed
    events: list[RequestEvent] = Field(max_length=MAX_FEED_BATCH)


# Set by the orchestrator that starts this service: only it may post the request feed.
TOKEN_ENV = "MODELYARD_DRIFT_FEED_TOKEN"
TOKEN_HEADER = "x-modelyard-feed-token"


def check_feed_token(presented: str | None) -> None:
    """403 unless the caller holds the orchestrator's feed token (when one was set:
    a service run on its own trusts whoever reaches its loopback port)."""
    expected = os.environ.get(TOKEN_ENV)
    if expected and not hmac.compare_digest((presented or "").encode(), expected.encode()):
        raise ServiceError(403, "only the orchestrator may post the request feed", "feed_token_invalid")


def check_request_features(features: list[Any]) -> None:
    """400 naming the first feature a request does not have, or has with another kind."""
    for index, feature in enumerate(features):
        kind = REQUEST_FEATURES.get(feature.name)
        if kind is None:
            known = ", ".join(sorted(REQUEST_FEATURES))
            raise ServiceError(400, f"requests have no feature {feature.name!r}; they have: {known}",
                               "unknown_feature", f"features.{index}.name")
        if feature.kind != kind:
            raise ServiceError(400, f"request feature {feature.name!r} is {kind}, not {feature.kind}",
                               "kind_mismatch", f"features.{index}.kind")
