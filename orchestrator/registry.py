"""Turns the `model` a client sends into a configured model id, and the name
the service behind it expects.

Aliases resolve here, and LoRA adapters (orchestrator/adapters.py) to their
base model; the router (issue #6) will add versions and replicas.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.config import Config, ModelConfig
from core.errors import ServiceError
from orchestrator.adapters import Adapter, Adapters

# Which model types each OpenAI route may reach.
ROUTE_TYPES: dict[str, tuple[str, ...]] = {
    "/v1/chat/completions": ("text", "vision", "service"),
    "/v1/completions": ("text", "service"),
    "/v1/embeddings": ("embedding", "service"),
    "/v1/images/generations": ("image", "service"),
    "/v1/audio/generations": ("audio", "service"),
    "/v1/predict": ("classification", "service"),
}


@dataclass(frozen=True)
class Target:
    model_id: str  # the configured model whose service answers
    model: ModelConfig
    upstream: str  # the `model` that service gets
    adapter: Adapter | None = None  # a LoRA adapter to load into it first


class Registry:
    def __init__(self, config: Config, adapters: Adapters | None = None) -> None:
        self.adapters = adapters
        self.update(config)

    def update(self, config: Config) -> None:
        """Serve config's names from now on (a reload)."""
        names: dict[str, str] = {}
        for model_id, model in config.models.items():
            names[model_id] = model_id
            for alias in model.aliases:
                names[alias] = model_id
        self.models, self.names = config.models, names
        if self.adapters is not None:
            self.adapters.update(config)

    def canonical(self, name: str) -> str:
        """The model id a name or alias stands for; other names as they are."""
        return self.names.get(name, name)

    def resolve(self, name: str, route: str) -> Target:
        model_id = self.names.get(name)
        adapter = self.adapters.get(name) if model_id is None and self.adapters is not None else None
        if adapter is not None:
            model_id = adapter.base
        if model_id is None:
            raise ServiceError(
                404,
                f"the model '{name}' does not exist; GET /v1/models lists the available ones",
                code="model_not_found",
                param="model",
            )
        model = self.models[model_id]
        allowed = ROUTE_TYPES.get(route, ())
        if model.type not in allowed:
            raise ServiceError(
                400,
                f"model '{model_id}' is a {model.type} model and is not served on {route}",
                code="wrong_model_type",
                param="model",
            )
        if adapter is not None:
            return Target(model_id, model, adapter.name, adapter)
        return Target(model_id, model, model.served_name or model_id)
