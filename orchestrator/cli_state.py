"""Where the command-line tools (keys_cli, audit_cli, capture_cli) find the
orchestrator's state: --state-dir, else the state directory of --config
(default $MODELYARD_CONFIG, else configs/models.yaml)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from core.config import ROOT_DIR, load_config


def add_state_arguments(parser: argparse.ArgumentParser) -> None:
    """--config, --state-dir (one or the other) and --json."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--config", default=os.environ.get("MODELYARD_CONFIG", str(ROOT_DIR / "configs/models.yaml")),
                       help="models.yaml whose state directory to use (env MODELYARD_CONFIG)")
    where.add_argument("--state-dir", help="state directory (env MODELYARD_STATE_DIR; default: the config's)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def state_file(args: argparse.Namespace, name: str) -> Path:
    """name in the state directory the arguments point at (ConfigError for a broken config)."""
    if args.state_dir:
        return Path(args.state_dir).expanduser().resolve() / name
    return load_config(args.config).state_path() / name
