"""API keys: made once, stored only as a hash, looked up by their id.

A key reads `my-<id>-<secret>`: 12 hex characters of id (the primary key of
its row, safe to show and log) and 43 of secret. The database
(<state>/keys.db) holds the SHA-256 of the whole key, never the key: keys are
random and long, so a fast hash is enough (a slow one is for passwords).

Every key has a name, an optional owner, a role (viewer, member, admin),
extra scopes, an optional list of the models it may use, an optional expiry,
optional limits (requests and tokens per minute, requests and tokens per
day or month: orchestrator/limits.py) and once revoked, when. Rotation makes a new key with the same settings and
ends the old one now or after a grace period.

The orchestrator keeps every key in memory and notices rows written by
another process (the `python -m orchestrator.keys_cli` CLI) within a second,
via sqlite's data_version. Writes go to the database first, in statements
that cannot undo another process's revocation.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from core.storage import open_database
from orchestrator.limits import add_quota_tokens, create_quota_table

KEY_PREFIX = "my-"
_KEY = re.compile(r"^my-([0-9a-f]{12})-([A-Za-z0-9_-]{43})$")
ROLES = ("viewer", "member", "admin")
QUOTA_PERIODS = ("day", "month")
REFRESH_SECONDS = 1.0


@dataclass(frozen=True)
class KeyLimits:
    """What a key may use (orchestrator/limits.py); None: no limit."""

    rpm: float | None = None  # requests per minute
    tpm: float | None = None  # tokens per minute
    quota_requests: int | None = None  # requests per quota_period
    quota_tokens: int | None = None  # tokens per quota_period
    quota_period: str | None = None  # "day" or "month" (UTC), with either quota

    def check(self) -> None:
        quotas = [q for q in (self.quota_requests, self.quota_tokens) if q is not None]
        if any(q < 0 for q in quotas):
            raise ValueError("a quota must be a count of at least 0")
        if quotas and self.quota_period not in QUOTA_PERIODS:
            raise ValueError(f"a quota needs a period: {' or '.join(QUOTA_PERIODS)}")


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    role: str
    scopes: tuple[str, ...] = ()
    models: tuple[str, ...] | None = None  # None: every model
    owner: str | None = None
    created: float = 0.0
    expires: float | None = None
    revoked: float | None = None
    replaced_by: str | None = None
    rpm: float | None = None  # requests per minute (orchestrator/limits.py); None: no limit
    quota_requests: int | None = None  # requests per quota_period; None: no quota
    quota_period: str | None = None  # "day" or "month" (UTC)
    tpm: float | None = None  # tokens per minute
    quota_tokens: int | None = None  # tokens per quota_period
    lineage: str = ""  # the first key of its rotations: quotas count per lineage, not per key
    hash: str = ""

    def state(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if self.revoked is not None and self.revoked <= now:
            return "revoked"
        if self.expires is not None and self.expires <= now:
            return "expired"
        return "active"

    def limits(self) -> KeyLimits:
        return KeyLimits(self.rpm, self.tpm, self.quota_requests, self.quota_tokens, self.quota_period)

    def public(self) -> dict[str, Any]:
        """What the admin API and the CLI show: everything but the hash."""
        shown = asdict(self)
        del shown["hash"]
        shown["scopes"], shown["models"] = list(self.scopes), None if self.models is None else list(self.models)
        shown["state"] = self.state()
        return shown


class KeyRejected(Exception):
    """A presented key that is not a usable one; code says which way."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _create_table(db: sqlite_utils.Database) -> None:
    db["api_keys"].create(
        {"id": str, "hash": str, "name": str, "owner": str, "role": str, "scopes": str, "models": str,
         "created": float, "expires": float, "revoked": float, "replaced_by": str},
        pk="id",
        not_null={"hash", "name", "role", "scopes", "created"},
    )


def _add_limits(db: sqlite_utils.Database) -> None:
    db["api_keys"].add_column("rpm", float)
    db["api_keys"].add_column("quota_requests", int)
    db["api_keys"].add_column("quota_period", str)
    db["api_keys"].add_column("lineage", str)
    db.execute("UPDATE api_keys SET lineage = id")
    create_quota_table(db)


def _add_token_limits(db: sqlite_utils.Database) -> None:
    db["api_keys"].add_column("tpm", float)
    db["api_keys"].add_column("quota_tokens", int)
    add_quota_tokens(db)


MIGRATIONS = [_create_table, _add_limits, _add_token_limits]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _row(key: ApiKey) -> dict[str, Any]:
    row = asdict(key)
    row["scopes"] = json.dumps(list(key.scopes))
    row["models"] = None if key.models is None else json.dumps(list(key.models))
    return row


def _from_row(row: dict[str, Any]) -> ApiKey:
    models = json.loads(row["models"]) if row["models"] is not None else None
    return ApiKey(
        id=row["id"], name=row["name"], role=row["role"], scopes=tuple(json.loads(row["scopes"])),
        models=None if models is None else tuple(models), owner=row["owner"], created=row["created"],
        expires=row["expires"], revoked=row["revoked"], replaced_by=row["replaced_by"], rpm=row["rpm"],
        quota_requests=row["quota_requests"], quota_period=row["quota_period"], tpm=row["tpm"],
        quota_tokens=row["quota_tokens"], lineage=row["lineage"] or row["id"],
        hash=row["hash"],
    )


class KeyStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = open_database(path, MIGRATIONS)
        self._keys: dict[str, ApiKey] = {}
        self._version = -1
        self._checked = 0.0
        self.refresh()

    def close(self) -> None:
        self.db.conn.close()

    def refresh(self) -> None:
        """Re-read the keys if another connection changed them."""
        version = self.db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._version:
            self._keys = {row["id"]: _from_row(row) for row in self.db["api_keys"].rows}
            self._version = version
        self._checked = time.monotonic()

    def _fresh(self) -> None:
        if time.monotonic() - self._checked >= REFRESH_SECONDS:
            self.refresh()

    # --- reading ------------------------------------------------------------

    def all(self) -> list[ApiKey]:
        self._fresh()
        return sorted(self._keys.values(), key=lambda key: key.created)

    def get(self, key_id: str) -> ApiKey | None:
        self._fresh()
        return self._keys.get(key_id)

    def verify(self, presented: str, now: float | None = None) -> ApiKey:
        """The active key presented; KeyRejected saying why not."""
        match = _KEY.match(presented)
        if match is None:
            raise KeyRejected("invalid_api_key", "the API key is malformed: modelyard keys look like my-<id>-<secret>")
        self._fresh()
        key = self._keys.get(match.group(1))
        # compare_digest even for an unknown id: the answer's timing says nothing either way.
        if not hmac.compare_digest(key.hash if key else "0" * 64, hash_key(presented)) or key is None:
            raise KeyRejected("invalid_api_key", "the API key is not valid")
        state = key.state(now)
        if state == "revoked":
            raise KeyRejected("revoked_api_key", f"the API key {key.id} was revoked")
        if state == "expired":
            raise KeyRejected("expired_api_key", f"the API key {key.id} has expired")
        return key

    # --- writing ------------------------------------------------------------

    def _new(
        self,
        name: str,
        role: str,
        scopes: tuple[str, ...],
        models: tuple[str, ...] | None,
        owner: str | None,
        expires: float | None,
        limits: KeyLimits,
        lineage: str | None,
    ) -> tuple[ApiKey, str]:
        if role not in ROLES:
            raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
        limits.check()
        key_id = secrets.token_hex(6)  # 48 bits: a clash is refused by the primary key, not silently merged
        secret = f"{KEY_PREFIX}{key_id}-{secrets.token_urlsafe(32)}"
        key = ApiKey(id=key_id, name=name, role=role, scopes=tuple(scopes), models=models, owner=owner,
                     created=time.time(), expires=expires, rpm=limits.rpm, tpm=limits.tpm,
                     quota_requests=limits.quota_requests, quota_tokens=limits.quota_tokens,
                     quota_period=limits.quota_period, lineage=lineage or key_id, hash=hash_key(secret))
        return key, secret

    def _insert(self, key: ApiKey) -> None:
        row = _row(key)
        columns = ", ".join(row)
        self.db.conn.execute(f"INSERT INTO api_keys ({columns}) VALUES ({', '.join('?' * len(row))})",
                             list(row.values()))

    def _reload(self, key_id: str) -> ApiKey | None:
        rows = list(self.db["api_keys"].rows_where("id = ?", [key_id]))
        if not rows:
            self._keys.pop(key_id, None)
            return None
        key = self._keys[key_id] = _from_row(rows[0])
        return key

    def create(
        self,
        name: str,
        role: str = "member",
        scopes: tuple[str, ...] = (),
        models: tuple[str, ...] | None = None,
        owner: str | None = None,
        expires: float | None = None,
        limits: KeyLimits | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its secret form, which is shown once and never stored."""
        key, secret = self._new(name, role, scopes, models, owner, expires, limits or KeyLimits(), None)
        with self.db.conn:
            self._insert(key)
        self._keys[key.id] = key
        return key, secret

    def revoke(self, key_id: str, when: float | None = None) -> ApiKey:
        """Revoke key_id now (or at `when`, unless it was revoked earlier, by
        anyone); KeyError if there is no such key."""
        when = time.time() if when is None else when
        with self.db.conn:  # one statement: an earlier revocation, say by the CLI meanwhile, stays
            self.db.conn.execute("UPDATE api_keys SET revoked = MIN(COALESCE(revoked, ?), ?) WHERE id = ?",
                                 [when, when, key_id])
        key = self._reload(key_id)
        if key is None:
            raise KeyError(key_id)
        return key

    def rotate(self, key_id: str, grace: float = 0.0) -> tuple[ApiKey, str, ApiKey]:
        """A new key with key_id's settings; the old one ends after `grace` seconds.
        Returns (new key, its secret, the old key as it is now). One transaction,
        which re-reads the old key first: a key revoked meanwhile (by another
        process too) is not rotated, and a crash leaves both or neither."""
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")  # the write lock first: nobody changes the row between read and write
        try:
            old = self._reload(key_id)
            if old is None:
                raise KeyError(key_id)
            if old.state() != "active":
                raise ValueError(f"key {key_id} is {old.state()}; only an active key can be rotated")
            new, secret = self._new(old.name, old.role, old.scopes, old.models, old.owner, old.expires,
                                    old.limits(), old.lineage)
            self._insert(new)
            until = time.time() + grace
            conn.execute("UPDATE api_keys SET revoked = MIN(COALESCE(revoked, ?), ?), replaced_by = ? WHERE id = ?",
                         [until, until, new.id, key_id])
            conn.commit()
        except BaseException:
            conn.rollback()
            self.refresh()
            raise
        self._keys[new.id] = new
        old = self._reload(key_id)
        assert old is not None
        return new, secret, old
