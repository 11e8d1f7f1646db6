"""The model registry: versions of registered models, their aliases, and who
changed what (<state>/registry.db).

A registered model is a name such as `chat`; each of its versions has a
SemVer 2.0.0 number, the models.yaml model id that serves it, an optional
parent version (its lineage: what it was fine-tuned or retrained from) and
free metadata (training metrics, notes). Aliases name one version each:
`production`, `staging` and any the user makes up; `latest` is computed (the
highest release, or the highest pre-release while there is no release) and
cannot be set. Requests name `chat@production`, `chat:1.2.0` or plain `chat`
(its production version if set, else latest); resolve() turns those into the
model id that serves them.

resolve() is on the request path, so it never touches sqlite: every version
and alias lives in memory, loaded at open and updated after each write commits.
This process is the only writer. Each write and its audit event (table
events) go in one transaction, under a lock.

SemVer is parsed here, not with the `semver` package: the grammar is one
regular expression and precedence (semver.org section 11) is one sort key,
and owning both keeps the rules in sight. Two versions that differ only in
build metadata have the same precedence, so a name cannot hold both: which
one is "latest" would be arbitrary. A lookup without build metadata
(`chat:1.0.0`) finds the version stored with some (`1.0.0+sha.5114f85`).
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import sqlite_utils

from core.config import MODEL_NAME
from core.storage import open_database

# A registered model name: MODEL_NAME without ':' ('@' it never had), since
# '@' and ':' separate the name from an alias or a version in a request.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")  # no "/": a name is one path segment of the API
ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,62}\Z")
LATEST = "latest"  # computed, never stored
RESERVED_ALIASES = frozenset({LATEST})
PRODUCTION = "production"  # what a plain name resolves to, when set

MAX_VERSION_LENGTH = 128
MAX_METADATA_BYTES = 64 * 1024  # the metadata's compact JSON, UTF-8
MAX_METADATA_DEPTH = 32  # levels of nested objects and lists

# semver.org's grammar, with [0-9] rather than \d (which takes any Unicode digit)
# and \Z rather than $ (which allows a trailing newline).
_NUMBER = r"(?:0|[1-9][0-9]*)"
_PRE_ID = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_BUILD_ID = r"[0-9A-Za-z-]+"
SEMVER = re.compile(
    rf"^(?P<major>{_NUMBER})\.(?P<minor>{_NUMBER})\.(?P<patch>{_NUMBER})"
    rf"(?:-(?P<pre>{_PRE_ID}(?:\.{_PRE_ID})*))?"
    rf"(?:\+(?P<build>{_BUILD_ID}(?:\.{_BUILD_ID})*))?\Z"
)

ACTIONS = ("version.create", "alias.set", "alias.delete")


class RegistryError(Exception):
    """A refused registry request, with the HTTP status and OpenAI-style code
    and param the API layer answers with."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param


# --- SemVer ----------------------------------------------------------------

PrereleaseId = tuple[int, int, str]  # (0, n, "") numeric, (1, 0, text) alphanumeric: numeric ones sort first


class Version(NamedTuple):
    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...]
    build: tuple[str, ...]

    def key(self) -> tuple[int, int, int, int, tuple[PrereleaseId, ...]]:
        """The precedence of semver.org section 11 as a sort key: major, minor,
        patch numerically; a release above its pre-releases; pre-releases by
        identifier (numbers numerically, below text, which compares in ASCII;
        a shorter list of equal identifiers first); build metadata ignored."""
        ids = tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, ids)

    @property
    def is_prerelease(self) -> bool:
        return bool(self.prerelease)

    def base(self) -> str:
        """The version without its build metadata: what precedence sees."""
        text = f"{self.major}.{self.minor}.{self.patch}"
        return f"{text}-{'.'.join(self.prerelease)}" if self.prerelease else text


def parse_version(text: str) -> Version:
    """The parts of a SemVer 2.0.0 version; ValueError if it is not one."""
    match = SEMVER.match(text) if isinstance(text, str) and len(text) <= MAX_VERSION_LENGTH else None
    if match is None:
        raise ValueError(f"{text!r} is not a semantic version (MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD], semver.org)")
    pre, build = match.group("pre"), match.group("build")
    return Version(int(match.group("major")), int(match.group("minor")), int(match.group("patch")),
                   tuple(pre.split(".")) if pre else (), tuple(build.split(".")) if build else ())


def version_key(text: str) -> tuple[int, int, int, int, tuple[PrereleaseId, ...]]:
    """Sort key of a version string by SemVer precedence; ValueError if invalid."""
    return parse_version(text).key()


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as a has lower, the same or higher precedence than b."""
    key_a, key_b = version_key(a), version_key(b)
    return (key_a > key_b) - (key_a < key_b)


# --- storage ---------------------------------------------------------------


def _create_tables(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE versions (
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            base TEXT NOT NULL,
            model TEXT NOT NULL,
            parent TEXT,
            metadata TEXT NOT NULL,
            created REAL NOT NULL,
            created_by TEXT,
            PRIMARY KEY (name, version)
        )"""
    )
    # Versions equal but for build metadata have the same precedence: one per name.
    db.execute("CREATE UNIQUE INDEX versions_base ON versions (name, base)")
    db.execute(
        """CREATE TABLE aliases (
            name TEXT NOT NULL,
            alias TEXT NOT NULL,
            version TEXT NOT NULL,
            updated REAL NOT NULL,
            updated_by TEXT,
            PRIMARY KEY (name, alias)
        )"""
    )
    # AUTOINCREMENT: ids only grow, so "newest first" is "highest id first" even when clocks step back.
    db.execute(
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts REAL NOT NULL,
            name TEXT NOT NULL,
            action TEXT NOT NULL,
            version TEXT,
            alias TEXT,
            previous TEXT,
            actor TEXT
        )"""
    )
    db.execute("CREATE INDEX events_name ON events (name, id)")


MIGRATIONS = [_create_tables]


@dataclass
class _Model:
    """One registered model as the cache holds it."""

    versions: dict[str, dict[str, Any]] = field(default_factory=dict)  # version -> record
    keys: dict[str, tuple] = field(default_factory=dict)  # version -> precedence key
    bases: dict[str, str] = field(default_factory=dict)  # version without build metadata -> version
    aliases: dict[str, str] = field(default_factory=dict)  # set aliases only; "latest" is the attribute below
    latest: str = ""

    def find(self, version: str) -> str | None:
        """The stored version that `version` names: exactly, or, written without
        build metadata, the one stored with some."""
        if version in self.versions:
            return version
        return self.bases.get(version)

    def add(self, record: dict[str, Any], parsed: Version) -> None:
        version = record["version"]
        key = parsed.key()
        # Ready before anything can point at it: resolve() reads without the lock.
        self.versions[version] = record
        self.keys[version] = key
        self.bases[parsed.base()] = version
        # Highest release, else highest pre-release: max by (is a release, precedence).
        if not self.latest or (key[3], key) > (self.keys[self.latest][3], self.keys[self.latest]):
            self.latest = version


def _metadata_text(metadata: Any) -> tuple[str, dict[str, Any]]:
    """The metadata's stored JSON and the object it reads back as (so the cache
    holds what a reopened store will: keys as strings, tuples as lists)."""
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise RegistryError(400, "invalid_metadata", "metadata must be a JSON object", "metadata")
    if _depth(metadata) > MAX_METADATA_DEPTH:  # deep nesting would break copying and encoding it later
        raise RegistryError(400, "invalid_metadata", f"metadata nests deeper than {MAX_METADATA_DEPTH} levels",
                            "metadata")
    try:
        # allow_nan=False: NaN and Infinity are not JSON, and API clients would choke on them.
        text = json.dumps(metadata, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise RegistryError(400, "invalid_metadata", f"metadata must be plain JSON (use null for NaN): {exc}",
                            "metadata") from None
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: sqlite would refuse it
        raise RegistryError(400, "invalid_metadata", "metadata holds text that is not valid Unicode",
                            "metadata") from None
    if size > MAX_METADATA_BYTES:
        raise RegistryError(400, "metadata_too_large",
                            f"metadata is {size} bytes as JSON; at most {MAX_METADATA_BYTES} are kept", "metadata")
    return text, json.loads(text)


def _depth(value: Any) -> int:
    """How deep lists and objects nest in value (iterative: no recursion limit to hit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level <= MAX_METADATA_DEPTH:  # past the limit the answer is known
                stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _split(reference: str) -> tuple[str, int, int]:
    """(name, where the name ends, where '@' is or -1) of "name", "name@alias" or "name:version"."""
    at, colon = reference.find("@"), reference.find(":")
    cut = min(i for i in (at, colon, len(reference)) if i >= 0)
    return reference[:cut], cut, at


def _public(record: dict[str, Any]) -> dict[str, Any]:
    # A copy: the caller may change what it gets without changing the cache.
    return copy.deepcopy(record)


class VersionStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = open_database(path, MIGRATIONS)
        self._lock = threading.Lock()
        self._models: dict[str, _Model] = {}
        self._load()

    def close(self) -> None:
        self.db.conn.close()

    def _load(self) -> None:
        """Build the cache from the tables: the only reads resolve() relies on."""
        models: dict[str, _Model] = {}
        for row in self.db.query("SELECT * FROM versions ORDER BY created, rowid"):
            record = {"name": row["name"], "version": row["version"], "model": row["model"],
                      "parent": row["parent"], "metadata": json.loads(row["metadata"]),
                      "created": row["created"], "created_by": row["created_by"]}
            models.setdefault(row["name"], _Model()).add(record, parse_version(row["version"]))
        for row in self.db.query("SELECT name, alias, version FROM aliases"):
            if row["name"] in models:
                models[row["name"]].aliases[row["alias"]] = row["version"]
        self._models = models

    def _event(self, name: str, action: str, *, version: str | None = None, alias: str | None = None,
               previous: str | None = None, actor: str | None = None, ts: float) -> None:
        self.db.execute(
            "INSERT INTO events (ts, name, action, version, alias, previous, actor) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [ts, name, action, version, alias, previous, actor],
        )

    # --- reading ------------------------------------------------------------

    def version(self, name: str, version: str) -> dict[str, Any] | None:
        """The record of name's version (written with or without its build
        metadata); None if there is none."""
        model = self._models.get(name)
        found = model.find(version) if model is not None else None
        return _public(model.versions[found]) if found is not None else None

    def versions(self, name: str, metadata: bool = True) -> list[dict[str, Any]]:
        """name's versions, highest precedence first; [] for an unknown name. metadata=False
        leaves each one's metadata out (lists that do not show it need not copy it)."""
        with self._lock:
            model = self._models.get(name)
            if model is None:
                return []
            ordered = sorted(model.versions, key=model.keys.__getitem__, reverse=True)
            if not metadata:
                return [{k: v for k, v in model.versions[version].items() if k != "metadata"} for version in ordered]
            return [_public(model.versions[version]) for version in ordered]

    def has(self, name: str) -> bool:
        """Whether name is a registered model (memory only, no lock: the request path asks)."""
        return name in self._models

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def aliases(self, name: str) -> dict[str, str]:
        """alias -> version for name, "latest" included; {} for an unknown name."""
        with self._lock:
            model = self._models.get(name)
            if model is None:
                return {}
            return {LATEST: model.latest, **dict(sorted(model.aliases.items()))}

    def resolve(self, reference: str) -> tuple[str, str, str] | None:
        """(name, version, model id) for "name@alias", "name:version" or "name"
        (its production version if set, else latest). None when the name is not
        a registered model (the caller then tries models.yaml); RegistryError 404
        when it is but the alias or version is not. On the request path: reads
        the in-memory cache only, never sqlite, and takes no lock."""
        name, cut, at = _split(reference)
        model = self._models.get(name)
        if model is None:
            return None
        if cut == len(reference):
            version = model.aliases.get(PRODUCTION) or model.latest
        elif cut == at:
            alias = reference[cut + 1:]
            version = model.latest if alias == LATEST else model.aliases.get(alias)
            if version is None:
                raise RegistryError(404, "alias_not_found", f"model {name!r} has no alias {alias!r}", "model")
        else:
            wanted = reference[cut + 1:]
            version = model.find(wanted)
            if version is None:
                raise RegistryError(404, "version_not_found", f"model {name!r} has no version {wanted!r}", "model")
        return name, version, model.versions[version]["model"]

    def alias_used(self, reference: str) -> tuple[str, str] | None:
        """(name, alias) when reference reaches a registered model through a set
        alias: "name@alias", or plain "name" while its production alias is set.
        None for a version number, the computed latest, or an unknown name. On the
        request path (experiments steer by it): memory only, no lock."""
        name, cut, at = _split(reference)
        model = self._models.get(name)
        if model is None:
            return None
        if cut == len(reference):
            return (name, PRODUCTION) if PRODUCTION in model.aliases else None
        if cut == at and reference[cut + 1:] in model.aliases:
            return name, reference[cut + 1:]
        return None

    def lineage(self, name: str, version: str) -> list[str]:
        """The version, its parent, the parent's parent ... back to a version with
        none; [] for an unknown version. Stops before repeating a version."""
        with self._lock:
            model = self._models.get(name)
            current = model.find(version) if model is not None else None
            chain: list[str] = []
            seen: set[str] = set()
            while current is not None and current not in seen:
                chain.append(current)
                seen.add(current)
                current = model.versions[current]["parent"] if current in model.versions else None
            return chain

    def history(self, name: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The audit trail, newest first: every version created and alias set or
        deleted, by whom (the actor the caller passed) and, for an alias, where
        it pointed before. Of one name, or all."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise RegistryError(400, "invalid_limit", "limit must be a whole number of at least 0", "limit")
        where, params = ("WHERE name = ?", [name]) if name is not None else ("", [])
        with self._lock:  # the connection is shared with the writers
            rows = list(self.db.query(
                f"SELECT ts, name, action, version, alias, previous, actor FROM events {where} "
                "ORDER BY id DESC LIMIT ?",
                [*params, limit],
            ))
        return rows

    # --- writing ------------------------------------------------------------

    def create_version(self, name: str, version: str, model_id: str, *, parent: str | None = None,
                       metadata: dict[str, Any] | None = None, actor: str | None = None) -> dict[str, Any]:
        """Register version of name, served by the models.yaml entry model_id
        (which the caller has checked exists). parent: an existing version of the
        same name it derives from; a first version has none unless given.
        Returns the version's record."""
        if not isinstance(name, str) or not NAME.match(name):
            raise RegistryError(400, "invalid_name",
                                f"model name {name!r} must match {NAME.pattern} ('@' and ':' are separators)", "name")
        try:
            parsed = parse_version(version)
        except ValueError as exc:
            raise RegistryError(400, "invalid_version", str(exc), "version") from None
        if not isinstance(model_id, str) or not MODEL_NAME.match(model_id):
            raise RegistryError(400, "invalid_model", f"model id {model_id!r} must match {MODEL_NAME.pattern}",
                                "model")
        text, stored_metadata = _metadata_text(metadata)
        with self._lock:
            model = self._models.get(name)
            if model is not None:
                existing = model.find(parsed.base())
                if existing is not None:
                    same = "" if existing == version else f" (as {existing!r}: build metadata does not count)"
                    raise RegistryError(409, "version_exists",
                                        f"model {name!r} already has version {version!r}{same}", "version")
            if parent is not None:
                found = model.find(parent) if model is not None and isinstance(parent, str) else None
                if found is None:
                    raise RegistryError(404, "version_not_found",
                                        f"parent version {parent!r} of model {name!r} does not exist", "parent")
                parent = found
            now = time.time()
            record = {"name": name, "version": version, "model": model_id, "parent": parent,
                      "metadata": stored_metadata, "created": now, "created_by": actor}
            with self.db.atomic():
                self.db.execute(
                    "INSERT INTO versions (name, version, base, model, parent, metadata, created, created_by) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [name, version, parsed.base(), model_id, parent, text, now, actor],
                )
                self._event(name, "version.create", version=version, actor=actor, ts=now)
            if model is None:
                model = _Model()
                model.add(record, parsed)
                self._models[name] = model  # published whole, after its version: resolve() may look meanwhile
            else:
                model.add(record, parsed)
            return _public(record)

    def _alias_target(self, name: str, alias: str) -> _Model:
        if not isinstance(alias, str) or not ALIAS.match(alias):
            raise RegistryError(400, "invalid_alias", f"alias {alias!r} must match {ALIAS.pattern}", "alias")
        if alias in RESERVED_ALIASES:
            raise RegistryError(400, "reserved_alias",
                                f"alias {alias!r} is computed (the highest version) and cannot be changed", "alias")
        model = self._models.get(name)
        if model is None:
            raise RegistryError(404, "model_not_found", f"there is no registered model {name!r}", "name")
        return model

    def set_alias(self, name: str, alias: str, version: str, *, actor: str | None = None) -> dict[str, Any]:
        """Point alias of name at version (moving it if set). Returns {name, alias,
        version, model, previous}; previous is where it pointed before, None if
        nowhere. Setting it where it already points changes and records nothing."""
        with self._lock:
            model = self._alias_target(name, alias)
            found = model.find(version) if isinstance(version, str) else None
            if found is None:
                raise RegistryError(404, "version_not_found", f"model {name!r} has no version {version!r}", "version")
            previous = model.aliases.get(alias)
            if previous != found:
                now = time.time()
                with self.db.atomic():
                    self.db.execute(
                        "INSERT INTO aliases (name, alias, version, updated, updated_by) VALUES (?, ?, ?, ?, ?) "
                        "ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version, "
                        "updated = excluded.updated, updated_by = excluded.updated_by",
                        [name, alias, found, now, actor],
                    )
                    self._event(name, "alias.set", version=found, alias=alias, previous=previous, actor=actor, ts=now)
                model.aliases[alias] = found
            return {"name": name, "alias": alias, "version": found, "model": model.versions[found]["model"],
                    "previous": previous}

    def delete_alias(self, name: str, alias: str, *, actor: str | None = None) -> None:
        """Remove alias from name; RegistryError 404 if it is not set."""
        with self._lock:
            model = self._alias_target(name, alias)
            previous = model.aliases.get(alias)
            if previous is None:
                raise RegistryError(404, "alias_not_found", f"model {name!r} has no alias {alias!r}", "alias")
            now = time.time()
            with self.db.atomic():
                self.db.execute("DELETE FROM aliases WHERE name = ? AND alias = ?", [name, alias])
                self._event(name, "alias.delete", alias=alias, previous=previous, actor=actor, ts=now)
            del model.aliases[alias]
