"""/drift/* on the orchestrator's port: the drift monitor's API (models/drift/
README.md), forwarded to the sibling service behind the orchestrator's auth
(scopes drift:read for GET, drift:write for the rest), body limit and audit
(orchestrator/sibling_api.py).

/drift/metrics is the service's Prometheus page. /drift/requests, where the
orchestrator's own request feed goes in (orchestrator/drift_feed.py), is not
reachable from outside: a client cannot pose as the request stream.
"""

from __future__ import annotations

from fastapi import APIRouter

from orchestrator.sibling_api import build_sibling_router

FORWARD_TIMEOUT = 120.0  # a report over 100,000-value windows takes a while


def build_drift_router() -> APIRouter:
    return build_sibling_router(
        "drift",
        "the drift monitor is off; turn it on with settings.drift.enabled in models.yaml "
        "(and ./scripts/install.sh --engine drift)",
        internal=frozenset({"requests"}), timeout=FORWARD_TIMEOUT)
