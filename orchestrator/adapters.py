"""Multi-tenant LoRA: adapters of a vllm model, each a model name of its own.

Adapters are declared under a model's `lora.adapters` in models.yaml, or
registered at runtime (POST /admin/adapters) and then kept in
<state>/adapters.db, so they outlive a restart. A request naming an adapter
goes to its base model's service with the adapter's name as `model`; the
first such request after the service started loads the adapter into it
(vLLM's POST /v1/load_lora_adapter). Nothing restarts: hundreds of adapters
share one base in memory, and vLLM keeps the recently used ones ready.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import sqlite_utils

from core.config import MODEL_NAME, ROOT_DIR, Config, expand
from core.errors import ServiceError
from core.storage import open_database
from orchestrator.service import Service

LOAD_TIMEOUT = aiohttp.ClientTimeout(total=120)


@dataclass(frozen=True)
class Adapter:
    name: str
    base: str  # the model id it adapts
    path: str  # local directory of a PEFT LoRA adapter
    source: str  # "config" (models.yaml) or "admin" (registered at runtime)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "base": self.base, "path": self.path, "source": self.source}


def _create_adapters(db: sqlite_utils.Database) -> None:
    db["adapters"].create({"name": str, "base": str, "path": str, "registered_at": float}, pk="name")


MIGRATIONS = [_create_adapters]


def check_adapter_dir(path: Path, max_rank: int) -> None:
    """400 unless path holds a PEFT LoRA adapter whose rank the base accepts."""
    config_file = path / "adapter_config.json"
    if not path.is_dir():
        raise ServiceError(400, f"adapter path {path} is not a directory", code="invalid_adapter", param="path")
    try:
        adapter_config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise ServiceError(
            400, f"{config_file} cannot be read as a PEFT adapter config: {exc}", code="invalid_adapter", param="path"
        ) from None
    if not isinstance(adapter_config, dict) or adapter_config.get("peft_type") != "LORA":
        raise ServiceError(400, f"{config_file} is not a LoRA adapter (peft_type LORA)", code="invalid_adapter")
    rank = adapter_config.get("r")
    if not isinstance(rank, int) or rank > max_rank:
        raise ServiceError(
            400,
            f"the adapter's rank r={rank} exceeds its base model's lora.max_rank {max_rank}",
            code="invalid_adapter",
        )


class Adapters:
    """Every adapter by name, and which are loaded in which service process."""

    def __init__(self, config: Config, db_path: Path) -> None:
        self._db = open_database(db_path, MIGRATIONS)
        self._registered = {
            row["name"]: Adapter(row["name"], row["base"], row["path"], "admin") for row in self._db["adapters"].rows
        }
        self._session: aiohttp.ClientSession | None = None
        self.update(config)

    def update(self, config: Config) -> None:
        """Take models.yaml's adapters from config (a reload)."""
        values = {"STATE_DIR": str(config.state_path()), "ROOT": str(ROOT_DIR)}
        self._config = config
        self._declared = {
            name: Adapter(name, model_id, expand(path, values), "config")
            for model_id, model in config.models.items()
            if model.lora
            for name, path in model.lora.adapters.items()
        }

    def get(self, name: str) -> Adapter | None:
        """The usable adapter called name: its base exists and serves LoRA, and
        (registered ones) no model, alias or declared adapter took its name since."""
        adapter = self._declared.get(name)
        if adapter is None:
            registered = self._registered.get(name)
            adapter = registered if registered is not None and self._shadow(registered) is None else None
        if adapter is None:
            return None
        base = self._config.models.get(adapter.base)
        return adapter if base is not None and base.lora is not None else None

    def all(self) -> list[Adapter]:
        return [a for a in (*self._declared.values(), *self._registered.values()) if self.get(a.name) is a]

    def unusable(self) -> list[tuple[Adapter, str]]:
        """Registered adapters that cannot serve now, and why (a reload changed their base or took their name)."""
        found = []
        for adapter in self._registered.values():
            reason = self._shadow(adapter)
            base = self._config.models.get(adapter.base)
            if reason is None and (base is None or base.lora is None):
                reason = f"its base model '{adapter.base}' is gone or no longer has `lora`"
            if reason:
                found.append((adapter, reason))
        return found

    def _shadow(self, adapter: Adapter) -> str | None:
        """What took a registered adapter's name in models.yaml, if anything."""
        for model_id, model in self._config.models.items():
            if adapter.name == model_id or adapter.name in model.aliases:
                return f"models.yaml now gives its name to model '{model_id}'"
        if adapter.name in self._declared:
            return "models.yaml now declares an adapter of that name"
        return None

    # --- runtime registration (the admin API) -------------------------------

    def _taken(self, name: str) -> str | None:
        for model_id, model in self._config.models.items():
            if name == model_id or name in model.aliases:
                return f"model '{model_id}'"
        if name in self._declared:
            return f"an adapter of '{self._declared[name].base}' in models.yaml"
        if name in self._registered:
            return f"a registered adapter of '{self._registered[name].base}'"
        return None

    def register(self, name: str, base: str, path: str) -> Adapter:
        if not MODEL_NAME.match(name):
            raise ServiceError(400, f"adapter name {name!r} must match {MODEL_NAME.pattern}", param="name")
        owner = self._taken(name)
        if owner:
            raise ServiceError(409, f"the name '{name}' is already {owner}", code="name_taken", param="name")
        model = self._config.models.get(base)
        if model is None:
            raise ServiceError(404, f"base model '{base}' does not exist", code="model_not_found", param="base")
        if model.lora is None:
            raise ServiceError(
                400, f"model '{base}' does not serve LoRA adapters (add `lora:` to it in models.yaml)", param="base"
            )
        directory = Path(path).expanduser()
        if not directory.is_absolute():
            raise ServiceError(400, "path must be absolute (the orchestrator's working directory is not yours)")
        check_adapter_dir(directory, model.lora.max_rank)
        adapter = Adapter(name, base, str(directory), "admin")
        self._db["adapters"].insert(
            {"name": name, "base": base, "path": adapter.path, "registered_at": time.time()}, pk="name"
        )
        self._registered[name] = adapter
        return adapter

    def unregister(self, name: str) -> Adapter:
        adapter = self._registered.pop(name, None)
        if adapter is None:
            if name in self._declared:
                raise ServiceError(
                    409, f"adapter '{name}' is declared in models.yaml; remove it there and reload", code="declared"
                )
            raise ServiceError(404, f"no registered adapter '{name}'", code="adapter_not_found")
        self._db["adapters"].delete(name)
        return adapter

    # --- loading into a running base service ---------------------------------

    async def ensure_loaded(self, service: Service, adapter: Adapter) -> None:
        """Load adapter into service's process unless it already is. 503 naming
        the reason when it cannot be (code adapter_rejected: vLLM refused it)."""
        if self._loaded(service).get(adapter.name) == adapter.path:
            return
        async with service.lora_lock:  # one load at a time per service; the others find it loaded
            # What the name means now: a reload or a DELETE may have come while this request waited.
            current = self.get(adapter.name)
            if current is None or current.base != service.id:
                raise ServiceError(404, f"the model '{adapter.name}' does not exist any more", code="model_not_found")
            loaded = self._loaded(service)
            if loaded.get(current.name) == current.path:
                return
            if current.source == "config":  # registered ones were checked when registered
                base = self._config.models[current.base]
                try:
                    check_adapter_dir(Path(current.path), base.lora.max_rank if base.lora else 0)
                except ServiceError as exc:
                    message = f"adapter '{current.name}': {exc.message}"
                    raise ServiceError(503, message, code="adapter_rejected") from None
            body: dict[str, Any] = {"lora_name": current.name, "lora_path": current.path}
            if current.name in loaded:  # models.yaml moved it: replace the weights vLLM has under that name
                body["load_inplace"] = True
            status, message = await self._call(service, "/v1/load_lora_adapter", body)
            if status != 200:
                code = "adapter_rejected" if 400 <= status < 500 else "adapter_load_failed"
                raise ServiceError(
                    503, f"adapter '{current.name}' could not be loaded into '{service.id}': {message}", code=code
                )
            loaded[current.name] = current.path

    async def unload(self, service: Service, adapter: Adapter) -> None:
        """Drop adapter from service's process if it is loaded there."""
        async with service.lora_lock:
            if adapter.name in self._loaded(service):
                await self._call(service, "/v1/unload_lora_adapter", {"lora_name": adapter.name})
                self._loaded(service).pop(adapter.name, None)

    def loaded_in(self, service: Service) -> list[str]:
        return sorted(self._loaded(service))

    @staticmethod
    def _loaded(service: Service) -> dict[str, str]:
        """Adapters loaded in service's current process (a new process has none)."""
        pid = service.process.pid if service.process else None
        if service.lora_pid != pid:
            service.lora_pid, service.lora_loaded = pid, {}
        return service.lora_loaded

    async def _call(self, service: Service, path: str, body: dict[str, str]) -> tuple[int, str]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=LOAD_TIMEOUT)
        try:
            async with self._session.post(service.url + path, json=body) as response:
                text = await response.text()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise ServiceError(
                503, f"'{service.id}' did not answer {path}: {type(exc).__name__}", code="adapter_unreachable"
            ) from None
        try:
            message = str(json.loads(text)["error"]["message"])
        except (ValueError, KeyError, TypeError):
            message = text[:500]
        return response.status, message

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._db.close()

