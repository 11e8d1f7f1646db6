"""Structured JSON logs on stderr, with secrets redacted.

Services write to stderr; the orchestrator captures each service's stream into
its own rotating file, so one format serves both.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

# Values that must never reach a log line: bearer tokens, API keys, passwords.
_SECRET_PATTERNS = [
    re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)(bearer\s+)?[^\s\"',}]+"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    # a list of them in a Python repr, as vLLM logs its arguments: "'api_key': ['K1', 'K2']"
    re.compile(r"(?i)((?:api[_-]?key|token|secret|password)[\"']?\s*[:=]\s*)\[[^\]]*\]"),
    # key: value, key=value
    re.compile(r"(?i)((?:api[_-]?key|token|secret|password)[\"']?\s*[:=]\s*[\"']?)(?!\[REDACTED\])[^\s\"',}]+"),
    re.compile(r"\b(sk-)[A-Za-z0-9_-]{8,}"),
    # command-line flags: --api-key VALUE, --hf-token VALUE, --password=VALUE
    re.compile(
        r"(?i)(--(?:[a-z0-9]+[-_])*(?:api[-_]?key|token|secret|password)(?:[-_][a-z0-9]+)*[\s=]+[\"']?)[^\s\"']+"
    ),
]


def redact(text: str) -> str:
    """Replace anything that looks like a credential with [REDACTED]."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + "[REDACTED]", text)
    return text


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update({k: redact(str(v)) if isinstance(v, str) else v for k, v in extra.items()})
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def configure_logging(service: str, level: str = "info") -> None:
    """Send every logger's records to stderr as one JSON object per line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log is one line per request: too chatty on the hot path.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def log_event(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields: object) -> None:
    """Log msg with structured key/value fields merged into the JSON line."""
    logger.log(level, msg, extra={"fields": fields})
