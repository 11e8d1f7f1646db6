"""Fetch one model's weights from the Hugging Face Hub into a local directory
(scripts/download-models.sh runs it with an engine environment's Python,
which has huggingface_hub).

    python scripts/download_model.py --repo org/name [--revision REV] --out DIR

The files go to DIR.partial and are renamed to DIR once complete, so an
interrupted download never looks like a model; run again, it resumes. Exit
codes: 0 done, 2 the Hub cannot be reached (no network), 1 anything else
(unknown repo, no access, disk full); the message says which.
HF_TOKEN and HF_ENDPOINT are read by huggingface_hub itself.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

NO_NETWORK = 2


def fail(code: int, message: str) -> None:
    print(f"modelyard: {message}", file=sys.stderr)
    sys.exit(code)


def unreachable(exc: BaseException) -> bool:
    """Whether exc means the Hub could not be reached at all."""
    seen: BaseException | None = exc
    while seen is not None:
        name = type(seen).__name__
        if isinstance(seen, (ConnectionError, TimeoutError, OSError)) and not isinstance(seen, FileNotFoundError):
            return True
        if name in ("ConnectError", "ConnectTimeout", "ReadTimeout", "LocalEntryNotFoundError", "OfflineModeIsEnabled"):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/download_model.py")
    parser.add_argument("--repo", required=True)
    parser.add_argument("--revision", default=None)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()

    out: Path = args.out
    if (out / "config.json").exists() or (out / "model_index.json").exists():
        print(f"modelyard: {out} is already there", file=sys.stderr)
        return
    if out.exists() and any(out.iterdir()):
        fail(1, f"{out} exists but holds no config.json; move it away, then run again")
    partial = out.with_name(out.name + ".partial")
    where = f"{args.repo}" + (f"@{args.revision}" if args.revision else "")
    try:
        snapshot_download(repo_id=args.repo, revision=args.revision, local_dir=partial, etag_timeout=15)
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        fail(1, f"{where}: no such repository, or it needs a token with access (HF_TOKEN): {type(exc).__name__}")
    except RevisionNotFoundError:
        fail(1, f"{where}: the repository has no revision {args.revision!r}")
    except Exception as exc:  # noqa: BLE001 - sorted into "no network" and the rest, each said plainly
        if unreachable(exc):
            fail(
                NO_NETWORK,
                f"cannot reach {constants.ENDPOINT} to download {where}: there seems to be no network here. "
                f"Copy the model's files into {out} instead (config.json and weights).",
            )
        if isinstance(exc, HfHubHTTPError):
            fail(1, f"{where}: the Hub answered an error: {exc}")
        fail(1, f"{where}: download failed: {type(exc).__name__}: {exc}")
    shutil.rmtree(partial / ".cache", ignore_errors=True)  # huggingface_hub's resume bookkeeping
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, out)  # onto nothing, or onto an empty directory
    print(f"modelyard: {where} -> {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
