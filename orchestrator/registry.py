"""Turns the `model` a client sends into a configured model id.

Aliases resolve here; the router (issue #6) will add versions and replicas.
"""

from __future__ import annotations

from core.config import Config, ModelConfig
from core.errors import ServiceError

# Which model types each OpenAI route may reach.
ROUTE_TYPES: dict[str, tuple[str, ...]] = {
    "/v1/chat/completions": ("text", "vision", "service"),
    "/v1/completions": ("text", "service"),
    "/v1/embeddings": ("embedding", "service"),
}


class Registry:
    def __init__(self, config: Config) -> None:
        self.update(config)

    def update(self, config: Config) -> None:
        """Serve config's names from now on (a reload)."""
        names: dict[str, str] = {}
        for model_id, model in config.models.items():
            names[model_id] = model_id
            for alias in model.aliases:
                names[alias] = model_id
        self.models, self.names = config.models, names

    def resolve(self, name: str, route: str) -> tuple[str, ModelConfig]:
        model_id = self.names.get(name)
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
        return model_id, model
