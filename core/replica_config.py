"""models.yaml's `replicas:` of a model: where else it is served (other
modelyard appliances, any OpenAI-compatible server) and how the router
spreads requests over those and the local service (orchestrator/routing/).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

PEER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
LOCAL = "local"  # the name of a model's first local service in /admin/replicas
# Separates a model's id from its local service's number (chat~2). Model ids
# cannot hold it (core/config.py MODEL_NAME), and URLs need not escape it.
SERVICE_NUMBER = "~"
MAX_LOCAL = 16
LOCAL_SCHEMA = {
    "anyOf": [{"type": "boolean"}, {"type": "integer", "minimum": 0, "maximum": MAX_LOCAL}],
    "description": "Local services of this model that serve as replicas: true (1), false (0: only the peers serve), "
    "or a number, e.g. one per GPU; no two of them share a GPU.",
}


def local_service_ids(model_id: str, count: int) -> list[str]:
    """The scheduler's services of a model with `count` local replicas: the
    first is the model's own id (what a model without replicas has), the
    others chat~2, chat~3 ... Always at least the first."""
    return [model_id] + [f"{model_id}{SERVICE_NUMBER}{n}" for n in range(2, count + 1)]


def model_id_of(service_id: str) -> str:
    """The model a service serves: chat~2 -> chat, chat -> chat."""
    return service_id.split(SERVICE_NUMBER, 1)[0]


def local_replica_name(number: int) -> str:
    """The name /admin/replicas gives local service `number` (1-based): local, local-2 ..."""
    return LOCAL if number == 1 else f"{LOCAL}-{number}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PeerConfig(_Strict):
    """A remote replica: another appliance's (or any OpenAI-compatible server's) base URL."""

    name: str = Field(description="How this replica is called in /admin/replicas, logs and metrics.")
    url: str = Field(description="Base URL without /v1, e.g. http://10.0.0.2:9000; requests go to URL + /v1/...")
    api_key: str | None = Field(
        None, description="Sent as 'Authorization: Bearer' to the peer; use ${ENV} to keep it out of this file.")
    model: str | None = Field(None, description="The model's name there; unset: the same id as here.")
    weight: float = Field(1.0, gt=0, le=1000, description="Its share under strategy 'weighted'.")
    health_path: str = Field("/health", description="Checked with GET every health.interval; 200 is healthy.")

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not PEER_NAME.match(name) or re.fullmatch(rf"{LOCAL}(-[0-9]+)?", name):
            raise ValueError(f"peer name {name!r} must match {PEER_NAME.pattern} and not be 'local' or 'local-N' "
                             "(the local services' names)")
        return name

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        parts = urlsplit(url)
        try:
            port_ok = parts.port is None or 0 < parts.port < 65536
        except ValueError:
            port_ok = False
        if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok or any(c.isspace() for c in url):
            raise ValueError("must be an http:// or https:// URL, e.g. http://10.0.0.2:9000")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not hold credentials (user:pass@): give the peer's key as api_key")
        if parts.query or parts.fragment or "${" in url:
            raise ValueError("must be a plain base URL: no query, fragment or ${...}")
        url = url.rstrip("/")
        if url.endswith("/v1"):
            raise ValueError("give the base URL without /v1: the request's own path is appended")
        return url

    @field_validator("health_path")
    @classmethod
    def _path(cls, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError("must start with '/'")
        return path


class HealthCheckConfig(_Strict):
    interval: float = Field(10.0, gt=0, le=3600, description="Seconds between active checks of each peer.")
    timeout: float = Field(5.0, gt=0, le=600, description="Seconds a check may take.")
    unhealthy_after: int = Field(3, ge=1, le=100, description="Failed checks in a row that take a peer out.")
    healthy_after: int = Field(1, ge=1, le=100, description="Passed checks in a row that bring it back.")

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> HealthCheckConfig:
        if self.timeout > self.interval:
            raise ValueError("timeout must not exceed interval")
        return self


class BreakerConfig(_Strict):
    failure_threshold: int = Field(5, ge=1, le=1000, description="Failed requests in a row that open the circuit.")
    open_seconds: float = Field(30.0, gt=0, le=3600, description="How long it stays open before one probe request.")
    max_open_seconds: float = Field(300.0, gt=0, le=86400,
                                    description="A failed probe doubles the open time, up to this.")

    @model_validator(mode="after")
    def _bounds(self) -> BreakerConfig:
        if self.max_open_seconds < self.open_seconds:
            raise ValueError("max_open_seconds must be at least open_seconds")
        return self


class ReplicasConfig(_Strict):
    """Replicas of a model: the local service (unless local: false) and peers."""

    strategy: Literal["round_robin", "weighted", "least_latency", "least_outstanding", "consistent_hash"] = Field(
        "least_outstanding", description="How a replica is picked for each request.")
    hash_on: Literal["user", "key"] = Field(
        "user", description="consistent_hash: the request's `user` field (else the API key), or the API key.")
    load_factor: float = Field(1.25, ge=1.0, le=10.0,
                               description="consistent_hash: a replica takes at most this times the mean load.")
    local: Annotated[int, WithJsonSchema(LOCAL_SCHEMA)] = Field(1, ge=0, le=MAX_LOCAL, strict=True,
                                                                description=LOCAL_SCHEMA["description"])
    local_weight: float = Field(1.0, gt=0, le=1000, description="Each local service's share under 'weighted'.")
    peers: list[PeerConfig] = Field(default_factory=list, max_length=64)
    health: HealthCheckConfig = Field(default_factory=HealthCheckConfig)  # type: ignore[arg-type]
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)  # type: ignore[arg-type]
    attempts: int = Field(2, ge=1, le=5, description="Replicas tried per request, before any byte went back.")

    @field_validator("local", mode="before")
    @classmethod
    def _local_flag(cls, local: object) -> object:
        return int(local) if isinstance(local, bool) else local  # true: the one local service; false: none

    @property
    def local_count(self) -> int:
        return self.local

    @model_validator(mode="after")
    def _some_replica(self) -> ReplicasConfig:
        if not self.local and not self.peers:
            raise ValueError("with local: false, give at least one peer")
        names = [peer.name for peer in self.peers]
        if len(set(names)) != len(names):
            raise ValueError("peer names must be unique")
        return self
