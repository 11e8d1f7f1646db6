"""The features of a completed request that the orchestrator sends to the
drift service (orchestrator/drift_feed.py), by name and kind. Both sides read
this catalog: the orchestrator to build each event, the drift service to
check a monitor with `source: requests` asks only for features that exist,
with the kind they have.

A feature the request did not have (time to first token of a request that
was not streamed, tokens of a refused one) is absent from its event, and
counted as missing by the monitors that watch it.
"""

from __future__ import annotations

REQUEST_FEATURES: dict[str, str] = {
    "latency_ms": "numeric",  # from the request's arrival to its last byte sent
    "ttft_ms": "numeric",  # to its first byte sent (for a stream: the first event)
    "prompt_tokens": "numeric",  # as the model's service counted them (estimated for a stream left early)
    "completion_tokens": "numeric",
    "status": "categorical",  # the HTTP status as a string, 499 for a client that left
    "error": "categorical",  # the error code ("none" for a success), e.g. rate_limited, model_not_found
    "finish_reason": "categorical",  # stop, length, ... ("none" when the answer had none)
    "route": "categorical",  # /v1/chat/completions, /v1/embeddings, ...
    "model": "categorical",  # the model's id (a monitor on every model can watch the mix)
    "key": "categorical",  # the API key's id, or jwt:<subject>; "anonymous" with auth off
    "tenant": "categorical",  # the JWT's tenant; "none" otherwise
    "stream": "categorical",  # "true" or "false"
    "prompt_embedding": "embedding",  # with settings.drift.prompt_embeddings: the prompt's embedding
}
