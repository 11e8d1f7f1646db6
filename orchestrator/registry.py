"""Turns the `model` a client sends into a configured model id, and the name
the service behind it expects.

Aliases resolve here, LoRA adapters (orchestrator/adapters.py) to their
base model, and registered versions (orchestrator/versions.py: `chat@production`,
`chat:1.2.0`, `chat`) to the models.yaml model serving them. models.yaml's
names come first: a version reference is looked up only for a name it lacks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.config import Config, ModelConfig
from core.errors import ServiceError
from orchestrator.adapters import Adapter, Adapters
from orchestrator.versions import RegistryError, VersionStore

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
    def __init__(self, config: Config, adapters: Adapters | None = None,
                 versions: VersionStore | None = None) -> None:
        self.adapters = adapters
        self.versions = versions
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
        """The model id a models.yaml name or alias stands for; other names as they are. (A key's
        model list is read through this: an entry never widens with what the registry says later.)"""
        return self.names.get(name, name)

    def model_of(self, name: str) -> str:
        """The model a requested name reaches: models.yaml names, then version references; else the name."""
        model_id = self.names.get(name)
        if model_id is None and self.versions is not None:
            try:
                found = self.versions.resolve(name)
            except RegistryError:
                found = None
            model_id = found[2] if found is not None and found[2] in self.models else None
        return model_id or name

    def registered_base(self, name: str) -> str | None:
        """The registered model a reference names (`chat` of `chat@production`), if it is one."""
        if self.versions is None or name in self.names:
            return None
        base = re.split("[@:]", name, maxsplit=1)[0]
        return base if self.versions.has(base) else None

    def is_registered_name(self, name: str) -> bool:
        """Whether name reaches the registry: not a models.yaml name or alias, nor a LoRA adapter (those
        come first), and a registered model's name, alone or with '@' or ':'."""
        if name in self.names or (self.adapters is not None and self.adapters.get(name) is not None):
            return False
        return self.registered_base(name) is not None

    def _version(self, name: str) -> str | None:
        """The model serving a version reference; None when name is not a registered model."""
        if self.versions is None:
            return None
        try:
            found = self.versions.resolve(name)
        except RegistryError as exc:
            raise ServiceError(exc.status, exc.message, code=exc.code, param="model") from None
        if found is None:
            return None
        if found[2] not in self.models:  # its model left models.yaml since the version was made
            raise ServiceError(404, f"version {found[1]} of '{found[0]}' is served by '{found[2]}', which "
                               "models.yaml no longer has", code="model_not_found", param="model")
        return found[2]

    def resolve(self, name: str, route: str) -> Target:
        model_id = self.names.get(name)
        adapter = self.adapters.get(name) if model_id is None and self.adapters is not None else None
        if adapter is not None:
            model_id = adapter.base
        if model_id is None:
            model_id = self._version(name)
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
