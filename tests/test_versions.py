"""The model registry: versions order by SemVer precedence, aliases move and
leave an audit trail, requests resolve to the model id that serves them
(from memory, without sqlite), and everything survives a reopen."""

from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.versions import (
    ALIAS,
    MAX_METADATA_BYTES,
    NAME,
    RegistryError,
    VersionStore,
    compare_versions,
    parse_version,
    version_key,
)


@pytest.fixture
def store(tmp_path: Path):
    opened = VersionStore(tmp_path / "registry.db")
    yield opened
    try:
        opened.close()
    except Exception:  # a test closed it already
        pass


def refused(call, *args, **kwargs) -> RegistryError:
    with pytest.raises(RegistryError) as caught:
        call(*args, **kwargs)
    return caught.value


# --- a reference comparison, written from semver.org section 11 as prose ----


def reference_compare(a: str, b: str) -> int:
    """Precedence the way section 11 words it, pairwise, sharing no code with
    orchestrator.versions: split off build metadata (ignored), compare
    major, minor, patch as numbers; a version without pre-release outranks one
    with; then identifiers left to right, digits-only ones numerically and
    below the others, others in ASCII order; a longer list wins a tie."""

    def split(text: str) -> tuple[list[int], list[str] | None]:
        text = text.partition("+")[0]
        core, dash, pre = text.partition("-")
        return [int(part) for part in core.split(".")], (pre.split(".") if dash else None)

    def sign(x, y) -> int:
        return (x > y) - (x < y)

    core_a, pre_a = split(a)
    core_b, pre_b = split(b)
    for x, y in zip(core_a, core_b, strict=True):
        if x != y:
            return sign(x, y)
    if pre_a is None or pre_b is None:
        return sign(pre_a is None, pre_b is None)
    for x, y in zip(pre_a, pre_b, strict=False):
        if x == y:
            continue
        x_num, y_num = all(c in "0123456789" for c in x), all(c in "0123456789" for c in y)
        if x_num and y_num:
            return sign(int(x), int(y))
        if x_num != y_num:
            return -1 if x_num else 1
        return sign(x, y)
    return sign(len(pre_a), len(pre_b))


_numbers = st.one_of(st.integers(0, 3), st.integers(0, 10**30)).map(str)
_alnum = st.text(alphabet="0123456789abcXYZ-", min_size=1, max_size=5).filter(lambda s: not s.isdigit())
_pre_ids = st.one_of(_numbers, _alnum, st.sampled_from(["alpha", "beta", "rc", "-", "0a", "a0", "RC", "10x"]))
_build_ids = st.text(alphabet="0123456789abzZ-", min_size=1, max_size=4)


@st.composite
def semvers(draw) -> str:
    major, minor, patch = (draw(st.integers(0, 2)) for _ in range(3))
    text = f"{major}.{minor}.{patch}"
    if draw(st.booleans()):
        text += "-" + ".".join(draw(st.lists(_pre_ids, min_size=1, max_size=4)))
    if draw(st.integers(0, 3)) == 0:
        text += "+" + ".".join(draw(st.lists(_build_ids, min_size=1, max_size=3)))
    return text


# --- SemVer ---------------------------------------------------------------


def test_precedence_follows_the_specification_examples():
    # semver.org section 11's own chain, then the cases people get wrong.
    chain = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11",
             "1.0.0-rc.1", "1.0.0", "1.9.0", "1.10.0", "2.0.0", "2.1.0", "2.1.1", "10.0.0"]
    assert sorted(reversed(chain), key=version_key) == chain
    assert compare_versions("1.0.0+build.1", "1.0.0+build.2") == 0
    assert compare_versions("1.0.0-rc.1+x", "1.0.0") == -1
    assert compare_versions("1.0.0-2", "1.0.0-10") == -1  # numeric identifiers: numerically
    assert compare_versions("1.0.0-10", "1.0.0-1a") == -1  # numeric below alphanumeric
    assert compare_versions("1.0.0-B", "1.0.0-a") == -1  # ASCII: upper case first
    assert parse_version("1.2.3-rc.1+sha.5114f85").build == ("sha", "5114f85")


@pytest.mark.parametrize("text", [
    "1", "1.0", "1.0.0.0", "01.0.0", "1.01.0", "1.0.01", "v1.0.0", "1.0.0-", "1.0.0+", "1.0.0-01",
    "1.0.0-a..b", "1.0.0+a..b", "1.0.0-a_b", " 1.0.0", "1.0.0\n", "1.0.0-\u03b1", "1.\u0663.0", "-1.0.0",
    "1.0.0-" + "a" * 130, "",
])
def test_invalid_versions_are_refused(store, text):
    error = refused(store.create_version, "chat", text, "chat-v1")
    assert (error.status, error.code, error.param) == (400, "invalid_version", "version")
    assert store.names() == []


@given(st.lists(semvers(), min_size=2, max_size=12))
@settings(max_examples=300, deadline=None)
def test_sorting_agrees_with_the_reference(texts):
    ordered = sorted(texts, key=version_key)
    for lower, higher in zip(ordered, ordered[1:], strict=False):
        assert reference_compare(lower, higher) <= 0
    for a in texts:
        for b in texts:
            assert compare_versions(a, b) == reference_compare(a, b), (a, b)
    assert sorted(texts, key=functools.cmp_to_key(reference_compare)) == ordered  # both sorts are stable


@given(st.lists(semvers(), min_size=1, max_size=8, unique_by=lambda t: t.partition("+")[0]))
@settings(max_examples=25, deadline=None)
def test_the_store_orders_versions_and_picks_latest_like_the_reference(texts):
    with tempfile.TemporaryDirectory() as folder:
        opened = VersionStore(Path(folder) / "registry.db")
        try:
            for text in texts:
                opened.create_version("chat", text, "chat-model")
            listed = [record["version"] for record in opened.versions("chat")]
            assert listed == sorted(texts, key=functools.cmp_to_key(reference_compare), reverse=True)
            releases = [t for t in listed if "-" not in t.partition("+")[0]]
            assert opened.aliases("chat")["latest"] == (releases or listed)[0]
        finally:
            opened.close()


# --- versions -------------------------------------------------------------


def test_create_and_read_back(store):
    before = time.time()
    record = store.create_version("chat", "1.2.0", "chat-v1-2", metadata={"eval": {"mmlu": 0.61}, "notes": "first"},
                                  actor="alice")
    assert record == {"name": "chat", "version": "1.2.0", "model": "chat-v1-2", "parent": None,
                      "metadata": {"eval": {"mmlu": 0.61}, "notes": "first"}, "created": record["created"],
                      "created_by": "alice"}
    assert before <= record["created"] <= time.time()
    assert store.version("chat", "1.2.0") == record
    assert store.version("chat", "9.9.9") is None and store.version("other", "1.2.0") is None
    assert store.names() == ["chat"]
    # What a caller does with a record cannot change the store.
    record["metadata"]["notes"] = "changed"
    assert store.version("chat", "1.2.0")["metadata"]["notes"] == "first"


def test_versions_are_listed_by_precedence_newest_first(store):
    for text in ["1.0.0-alpha", "1.9.0", "1.0.0-beta.2", "1.10.0", "1.0.0", "1.0.0-rc.1", "1.0.0-beta.11"]:
        store.create_version("chat", text, "chat-model")
    assert [record["version"] for record in store.versions("chat")] == [
        "1.10.0", "1.9.0", "1.0.0", "1.0.0-rc.1", "1.0.0-beta.11", "1.0.0-beta.2", "1.0.0-alpha"]
    assert store.versions("unknown") == []


def test_build_metadata_is_kept_but_does_not_make_another_version(store):
    store.create_version("chat", "1.0.0+sha.5114f85", "chat-a")
    store.create_version("chat", "1.1.0-rc.1+exp.sha.1", "chat-b")
    assert [record["version"] for record in store.versions("chat")] == ["1.1.0-rc.1+exp.sha.1", "1.0.0+sha.5114f85"]
    error = refused(store.create_version, "chat", "1.0.0+sha.other", "chat-c")
    assert (error.status, error.code, error.param) == (409, "version_exists", "version")
    # Written without its build metadata, a version is still found.
    assert store.version("chat", "1.0.0")["version"] == "1.0.0+sha.5114f85"
    assert store.resolve("chat:1.0.0") == ("chat", "1.0.0+sha.5114f85", "chat-a")
    assert store.resolve("chat:1.0.0+sha.5114f85") == ("chat", "1.0.0+sha.5114f85", "chat-a")


def test_duplicate_version_conflicts(store):
    store.create_version("chat", "1.0.0", "chat-v1", actor="alice")
    error = refused(store.create_version, "chat", "1.0.0", "chat-v1-again", actor="bob")
    assert (error.status, error.code, error.param) == (409, "version_exists", "version")
    assert store.version("chat", "1.0.0")["model"] == "chat-v1"
    store.create_version("other", "1.0.0", "other-v1")  # the same number under another name is another version
    assert len(store.history()) == 2


def test_parent_must_exist_under_the_same_name(store):
    store.create_version("chat", "1.0.0", "chat-v1")
    store.create_version("embed", "2.0.0", "embed-v2")
    for parent in ("0.9.0", "2.0.0", "latest"):
        error = refused(store.create_version, "chat", "1.1.0", "chat-v1-1", parent=parent)
        assert (error.status, error.code, error.param) == (404, "version_not_found", "parent")
    error = refused(store.create_version, "new", "1.0.0", "new-v1", parent="0.1.0")
    assert (error.status, error.param) == (404, "parent")
    assert store.version("chat", "1.1.0") is None and store.names() == ["chat", "embed"]
    assert store.create_version("chat", "1.1.0", "chat-v1-1", parent="1.0.0")["parent"] == "1.0.0"


def test_metadata_must_be_a_json_object_of_bounded_size(store):
    just_fits = {"notes": "x" * (MAX_METADATA_BYTES - len('{"notes":""}'))}
    assert store.create_version("chat", "1.0.0", "m", metadata=just_fits)["metadata"] == just_fits
    error = refused(store.create_version, "chat", "2.0.0", "m", metadata={"notes": "x" * MAX_METADATA_BYTES})
    assert (error.status, error.code, error.param) == (400, "metadata_too_large", "metadata")
    # Multi-byte text counts in bytes, as stored.
    error = refused(store.create_version, "chat", "2.0.0", "m", metadata={"n": "\u00e9" * (MAX_METADATA_BYTES // 2)})
    assert error.code == "metadata_too_large"
    for bad in (["a", "list"], "text", {"loss": float("nan")}, {"when": object()}, {"s": {1, 2}}):
        error = refused(store.create_version, "chat", "2.0.0", "m", metadata=bad)
        assert (error.status, error.code, error.param) == (400, "invalid_metadata", "metadata")
    assert [record["version"] for record in store.versions("chat")] == ["1.0.0"]
    # What is kept is what JSON reads back: the same before and after a reopen.
    assert store.create_version("chat", "3.0.0", "m", metadata={1: (1, 2)})["metadata"] == {"1": [1, 2]}


def test_names_and_model_ids_are_checked(store):
    for name in ("chat@prod", "chat:1", "", "-chat", "a b", "x" * 129, "chat\n"):
        error = refused(store.create_version, name, "1.0.0", "m")
        assert (error.status, error.code, error.param) == (400, "invalid_name", "name")
    error = refused(store.create_version, "chat", "1.0.0", "bad model id")
    assert (error.status, error.param) == (400, "model")
    assert NAME.match("chat-v1.2_b") and not NAME.match("chat:1") and not NAME.match("org/chat")
    assert store.names() == []


# --- latest and aliases ---------------------------------------------------


def test_latest_is_the_highest_release(store):
    store.create_version("chat", "1.0.0-rc.1", "chat-rc1")
    assert store.aliases("chat") == {"latest": "1.0.0-rc.1"}  # only pre-releases: the highest of them
    store.create_version("chat", "1.0.0-beta.3", "chat-beta3")
    assert store.aliases("chat")["latest"] == "1.0.0-rc.1"
    store.create_version("chat", "0.9.0", "chat-old")
    assert store.aliases("chat")["latest"] == "0.9.0"  # any release beats every pre-release
    store.create_version("chat", "2.0.0-alpha", "chat-next")
    store.create_version("chat", "1.10.0", "chat-1-10")
    store.create_version("chat", "1.9.0", "chat-1-9")
    assert store.aliases("chat")["latest"] == "1.10.0"
    assert store.resolve("chat@latest") == ("chat", "1.10.0", "chat-1-10")
    assert store.aliases("unknown") == {}


def test_set_move_and_delete_an_alias(store):
    store.create_version("chat", "1.0.0", "chat-v1")
    store.create_version("chat", "1.1.0", "chat-v1-1")
    assert store.set_alias("chat", "production", "1.0.0", actor="alice") == {
        "name": "chat", "alias": "production", "version": "1.0.0", "model": "chat-v1", "previous": None}
    moved = store.set_alias("chat", "production", "1.1.0", actor="bob")
    assert (moved["version"], moved["previous"]) == ("1.1.0", "1.0.0")
    store.set_alias("chat", "canary-2", "1.0.0")
    assert store.aliases("chat") == {"latest": "1.1.0", "canary-2": "1.0.0", "production": "1.1.0"}
    store.delete_alias("chat", "canary-2", actor="carol")
    assert store.aliases("chat") == {"latest": "1.1.0", "production": "1.1.0"}
    error = refused(store.delete_alias, "chat", "canary-2")
    assert (error.status, error.code) == (404, "alias_not_found")
    with pytest.raises(RegistryError, match="alias"):
        store.resolve("chat@canary-2")
    events = [(e["action"], e["alias"], e["version"], e["previous"], e["actor"]) for e in store.history("chat")]
    assert events[:4] == [
        ("alias.delete", "canary-2", None, "1.0.0", "carol"),
        ("alias.set", "canary-2", "1.0.0", None, None),
        ("alias.set", "production", "1.1.0", "1.0.0", "bob"),
        ("alias.set", "production", "1.0.0", None, "alice"),
    ]
    # Setting an alias where it already points is no change, and no event.
    assert store.set_alias("chat", "production", "1.1.0")["previous"] == "1.1.0"
    assert len(store.history("chat")) == len(events)


def test_bad_and_reserved_aliases_are_refused(store):
    store.create_version("chat", "1.0.0", "chat-v1")
    error = refused(store.set_alias, "chat", "latest", "1.0.0")
    assert (error.status, error.code, error.param) == (400, "reserved_alias", "alias")
    error = refused(store.delete_alias, "chat", "latest")
    assert (error.status, error.code) == (400, "reserved_alias")
    for alias in ("Production", "1st", "", "a" * 64, "with space", "a@b", "a:b", "prod\n"):
        error = refused(store.set_alias, "chat", alias, "1.0.0")
        assert (error.status, error.code, error.param) == (400, "invalid_alias", "alias"), alias
    assert ALIAS.match("a" * 63) and ALIAS.match("blue_green-2")
    assert store.aliases("chat") == {"latest": "1.0.0"}


def test_an_alias_needs_an_existing_version(store):
    store.create_version("chat", "1.0.0", "chat-v1")
    error = refused(store.set_alias, "chat", "production", "2.0.0")
    assert (error.status, error.code, error.param) == (404, "version_not_found", "version")
    error = refused(store.set_alias, "nobody", "production", "1.0.0")
    assert (error.status, error.code) == (404, "model_not_found")
    assert store.aliases("chat") == {"latest": "1.0.0"}
    assert [e["action"] for e in store.history()] == ["version.create"]


# --- resolving requests ---------------------------------------------------


def test_resolve_references(store):
    store.create_version("chat", "1.0.0", "chat-v1")
    store.create_version("chat", "1.1.0", "chat-v1-1")
    store.create_version("chat", "2.0.0-rc.1", "chat-v2-rc1")
    store.set_alias("chat", "staging", "2.0.0-rc.1")
    assert store.resolve("chat") == ("chat", "1.1.0", "chat-v1-1")  # no production: latest
    store.set_alias("chat", "production", "1.0.0")
    assert store.resolve("chat") == ("chat", "1.0.0", "chat-v1")  # production once set
    assert store.resolve("chat@staging") == ("chat", "2.0.0-rc.1", "chat-v2-rc1")
    assert store.resolve("chat@latest") == ("chat", "1.1.0", "chat-v1-1")
    assert store.resolve("chat:1.1.0") == ("chat", "1.1.0", "chat-v1-1")
    store.delete_alias("chat", "production")
    assert store.resolve("chat") == ("chat", "1.1.0", "chat-v1-1")


def test_resolve_unknown_names_and_targets(store):
    store.create_version("chat", "1.0.0", "chat-v1")
    for reference in ("other", "other@production", "other:1.0.0", "cha", "chat-v1", "", "@production", ":1.0.0"):
        assert store.resolve(reference) is None, reference  # not a registered model: the caller tries models.yaml
    for reference, code in (("chat@production", "alias_not_found"), ("chat@", "alias_not_found"),
                            ("chat@prod:1.0.0", "alias_not_found"), ("chat:2.0.0", "version_not_found"),
                            ("chat:1.0", "version_not_found"), ("chat:", "version_not_found")):
        error = refused(store.resolve, reference)
        assert (error.status, error.code) == (404, code), reference


def test_alias_used_names_the_alias_a_request_goes_through(store):
    # Experiments sit on an alias: they steer the requests this says go through it, and no others.
    store.create_version("chat", "1.0.0", "chat-v1")
    store.set_alias("chat", "staging", "1.0.0")
    assert store.alias_used("chat") is None  # no production yet: plain chat goes through latest
    store.set_alias("chat", "production", "1.0.0")
    assert store.alias_used("chat") == ("chat", "production")
    assert store.alias_used("chat@production") == ("chat", "production")
    assert store.alias_used("chat@staging") == ("chat", "staging")
    for reference in ("chat:1.0.0", "chat@latest", "chat@unset", "other", "other@production", "chat-v1"):
        assert store.alias_used(reference) is None, reference


def test_a_name_with_neither_separator_is_looked_up_whole(store):
    store.create_version("chat-v1.2_b", "1.0.0", "served-by")
    store.create_version("org", "1.0.0", "org-model")
    assert store.resolve("chat-v1.2_b") == ("chat-v1.2_b", "1.0.0", "served-by")
    assert store.resolve("chat-v1.2_b@latest") == ("chat-v1.2_b", "1.0.0", "served-by")
    assert store.resolve("chat-v1.2") is None


def test_resolve_reads_no_sqlite(store):
    store.create_version("chat", "1.0.0", "chat-v1")
    store.create_version("chat", "1.1.0", "chat-v1-1")
    store.set_alias("chat", "production", "1.0.0")

    class NoDatabase:
        def __getattr__(self, attribute):
            raise AssertionError(f"resolve() used the database ({attribute})")

    store.close()  # a query on a closed connection raises, too
    store.db = NoDatabase()
    assert store.resolve("chat") == ("chat", "1.0.0", "chat-v1")
    assert store.resolve("chat@latest") == ("chat", "1.1.0", "chat-v1-1")
    assert store.resolve("chat:1.1.0") == ("chat", "1.1.0", "chat-v1-1")
    assert store.resolve("nobody") is None
    with pytest.raises(RegistryError):
        store.resolve("chat@staging")


# --- lineage, history, persistence ----------------------------------------


def test_lineage_over_three_generations(store):
    store.create_version("chat", "1.0.0", "chat-v1")
    store.create_version("chat", "1.1.0", "chat-v1-1", parent="1.0.0")
    store.create_version("chat", "2.0.0", "chat-v2", parent="1.1.0")
    store.create_version("chat", "1.1.1", "chat-v1-1-1", parent="1.1.0")
    assert store.lineage("chat", "2.0.0") == ["2.0.0", "1.1.0", "1.0.0"]
    assert store.lineage("chat", "1.1.1") == ["1.1.1", "1.1.0", "1.0.0"]
    assert store.lineage("chat", "1.0.0") == ["1.0.0"]
    assert store.lineage("chat", "3.0.0") == [] and store.lineage("nobody", "1.0.0") == []


def test_history_newest_first_with_actors(store):
    store.create_version("chat", "1.0.0", "chat-v1", actor="alice")
    store.create_version("embed", "0.1.0", "embed-v0", actor="key:abc123")
    store.set_alias("chat", "production", "1.0.0", actor="bob")
    store.create_version("chat", "1.1.0", "chat-v1-1", parent="1.0.0")
    events = store.history()
    assert [(e["name"], e["action"], e["version"], e["actor"]) for e in events] == [
        ("chat", "version.create", "1.1.0", None),
        ("chat", "alias.set", "1.0.0", "bob"),
        ("embed", "version.create", "0.1.0", "key:abc123"),
        ("chat", "version.create", "1.0.0", "alice"),
    ]
    assert set(events[0]) == {"ts", "name", "action", "version", "alias", "previous", "actor"}
    assert [e["ts"] for e in events] == sorted((e["ts"] for e in events), reverse=True)
    assert [e["version"] for e in store.history("chat", limit=2)] == ["1.1.0", "1.0.0"]
    assert store.history("nobody") == [] and store.history(limit=0) == []
    error = refused(store.history, limit=-1)
    assert (error.status, error.param) == (400, "limit")


def test_reopening_restores_everything(tmp_path):
    path = tmp_path / "state" / "registry.db"
    first = VersionStore(path)
    first.create_version("chat", "1.0.0+build.7", "chat-v1", metadata={"loss": 1.25, "tags": ["a"]}, actor="alice")
    first.create_version("chat", "1.1.0-rc.1", "chat-rc", parent="1.0.0")
    first.create_version("chat", "1.0.1", "chat-fix", parent="1.0.0")
    first.set_alias("chat", "production", "1.0.0", actor="bob")
    first.set_alias("chat", "staging", "1.1.0-rc.1")
    first.set_alias("chat", "old", "1.0.1")
    first.delete_alias("chat", "old")
    before = (first.names(), first.versions("chat"), first.aliases("chat"), first.history(),
              first.lineage("chat", "1.1.0-rc.1"), first.resolve("chat"))
    first.close()

    second = VersionStore(path)
    try:
        after = (second.names(), second.versions("chat"), second.aliases("chat"), second.history(),
                 second.lineage("chat", "1.1.0-rc.1"), second.resolve("chat"))
        assert after == before
        assert second.aliases("chat") == {"latest": "1.0.1", "production": "1.0.0+build.7", "staging": "1.1.0-rc.1"}
        assert second.resolve("chat@staging") == ("chat", "1.1.0-rc.1", "chat-rc")
        error = refused(second.create_version, "chat", "1.0.0", "again")
        assert error.status == 409  # the duplicate check holds after a reopen too
        second.set_alias("chat", "production", "1.0.1", actor="carol")
        assert second.history("chat", limit=1)[0]["previous"] == "1.0.0+build.7"
    finally:
        second.close()
