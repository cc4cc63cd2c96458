"""The command line shared by the trainers that run from one YAML config (``training.sft``, ``training.grpo``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sim_bridge.config import ConfigError, load_yaml


def config_main(argv: list[str] | None, prog: str, description: str, config_type: type,
                train: Callable[[Any], Path]) -> int:
    """``prog --config FILE``: load ``config_type`` from the YAML file (validated), run ``train`` on it and
    print the final model's folder; a bad config exits 2 with the key, value and allowed range."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        final = train(load_yaml(config_type, args.config))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"final model: {final}")
    return 0
