"""What stops the orchestrator from starting although models.yaml passed its
schema: the settings that need something outside the file (a key, an
environment variable) or that would expose the port. Checked by
`python -m orchestrator` (and its --check) before it serves, and listed in
full by `modelyard config check`."""

from __future__ import annotations

import ipaddress

from core.config import Config
from orchestrator.capture import keyring_of
from orchestrator.jwt_auth import JwtVerifier


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def insecure_bind(host: str, auth: bool, insecure_public: bool) -> str | None:
    """Why listening on host is refused, or None. With auth off, anyone who
    reaches the port may run and manage every model: loopback only, unless
    the configuration says so explicitly."""
    if auth or insecure_public or is_loopback(host):
        return None
    return (f"refusing to listen on {host} with auth off: anyone who reaches it could run and manage every "
            "model. Turn on settings.auth.enabled (and create a key: python -m orchestrator.keys_cli create "
            "--name NAME --role admin), or set settings.auth.insecure_public: true to accept that.")


def startup_problems(config: Config, host: str | None = None) -> list[str]:
    """Every problem, one a line (host: the address it will listen on, when
    the command line overrides settings.host)."""
    settings = config.settings
    problems = []
    refusal = insecure_bind(host or settings.host, settings.auth.enabled, settings.auth.insecure_public)
    if refusal:
        problems.append(refusal)
    if settings.auth.enabled and settings.auth.jwt is not None:
        try:
            JwtVerifier(settings.auth.jwt)  # its secret or JWKS must be there before we serve
        except ValueError as err:
            problems.append(str(err))  # it names its field (settings.auth.jwt...) itself
    if settings.tracing.enabled:
        try:
            settings.tracing.resolved_headers()  # a header's ${VAR} must be set before we serve
        except ValueError as err:
            problems.append(str(err))  # it names settings.tracing.headers itself
    if settings.capture.enabled:
        try:
            keyring_of(settings.capture)  # its master key must be there before we serve
        except ValueError as err:
            problems.append(f"settings.capture: {err}")
    return problems
