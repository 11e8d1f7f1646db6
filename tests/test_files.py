"""Signed URLs for generated files (orchestrator/files.py): what they let
through, what they refuse, and the clean-up of files whose URLs expired."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import orjson
import pytest

from core.errors import ServiceError
from orchestrator.files import SignedFiles, base_url, load_or_create_key

NOW = 1_800_000_000.0


@pytest.fixture
def files(tmp_path: Path) -> SignedFiles:
    (tmp_path / "files" / "images").mkdir(parents=True)
    (tmp_path / "files" / "images" / "a.png").write_bytes(b"png")
    (tmp_path / "secret.txt").write_text("not for clients")
    return SignedFiles(tmp_path / "files", load_or_create_key(tmp_path / "files.key"), ttl=600)


def signed(files: SignedFiles, path: str) -> tuple[int, str]:
    expires = int(NOW + files.ttl)
    return expires, files.signature(path, expires)


def test_a_signed_url_serves_its_file_until_it_expires(files):
    url = files.url("http://h:9000", "images/a.png", now=NOW)
    assert url.startswith("http://h:9000/files/images/a.png?expires=1800000600&signature=")
    expires, signature = signed(files, "images/a.png")
    assert files.resolve("images/a.png", expires, signature, now=NOW + 599).read_bytes() == b"png"
    with pytest.raises(ServiceError) as expired:
        files.resolve("images/a.png", expires, signature, now=NOW + 601)
    assert (expired.value.status, expired.value.code) == (410, "url_expired")


def test_a_signature_covers_the_path_and_the_expiry(files):
    expires, signature = signed(files, "images/a.png")
    for path, when in (("images/b.png", expires), ("images/a.png", expires + 1)):
        with pytest.raises(ServiceError) as refused:
            files.resolve(path, when, signature, now=NOW)
        assert (refused.value.status, refused.value.code) == (403, "invalid_signature")


def test_a_validly_signed_path_outside_the_files_directory_is_not_served(files):
    expires, signature = signed(files, "../secret.txt")  # as if the key had signed it
    with pytest.raises(ServiceError) as refused:
        files.resolve("../secret.txt", expires, signature, now=NOW)
    assert refused.value.status == 404


def test_the_key_is_made_once_and_readable_by_its_owner_only(tmp_path):
    key = load_or_create_key(tmp_path / "files.key")
    assert len(key) == 32 and load_or_create_key(tmp_path / "files.key") == key
    assert stat.S_IMODE(os.stat(tmp_path / "files.key").st_mode) == 0o600


def test_answers_get_their_file_urls_signed_and_nothing_else_changes(files):
    body = orjson.dumps({"created": 1, "data": [{"url": "modelyard-file:images/a.png"}, {"url": "https://x/y"}]})
    answer = orjson.loads(files.sign_answer(body, "http://h:9000"))
    assert answer["data"][0]["url"].startswith("http://h:9000/files/images/a.png?expires=")
    assert answer["data"][1]["url"] == "https://x/y"
    inline = orjson.dumps({"data": [{"b64_json": "AAAA"}]})
    assert files.sign_answer(inline, "http://h") is inline  # big base64 answers are passed as they are


def test_files_older_than_their_urls_are_deleted(files):
    old, new = files.root / "images" / "old.png", files.root / "images" / "a.png"
    old.write_bytes(b"x")
    os.utime(old, (time.time() - 1000, time.time() - 1000))  # ttl 600 and the 300 s margin have passed
    assert files.delete_expired() == 1
    assert not old.exists() and new.exists()


def test_the_base_url_is_the_configured_one_else_the_clients_host():
    scope = {"scheme": "http", "headers": [(b"host", b"gpu-box:9000")], "server": ("127.0.0.1", 9000)}
    assert base_url(scope, None) == "http://gpu-box:9000"
    assert base_url(scope, "https://models.example.com/") == "https://models.example.com"


def test_a_malformed_signature_is_refused_not_a_crash(files):
    with pytest.raises(ServiceError) as refused:
        files.resolve("images/a.png", int(NOW + 60), "é" * 64, now=NOW)
    assert refused.value.status == 403


def test_names_are_sent_encoded_and_signed_as_received(files):
    url = files.url("http://h", "images/a b%.png", now=NOW)
    assert "/files/images/a%20b%25.png?" in url
    expires = int(NOW + files.ttl)
    assert files.signature("images/a b%.png", expires) in url


def test_a_shorter_ttl_after_a_reload_keeps_files_whose_urls_are_still_valid(files):
    file = files.root / "images" / "a.png"
    os.utime(file, (time.time() - 700, time.time() - 700))  # signed for 600 s, plus the margin: still kept
    files.set_ttl(60)
    assert files.delete_expired() == 0 and file.exists()
